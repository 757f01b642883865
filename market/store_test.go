package market

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// small is the configuration the store tests use: tiny, with a disk small enough that
// creating it costs nothing.
var small = ConfigEdit{MemoryMB: 64, DiskMB: 16}

// rawRequest sends one frame of bytes on a new stream and decodes the JSON answer.
func rawRequest(t *testing.T, from, to *node.Node, id protocol.ID, frame []byte, resp any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := from.Host().NewStream(ctx, to.ID(), id)
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	defer st.Close()
	if _, err := st.Write(frame); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	b, err := ReadFrame(bufio.NewReader(st), maxFrameBytes)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, resp) // lenient: any response type carries "error"
}

func framed(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.AppendUvarint(nil, uint64(len(b))), b...)
}

func leaseCount(t *testing.T, p *Provider) int {
	t.Helper()
	ls, err := p.ProviderLeases()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range ls {
		if l.State != LeaseStateEnded {
			n++
		}
	}
	return n
}

// storeCluster is the cluster of TestStoreAndControl: a provider whose VMs are real QEMU VMs
// of the test guest, two buyers, and a bare node that misbehaves. Each case adds the machines
// and stores the VMs it needs, so that any case runs alone.
type storeCluster struct {
	p, b1, b2, x *testNode
	pid          peer.ID
}

func newStoreCluster(t *testing.T) storeCluster {
	g := qemutest.BuildGuest(t)
	nodes := marketCluster(t, 4, func(i int) *spec {
		switch i {
		case 0:
			return seller(&g)
		case 3:
			return nil
		}
		return fast()
	})
	return storeCluster{p: nodes[0], b1: nodes[1], b2: nodes[2], x: nodes[3], pid: nodes[0].ID()}
}

// machine adds a machine of capacity to the provider and waits until the buyers see it.
func (c storeCluster) machine(t *testing.T, name string, capacity Resources) Machine {
	t.Helper()
	m, err := c.p.prov.AddMachine(context.Background(), testSpec(name, capacity))
	if err != nil {
		t.Fatal(err)
	}
	waitOffer(t, []*testNode{c.b1, c.b2}, c.pid, m.ID, 1, 30*time.Second)
	return m
}

// roomy is room for several small VMs.
var roomy = Resources{64000, 65536, 1 << 20}

// store stores a small tiny VM of buyer b on machine m.
func (c storeCluster) store(t *testing.T, b *testNode, m Machine) VM {
	t.Helper()
	v, err := b.buyer.Store(context.Background(), StoreRequest{ConfigName: "tiny", Edit: small, Provider: c.pid.String(), Machine: m.ID})
	if err != nil {
		t.Fatal(err)
	}
	if v.State.Status != vm.StatusStored || v.LeaseState != LeaseStateActive {
		t.Fatalf("stored vm: %+v", v)
	}
	return v
}

