package qemu

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Guest is the tiny Linux guest that scripts/guest/build.sh builds and caches (make guest): a
// Debian kernel booted directly with a busybox initramfs, and a small preconfigured disk. The
// demo offers it as an OS image; the tests boot it.
type Guest struct {
	Dir     string `json:"-"` // cache directory holding the files below
	Kernel  string `json:"kernel"`
	Initrd  string `json:"initrd"`
	Disk    string `json:"disk"` // 32 MiB raw preconfigured disk
	Cmdline string `json:"cmdline"`
}

// GuestCacheDir is where the build script caches the guest: $VIRTUOSO_GUEST_CACHE, or
// ${XDG_CACHE_HOME:-~/.cache}/virtuoso/guest.
func GuestCacheDir() (string, error) {
	if dir := os.Getenv("VIRTUOSO_GUEST_CACHE"); dir != "" {
		return dir, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, "virtuoso", "guest"), nil
}

// LoadGuest reads the guest's manifest (guest.json) in dir.
func LoadGuest(dir string) (Guest, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "guest.json"))
	if err != nil {
		return Guest{}, fmt.Errorf("no guest in %s (run make guest): %w", dir, err)
	}
	var g Guest
	if err := json.Unmarshal(raw, &g); err != nil {
		return Guest{}, fmt.Errorf("guest manifest in %s: %w", dir, err)
	}
	g.Dir = dir
	return g, nil
}
