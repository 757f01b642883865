# Virtuoso — make help lists the targets.
SHELL   := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GOFLAGS_BUILD := -trimpath -ldflags "-s -w -X main.version=$(VERSION)"
BIN     := bin/virtuoso
DEMO_DIR ?= $(CURDIR)/.demo
PKGS    := ./...

.PHONY: help deps build test vet fmt-check guest demo bench fuzz clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

deps: ## install what the build and the tests need (Debian packages when root, Go modules, the web UI's npm packages)
	@scripts/deps.sh

build: deps ## build bin/virtuoso
	go build $(GOFLAGS_BUILD) -o $(BIN) ./cmd/virtuoso

guest: deps ## build the guests (busybox test guest; Debian with systemd), cached outside git
	@if [ -x scripts/guest/build.sh ]; then scripts/guest/build.sh; fi
	@if [ -x scripts/guest/debian.sh ]; then scripts/guest/debian.sh; fi

vet:
	go vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

test: deps guest vet fmt-check ## run every test with -race (installs what they need first)
	go test -race -timeout 20m $(PKGS)

demo: build guest ## run a whole local marketplace on loopback until Ctrl-C
	$(BIN) demo --dir $(DEMO_DIR)

bench: build ## run the benchmarks side by side with the tools a user would otherwise use
	$(BIN) bench transfer
	$(BIN) bench transfer --write-size 4KiB
	$(BIN) bench market
	go test -run '^$$' -bench . -benchtime 3x $(PKGS)

fuzz: deps ## run every fuzz target for FUZZTIME (default 10s) each
	@scripts/fuzz.sh

clean: ## remove build output and the demo's homes
	rm -rf bin $(DEMO_DIR)
