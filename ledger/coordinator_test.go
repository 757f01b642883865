package ledger

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/nodetest"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
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
	if err != nil || a.Balance != market.Unit-transfers || a.Sent != transfers {
		t.Fatalf("the pusher's account after %d transfers of 1: %+v, %v", transfers, a, err)
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
	if err != nil || !ok || cp.Seq != pusher.own.Last() || cp.Balance != market.Unit-transfers {
		t.Fatalf("the pusher's checkpoint %+v, %v, %v", cp, ok, err)
	}
	if ev, _ := pusher.mirror.Checkpoints().Evidence(); len(ev) != 0 {
		t.Fatalf("honest coordinators produced conflicting checkpoints: %+v", ev)
	}
}
