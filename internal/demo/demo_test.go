package demo

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
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
	deadline := time.Now().Add(20 * time.Second)
	for _, other := range m.Nodes[:len(m.Nodes)-1] {
		for buyer.Host().Network().Connectedness(other.ID()) != network.Connected {
			if time.Now().After(deadline) {
				t.Fatalf("buyer not connected to %s after 20s", other.ID())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

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
