package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// TestTransferTiny runs the whole benchmark on a small image, so it keeps working.
func TestTransferTiny(t *testing.T) {
	var out, prog bytes.Buffer
	opts := TransferOptions{Dir: t.TempDir(), Size: 16 << 20, Changed: 0.02, WriteSize: 4 << 10, Zero: 0.5,
		Progress: &prog}
	if err := Transfer(t.Context(), opts, &out); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	t.Log("progress:\n" + prog.String())
	// Every run ends its progress with its time; the libp2p transfers show their bar.
	for _, want := range []string{
		"first      libp2p stream, raw              ", "first      rsync -W                         ",
		"changed    blockdiff                        [========================] 100%  16MiB / 16MiB",
		"unchanged  full                            ",
	} {
		if !strings.Contains(prog.String(), want) {
			t.Errorf("progress lacks %q", want)
		}
	}
	for _, want := range []string{"libp2p stream, raw", "blockdiff", "full", "rsync -W", "rsync over ssh -W", "rsync over ssh --inplace", "unchanged", "goals:", "medians of 3 interleaved runs"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "n/a") {
		t.Errorf("a method did not run:\n%s", out.String())
	}
}

// TestTransferExt4Tiny runs the benchmark on a small ext4 image of this machine's files,
// changed by debugfs as a guest would change it.
func TestTransferExt4Tiny(t *testing.T) {
	var out bytes.Buffer
	opts := TransferOptions{Dir: t.TempDir(), Size: 64 << 20, Changed: 0.02, Image: "ext4"}
	if err := Transfer(t.Context(), opts, &out); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	for _, want := range []string{"ext4 with", "blockdiff, no zstd", "blockdiff, zstd always", "blockdiff, dirty bitmap", "CPU-s/GiB", "changed 2%"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "n/a") {
		t.Errorf("a method did not run:\n%s", out.String())
	}
}

// TestTransferQcow2Tiny runs the benchmark on a small ext4 image as a qcow2 file, changed
// through QEMU's block layer.
func TestTransferQcow2Tiny(t *testing.T) {
	var out bytes.Buffer
	opts := TransferOptions{Dir: t.TempDir(), Size: 64 << 20, Changed: 0.02, Image: "ext4", Format: "qcow2"}
	if err := Transfer(t.Context(), opts, &out); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	for _, want := range []string{"ext4 with", ", as qcow2", "blockdiff, no zstd", "qcow2 disks are not tracked", "changed 2%"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "n/a") || strings.Contains(out.String(), "blockdiff, dirty bitmap") {
		t.Errorf("a method did not run, or the dirty bitmap row is there for a qcow2 file:\n%s", out.String())
	}
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		err  bool
	}{
		{in: "4GiB", want: 4 << 30},
		{in: "64KiB", want: 64 << 10},
		{in: "4KiB", want: 4 << 10},
		{in: "16MiB", want: 16 << 20},
		{in: "4G", want: 4 << 30},
		{in: "1.5GB", want: 1500000000},
		{in: "4096", want: 4096},
		{in: " 2 MiB ", want: 2 << 20},
		{in: "0.5KiB", want: 512},
		{in: "4 parsecs", err: true},
		{in: "-1GiB", err: true},
		{in: "", err: true},
		{in: "GiB", err: true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSize(tc.in)
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
			}
		})
	}
}

func TestParsePercent(t *testing.T) {
	cases := []struct {
		in   string
		want float64
		err  bool
	}{
		{in: "1%", want: 0.01},
		{in: "0%", want: 0},
		{in: "50%", want: 0.5},
		{in: "0.5%", want: 0.005},
		{in: "0.25", want: 0.25},
		{in: "101%", err: true},
		{in: "-1%", err: true},
		{in: "lots", err: true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePercent(tc.in)
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("ParsePercent(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
			}
		})
	}
}

// TestDebianImage runs the Debian guest once as `bench transfer --image debian` does and
// checks the change it leaves: the guest's own work on its disk (the installed tree is in
// its filesystem), a part of the disk, and what every method's change then writes.
func TestDebianImage(t *testing.T) {
	g := qemutest.BuildDebian(t)
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	opts := TransferOptions{Dir: dir, Size: g.DiskMB << 20, Image: "debian"}
	if err := opts.defaults(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "src"), 0o755); err != nil {
		t.Fatal(err)
	}
	opts.DebianRun = filepath.Join(dir, "run")
	if err := os.MkdirAll(opts.DebianRun, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := runDebianGuest(ctx, opts, opts.DebianRun); err != nil {
		t.Fatal(err)
	}
	im := newDebianImage(opts, filepath.Join(dir, "src", "disk.img"))
	if err := im.create(ctx); err != nil {
		t.Fatal(err)
	}
	t.Log(im.describe())
	if im.accel != "kvm" && im.accel != "tcg" {
		t.Errorf("accelerator %q", im.accel)
	}
	if n := im.changedBytes(); n <= 0 || n > opts.Size/2 {
		t.Errorf("the guest changed %d bytes of its %d-byte disk", n, opts.Size)
	}
	if err := sameContent(g.Disk, im.orig); err != nil {
		t.Errorf("the disk before the run is not the guest's image: %v", err)
	}
	out, err := exec.CommandContext(ctx, "debugfs", "-R", "ls -l /opt/pkg", im.ran).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("libc.so.6")) {
		t.Errorf("the installed tree is not in the disk after the run: %v\n%s", err, out)
	}
	if err := sameContent(im.path, im.orig); err != nil {
		t.Errorf("the image before its change: %v", err)
	}
	if err := im.change(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sameContent(im.path, im.ran); err != nil {
		t.Errorf("the image after its change is not the disk the guest left: %v", err)
	}
}
