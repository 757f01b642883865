package qemu

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Guest is a guest image that a script under scripts/guest builds and caches outside git (make
// guest): a Linux kernel booted directly (-kernel, -initrd, -append) with a preconfigured disk.
// Two are built, in the same cache directory:
//
//   - the tiny test guest (scripts/guest/build.sh, LoadGuest): a Debian kernel with a busybox
//     initramfs that prints a banner and a counter on its serial console, and a 32 MiB disk;
//     the tests boot it, the demo offers it as "busybox";
//   - the Debian guest (scripts/guest/debian.sh, LoadDebian): a minimal Debian bookworm with
//     systemd on a raw ext4 disk (root=/dev/vda), a root shell logged in on the VNC console
//     (tty1) and on the serial console (ttyS0), hostname virtuoso-debian; the demo offers it
//     as "debian".
type Guest struct {
	Dir     string `json:"-"` // cache directory holding the files below
	Kernel  string `json:"kernel"`
	Initrd  string `json:"initrd"`
	Disk    string `json:"disk"` // raw preconfigured disk; a VM's disk is at least DiskMB
	Cmdline string `json:"cmdline"`
	DiskMB  int64  `json:"disk_mb,omitempty"` // size of Disk in MiB
}

// DebianPrompt is what the Debian guest's root shell prints on its consoles once it has
// booted.
const DebianPrompt = "root@virtuoso-debian:"

// GuestCacheDir is where the build scripts cache the guests: $VIRTUOSO_GUEST_CACHE, or
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

// LoadGuest reads the test guest's manifest (guest.json) in dir.
func LoadGuest(dir string) (Guest, error) { return loadGuest(dir, "guest.json") }

// LoadDebian reads the Debian guest's manifest (debian.json) in dir.
func LoadDebian(dir string) (Guest, error) { return loadGuest(dir, "debian.json") }

func loadGuest(dir, manifest string) (Guest, error) {
	raw, err := os.ReadFile(filepath.Join(dir, manifest))
	if err != nil {
		return Guest{}, fmt.Errorf("no guest %s in %s (run make guest): %w", manifest, dir, err)
	}
	var g Guest
	if err := json.Unmarshal(raw, &g); err != nil {
		return Guest{}, fmt.Errorf("guest manifest %s in %s: %w", manifest, dir, err)
	}
	if g.DiskMB == 0 {
		if fi, err := os.Stat(g.Disk); err == nil {
			g.DiskMB = (fi.Size() + 1<<20 - 1) >> 20
		}
	}
	g.Dir = dir
	return g, nil
}
