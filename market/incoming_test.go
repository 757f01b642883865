package market

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
)

// TestIncomingLease: a destination takes the lease of a VM that is to migrate to it: the
// lease is countersigned and its capacity held, but no VM is created; only its buyer is
// expected with it; it becomes active when the VM arrives, and a cancel releases it.
func TestIncomingLease(t *testing.T) {
	nodes := marketCluster(t, 3, func(i int) *spec {
		if i == 0 {
			return seller(nil)
		}
		return fast()
	})
	p, b, stranger := nodes[0], nodes[1], nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := p.prov.AddMachine(ctx, testSpec("destination", roomy))
	if err != nil {
		t.Fatal(err)
	}
	propose := func(id vm.ID) SignedLease {
		t.Helper()
		l := Lease{ID: NewLeaseID(), VM: id, Buyer: b.ID(), Provider: p.ID(), Machine: m.ID,
			Config: small.Apply(StandardConfigs()[0]), Terms: m.Terms, Created: time.Now().UTC().Truncate(time.Millisecond)}
		l.Quote, _ = l.Terms.Quote(l.Config.Resources())
		sl, err := ProposeLease(l, b.PrivKey())
		if err != nil {
			t.Fatal(err)
		}
		return sl
	}
	ask := func(sl SignedLease) (SignedLease, error) {
		t.Helper()
		var resp storeResponse
		var addrs []string
		for _, a := range p.Host().Addrs() {
			addrs = append(addrs, a.String())
		}
		if err := b.buyer.request(ctx, peerAddr{id: p.ID(), addrs: addrs}, StoreID, time.Minute, storeRequest{Lease: sl.Encode(), Incoming: true}, &resp); err != nil {
			return SignedLease{}, err
		}
		if resp.Error != nil {
			return SignedLease{}, resp.Error.err()
		}
		return DecodeLease(resp.Lease)
	}
	id := vm.NewID()
	full, err := ask(propose(id))
	if err != nil || !full.Complete() {
		t.Fatalf("an incoming lease: %v", err)
	}
	if _, err := p.mgr.Get(id); !errors.Is(err, vm.ErrNotFound) {
		t.Fatalf("an incoming lease created the vm: %v", err)
	}
	l, err := p.prov.Lease(id)
	if err != nil || l.State != LeaseStateIncoming || !l.Holds() {
		t.Fatalf("the destination's record: %+v, %v", l, err)
	}
	if _, err := p.prov.Incoming(id, b.ID()); err != nil {
		t.Fatalf("the buyer is not expected with its vm: %v", err)
	}
	if _, err := p.prov.Incoming(id, stranger.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a stranger is expected with the buyer's vm: %v", err)
	}
	if _, err := p.prov.Incoming(vm.NewID(), b.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another vm is expected: %v", err)
	}
	if _, err := p.prov.ownedLease(id, b.ID()); !errors.Is(err, ErrPending) {
		t.Fatalf("control of a vm that has not arrived: %v, want pending", err)
	}
	// A second incoming lease of the same VM is refused: one agreement per VM.
	if _, err := ask(propose(id)); !errors.Is(err, ErrExists) {
		t.Fatalf("a second incoming lease of the vm: %v", err)
	}
	if err := p.prov.Arrived(id, NewLeaseID().String()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the vm arrived under another lease: %v", err)
	}
	if err := p.prov.Arrived(id, l.Lease.String()); err != nil {
		t.Fatal(err)
	}
	if l, _ := p.prov.Lease(id); l.State != LeaseStateActive {
		t.Fatalf("after arrival: %s", l.State)
	}
	if err := p.prov.Arrived(id, l.Lease.String()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an active lease arrived again: %v", err)
	}
	// Another incoming lease, cancelled: its capacity is released.
	id2 := vm.NewID()
	if _, err := ask(propose(id2)); err != nil {
		t.Fatal(err)
	}
	if err := p.prov.CancelIncoming(t.Context(), id2); err != nil {
		t.Fatal(err)
	}
	if _, err := p.prov.Lease(id2); err == nil {
		t.Fatal("a cancelled incoming lease is still recorded")
	}
	if err := p.prov.CancelIncoming(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if l, _ := p.prov.Lease(id); l.State != LeaseStateActive {
		t.Fatal("a cancel removed an active lease")
	}
}
