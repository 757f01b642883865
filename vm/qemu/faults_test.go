package qemu_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
)

// TestNewWithoutTools checks that a driver configured with a QEMU tool that is not there (or
// not executable) is refused with an error that names the program and the package installing
// it, and leaves no VM directory behind.
func TestNewWithoutTools(t *testing.T) {
	notExec := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		set  func(c *qemu.Config)
		bin  string // expected in the message
		how  string
	}{
		{"qemu missing", func(c *qemu.Config) { c.QEMU = "/nonexistent/qemu-system-x86_64" }, "/nonexistent/qemu-system-x86_64", "apt-get install qemu-system-x86"},
		{"qemu not in PATH", func(c *qemu.Config) { c.QEMU = "qemu-system-x86_64-absent" }, "qemu-system-x86_64-absent not found", "install it or set its path"},
		{"qemu not executable", func(c *qemu.Config) { c.QEMU = notExec }, notExec + " not executable", "apt-get install qemu-system-x86"},
		{"qemu-img missing", func(c *qemu.Config) { c.QEMUImg = "/nonexistent/qemu-img" }, "/nonexistent/qemu-img", "apt-get install qemu-utils"},
		{"zstd missing", func(c *qemu.Config) { c.Zstd = "/nonexistent/zstd" }, "/nonexistent/zstd", "apt-get install zstd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := qemu.DefaultConfig(filepath.Join(t.TempDir(), "vms"))
			tt.set(&cfg)
			d, err := qemu.New(cfg)
			if err == nil {
				d.Close()
				t.Fatal("New accepted a missing tool")
			}
			if !errors.Is(err, qemu.ErrNotInstalled) || !errors.Is(err, vm.ErrHypervisor) {
				t.Fatalf("err = %v, want ErrNotInstalled and vm.ErrHypervisor", err)
			}
			for _, want := range []string{tt.bin, tt.how} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if _, serr := os.Stat(cfg.Dir); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("refused driver created its directory: %v", serr)
			}
		})
	}
}
