package ledger

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/nodetest"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

type ledgerNode struct {
	n      *node.Node
	own    *Log
	coord  *Coordinator
	mirror *Mirror
}

// TestCoordinatorFailover: three coordinators on loopback and a node pushing a stream of
// entries; the leader is shut down without handing over mid-stream. A new leader takes over,
// the node finds it, every entry is taken exactly once, and the replicas agree.
func TestCoordinatorFailover(t *testing.T) {
	const coordinators, transfers = 3, 150
	nodes := make([]*ledgerNode, coordinators+1)
	var first peer.AddrInfo
	nodetest.Cluster(t, coordinators+1, nodetest.Options{
		Protocols: Protocols(),
		Services: func(i int, n *node.Node) []node.Service {
			own, err := OpenLog(n.Store().Space("ledger/log/"), n.PrivKey())
			if err != nil {
				t.Fatal(err)
			}
			ln := &ledgerNode{n: n, own: own}
			var coords []peer.AddrInfo
			if i == 0 {
				first = peer.AddrInfo{ID: n.ID()}
			} else {
				coords = []peer.AddrInfo{{ID: first.ID, Addrs: nodes[0].n.Host().Addrs()}}
			}
			if i < coordinators {
				ln.coord = NewCoordinator(n, own, CoordinatorOptions{Bootstrap: i == 0, TickInterval: 300 * time.Millisecond})
			}
			if i == 0 {
				coords = []peer.AddrInfo{{ID: n.ID()}}
			}
			ln.mirror = NewMirror(n, own, MirrorOptions{Coordinators: coords, Local: ln.coord, Interval: 300 * time.Millisecond})
			nodes[i] = ln
			var svcs []node.Service
			if ln.coord != nil {
				svcs = append(svcs, ln.coord)
			}
			return append(svcs, ln.mirror)
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	leader := nodes[0]
	testwait.Eventually(t, 30*time.Second, func() error {
		cs, err := leader.coord.State().Coordinators()
		if err != nil || len(cs) != 1 {
			return fmt.Errorf("genesis not applied: %v %v", cs, err)
		}
		return nil
	})
	for _, ln := range nodes[1:coordinators] {
		if err := ln.mirror.Join(ctx, peer.AddrInfo{ID: leader.n.ID(), Addrs: leader.n.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	testwait.Eventually(t, 30*time.Second, func() error {
		st, err := leader.coord.Status()
		if err != nil || len(st.Servers) != coordinators || len(st.Coordinators) != coordinators {
			return fmt.Errorf("group %+v, %v", st, err)
		}
		return nil
	})
	// The pushing node knows every coordinator.
	pusher, payee := nodes[coordinators], nodes[1]
	for _, ln := range nodes[:coordinators] {
		pusher.mirror.opts.Coordinators = append(pusher.mirror.opts.Coordinators, peer.AddrInfo{ID: ln.n.ID(), Addrs: ln.n.Host().Addrs()})
	}
	if _, err := leader.own.Append(time.Now(), TypeDeposit, &DepositBody{To: pusher.n.ID(), Amount: market.Unit}); err != nil {
		t.Fatal(err)
	}
	leader.mirror.Kick()
	testwait.Eventually(t, 30*time.Second, func() error {
		v, err := pusher.mirror.Sync(ctx)
		if err != nil || v.Account.Balance != market.Unit {
			return fmt.Errorf("deposit not seen: %v %v", v.Account.Balance, err)
		}
		return nil
	})
	// A lease whose storage periods (1 s) run across the failover.
	tm := market.Terms{SpeedUnit: 500, MemoryUnit: 256, StorageUnit: 1024, SpeedPrice: 1, MemoryPrice: 1, StoragePrice: 1, RunningSecs: 60, StorageSecs: 1}
	l := market.Lease{ID: market.NewLeaseID(), VM: vm.NewID(), Buyer: pusher.n.ID(), Provider: payee.n.ID(), Machine: market.MachineID{1},
		Config: market.StandardConfigs()[0], Terms: tm, Created: time.Now().UTC()}
	l.Quote, _ = tm.Quote(l.Config.Resources())
	prop, err := market.ProposeLease(l, pusher.n.PrivKey())
	if err != nil {
		t.Fatal(err)
	}
	full, err := prop.Countersign(payee.n.PrivKey())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pusher.own.Append(time.Now(), TypeLease, &LeaseBody{Lease: full.Encode()}); err != nil {
		t.Fatal(err)
	}
	for i := range transfers {
		if _, err := pusher.own.Append(time.Now(), TypeTransfer, &TransferBody{To: payee.n.ID(), Amount: 1}); err != nil {
			t.Fatal(err)
		}
		if i == transfers/2 {
			// Mid-stream: the leader goes away without handing over.
			if err := leader.n.Close(); err != nil {
				t.Logf("close the leader: %v", err)
			}
		}
	}
	killed := time.Now()
	var next *ledgerNode
	testwait.Eventually(t, 30*time.Second, func() error {
		for _, ln := range nodes[1:coordinators] {
			if ln.coord.IsLeader() {
				next = ln
				return nil
			}
		}
		return fmt.Errorf("no new leader")
	})
	t.Logf("a new leader %v after the old one went", time.Since(killed))
	testwait.Eventually(t, 60*time.Second, func() error {
		if _, err := pusher.mirror.Sync(ctx); err != nil {
			return err
		}
		if a, l := pusher.own.Acked(), pusher.own.Last(); a != l {
			return fmt.Errorf("%d of %d entries taken", a, l)
		}
		return nil
	})
	a, err := next.coord.State().Account(pusher.n.ID())
	if err != nil || a.Sent != transfers {
		t.Fatalf("the pusher's account after %d transfers of 1: %+v, %v", transfers, a, err)
	}
	// Ticks of both leaders charged every storage period that began by the last tick, once.
	time.Sleep(1500 * time.Millisecond) // (a period or so under the new leader)
	var ls LeaseState
	var m Meta
	if err := next.coord.State().sp.View(func(tx *node.Txn) error {
		var err error
		if m, err = getMeta(tx); err != nil {
			return err
		}
		if ls, err = getLease(tx, l.ID); err != nil {
			return err
		}
		a, err = account(tx, pusher.n.ID())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	periods, _ := periods(l.Created.Truncate(time.Microsecond), 1, m.Tick)
	if !m.Tick.After(killed) || periods < 3 {
		t.Fatalf("the last tick %v, %d periods: the test did not cross the failover", m.Tick, periods)
	}
	if ls.Storage != market.Money(periods) || a.Balance != market.Unit-transfers-ls.Storage {
		t.Fatalf("storage charged %s for %d periods up to the last tick, balance %s", ls.Storage, periods, a.Balance)
	}
	testwait.Eventually(t, 30*time.Second, func() error {
		m1, _ := nodes[1].coord.State().Meta()
		m2, _ := nodes[2].coord.State().Meta()
		if m1.Hash != m2.Hash {
			return fmt.Errorf("replicas at heights %d and %d disagree", m1.Height, m2.Height)
		}
		return nil
	})
	cp, ok, err := pusher.mirror.Checkpoints().Latest()
	if err != nil || !ok || cp.Seq != pusher.own.Last() {
		t.Fatalf("the pusher's checkpoint %+v, %v, %v", cp, ok, err)
	}
	if ev, _ := pusher.mirror.Checkpoints().Evidence(); len(ev) != 0 {
		t.Fatalf("honest coordinators produced conflicting checkpoints: %+v", ev)
	}

	// Bad input on the mirror protocol.
	follower := nodes[1]
	if follower == next {
		follower = nodes[2]
	}
	mine, err := pusher.own.Append(time.Now(), TypeTransfer, &TransferBody{To: payee.n.ID(), Amount: 1})
	if err != nil {
		t.Fatal(err)
	}
	someone := newActor(t) // an identity of no node here
	others := mustSigned(t, someone.sign(time.Now(), TypeMachine, &MachineBody{Machine: market.MachineID{3}, Change: MachineAdded}))
	future, err := NewEntry(pusher.n.ID(), &mine, time.Now().Add(time.Hour), TypeTransfer, &TransferBody{To: payee.n.ID(), Amount: 1})
	if err != nil {
		t.Fatal(err)
	}
	futures, err := Sign(future, pusher.n.PrivKey())
	if err != nil {
		t.Fatal(err)
	}
	raw := func(to *ledgerNode, frame []byte) mirrorAnswer {
		t.Helper()
		st, err := pusher.n.Host().NewStream(ctx, to.n.ID(), MirrorID)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.Write(frame)
		st.CloseWrite()
		var a mirrorAnswer
		if err := readFrame(bufio.NewReader(st), maxAnswerFrame, &a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	framed := func(v any) []byte {
		var b bytes.Buffer
		writeFrame(&b, v)
		return b.Bytes()
	}
	if a := raw(follower, framed(mirrorRequest{Push: [][]byte{mine.Raw}})); a.Leader == nil || a.Leader.ID != next.n.ID() || len(a.Results) != 0 {
		t.Fatalf("a push to a follower: %+v, want the leader's address", a)
	}
	for _, tc := range []struct {
		name  string
		frame []byte
		says  string
	}{
		{"not json", append(binary.AppendUvarint(nil, 5), "{nope"...), "malformed"},
		{"oversized", binary.AppendUvarint(nil, maxMirrorFrame+1), "cap"},
		{"duplicate keys", append(binary.AppendUvarint(nil, 25), `{"view":true,"view":false}`[:25]...), "malformed"},
	} {
		if a := raw(next, tc.frame); a.Error == nil || !strings.Contains(a.Error.Message, tc.says) {
			t.Fatalf("%s: %+v, want an error saying %q", tc.name, a, tc.says)
		}
	}
	a = Account{}
	ans := raw(next, framed(mirrorRequest{Push: [][]byte{others.Raw, futures.Raw}}))
	if len(ans.Results) != 2 || ans.Results[0].Outcome != Refused || !strings.Contains(ans.Results[0].Message, "pushes its own") ||
		ans.Results[1].Outcome != Refused || !strings.Contains(ans.Results[1].Message, "future") {
		t.Fatalf("another's entry and a future one: %+v", ans.Results)
	}
	if seq, _, _, _ := next.coord.State().Head(someone.id); seq != 0 {
		t.Fatalf("the leader took an entry pushed by a node not its author (head %d)", seq)
	}
}

func mustSigned(t *testing.T, raw []byte) Signed {
	t.Helper()
	s, err := Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
