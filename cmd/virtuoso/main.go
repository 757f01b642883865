// Command virtuoso runs a node of the Virtuoso marketplace and talks to it.
package main

import (
	"os"

	"github.com/virtuoso-market/virtuoso/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(cli.Run(os.Args[1:], cli.Env{Stdout: os.Stdout, Stderr: os.Stderr, Version: version}))
}
