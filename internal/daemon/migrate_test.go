package daemon_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
	"github.com/virtuoso-market/virtuoso/vmmp"
)

// TestMigrateThereAndBack: a buyer moves a stored VM to another provider with one call, starts
// it there, and moves it back while it runs: each time the VM is at exactly one provider, under
// the buyer's new lease, the origin's capacity is released and its copy kept as a cache, and a
// VM that ran runs again after the move.
func TestMigrateThereAndBack(t *testing.T) {
	guest := qemutest.BuildGuest(t)
	provider := func(cfg *node.Config) {
		cfg.Roles.Provider, cfg.Provider.Accel = true, "tcg"
		cfg.Provider.ImageDirs = []string{guest.Dir}
	}
	image := market.Image{Name: "busybox", OS: "linux", Disk: guest.Disk, MemoryMB: 128,
		Boot: &vm.KernelBoot{Kernel: guest.Kernel, Initrd: guest.Initrd, Cmdline: guest.Cmdline}}
	a := startNode(t, provider, daemon.Options{Images: []market.Image{image}})
	b := startNode(t, provider, daemon.Options{Images: []market.Image{image}})
	for _, p := range []*daemon.Node{a, b} {
		t.Cleanup(func() { p.VMs.StopAll(context.Background()) })
	}
	buyer := startNode(t, nil, daemon.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var machines []market.Machine
	for _, p := range []*daemon.Node{a, b} {
		if err := buyer.Host().Connect(ctx, peer.AddrInfo{ID: p.ID(), Addrs: p.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
		m, err := p.Provider.AddMachine(ctx, market.DemoMachine(len(machines)))
		if err != nil {
			t.Fatal(err)
		}
		machines = append(machines, m)
		testwait.Eventually(t, 20*time.Second, func() error {
			if _, ok := buyer.Book.Get(p.ID(), m.ID); !ok {
				return errors.New("the offer did not reach the buyer")
			}
			return nil
		})
	}
	var v market.VM
	testwait.Eventually(t, 20*time.Second, func() (err error) { // the image's name binds in the book
		v, err = buyer.Buyer.Store(ctx, market.StoreRequest{ConfigName: "busybox", Provider: a.ID().String(), Machine: machines[0].ID})
		return err
	})
	// at checks that the VM is at p only, in status want, under the buyer's current lease.
	at := func(p, other *daemon.Node, want vm.Status) market.VM {
		t.Helper()
		got, err := buyer.Buyer.Status(ctx, v.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Provider != p.ID() || got.State.Status != want {
			t.Fatalf("the buyer's vm is %s at %s, want %s at %s", got.State.Status, market.Short(got.Provider), want, market.Short(p.ID()))
		}
		rec, err := p.VMs.Manager().Get(v.ID)
		if err != nil || rec.Cached || rec.State.Status != want || rec.Lease != got.Lease.String() {
			t.Fatalf("at %s: %+v, %v", market.Short(p.ID()), rec, err)
		}
		l, err := p.Provider.Lease(v.ID)
		if err != nil || l.State != market.LeaseStateActive || l.Lease != got.Lease {
			t.Fatalf("%s's lease: %+v, %v", market.Short(p.ID()), l, err)
		}
		if old, err := other.VMs.Manager().Get(v.ID); err == nil && !old.Cached {
			t.Fatalf("the vm is also live at %s: %+v", market.Short(other.ID()), old)
		}
		if l, err := other.Provider.Lease(v.ID); err == nil && l.Holds() {
			t.Fatalf("%s still holds capacity for the vm: %s", market.Short(other.ID()), l.State)
		}
		return got
	}
	first := at(a, b, vm.StatusStored)

	moved, err := buyer.Buyer.Migrate(ctx, v.ID, market.MigrateRequest{Provider: b.ID().String(), Machine: machines[1].ID})
	if err != nil {
		t.Fatal(err)
	}
	there := at(b, a, vm.StatusStored)
	if moved.Lease == first.Lease || there.Lease != moved.Lease || there.Terms != machines[1].Terms {
		t.Fatalf("the new lease %s (was %s), terms %+v", moved.Lease, first.Lease, there.Terms)
	}
	if old, err := a.VMs.Manager().Get(v.ID); err != nil || !old.Cached {
		t.Fatalf("the origin did not keep its copy: %+v, %v", old, err)
	}
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionStart); err != nil {
		t.Fatal(err)
	}
	at(b, a, vm.StatusStarted)
	ticks := func(p *daemon.Node, after int) int {
		t.Helper()
		var n int
		qemutest.WaitSerial(t, ctx, p.VMs.Driver().(*qemu.Driver), v.ID, "ticks", func(out string) bool {
			n = qemutest.LastTick(out)
			return n > after
		})
		return n
	}
	counted := ticks(b, 2)

	// Back while it runs: suspended at b, moved, resumed at a, where the guest counts on
	// from where it was (its memory moved with it) and its console answers.
	var steps []string
	report := func(m market.Migration) {
		if s := m.Step + "/" + m.DestStep; len(steps) == 0 || steps[len(steps)-1] != s {
			steps = append(steps, s)
		}
	}
	if _, err := buyer.Buyer.Migrate(ctx, v.ID, market.MigrateRequest{Provider: a.ID().String(), Machine: machines[0].ID, Progress: report}); err != nil {
		t.Fatal(err)
	}
	back := at(a, b, vm.StatusStarted)
	if got := ticks(a, counted); got <= counted {
		t.Fatalf("the guest counted %d at the origin after %d at the destination", got, counted)
	}
	con, err := buyer.Buyer.Console(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := qemutest.VNCSession(ctx, con.Addr, con.Password); err != nil {
		t.Fatalf("the console after the move: %v", err)
	}
	want := []string{"lease/", "begin/", "copy/", "finish/", "commit/", "resume/", "done/"}
	var agent []string
	for _, s := range steps {
		if i := strings.Index(s, "/"); i >= 0 && (len(agent) == 0 || agent[len(agent)-1] != s[:i+1]) {
			agent = append(agent, s[:i+1])
		}
	}
	if strings.Join(agent, " ") != strings.Join(want, " ") || !slices.Contains(steps, "copy/adopt") {
		t.Fatalf("the steps reported: %v", steps)
	}
	// The event log has every step, in order.
	recs, err := buyer.EventLog.Query(node.EventQuery{Kind: node.KindMigrationStep, VM: v.ID.String(), Limit: node.MaxEventLimit})
	if err != nil || len(recs) < len(want) {
		t.Fatalf("migration steps in the event log: %d, %v", len(recs), err)
	}
	if back.State.Version <= there.State.Version {
		t.Fatalf("version %d after coming back, %d before", back.State.Version, there.State.Version)
	}

	// A destination whose migration server is gone after it took the new lease: the move
	// reverts after the origin began it; the VM runs at the origin again, under its old
	// lease, and the destination's capacity is released.
	c := startNode(t, provider, daemon.Options{})
	t.Cleanup(func() { c.VMs.StopAll(context.Background()) })
	if err := buyer.Host().Connect(ctx, peer.AddrInfo{ID: c.ID(), Addrs: c.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	mc, err := c.Provider.AddMachine(ctx, market.DemoMachine(1))
	if err != nil {
		t.Fatal(err)
	}
	testwait.Eventually(t, 20*time.Second, func() error {
		if _, ok := buyer.Book.Get(c.ID(), mc.ID); !ok {
			return errors.New("the offer did not reach the buyer")
		}
		return nil
	})
	c.Host().RemoveStreamHandler(vmmp.ProtocolID)
	if _, err := buyer.Buyer.Migrate(ctx, v.ID, market.MigrateRequest{Provider: c.ID().String(), Machine: mc.ID}); err == nil || !strings.Contains(err.Error(), "reverted") {
		t.Fatalf("a migration to a destination that cannot take it: %v, want reverted", err)
	}
	reverted := at(a, c, vm.StatusStarted)
	if reverted.Lease != back.Lease {
		t.Fatalf("after the revert the lease is %s, was %s", reverted.Lease, back.Lease)
	}

	// A move to where the VM is already is refused before anything happens.
	if _, err := buyer.Buyer.Migrate(ctx, v.ID, market.MigrateRequest{Provider: a.ID().String(), Machine: machines[0].ID}); !errors.Is(err, market.ErrInvalid) {
		t.Fatalf("a migration to where the vm is: %v", err)
	}
	at(a, b, vm.StatusStarted)

	// Suspended there, and stopped back: each arrives in its status; the way back, to the
	// copy kept at the origin, is a difference.
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionSuspend); err != nil {
		t.Fatal(err)
	}
	if _, err := buyer.Buyer.Migrate(ctx, v.ID, market.MigrateRequest{Provider: b.ID().String(), Machine: machines[1].ID}); err != nil {
		t.Fatal(err)
	}
	at(b, a, vm.StatusSuspended)
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionResume); err != nil {
		t.Fatal(err)
	}
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionStop); err != nil {
		t.Fatal(err)
	}
	if _, err := buyer.Buyer.Migrate(ctx, v.ID, market.MigrateRequest{Provider: a.ID().String(), Machine: machines[0].ID}); err != nil {
		t.Fatal(err)
	}
	at(a, b, vm.StatusStopped)
	m, err := buyer.Buyer.MigrationOf(v.ID)
	if err != nil || m.Total == 0 || m.Wire*10 > m.Total {
		t.Fatalf("the move back to the cached copy sent %d bytes for %d: %+v, %v", m.Wire, m.Total, m, err)
	}
	t.Logf("back to the cached copy: %d bytes on the wire for %d", m.Wire, m.Total)
}
