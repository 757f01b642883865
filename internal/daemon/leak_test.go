package daemon_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/goleak"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
)

// TestCloseLeavesNoGoroutine starts a node with every service — the VM stack, the Book, the
// Buyer and the Provider — next to a buyer-only node it sells to, closes both, and checks that
// nothing they started is still running.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := goleak.IgnoreCurrent()
	buyer := startNode(t, nil, daemon.Options{})
	seller := startNode(t, func(cfg *node.Config) {
		cfg.Roles.Provider = true
		cfg.Provider.Accel = "tcg"
	}, daemon.Options{})
	ctx := context.Background()
	if err := buyer.Host().Connect(ctx, peer.AddrInfo{ID: seller.ID(), Addrs: seller.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	m, err := seller.Provider.AddMachine(ctx, market.DemoMachine(0))
	if err != nil {
		t.Fatal(err)
	}
	testwait.Eventually(t, 20*time.Second, func() error {
		if _, ok := buyer.Book.Get(seller.ID(), m.ID); !ok {
			return errors.New("the offer did not reach the buyer")
		}
		return nil
	})
	for _, n := range []*daemon.Node{seller, buyer} {
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	goleak.VerifyNone(t, before)
}
