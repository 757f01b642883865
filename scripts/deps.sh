#!/usr/bin/env bash
# Installs what building, testing and the demo need: Debian packages (when root and missing),
# the Go modules of go.mod and the web UI's npm packages of webui/web/package-lock.json. Safe to run again; it does nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: QEMU and its image tool for real VMs, zstd for suspend images, rsync and
# OpenSSH (client and a private sshd) as the transfer benchmark's baselines, iproute2 for the
# namespaces and shaped links of its emulated links, the kernel and busybox the tiny test guest
# is built from, mmdebstrap and e2fsprogs (mke2fs -d) that build the Debian guest, chromium that
# the web UI's end-to-end tests drive, npm for the web UI's front-end packages (unless a Node.js
# that brings its own npm is installed).
packages=(qemu-system-x86 qemu-utils zstd rsync openssh-client openssh-server iproute2 busybox-static linux-image-amd64 ca-certificates mmdebstrap e2fsprogs chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

go mod download

# The web UI's front-end packages (noVNC, uPlot), exactly as locked, into webui/web/node_modules,
# which go:embed takes into the binary (see webui/doc.go). npm ci starts from an empty
# node_modules, so it runs only when the lock file changed since the last install.
web=webui/web
stamp=$web/node_modules/.virtuoso-lock
if ! cmp -s "$web/package-lock.json" "$stamp"; then
  echo "installing the web UI's npm packages (npm ci in $web)"
  npm ci --prefix "$web" --ignore-scripts --no-audit --no-fund --loglevel=error
  cp "$web/package-lock.json" "$stamp"
fi
