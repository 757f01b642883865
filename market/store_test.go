package market

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/virtuoso-market/virtuoso/internal/nodetest"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// qemuProvider is a provider's real VM stack: the QEMU driver and the manager over the
// node's inventory, filled in when the node starts.
type qemuProvider struct {
	drv *qemu.Driver
	mgr *vm.Manager
}

// providerOptions are the options of a provider whose VMs are real QEMU VMs of the test
// guest, which it also holds as a preconfigured image.
func providerOptions(t *testing.T, g qemutest.Guest, hold *qemuProvider) Options {
	o := fastOptions()
	o.Provider = true
	o.Manager = func(n *node.Node) (*vm.Manager, error) {
		d := qemutest.NewDriver(t, qemutest.DriverConfig(t, g))
		inv, err := vm.OpenInventory(n.Store().Space("vm/inventory/"))
		if err != nil {
			return nil, err
		}
		mgr, err := vm.NewManager(vm.ManagerConfig{Driver: d, Inventory: inv})
		if err != nil {
			return nil, err
		}
		hold.drv, hold.mgr = d, mgr
		return mgr, nil
	}
	o.Images = []Image{{Name: "busybox", OS: "linux", Disk: g.Disk, MemoryMB: 128,
		Boot: &vm.KernelBoot{Kernel: g.Kernel, Initrd: g.Initrd, Cmdline: g.Cmdline}}}
	return o
}

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
	b, err := readFrame(bufio.NewReader(st), maxFrameBytes)
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

func leaseCount(t *testing.T, p *Service) int {
	t.Helper()
	ls, err := p.ProviderLeases()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range ls {
		if l.State != leaseEnded {
			n++
		}
	}
	return n
}

