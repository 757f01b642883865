package daemon_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
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
	a := startNode(t, provider, daemon.Options{})
	b := startNode(t, provider, daemon.Options{})
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
	v, err := buyer.Buyer.Store(ctx, market.StoreRequest{ConfigName: "tiny", Provider: a.ID().String(), Machine: machines[0].ID})
	if err != nil {
		t.Fatal(err)
	}
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

	// Back while it runs: suspended at b, moved, resumed at a.
	if _, err := buyer.Buyer.Migrate(ctx, v.ID, market.MigrateRequest{Provider: a.ID().String(), Machine: machines[0].ID}); err != nil {
		t.Fatal(err)
	}
	back := at(a, b, vm.StatusStarted)
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
}
