package qemu_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// TestChangeTracking: a real guest writes its disk (a tick line every half second) while it
// runs, is suspended, resumed and powered off; after each, the ranges the driver reports since
// the checkpoint cover every byte that differs from the disk as it was then. A QEMU that is
// killed leaves no answer (the transfer scans), and neither does a checkpoint of other content
// or a disk that is not the raw disk of a VM; the next start makes the tracking whole again.
func TestChangeTracking(t *testing.T) {
	g := qemutest.BuildGuest(t)
	d := qemutest.NewDriver(t, qemutest.DriverConfig(t, g))
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	id := vm.NewID()
	if err := d.Create(ctx, g.Config(id, 128, 64)); err != nil {
		t.Fatal(err)
	}
	files, err := d.Files(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(files.Dir, "disk.raw")
	h, other := transfer.Hash{1, 2, 3}, transfer.Hash{4, 5, 6}
	changed := func(since transfer.Hash) ([]transfer.Extent, bool) {
		t.Helper()
		r, ok, err := d.Changed(ctx, disk, since)
		if err != nil {
			t.Fatalf("changed: %v", err)
		}
		return r, ok
	}
	// covered checks that every byte of disk that differs from before lies in ranges, and
	// that ranges are few granules more than what differs.
	covered := func(before []byte, ranges []transfer.Extent) {
		t.Helper()
		now, err := os.ReadFile(disk)
		if err != nil {
			t.Fatal(err)
		}
		var in, differ int64
		inRanges := func(off int64) bool {
			for _, r := range ranges {
				if off >= r.Off && off < r.Off+r.Len {
					return true
				}
			}
			return false
		}
		for off := 0; off < len(now); off += 512 {
			if !bytes.Equal(now[off:off+512], before[off:off+512]) {
				differ++
				if !inRanges(int64(off)) {
					t.Fatalf("sector at %d changed but is not in the reported ranges %v", off, ranges)
				}
			}
		}
		for _, r := range ranges {
			in += r.Len
		}
		if differ == 0 || in > 4<<20 {
			ql, _ := os.ReadFile(filepath.Join(filepath.Dir(disk), "qemu.log"))
			t.Logf("serial:\n%s\nqemu.log:\n%s", qemutest.Serial(t, d, id), ql)
			t.Fatalf("%d sectors changed, ranges %v (%d bytes): want some changes, in a few granules", differ, ranges, in)
		}
		t.Logf("%d sectors changed, reported ranges %v", differ, ranges)
	}

	if _, ok := changed(h); ok {
		t.Fatal("a disk never checkpointed reported its changes")
	}
	// The wrapper is made anew here (as after a damaged one): the disk stays as it is, and
	// no other file of the name appears where the node runs.
	orig, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(files.Dir, ".disk.raw.track")); err != nil {
		t.Fatalf("the vm has no wrapper from its creation: %v", err)
	}
	if err := d.Checkpoint(ctx, disk, h); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	before, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(orig, before) || !bytes.Contains(before[:512], []byte("VIRTUOSO GUEST DISK")) {
		t.Fatal("making the wrapper changed the disk")
	}
	if _, err := os.Stat("disk.raw"); err == nil {
		t.Fatal("a disk.raw appeared in the working directory")
	}
	if r, ok := changed(h); !ok || len(r) != 0 {
		t.Fatalf("right after the checkpoint: %v, %v; want no changes, known", r, ok)
	}
	if _, ok := changed(other); ok {
		t.Fatal("changes since content that was never checkpointed were reported")
	}
	if files, err := d.Files(ctx, id); err != nil || strings.Contains(strings.Join(files.Names, " "), "track") {
		t.Fatalf("the wrapper is among the vm's files: %v, %v", files.Names, err)
	}

	t.Log("the guest runs, is suspended: its ticks are reported")
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	qemutest.WaitSerial(t, ctx, d, id, "ticks", func(out string) bool { return qemutest.LastTick(out) >= 4 })
	if _, ok := changed(h); ok {
		t.Fatal("the changes of a running vm were reported: they are still being made")
	}
	if err := d.Suspend(ctx, id); err != nil {
		t.Fatal(err)
	}
	r, ok := changed(h)
	if !ok {
		t.Fatal("after a suspend the changes are not known")
	}
	covered(before, r)

	t.Log("resumed, powered off: the later ticks too")
	if err := d.Resume(ctx, id); err != nil {
		t.Fatal(err)
	}
	n := qemutest.LastTick(qemutest.Serial(t, d, id))
	qemutest.WaitSerial(t, ctx, d, id, "more ticks", func(out string) bool { return qemutest.LastTick(out) >= n+4 })
	if err := d.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	r2, ok := changed(h)
	if !ok {
		t.Fatal("after a power-off the changes are not known")
	}
	covered(before, r2)

	t.Log("killed: nothing is claimed")
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	qemutest.WaitSerial(t, ctx, d, id, "ticks after start", func(out string) bool { return strings.Count(out, qemutest.Banner) >= 2 })
	qemutest.Kill(t, d, id)
	waitPower(t, ctx, d, id, vm.PowerOff)
	if r, ok := changed(h); ok {
		t.Fatalf("a QEMU killed with the bitmap open: %v reported as the changes", r)
	}
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("start after the kill: %v", err)
	}
	if err := d.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, ok := changed(h); ok {
		t.Fatal("the bitmap a killed QEMU left is back")
	}
	if err := d.Checkpoint(ctx, disk, other); err != nil {
		t.Fatalf("checkpoint after the repair: %v", err)
	}
	if r, ok := changed(other); !ok || len(r) != 0 {
		t.Fatalf("a new checkpoint after the repair: %v, %v", r, ok)
	}

	t.Log("a write that did not go through QEMU: nothing is claimed")
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // past the wrapper's last write, at the filesystem's clock
	if _, err := f.WriteAt([]byte("by hand"), 8<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if r, ok := changed(other); ok {
		t.Fatalf("a write by hand after the checkpoint: %v reported as all that changed", r)
	}

	t.Log("a driver without change tracking runs the vm on its raw disk, and drops the wrapper first")
	plain := qemutest.DriverConfig(t, g)
	plain.Dir, plain.NoChangeTracking = filepath.Dir(filepath.Dir(d.Dir(id))), true
	pd := qemutest.NewDriver(t, plain)
	if err := d.Checkpoint(ctx, disk, h); err != nil {
		t.Fatal(err)
	}
	if err := pd.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := pd.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(files.Dir, ".disk.raw.track")); !os.IsNotExist(err) {
		t.Fatalf("the wrapper outlived a run without it: %v", err)
	}
	if r, ok := changed(h); ok {
		t.Fatalf("after a run without the wrapper: %v reported", r)
	}

	t.Log("a definition from another provider whose disk name would be qemu-img options")
	real, err := os.ReadFile(filepath.Join(files.Dir, "vm.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		wrapped bool
	}{{"disk.raw", true}, {"d,preallocation=full", false}, {".hidden", false}} {
		staged := t.TempDir()
		def := bytes.Replace(real, []byte(`"disk": "disk.raw"`), []byte(fmt.Sprintf(`"disk": %q`, tc.name)), 1)
		if err := os.WriteFile(filepath.Join(staged, "vm.json"), def, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(staged, tc.name), make([]byte, 64<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := d.Checkpoint(ctx, filepath.Join(staged, tc.name), h); err != nil {
			t.Fatalf("checkpoint of %q: %v", tc.name, err)
		}
		_, err := os.Stat(filepath.Join(staged, "."+tc.name+".track"))
		if got := err == nil; got != tc.wrapped {
			t.Fatalf("disk named %q in a staged definition: wrapper made %v, want %v", tc.name, got, tc.wrapped)
		}
	}

	t.Log("files that are not a tracked disk")
	for _, p := range []string{filepath.Join(files.Dir, "vmlinuz"), filepath.Join(t.TempDir(), "disk.raw")} {
		if err := d.Checkpoint(ctx, p, h); err != nil {
			t.Fatalf("checkpoint of %s: %v", p, err)
		}
		if _, ok, err := d.Changed(ctx, p, h); ok || err != nil {
			t.Fatalf("changes of %s: %v, %v; want unknown", p, ok, err)
		}
	}
	cfg := qemutest.DriverConfig(t, g)
	cfg.NoChangeTracking = true
	untracked := qemutest.NewDriver(t, cfg)
	if _, ok, _ := untracked.Changed(ctx, disk, other); ok {
		t.Fatal("a driver without change tracking reported changes")
	}
	var _ transfer.ChangeTracker = (*qemu.Driver)(nil)
}

func waitPower(t *testing.T, ctx context.Context, d *qemu.Driver, id vm.ID, want vm.PowerState) {
	t.Helper()
	for {
		p, err := d.Power(ctx, id)
		if err == nil && p == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("power %v, %v; want %v", p, err, want)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
