package demo

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
)

func TestDemoMarketplaceConnectsEveryNode(t *testing.T) {
	dir := t.TempDir()
	m, err := Start(context.Background(), dir, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if len(m.Nodes) != len(Roles) {
		t.Fatalf("%d nodes, want %d", len(m.Nodes), len(Roles))
	}
	buyer := m.Nodes[len(m.Nodes)-1]
	testwait.Eventually(t, 20*time.Second, func() error {
		for _, other := range m.Nodes[:len(m.Nodes)-1] {
			if buyer.Host().Network().Connectedness(other.ID()) != network.Connected {
				return fmt.Errorf("buyer not connected to %s", other.ID())
			}
		}
		return nil
	})

	// A second start on the same dir keeps every node's identity.
	ids := map[string]bool{}
	for _, n := range m.Nodes {
		ids[n.ID().String()] = true
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := Start(context.Background(), dir, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.Close() })
	for _, n := range again.Nodes {
		if !ids[n.ID().String()] {
			t.Errorf("restarted demo node has a new identity %s", n.ID())
		}
	}
}
