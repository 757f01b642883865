package vmmp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// provider is a host with a QEMU VM stack and a transfer server authorised by its grants.
type provider struct {
	h       host.Host
	mgr     *vm.Manager
	grants  *Grants
	tracker *countingTracker // the driver's dirty bitmaps, as the daemon wires them
}

// countingTracker is the QEMU driver's change tracker, with a record of what it answered.
type countingTracker struct {
	transfer.ChangeTracker
	mu      sync.Mutex
	answers map[string][]trackerAnswer // by file name
}

type trackerAnswer struct {
	ok     bool
	ranges []transfer.Extent
}

func (c *countingTracker) Changed(ctx context.Context, path string, since transfer.Hash) ([]transfer.Extent, bool, error) {
	r, ok, err := c.ChangeTracker.Changed(ctx, path, since)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.answers[filepath.Base(path)] = append(c.answers[filepath.Base(path)], trackerAnswer{ok, r})
	return r, ok, err
}

// take returns and forgets the answers given for file name.
func (c *countingTracker) take(name string) []trackerAnswer {
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.answers[name]
	delete(c.answers, name)
	return a
}

func newProvider(t *testing.T, g qemutest.Guest) *provider {
	t.Helper()
	return newProviderOn(t, qemutest.DriverConfig(t, g))
}

// newProviderOn is newProvider with the QEMU driver configured by cfg.
func newProviderOn(t *testing.T, cfg qemu.Config) *provider {
	t.Helper()
	p := &provider{h: testHost(t), grants: NewGrants()}
	drv := qemutest.NewDriver(t, cfg)
	store, err := node.OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	inv, err := vm.OpenInventory(store.Space("vm/inventory/"))
	if err != nil {
		t.Fatal(err)
	}
	if p.mgr, err = vm.NewManager(vm.ManagerConfig{Driver: drv, Inventory: inv}); err != nil {
		t.Fatal(err)
	}
	p.tracker = &countingTracker{ChangeTracker: drv, answers: map[string][]trackerAnswer{}}
	srv, err := transfer.NewServer(p.h, p.grants.Authorize, transfer.WithChangeTracker(p.tracker))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return p
}