// TestStoreAndControl runs the provider side against real buyers and a misbehaving peer:
// capacity race, stale prices, frozen lease terms, ownership, status rules, malformed and
// forged requests, a provider that vanishes, machine removal, and the book across a restart.
func TestStoreAndControl(t *testing.T) {
	c := newStoreCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	p, b1, b2, pid := c.p, c.b1, c.b2, c.pid
	tiny := StandardConfigs()[0]
	need := small.Apply(tiny).Resources()

	t.Run("capacity measured", func(t *testing.T) {
		measured, err := p.prov.HostDefaults(ctx)
		if err != nil || measured.SpeedBogomips <= 0 || measured.MemoryMB <= 0 || measured.StorageMB <= 0 {
			t.Fatalf("host defaults %+v, %v", measured, err)
		}
		m0, err := p.prov.AddMachine(ctx, MachineSpec{Name: "measured"})
		if err != nil || m0.Capacity != measured {
			t.Fatalf("machine without a capacity: %+v, %v; want the measured %+v", m0.Capacity, err, measured)
		}
		if err := p.prov.RemoveMachine(ctx, m0.ID, false); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("capacity race", func(t *testing.T) {
		m1 := c.machine(t, "exactly-one", need)
		vmsBefore := len(p.mgr.List())
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, b := range []*testNode{b1, b2} {
			wg.Go(func() {
				_, errs[i] = b.buyer.Store(ctx, StoreRequest{ConfigName: "tiny", Edit: small, Provider: pid.String(), Machine: m1.ID})
			})
		}
		wg.Wait()
		won := 0
		for i, err := range errs {
			switch {
			case err == nil:
				won++
			case errors.Is(err, ErrNoCapacity):
			default:
				t.Fatalf("buyer %d: %v", i, err)
			}
		}
		if won != 1 {
			t.Fatalf("%d buyers won the last capacity: %v", won, errs)
		}
		views, _ := p.prov.Machines()
		for _, v := range views {
			if v.ID == m1.ID && (v.VMs != 1 || v.Free != (Resources{})) {
				t.Fatalf("machine after the race: %+v", v)
			}
		}
		if got := len(p.mgr.List()) - vmsBefore; got != 1 {
			t.Fatalf("%d vms created for one lease", got)
		}
	})

	t.Run("stale price refused", func(t *testing.T) {
		m := c.machine(t, "stale", roomy)
		matches, err := b1.book.Search(SearchQuery{ConfigName: "tiny", Edit: small, SearchRequest: SearchRequest{Sort: SortTotal}})
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(matches, func(x Match) bool { return x.Machine == m.ID })
		if i < 0 {
			t.Fatalf("search did not find the machine: %+v", matches)
		}
		seen := matches[i].Terms
		edited := seen
		edited.SpeedPrice += 1_000
		if _, err := p.prov.EditMachine(ctx, m.ID, MachineEdit{Terms: &edited}); err != nil {
			t.Fatal(err)
		}
		before, vmsBefore := leaseCount(t, p.prov), len(p.mgr.List())
		_, err = b1.buyer.Store(ctx, StoreRequest{ConfigName: "tiny", Edit: small, Provider: pid.String(), Machine: m.ID, Terms: &seen})
		if !errors.Is(err, ErrStale) {
			t.Fatalf("store at the old price: %v, want ErrStale", err)
		}
		if leaseCount(t, p.prov) != before || len(p.mgr.List()) != vmsBefore {
			t.Fatal("a refused store left a lease or a vm behind")
		}
		mine, _ := b1.buyer.VMs(ctx, false)
		for _, v := range mine {
			if v.Machine == m.ID {
				t.Fatalf("buyer kept a record of a refused store: %+v", v)
			}
		}
	})

	t.Run("price edit keeps the lease", func(t *testing.T) {
		m := c.machine(t, "edited", roomy)
		v := c.store(t, b1, m)
		frozen := v.Terms
		again := frozen
		again.SpeedPrice, again.StoragePrice = 1, 1
		if _, err := p.prov.EditMachine(ctx, m.ID, MachineEdit{Terms: &again}); err != nil {
			t.Fatal(err)
		}
		testwait.Eventually(t, 30*time.Second, func() error {
			if so, ok := b1.book.Get(pid, m.ID); !ok || so.Terms != again {
				return errors.New("the edited offer did not arrive")
			}
			return nil
		})
		now, err := b1.buyer.Status(ctx, v.ID)
		if err != nil {
			t.Fatal(err)
		}
		if now.Terms != frozen || now.Quote != v.Quote {
			t.Fatalf("buyer's lease changed with the price: %+v, want %+v", now.Terms, frozen)
		}
		l, err := p.prov.Lease(v.ID)
		if err != nil {
			t.Fatal(err)
		}
		if sl, err := l.Signed(); err != nil || sl.Terms != frozen {
			t.Fatalf("provider's lease changed with the price: %+v, %v", sl.Terms, err)
		}
	})

	t.Run("non-owner refused", func(t *testing.T) {
		v := c.store(t, b1, c.machine(t, "owned", roomy))
		for _, req := range []controlRequest{{VM: v.ID, Action: vm.ActionStart}, {VM: v.ID, Action: vm.ActionDelete}, {VM: v.ID}, {VM: v.ID, Action: vm.ActionView}} {
			var resp controlResponse
			if err := b2.buyer.request(ctx, peerAddr{id: pid}, ControlID, time.Minute, req, &resp); err != nil {
				t.Fatal(err)
			}
			// Word for word what a VM that does not exist gets: a stranger learns nothing.
			other := vm.NewID()
			var none controlResponse
			if err := b2.buyer.request(ctx, peerAddr{id: pid}, ControlID, time.Minute, controlRequest{VM: other, Action: req.Action}, &none); err != nil {
				t.Fatal(err)
			}
			words := func(e *WireError, id vm.ID) string {
				if e == nil {
					return "no error"
				}
				return e.Code + ": " + strings.ReplaceAll(e.Message, id.String(), "ID")
			}
			if got, want := words(resp.Error, v.ID), words(none.Error, other); got != want || !errors.Is(resp.Error.err(), ErrNotFound) {
				t.Fatalf("%q by another buyer: %q; of a vm that does not exist: %q", req.Action.Verb(), got, want)
			}
		}
		var cresp consoleResponse
		if err := rawRequest(t, b2.Node, p.Node, ConsoleID, framed(t, consoleRequest{VM: v.ID}), &cresp); err != nil {
			t.Fatal(err)
		}
		if err := cresp.Error.err(); !errors.Is(err, ErrNotFound) {
			t.Fatalf("console tunnel by another buyer: %v", err)
		}
		if _, err := b2.buyer.Control(ctx, v.ID, vm.ActionStart); !errors.Is(err, ErrNotFound) {
			t.Fatalf("b2 acting on a vm it has no lease of: %v", err)
		}
		if rec, _ := p.mgr.Get(v.ID); rec.State.Status != vm.StatusStored {
			t.Fatalf("vm changed: %+v", rec.State)
		}
	})

	t.Run("illegal action for the status", func(t *testing.T) {
		v := c.store(t, b1, c.machine(t, "illegal", roomy))
		for _, a := range []vm.Action{vm.ActionSuspend, vm.ActionStop, vm.ActionResume} {
			_, err := b1.buyer.Control(ctx, v.ID, a)
			if !errors.Is(err, vm.ErrIllegalAction) {
				t.Fatalf("%s on a stored vm: %v, want vm.ErrIllegalAction", a.Verb(), err)
			}
			// The buyer reads the words it typed, and what it can do instead.
			if want := "cannot " + a.Verb() + ": the vm is stored (possible now: start, migrate, rm)"; !strings.Contains(err.Error(), want) {
				t.Fatalf("%s on a stored vm: %q, want it to say %q", a.Verb(), err, want)
			}
		}
		if _, err := b1.buyer.Console(ctx, v.ID); !errors.Is(err, vm.ErrIllegalAction) {
			t.Fatalf("console of a stored vm: %v", err)
		}
		if _, err := b1.buyer.Control(ctx, v.ID, vm.ActionMigrate); !errors.Is(err, ErrInvalid) {
			t.Fatalf("an action that is no control action: %v", err)
		}
		if _, err := b1.buyer.ResumeFresh(ctx, v.ID); !errors.Is(err, vm.ErrIllegalAction) {
			t.Fatalf("resume fresh of a stored vm: %v, want vm.ErrIllegalAction", err)
		}
	})

	t.Run("malformed and forged requests", func(t *testing.T) {
		x := c.x
		m := c.machine(t, "attacked", roomy)
		v := c.store(t, b1, m)
		leasesBefore, vmsBefore := leaseCount(t, p.prov), len(p.mgr.List())
		proposal := func(edit func(*Lease)) []byte {
			l := Lease{ID: NewLeaseID(), VM: vm.NewID(), Buyer: x.ID(), Provider: pid, Machine: m.ID,
				Config: small.Apply(tiny), Terms: m.Terms, Created: time.Now().UTC()}
			if edit != nil {
				edit(&l)
			}
			l.Quote, _ = l.Terms.Quote(l.Config.Resources())
			body, _ := json.Marshal(l)
			sig, _ := x.PrivKey().Sign(append([]byte(leaseDomain), body...))
			return framed(t, storeRequest{Lease: EncodeEnvelope(leaseMagic, body, sig, nil)})
		}
		huge := binary.AppendUvarint(nil, 1<<20)
		for _, tc := range []struct {
			name  string
			id    protocol.ID
			frame []byte
			want  error
		}{
			{"store: not json", StoreID, append(binary.AppendUvarint(nil, 5), "{nope"...), ErrMalformed},
			{"store: oversized frame", StoreID, huge, ErrMalformed},
			{"store: lease not an envelope", StoreID, framed(t, storeRequest{Lease: []byte("hello")}), ErrMalformed},
			{"store: lease of a newer format", StoreID, framed(t, storeRequest{Lease: []byte("VL\x02later")}), ErrUnknownVersion},
			{"store: buyer is someone else", StoreID, proposal(func(l *Lease) { l.Buyer = b1.ID() }), ErrForged},
			{"store: another vm under a lease id in use", StoreID, proposal(func(l *Lease) { l.ID = v.Lease }), ErrExists},
			{"store: for another provider", StoreID, proposal(func(l *Lease) { l.Provider = b1.ID() }), ErrInvalid},
			{"store: dated an hour ago", StoreID, proposal(func(l *Lease) { l.Created = l.Created.Add(-time.Hour) }), ErrExpired},
			{"store: unknown machine", StoreID, proposal(func(l *Lease) { l.Machine = MachineID{0xee} }), ErrNotFound},
			{"store: free of charge", StoreID, proposal(func(l *Lease) { l.Terms.SpeedPrice = 0 }), ErrStale},
			{"store: too large", StoreID, proposal(func(l *Lease) { l.Config.MemoryMB = 1 << 20 }), ErrNoCapacity},
			{"control: unknown action", ControlID, framed(t, map[string]any{"vm": v.ID, "action": "reboot"}), ErrMalformed},
			{"control: not a control action", ControlID, framed(t, controlRequest{VM: v.ID, Action: vm.ActionMigrationDone}), ErrNotFound},
			{"control: fresh start", ControlID, framed(t, controlRequest{VM: v.ID, Action: vm.ActionStart, Fresh: true}), ErrMalformed},
			{"control: unknown vm", ControlID, framed(t, controlRequest{VM: vm.NewID(), Action: vm.ActionStart}), ErrNotFound},
			{"control: oversized", ControlID, huge, ErrMalformed},
			{"console: not json", ConsoleID, append(binary.AppendUvarint(nil, 1), '['), ErrMalformed},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var resp errorReply
				if err := rawRequest(t, x.Node, p.Node, tc.id, tc.frame, &resp); err != nil {
					t.Fatalf("no error answer: %v", err)
				}
				if err := resp.Error.err(); !errors.Is(err, tc.want) {
					t.Fatalf("answer %v, want %v", err, tc.want)
				}
			})
		}
		// The owner asking for an action the control protocol does not carry is refused by
		// the provider, and nothing changes.
		var resp controlResponse
		if err := b1.buyer.request(ctx, peerAddr{id: pid}, ControlID, time.Minute, controlRequest{VM: v.ID, Action: vm.ActionMigrationDone}, &resp); err != nil {
			t.Fatal(err)
		}
		if err := resp.Error.err(); !errors.Is(err, vm.ErrIllegalAction) {
			t.Fatalf("migrationdone over control: %v, want vm.ErrIllegalAction", err)
		}
		if leaseCount(t, p.prov) != leasesBefore || len(p.mgr.List()) != vmsBefore {
			t.Fatal("a refused request left a lease or a vm behind")
		}
		if rec, _ := p.mgr.Get(v.ID); rec.State != v.State {
			t.Fatalf("the attacked vm changed: %+v, was %+v", rec.State, v.State)
		}
	})

	t.Run("provider vanishes mid-request", func(t *testing.T) {
		// A fresh identity poses as a provider with a valid offer, then drops every store
		// request midway.
		x := marketCluster(t, 1, func(int) *spec { return nil })[0]
		if err := b1.Host().Connect(ctx, peer.AddrInfo{ID: x.ID(), Addrs: x.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
		o := testOffer(x.ID())
		o.Images, o.Addrs = nil, nil
		o.Issued, o.Expires = time.Now().UTC(), time.Now().UTC().Add(time.Minute)
		so, err := SignOffer(o, x.PrivKey())
		if err != nil {
			t.Fatal(err)
		}
		if !b1.book.accept(so) {
			t.Fatal("offer not taken")
		}
		x.Host().SetStreamHandler(StoreID, func(st network.Stream) {
			ReadFrame(bufio.NewReader(st), maxFrameBytes)
			st.Reset()
		})
		_, err = b1.buyer.Store(ctx, StoreRequest{ConfigName: "tiny", Edit: small, Provider: x.ID().String(), Machine: o.Machine})
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("store on a vanishing provider: %v, want ErrUnavailable", err)
		}
		mine, _ := b1.buyer.VMs(ctx, false)
		var pending *VM
		for i, v := range mine {
			if v.Provider == x.ID() {
				if v.LeaseState != LeaseStatePending {
					t.Fatalf("unconfirmed store recorded as %s", v.LeaseState)
				}
				pending = &mine[i]
			}
		}
		if pending == nil {
			t.Fatal("no pending record of the unanswered store")
		}
		// The provider comes back and does not know the VM: the pending record goes.
		x.Host().SetStreamHandler(ControlID, func(st network.Stream) {
			ReadFrame(bufio.NewReader(st), maxFrameBytes)
			WriteJSON(st, errorReply{Error: toWire(ErrNotFound)})
			st.Close()
		})
		if _, err := b1.buyer.recoverLease(ctx, pending.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("recover: %v", err)
		}
		mine, _ = b1.buyer.VMs(ctx, false)
		if slices.ContainsFunc(mine, func(v VM) bool { return v.Provider == x.ID() }) {
			t.Fatal("the pending record survived the provider's answer")
		}
	})

	t.Run("machine removal", func(t *testing.T) {
		m := c.machine(t, "removed", roomy)
		v := c.store(t, b1, m)
		if err := p.prov.RemoveMachine(ctx, m.ID, false); !errors.Is(err, ErrMachineInUse) {
			t.Fatalf("remove a machine storing a vm: %v, want ErrMachineInUse", err)
		}
		if err := p.prov.RemoveMachine(ctx, m.ID, true); err != nil {
			t.Fatal(err)
		}
		if _, err := p.mgr.Get(v.ID); !errors.Is(err, vm.ErrNotFound) {
			t.Fatalf("evicted vm still there: %v", err)
		}
		testwait.Eventually(t, 30*time.Second, func() error {
			mine, _ := b1.buyer.VMs(ctx, false)
			i := slices.IndexFunc(mine, func(x VM) bool { return x.ID == v.ID })
			if i < 0 || mine[i].LeaseState != LeaseStateEnded || mine[i].Note == "" {
				return errors.New("the buyer was not told its lease ended")
			}
			return nil
		})
		testwait.Eventually(t, 30*time.Second, func() error {
			if _, ok := b1.book.Get(pid, m.ID); ok {
				return errors.New("the withdrawn offer is still live")
			}
			return nil
		})
	})

	t.Run("stalled guest reported to its owner", func(t *testing.T) {
		// A bare configuration has nothing on its disk to boot: QEMU runs, the guest never
		// does. The provider sees it (the node's power check calls CheckPower) and the buyer
		// is told when it asks for the VM's status.
		v := c.store(t, b1, c.machine(t, "stalled", roomy))
		if _, err := b1.buyer.Control(ctx, v.ID, vm.ActionStart); err != nil {
			t.Fatal(err)
		}
		testwait.Eventually(t, 30*time.Second, func() error {
			if _, err := p.mgr.CheckPower(ctx); err != nil {
				return err
			}
			got, err := b1.buyer.Status(ctx, v.ID)
			if err != nil {
				return err
			}
			if got.State.Status != vm.StatusStarted || !strings.Contains(got.Health, "the guest may not be running") {
				return fmt.Errorf("buyer sees the stalled vm as %s, health %q", got.State.Status, got.Health)
			}
			mine, _ := b1.buyer.VMs(ctx, false)
			if i := slices.IndexFunc(mine, func(x VM) bool { return x.ID == v.ID }); i < 0 || mine[i].Health == "" {
				return errors.New("the buyer's list does not keep the warning")
			}
			return nil
		})
		// Stopping clears it.
		got, err := b1.buyer.Control(ctx, v.ID, vm.ActionStop)
		if err != nil || got.Health != "" {
			t.Fatalf("stopped vm: health %q, %v", got.Health, err)
		}
	})

	t.Run("events", func(t *testing.T) {
		pev, bev := p.Events().Subscribe(0), b1.Events().Subscribe(0)
		defer pev.Close()
		defer bev.Close()
		m := c.machine(t, "evented", roomy)
		v := c.store(t, b1, m)
		for _, a := range []vm.Action{vm.ActionStart, vm.ActionStop, 0, vm.ActionDelete} {
			if a == 0 { // a status asked that changed nothing is no event
				if _, err := b1.buyer.Status(ctx, v.ID); err != nil {
					t.Fatalf("status: %v", err)
				}
				continue
			}
			if _, err := b1.buyer.Control(ctx, v.ID, a); err != nil {
				t.Fatalf("%s: %v", a.Verb(), err)
			}
		}
		if err := p.prov.RemoveMachine(ctx, m.ID, false); err != nil {
			t.Fatal(err)
		}
		// What each node's subscribers learnt, in order, about this machine and this vm.
		seen := func(sub *node.Subscription) string {
			var out []string
			for {
				ev, ok := sub.Next()
				if !ok {
					return strings.Join(out, " ")
				}
				switch e := ev.(type) {
				case MachineChanged:
					if e.Machine.ID == m.ID {
						out = append(out, "machine-"+string(e.Change))
					}
				case LeaseCreated:
					if e.Lease.VM == v.ID && e.Lease.Complete() {
						out = append(out, "lease-created")
					}
				case LeaseEnded:
					if e.VM == v.ID && e.Lease == v.Lease && e.Buyer == b1.ID() && e.Provider == pid {
						out = append(out, "lease-ended")
					}
				case vm.StatusChanged:
					if e.VM == v.ID && e.Owner == b1.ID().String() && e.Lease == v.Lease.String() && !e.Time.IsZero() {
						out = append(out, fmt.Sprintf("%s/%d", e.State.Status, e.State.Version))
					}
				case VMChanged:
					if e.VM.ID == v.ID {
						out = append(out, "vm:"+e.VM.LeaseState+":"+e.VM.State.Status.String())
					}
				}
			}
		}
		if got, want := seen(pev), "machine-added stored/1 lease-created started/2 stopped/3 deleted/4 lease-ended machine-removed"; got != want {
			t.Fatalf("provider's events:\n got %s\nwant %s", got, want)
		}
		if got, want := seen(bev), "vm:pending:registered vm:active:stored lease-created vm:active:started vm:active:stopped vm:ended:deleted lease-ended"; got != want {
			t.Fatalf("buyer's events:\n got %s\nwant %s", got, want)
		}
	})

	t.Run("book survives a restart", func(t *testing.T) {
		m := c.machine(t, "remembered", roomy)
		alone := func(cfg *node.Config) { cfg.Network.Bootstrap = nil } // what it knows comes from its store
		b2 := b2.restart(t, *fast(), alone)
		if _, ok := b2.book.Get(pid, m.ID); !ok {
			t.Fatalf("restarted node's book is missing the offer: %+v", b2.book.Offers())
		}
	})
}

// TestIdleStreamsDenyNothing: nine strangers each hold every control and store stream a peer
// may open to a provider, and send nothing. The owner of a VM there still controls it, and a
// buyer still stores one; the strangers' streams are reset once their first frame is late.
func TestIdleStreamsDenyNothing(t *testing.T) {
	const strangers = 9
	nodes := marketCluster(t, 3+strangers, func(i int) *spec {
		switch {
		case i == 0:
			return seller(nil)
		case i < 3:
			return fast()
		}
		return nil
	})
	p, owner, buyer := nodes[0], nodes[1], nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := p.prov.AddMachine(ctx, testSpec("held", roomy))
	if err != nil {
		t.Fatal(err)
	}
	waitOffer(t, []*testNode{owner, buyer}, p.ID(), m.ID, 1, 30*time.Second)
	v, err := owner.buyer.Store(ctx, StoreRequest{ConfigName: "tiny", Edit: small, Provider: p.ID().String(), Machine: m.ID})
	if err != nil {
		t.Fatal(err)
	}

	var held []network.Stream
	limits := map[protocol.ID]int{}
	for _, l := range Protocols(node.DefaultMarketConfig()) {
		limits[l.Protocol] = l.StreamsPerPeer
	}
	for _, x := range nodes[3:] {
		if err := x.Host().Connect(ctx, peer.AddrInfo{ID: p.ID(), Addrs: p.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
		for _, id := range []protocol.ID{ControlID, StoreID} {
			for range limits[id] {
				st, err := x.Host().NewStream(ctx, p.ID(), id)
				if err != nil {
					t.Fatalf("a stranger's stream %d of %s: %v", len(held), id, err)
				}
				held = append(held, st)
			}
		}
	}
	t.Logf("%d idle streams held by %d strangers", len(held), strangers)
	// Streams open lazily: a byte read proves the provider accepted each one.
	for _, st := range held {
		st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		st.Read(make([]byte, 1))
	}

	t0 := time.Now()
	if got, err := owner.buyer.Status(ctx, v.ID); err != nil || got.State.Status != vm.StatusStored {
		t.Fatalf("the owner's status while strangers hold streams: %+v, %v", got.State, err)
	}
	if _, err := buyer.buyer.Store(ctx, StoreRequest{ConfigName: "tiny", Edit: small, Provider: p.ID().String(), Machine: m.ID}); err != nil {
		t.Fatalf("a buyer's store while strangers hold streams: %v", err)
	}
	t.Logf("owner's status and a buyer's store answered in %v", time.Since(t0).Round(time.Millisecond))

	// The silent streams are reset by the provider, not kept.
	testwait.Eventually(t, DefaultFirstFrame+10*time.Second, func() error {
		open := 0
		for _, st := range held {
			st.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			if _, err := st.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
				open++
			}
		}
		if open > 0 {
			return fmt.Errorf("%d of %d silent streams still open", open, len(held))
		}
		return nil
	})
}

// TestSquattingIsBounded: a stranger with no history cannot take a provider's machine: it may
// hold at most the provider's share of a machine and its number of VMs, after which an honest
// buyer still stores; ended leases' records are compacted after their retention.
func TestSquattingIsBounded(t *testing.T) {
	nodes := marketCluster(t, 3, func(i int) *spec {
		if i == 0 {
			s := seller(nil)
			s.Seller.MaxLeasesPerBuyer, s.Seller.BuyerSharePercent = 3, 50
			s.Seller.LeaseRetention = 200 * time.Millisecond
			return s
		}
		return fast()
	})
	p, squatter, honest := nodes[0], nodes[1], nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	big, err := p.prov.AddMachine(ctx, testSpec("big", Resources{8000, 4096, 1 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	many, err := p.prov.AddMachine(ctx, testSpec("many", roomy))
	if err != nil {
		t.Fatal(err)
	}
	waitOffer(t, []*testNode{squatter, honest}, p.ID(), big.ID, 1, 30*time.Second)
	waitOffer(t, []*testNode{squatter, honest}, p.ID(), many.ID, 1, 30*time.Second)
	store := func(b *testNode, m Machine, memoryMB int64) (VM, error) {
		return b.buyer.Store(ctx, StoreRequest{ConfigName: "tiny", Edit: ConfigEdit{MemoryMB: memoryMB, DiskMB: 16}, Provider: p.ID().String(), Machine: m.ID})
	}

	// A share: half of big's 4096 MB is 2048 MB; the third 1024 MB is refused.
	for i := range 2 {
		if _, err := store(squatter, big, 1024); err != nil {
			t.Fatalf("squatter's store %d: %v", i, err)
		}
	}
	_, err = store(squatter, big, 1024)
	if !errors.Is(err, ErrBuyerLimit) || !strings.Contains(err.Error(), "50%") {
		t.Fatalf("a third of big: %v, want ErrBuyerLimit naming the share", err)
	}
	if _, err := store(honest, big, 1024); err != nil {
		t.Fatalf("an honest buyer next to the squatter: %v", err)
	}
	// A count: two VMs already, one more on another machine, then no more.
	v, err := store(squatter, many, 64)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store(squatter, many, 64); !errors.Is(err, ErrBuyerLimit) {
		t.Fatalf("a fourth vm: %v, want ErrBuyerLimit", err)
	}

	// An ended lease frees the count at once and its record goes after the retention.
	if _, err := squatter.buyer.Control(ctx, v.ID, vm.ActionDelete); err != nil {
		t.Fatal(err)
	}
	if _, err := store(squatter, many, 64); err != nil {
		t.Fatalf("after deleting one: %v", err)
	}
	testwait.Eventually(t, 10*time.Second, func() error {
		if _, err := p.prov.Lease(v.ID); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("the ended lease's record is still kept: %v", err)
		}
		return nil
	})
}
