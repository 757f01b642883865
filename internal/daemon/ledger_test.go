package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/ledger"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// TestLowBalance runs a coordinator, a provider and a buyer: a store the buyer cannot pay is
// refused before anything is reserved; after a deposit it is stored and started, runs until a
// running period goes unpaid, and is then stopped by its provider (not deleted) while its
// storage is still charged; a top-up lets it start again.
func TestLowBalance(t *testing.T) {
	fast := func(cfg *node.Config) {
		cfg.Ledger.TickInterval, cfg.Ledger.SyncInterval = 200*time.Millisecond, 300*time.Millisecond
	}
	coord := startNode(t, func(cfg *node.Config) { fast(cfg); cfg.Roles.Coordinator = true }, daemon.Options{})
	addr := fmt.Sprintf("%s/p2p/%s", coord.Host().Addrs()[0], coord.ID())
	settles := func(cfg *node.Config) { fast(cfg); cfg.Ledger.Coordinators = []string{addr} }
	seller := startNode(t, func(cfg *node.Config) {
		settles(cfg)
		cfg.Roles.Provider, cfg.Provider.Accel = true, "tcg"
	}, daemon.Options{})
	t.Cleanup(func() { seller.VMs.StopAll(context.Background()) })
	buyer := startNode(t, settles, daemon.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := buyer.Host().Connect(ctx, peer.AddrInfo{ID: seller.ID(), Addrs: seller.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	// A tiny VM's running period (2 s) costs 3000, its storage period (60 s) 1000.
	terms := market.Terms{SpeedUnit: 500, MemoryUnit: 256, StorageUnit: 1024,
		SpeedPrice: 1000, MemoryPrice: 1000, StoragePrice: 1000, RunningSecs: 2, StorageSecs: 60}
	m, err := seller.Provider.AddMachine(ctx, market.MachineSpec{Name: "metered", Terms: terms,
		Capacity: market.Resources{SpeedBogomips: 4000, MemoryMB: 2048, StorageMB: 8192}})
	if err != nil {
		t.Fatal(err)
	}
	testwait.Eventually(t, 20*time.Second, func() error {
		if _, ok := buyer.Book.Get(seller.ID(), m.ID); !ok {
			return errors.New("the offer did not reach the buyer")
		}
		return nil
	})
	testwait.Eventually(t, 20*time.Second, func() error {
		if cs, err := coord.Coordinator.State().Coordinators(); err != nil || len(cs) == 0 {
			return fmt.Errorf("the coordinator has not started its ledger: %v", err)
		}
		return nil
	})
	store := market.StoreRequest{ConfigName: "tiny", Provider: seller.ID().String(), Machine: m.ID}
	if _, err := buyer.Buyer.Store(ctx, store); !errors.Is(err, market.ErrLowBalance) {
		t.Fatalf("a store with no money: %v, want low balance", err)
	}
	if leases, _ := seller.Provider.Leases(); len(leases) != 0 {
		t.Fatalf("a refused store left %d lease records", len(leases))
	}

	deposit := func(amount market.Money) {
		t.Helper()
		if _, err := coord.Ledger.Own().Append(time.Now(), ledger.TypeDeposit, &ledger.DepositBody{To: buyer.ID(), Amount: amount}); err != nil {
			t.Fatal(err)
		}
		coord.Ledger.Kick()
	}
	deposit(1000 + 2*3000)
	balance := func() market.Money {
		t.Helper()
		a, err := coord.Coordinator.State().Account(buyer.ID())
		if err != nil {
			t.Fatal(err)
		}
		return a.Balance
	}
	testwait.Eventually(t, 20*time.Second, func() error {
		if b := balance(); b != 7000 {
			return fmt.Errorf("balance %s", b)
		}
		return nil
	})
	v, err := buyer.Buyer.Store(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionStart); err != nil {
		t.Fatal(err)
	}
	// Two running periods are paid; the third is not, and the provider stops the VM.
	testwait.Eventually(t, 60*time.Second, func() error {
		rec, err := seller.VMs.Manager().Get(v.ID)
		if err != nil {
			return err
		}
		if rec.State.Status != vm.StatusStopped {
			return fmt.Errorf("vm is %s, balance %s", rec.State.Status, balance())
		}
		return nil
	})
	testwait.Eventually(t, 20*time.Second, func() error {
		ls, err := coord.Coordinator.State().Lease(v.Lease)
		if err != nil {
			return err
		}
		if ls.Status != vm.StatusStopped || ls.Unpaid || ls.Running != 6000 || ls.Storage != 1000 {
			return fmt.Errorf("the ledger's lease: %s unpaid %v, running %s, storage %s", ls.Status, ls.Unpaid, ls.Running, ls.Storage)
		}
		return nil
	})
	if b := balance(); b != 0 {
		t.Fatalf("balance %s after two paid running periods, want 0", b)
	}
	for _, tc := range []struct {
		n    *daemon.Node
		kind string
	}{{buyer, node.KindLedgerLow}, {seller, node.KindLedgerStop}} {
		testwait.Eventually(t, 10*time.Second, func() error {
			recs, err := tc.n.EventLog.Query(node.EventQuery{Kind: tc.kind})
			if err != nil || len(recs) == 0 {
				return fmt.Errorf("no %s record: %v", tc.kind, err)
			}
			return nil
		})
	}
	deposit(10 * market.Unit)
	testwait.Eventually(t, 20*time.Second, func() error {
		if b := balance(); b != 10*market.Unit {
			return fmt.Errorf("balance %s after the top-up", b)
		}
		return nil
	})
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionStart); err != nil {
		t.Fatalf("start after a top-up: %v", err)
	}
	testwait.Eventually(t, 20*time.Second, func() error {
		if b := balance(); b >= 10*market.Unit {
			return fmt.Errorf("no running charge after the start: balance %s", b)
		}
		return nil
	})
}