// move migrates VM id from one provider to the other the way the protocol does: the origin
// marks it migrating and grants the destination its files, the destination pulls and adopts
// it, the origin keeps its files as a cache.
func move(t *testing.T, ctx context.Context, id vm.ID, from, to *provider) (vm.Record, *transfer.Result) {
	t.Helper()
	rec, err := from.mgr.BeginMigration(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	files, err := from.mgr.Driver().Files(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := from.grants.Grant(rec, to.h.ID(), files, time.Minute); err != nil {
		t.Fatal(err)
	}
	got, res, err := Pull(ctx, to.h, to.mgr, Incoming{VM: id, Origin: from.h.ID(), State: rec.State, Owner: rec.Owner, Lease: rec.Lease, Files: files.Names},
		transfer.WithChangeTracker(to.tracker))
	if err != nil {
		t.Fatal(err)
	}
	from.grants.Revoke(id)
	if _, err := from.mgr.FinishMigration(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	return got, res
}

// TestPullThereAndBack: a stored VM moves to another provider, runs there, and moves back;
// the way back sends only what the guest changed, since the origin kept its copy.
func TestPullThereAndBack(t *testing.T) {
	g := qemutest.BuildGuest(t)
	a, b := newProvider(t, g), newProvider(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := b.h.Connect(ctx, peer.AddrInfo{ID: a.h.ID(), Addrs: a.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	id := vm.NewID()
	if _, err := a.mgr.Create(ctx, vm.CreateRequest{Config: g.Config(id, 128, 64), Owner: "buyer", Lease: "lease-1"}); err != nil {
		t.Fatal(err)
	}
	there, res := move(t, ctx, id, a, b)
	if there.State.Status != vm.StatusStored || there.Origin != a.h.ID().String() || there.Owner != "buyer" {
		t.Fatalf("at the destination: %+v", there)
	}
	first := res.WireBytes
	if old, _ := a.mgr.Get(id); !old.Cached {
		t.Fatal("the origin did not keep its copy as a cache")
	}
	// It runs at the destination: the guest counts on its serial console.
	if _, err := b.mgr.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	qemutest.WaitSerial(t, ctx, b.mgr.Driver().(*qemu.Driver), id, "ticks", func(out string) bool { return qemutest.LastTick(out) >= 2 })
	if _, err := b.mgr.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	b.tracker.take("disk.raw")
	back, res := move(t, ctx, id, b, a)
	if back.State.Status != vm.StatusStopped || back.Cached || back.State.Version <= there.State.Version {
		t.Fatalf("back at the origin: %+v", back)
	}
	// The disk the guest wrote was not scanned: its dirty bitmap, counted from the copy
	// that arrived at b, told what to read; and what arrived is what b holds.
	if got := b.tracker.take("disk.raw"); len(got) != 1 || !got[0].ok || len(got[0].ranges) == 0 {
		t.Fatalf("b's change tracker answered %+v for the disk the guest wrote; want the changed ranges", got)
	}
	sameContent(t, filepath.Join(b.mgr.Driver().(*qemu.Driver).Dir(id), "disk.raw"), filepath.Join(a.mgr.Driver().(*qemu.Driver).Dir(id), "disk.raw"))
	t.Logf("first move %d bytes on the wire, the way back %d", first, res.WireBytes)
	if res.WireBytes*4 > first {
		t.Fatalf("the way back sent %d bytes, the first move %d: the cached copy was not used", res.WireBytes, first)
	}
	if _, err := a.mgr.Start(ctx, id); err != nil {
		t.Fatalf("start after coming back: %v", err)
	}
	if _, err := a.mgr.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
}

// TestSeedMovesTheCachedCopy: the cached copy that seeds a migration back moves into the
// staging directory as it is, holes and all (a raw disk that is mostly holes takes no more room
// there and reads the same), and a migration that fails puts it back.
func TestSeedMovesTheCachedCopy(t *testing.T) {
	g := qemutest.BuildGuest(t)
	cfg := qemutest.DriverConfig(t, g)
	cfg.DiskFormat = "raw" // the disk is the size of the configuration, mostly holes
	a := newProviderOn(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id := vm.NewID()
	if _, err := a.mgr.Create(ctx, vm.CreateRequest{Config: g.Config(id, 128, 256), Owner: "buyer", Lease: "lease-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.mgr.BeginMigration(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := a.mgr.FinishMigration(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	files, err := a.mgr.Driver().Files(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	// What the cached copy holds, before it moves.
	before := map[string]usage{}
	sums := map[string]string{}
	sawSparse := false
	for _, name := range files.Names {
		path := filepath.Join(files.Dir, name)
		before[name], sums[name] = allocated(t, path), fileSum(t, path)
		if u := before[name]; u.bytes < u.size/4 {
			sawSparse = true
		}
	}
	if !sawSparse {
		t.Fatalf("no file of the cached copy is sparse (%v): the test proves nothing", files.Names)
	}
	staging := filepath.Join(filepath.Dir(filepath.Dir(files.Dir)), "staging", "seed-test")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	restore, err := seed(ctx, a.mgr, id, staging)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files.Names {
		path := filepath.Join(staging, name)
		if got := allocated(t, path); got != before[name] || fileSum(t, path) != sums[name] {
			t.Errorf("%s in staging: %+v, was %+v (holes filled, or other bytes)", name, got, before[name])
		}
	}
	if _, err := os.Stat(files.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the cached copy was copied, not moved: %v", err)
	}
	// A migration that fails puts it back.
	restore()
	for _, name := range files.Names {
		if fileSum(t, filepath.Join(files.Dir, name)) != sums[name] {
			t.Fatalf("%s not back in the cached copy", name)
		}
	}
	// So does a node that stopped in the middle, when it starts again; other leftovers go.
	dir, err := a.mgr.Driver().(vm.Importer).StagingDir(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seed(ctx, a.mgr, id, dir); err != nil {
		t.Fatal(err)
	}
	junk, err := a.mgr.Driver().(vm.Importer).StagingDir(ctx, vm.NewID())
	if err != nil {
		t.Fatal(err)
	}
	if err := SweepStaging(a.mgr); err != nil {
		t.Fatal(err)
	}
	for _, name := range files.Names {
		if fileSum(t, filepath.Join(files.Dir, name)) != sums[name] {
			t.Fatalf("%s not back in the cached copy after the sweep", name)
		}
	}
	for _, d := range []string{dir, junk} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left after the sweep: %v", d, err)
		}
	}
}

// fileSum is the SHA-256 of the file at path, in hex.
func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

type usage struct{ size, bytes int64 }

// allocated is the size of the file at path and the bytes the filesystem allocated for it.
func allocated(t *testing.T, path string) usage {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return usage{size: fi.Size(), bytes: fi.Sys().(*syscall.Stat_t).Blocks * 512}
}

// sameContent fails unless the files at a and b hold the same bytes.
func sameContent(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(ba)) {
		na, erra := io.ReadFull(fa, ba)
		nb, errb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s and %s differ after offset %d", a, b, off)
		}
		if erra != nil || errb != nil {
			return
		}
	}
}
