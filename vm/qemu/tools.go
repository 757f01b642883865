package qemu

import (
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"

	"github.com/virtuoso-market/virtuoso/vm"
)

// ErrNotInstalled: a program the driver runs (qemu-system-x86_64, qemu-img, zstd) is missing or
// not executable. Errors wrapping it also wrap vm.ErrHypervisor and say which Debian package
// installs the program.
var ErrNotInstalled = errors.New("qemu tool not installed")

// packages names the Debian package that installs each program, by base name.
var packages = map[string]string{
	"qemu-system-x86_64": "qemu-system-x86",
	"qemu-img":           "qemu-utils",
	"qemu-nbd":           "qemu-utils",
	"zstd":               "zstd",
}

// toolError explains why program bin could not be run. A missing or non-executable binary gives
// an error wrapping ErrNotInstalled that tells how to install it; anything else wraps
// vm.ErrHypervisor only. The binary may vanish after New checked it (a package upgrade, an
// operator's mistake), so every place that runs one goes through here.
func toolError(bin string, err error) error {
	var why string
	switch {
	case errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist):
		why = "not found"
	case errors.Is(err, fs.ErrPermission) || errors.Is(err, exec.ErrDot):
		why = "not executable"
	default:
		return fmt.Errorf("%w: run %s: %w", vm.ErrHypervisor, bin, err)
	}
	how := "install it"
	if pkg, ok := packages[filepath.Base(bin)]; ok {
		how = "install it (Debian/Ubuntu: apt-get install " + pkg + ")"
	}
	return fmt.Errorf("%w: %w: %s %s (%v); %s or set its path in the qemu driver configuration",
		vm.ErrHypervisor, ErrNotInstalled, bin, why, err, how)
}

// checkTool reports whether bin can be run, as toolError explains it.
func checkTool(bin string) error {
	if _, err := exec.LookPath(bin); err != nil {
		return toolError(bin, err)
	}
	return nil
}
