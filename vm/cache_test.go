package vm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// TestCacheEvictsOldestFirst: the copies an origin keeps of VMs that moved away are bounded by
// ManagerConfig.CacheMB; a copy that goes over it evicts the oldest ones, files and record,
// and the VMs this provider runs are never touched.
func TestCacheEvictsOldestFirst(t *testing.T) {
	g := qemutest.BuildGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// What one VM's files take, measured on a provider of its own: the cache holds two, not three.
	one := usage(t, ctx, newProvider(t, g), g)
	p := &provider{storeAt: t.TempDir(), drvCfg: qemutest.DriverConfig(t, g), cacheMB: (one*5/2 + 1<<20 - 1) >> 20}
	p.open(t)
	store := func() vm.ID {
		t.Helper()
		id := vm.NewID()
		if _, err := p.mgr.Create(ctx, vm.CreateRequest{Config: g.Config(id, 128, 64)}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	moveAway := func(id vm.ID) {
		t.Helper()
		if _, err := p.mgr.BeginMigration(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := p.mgr.FinishMigration(ctx, id, true); err != nil {
			t.Fatal(err)
		}
	}
	kept := store() // stays here
	ids := []vm.ID{store(), store(), store()}
	dirs := make([]string, len(ids))
	for i, id := range ids {
		files, err := p.drv.Files(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		dirs[i] = files.Dir
	}
	moveAway(ids[0])
	moveAway(ids[1])
	for _, id := range ids[:2] {
		if rec, err := p.mgr.Get(id); err != nil || !rec.Cached {
			t.Fatalf("vm %s within the cache's bound: %+v, %v", id, rec, err)
		}
	}
	moveAway(ids[2])
	if _, err := p.mgr.Get(ids[0]); !errors.Is(err, vm.ErrNotFound) {
		t.Fatalf("the oldest cached copy was kept: %v", err)
	}
	if _, err := os.Stat(dirs[0]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the files of the evicted copy are still there: %v", err)
	}
	for i, id := range ids[1:] {
		if rec, err := p.mgr.Get(id); err != nil || !rec.Cached {
			t.Fatalf("newer cached copy %s: %+v, %v", id, rec, err)
		}
		if _, err := os.Stat(dirs[i+1]); err != nil {
			t.Fatal(err)
		}
	}
	if rec, err := p.mgr.Get(kept); err != nil || rec.Cached || rec.State.Status != vm.StatusStored {
		t.Fatalf("the vm the provider runs: %+v, %v", rec, err)
	}
}

// usage is the disk the files of a VM of guest g take on provider q.
func usage(t *testing.T, ctx context.Context, q *provider, g qemutest.Guest) int64 {
	t.Helper()
	id := vm.NewID()
	if _, err := q.mgr.Create(ctx, vm.CreateRequest{Config: g.Config(id, 128, 64)}); err != nil {
		t.Fatal(err)
	}
	files, err := q.drv.Files(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, name := range files.Names {
		fi, err := os.Stat(filepath.Join(files.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Sys().(*syscall.Stat_t).Blocks * 512
	}
	if n < 1<<20 {
		t.Fatalf("a vm's files take %d bytes: too little to tell a bound", n)
	}
	return n
}