// TestStoreAndControl runs the provider side against real buyers and a misbehaving peer:
// capacity race, stale prices, frozen lease terms, ownership, status rules, malformed and
// forged requests, a provider that vanishes, machine removal, and the book across a restart.
func TestStoreAndControl(t *testing.T) {
	g := qemutest.BuildGuest(t)
	var stack qemuProvider
	const P, B1, B2, X = 0, 1, 2, 3
	nodes, svcs := marketCluster(t, 4, func(i int) *Options {
		switch i {
		case P:
			o := providerOptions(t, g, &stack)
			return &o
		case X:
			return nil
		}
		o := fastOptions()
		return &o
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, b1, b2 := svcs[P], svcs[B1], svcs[B2]
	pid := nodes[P].ID()
	tiny := StandardConfigs()[0]
	need := small.Apply(tiny).Resources()

	measured, err := p.HostDefaults(ctx)
	if err != nil || measured.SpeedBogomips <= 0 || measured.MemoryMB <= 0 || measured.StorageMB <= 0 {
		t.Fatalf("host defaults %+v, %v", measured, err)
	}
	m0, err := p.AddMachine(ctx, MachineSpec{Name: "measured"})
	if err != nil || m0.Capacity != measured {
		t.Fatalf("machine without a capacity: %+v, %v; want the measured %+v", m0.Capacity, err, measured)
	}
	if err := p.RemoveMachine(ctx, m0.ID, false); err != nil {
		t.Fatal(err)
	}
	m1, err := p.AddMachine(ctx, testSpec("exactly-one", need))
	if err != nil {
		t.Fatal(err)
	}
	m2, err := p.AddMachine(ctx, testSpec("roomy", Resources{64000, 65536, 1 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	buyers := []*Service{b1, b2}
	waitOffer(t, buyers, pid, m1.ID, 1, 30*time.Second)
	waitOffer(t, buyers, pid, m2.ID, 1, 30*time.Second)

	t.Run("capacity race", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, b := range buyers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = b.Store(ctx, StoreRequest{ConfigName: "tiny", Edit: small, Provider: pid.String(), Machine: m1.ID})
			}()
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
		views, _ := p.Machines()
		for _, v := range views {
			if v.ID == m1.ID && (v.VMs != 1 || v.Free != (Resources{})) {
				t.Fatalf("machine after the race: %+v", v)
			}
		}
		if got := len(stack.mgr.List()); got != 1 {
			t.Fatalf("%d vms created for one lease", got)
		}
	})

	var vmID vm.ID // b1's VM on m2, stored below
	t.Run("stale price refused", func(t *testing.T) {
		matches, err := b1.Search(SearchQuery{ConfigName: "tiny", Edit: small, SearchRequest: SearchRequest{Sort: SortTotal}})
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(matches, func(m Match) bool { return m.Machine == m2.ID })
		if i < 0 {
			t.Fatalf("search did not find the roomy machine: %+v", matches)
		}
		seen := matches[i].Terms
		edited := seen
		edited.SpeedPrice += 1_000
		if _, err := p.EditMachine(ctx, m2.ID, MachineEdit{Terms: &edited}); err != nil {
			t.Fatal(err)
		}
		before, vmsBefore := leaseCount(t, p), len(stack.mgr.List())
		_, err = b1.Store(ctx, StoreRequest{ConfigName: "tiny", Edit: small, Provider: pid.String(), Machine: m2.ID, Terms: &seen})
		if !errors.Is(err, ErrStale) {
			t.Fatalf("store at the old price: %v, want ErrStale", err)
		}
		if leaseCount(t, p) != before || len(stack.mgr.List()) != vmsBefore {
			t.Fatal("a refused store left a lease or a vm behind")
		}
		mine, _ := b1.VMs(ctx, false)
		for _, v := range mine {
			if v.Machine == m2.ID {
				t.Fatalf("buyer kept a record of a refused store: %+v", v)
			}
		}
	})

	t.Run("price edit keeps the lease", func(t *testing.T) {
		waitFor(t, 30*time.Second, func() string { return "edited offer did not arrive" }, func() bool {
			so, ok := b1.book.Get(pid, m2.ID, time.Now())
			return ok && so.Terms.SpeedPrice == testTerms().SpeedPrice+1_000
		})
		v, err := b1.Store(ctx, StoreRequest{ConfigName: "tiny", Edit: small, Provider: pid.String(), Machine: m2.ID})
		if err != nil {
			t.Fatal(err)
		}
		vmID = v.ID
		if v.State.Status != vm.StatusStored || v.LeaseState != LeaseActive {
			t.Fatalf("stored vm: %+v", v)
		}
		frozen := v.Terms
		again := frozen
		again.SpeedPrice, again.StoragePrice = 1, 1
		if _, err := p.EditMachine(ctx, m2.ID, MachineEdit{Terms: &again}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, func() string { return "second edit did not arrive" }, func() bool {
			so, ok := b1.book.Get(pid, m2.ID, time.Now())
			return ok && so.Terms == again
		})
		now, err := b1.Control(ctx, vmID, ActStatus)
		if err != nil {
			t.Fatal(err)
		}
		if now.Terms != frozen || now.Quote != v.Quote {
			t.Fatalf("buyer's lease changed with the price: %+v, want %+v", now.Terms, frozen)
		}
		pls, _ := p.ProviderLeases()
		for _, pl := range pls {
			if pl.Lease.VM == vmID && pl.Lease.Terms != frozen {
				t.Fatalf("provider's lease changed with the price: %+v", pl.Lease.Terms)
			}
		}
	})

	t.Run("non-owner refused", func(t *testing.T) {
		for _, action := range []string{ActStart, ActDelete, ActStatus, ActConsole} {
			var resp controlResponse
			if err := b2.request(ctx, peerAddr{id: pid}, ControlID, time.Minute, controlRequest{VM: vmID, Action: action}, &resp); err != nil {
				t.Fatal(err)
			}
			if err := resp.Error.err(); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("%s by another buyer: %v, want ErrNotOwner", action, err)
			}
		}
		var cresp consoleResponse
		if err := rawRequest(t, nodes[B2], nodes[P], ConsoleID, framed(t, consoleRequest{VM: vmID}), &cresp); err != nil {
			t.Fatal(err)
		}
		if err := cresp.Error.err(); !errors.Is(err, ErrNotOwner) {
			t.Fatalf("console tunnel by another buyer: %v", err)
		}
		if _, err := b2.Control(ctx, vmID, ActStart); !errors.Is(err, ErrNotFound) {
			t.Fatalf("b2 acting on a vm it has no lease of: %v", err)
		}
		if rec, _ := stack.mgr.Get(vmID); rec.State.Status != vm.StatusStored {
			t.Fatalf("vm changed: %+v", rec.State)
		}
	})

	t.Run("illegal action for the status", func(t *testing.T) {
		for _, action := range []string{ActSuspend, ActStop, ActResume} {
			if _, err := b1.Control(ctx, vmID, action); !errors.Is(err, vm.ErrIllegalAction) {
				t.Fatalf("%s on a stored vm: %v, want vm.ErrIllegalAction", action, err)
			}
		}
		if _, err := b1.Console(ctx, vmID); !errors.Is(err, vm.ErrIllegalAction) {
			t.Fatalf("console of a stored vm: %v", err)
		}
		if _, err := b1.Control(ctx, vmID, "reboot"); !errors.Is(err, ErrInvalid) {
			t.Fatalf("unknown action: %v", err)
		}
	})

	t.Run("malformed and forged requests", func(t *testing.T) {
		x := nodes[X]
		leasesBefore, vmsBefore := leaseCount(t, p), len(stack.mgr.List())
		proposal := func(edit func(*Lease), key func() []byte) []byte {
			l := Lease{ID: NewLeaseID(), VM: vm.NewID(), Buyer: x.ID(), Provider: pid, Machine: m2.ID,
				Config: small.Apply(tiny), Terms: again(t, p, m2.ID), Created: time.Now().UTC()}
			if edit != nil {
				edit(&l)
			}
			l.Quote, _ = l.Terms.Quote(l.Config.Resources())
			body, _ := json.Marshal(l)
			sig, _ := x.PrivKey().Sign(append([]byte(leaseDomain), body...))
			return framed(t, storeRequest{Lease: encodeEnvelope(leaseMagic, body, sig, nil)})
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
			{"store: buyer is someone else", StoreID, proposal(func(l *Lease) { l.Buyer = nodes[B1].ID() }, nil), ErrForged},
			{"store: for another provider", StoreID, proposal(func(l *Lease) { l.Provider = nodes[B1].ID() }, nil), ErrInvalid},
			{"store: dated an hour ago", StoreID, proposal(func(l *Lease) { l.Created = l.Created.Add(-time.Hour) }, nil), ErrExpired},
			{"store: unknown machine", StoreID, proposal(func(l *Lease) { l.Machine = MachineID{0xee} }, nil), ErrNotFound},
			{"store: free of charge", StoreID, proposal(func(l *Lease) { l.Terms.SpeedPrice = 0 }, nil), ErrStale},
			{"store: too large", StoreID, proposal(func(l *Lease) { l.Config.MemoryMB = 1 << 20 }, nil), ErrNoCapacity},
			{"control: unknown action", ControlID, framed(t, map[string]any{"vm": vmID, "action": "reboot"}), ErrMalformed},
			{"control: unknown field", ControlID, framed(t, map[string]any{"vm": vmID, "action": "start", "as": "root"}), ErrMalformed},
			{"control: unknown vm", ControlID, framed(t, controlRequest{VM: vm.NewID(), Action: ActStart}), ErrNotFound},
			{"control: oversized", ControlID, huge, ErrMalformed},
			{"console: not json", ConsoleID, append(binary.AppendUvarint(nil, 1), '['), ErrMalformed},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var resp errorReply
				if err := rawRequest(t, x, nodes[P], tc.id, tc.frame, &resp); err != nil {
					t.Fatalf("no error answer: %v", err)
				}
				if err := resp.Error.err(); !errors.Is(err, tc.want) {
					t.Fatalf("answer %v, want %v", err, tc.want)
				}
			})
		}
		if leaseCount(t, p) != leasesBefore || len(stack.mgr.List()) != vmsBefore {
			t.Fatal("a refused request left a lease or a vm behind")
		}
	})

	t.Run("provider vanishes mid-request", func(t *testing.T) {
		x := nodes[X]
		// x poses as a provider with a valid offer, then drops every store request midway.
		o := testOffer(x.ID())
		o.Images, o.Addrs = nil, nil
		o.Issued, o.Expires = time.Now().UTC(), time.Now().UTC().Add(time.Minute)
		so, err := SignOffer(o, x.PrivKey())
		if err != nil {
			t.Fatal(err)
		}
		if !b1.accept(so) {
			t.Fatal("offer not taken")
		}
		x.Host().SetStreamHandler(StoreID, func(st network.Stream) {
			readFrame(bufio.NewReader(st), maxFrameBytes)
			st.Reset()
		})
		_, err = b1.Store(ctx, StoreRequest{ConfigName: "tiny", Edit: small, Provider: x.ID().String(), Machine: o.Machine})
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("store on a vanishing provider: %v, want ErrUnavailable", err)
		}
		mine, _ := b1.VMs(ctx, false)
		var pending *VM
		for i, v := range mine {
			if v.Provider == x.ID() {
				if v.LeaseState != LeasePending {
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
			readFrame(bufio.NewReader(st), maxFrameBytes)
			writeJSON(st, errorReply{Error: toWire(ErrNotFound)})
			st.Close()
		})
		if _, err := b1.recoverLease(ctx, pending.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("recover: %v", err)
		}
		mine, _ = b1.VMs(ctx, false)
		if slices.ContainsFunc(mine, func(v VM) bool { return v.Provider == x.ID() }) {
			t.Fatal("the pending record survived the provider's answer")
		}
	})

	t.Run("machine removal", func(t *testing.T) {
		if err := p.RemoveMachine(ctx, m2.ID, false); !errors.Is(err, ErrMachineInUse) {
			t.Fatalf("remove a machine storing a vm: %v, want ErrMachineInUse", err)
		}
		if err := p.RemoveMachine(ctx, m2.ID, true); err != nil {
			t.Fatal(err)
		}
		if _, err := stack.mgr.Get(vmID); !errors.Is(err, vm.ErrNotFound) {
			t.Fatalf("evicted vm still there: %v", err)
		}
		waitFor(t, 30*time.Second, func() string { return "the buyer was not told its lease ended" }, func() bool {
			mine, _ := b1.VMs(ctx, false)
			i := slices.IndexFunc(mine, func(v VM) bool { return v.ID == vmID })
			return i >= 0 && mine[i].LeaseState == LeaseEnded && mine[i].Note != ""
		})
		waitFor(t, 30*time.Second, func() string { return "the withdrawn offer is still live" }, func() bool {
			_, ok := b1.book.Get(pid, m2.ID, time.Now())
			return !ok
		})
	})

	t.Run("book survives a restart", func(t *testing.T) {
		n := nodes[B2]
		home, cfg := n.Home(), n.Config()
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		cfg.Network.Bootstrap = nil // alone: whatever it knows comes from its store
		svc := New(fastOptions())
		nodetest.Start(t, home, cfg, node.Options{Services: []node.Service{svc}})
		if _, ok := svc.book.Get(pid, m1.ID, time.Now()); !ok {
			t.Fatalf("restarted node's book is missing the offer: %+v", svc.Offers())
		}
	})
}

// again returns machine id's current terms on provider p.
func again(t *testing.T, p *Service, id MachineID) Terms {
	m, err := p.machine(id)
	if err != nil {
		t.Fatal(err)
	}
	return m.Terms
}
