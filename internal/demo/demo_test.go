package demo

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
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

	// Every node keeps an event log: the providers' hold the machines they sell.
	for i, n := range m.Nodes {
		if !Roles[i].Provider {
			continue
		}
		testwait.Eventually(t, 10*time.Second, func() error {
			recs, err := n.EventLog.Query(node.EventQuery{Kind: node.KindMachineAdded})
			if err != nil || len(recs) != 1 {
				return fmt.Errorf("%s's log of machines added: %v, %v; want its demo machine", Roles[i].Name, recs, err)
			}
			return nil
		})
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

func TestStopSaysWhichVMsItWaitsFor(t *testing.T) {
	m, err := Start(context.Background(), t.TempDir(), "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	mgr := m.Nodes[1].VMs.Manager() // provider-1
	id := vm.NewID()
	cfg := vm.Config{ID: id, Name: "blank", SpeedBogomips: 1000, MemoryMB: 64, DiskMB: 16, Processor: "x86_64", MAC: vm.MACFor(id)}
	if _, err := mgr.Create(t.Context(), vm.CreateRequest{Config: cfg}); err != nil {
		t.Fatal(err)
	}
	if _, err := mgr.Start(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := m.Stop(&out); err != nil {
		t.Fatal(err)
	}
	if want := "provider-1: stopping VM " + id.String() + ", waiting for its guest to power off"; !strings.Contains(out.String(), want) {
		t.Errorf("Stop printed %q, want it to contain %q", out.String(), want)
	}
	if strings.Contains(out.String(), "provider-2") {
		t.Errorf("Stop printed %q: provider-2 has no VM to wait for", out.String())
	}
}
