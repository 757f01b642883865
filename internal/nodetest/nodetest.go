// Package nodetest starts real Virtuoso nodes on loopback inside one test process, with fast
// discovery settings, for the integration tests of every package.
package nodetest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/node"
)

// Options shape the nodes of a cluster; the zero value gives plain nodes.
type Options struct {
	// Configure edits each node's config before it starts (index i of n).
	Configure func(i int, cfg *node.Config)
	// Services returns the services node i runs, built over its node n (not yet started:
	// its store and event stream are usable).
	Services func(i int, n *node.Node) []node.Service
	// Protocols are passed to every node.
	Protocols []node.ProtocolLimit
	// Logs sends the nodes' logs to the test log at this level; unset keeps them quiet.
	Logs *slog.Level
}

// Cluster starts n nodes; node 0 is the bootstrap peer of all others. Nodes are closed at the
// end of the test.
func Cluster(t testing.TB, n int, opts Options) []*node.Node {
	t.Helper()
	nodes := make([]*node.Node, n)
	for i := range n {
		cfg := node.DefaultConfig(node.ProfileLocal)
		cfg.Network.DiscoveryInterval = 200 * time.Millisecond
		cfg.Network.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		if i > 0 {
			cfg.Network.Bootstrap = Addrs(nodes[0])[:1]
		}
		if opts.Configure != nil {
			opts.Configure(i, &cfg)
		}
		nodes[i] = New(t, node.Home{Dir: t.TempDir()}, cfg, node.Options{
			Protocols: opts.Protocols, Logger: logger(t, opts.Logs, i), Version: "test",
		})
		if opts.Services != nil {
			for _, s := range opts.Services(i, nodes[i]) {
				nodes[i].Attach(s)
			}
		}
		if err := nodes[i].Start(context.Background()); err != nil {
			t.Fatalf("start node %d: %v", i, err)
		}
	}
	return nodes
}

// Start initialises home with cfg (unless it already holds a node) and starts a node on it,
// closed at the end of the test.
func Start(t testing.TB, home node.Home, cfg node.Config, opts node.Options) *node.Node {
	t.Helper()
	n := New(t, home, cfg, opts)
	if err := n.Start(context.Background()); err != nil {
		t.Fatalf("start node: %v", err)
	}
	return n
}

// New initialises home with cfg (unless it already holds a node) and builds a node on it with
// fast settings, not yet started, closed at the end of the test.
func New(t testing.TB, home node.Home, cfg node.Config, opts node.Options) *node.Node {
	t.Helper()
	if _, err := os.Stat(home.KeyPath()); err != nil {
		if err := home.Init(cfg, false); err != nil {
			t.Fatalf("init %s: %v", home.Dir, err)
		}
	}
	opts.Fast = true
	n, err := node.New(home, cfg, opts)
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close node %s: %v", n.ID().ShortString(), err)
		}
	})
	return n
}

// Addrs are a started node's full addresses (with /p2p/ID), usable as bootstrap peers.
func Addrs(n *node.Node) []string {
	var out []string
	for _, a := range n.Host().Addrs() {
		out = append(out, fmt.Sprintf("%s/p2p/%s", a, n.ID()))
	}
	return out
}

// WaitConnected waits until every node has a connection to every other, or fails the test.
func WaitConnected(t testing.TB, nodes []*node.Node, within time.Duration) {
	t.Helper()
	testwait.Eventually(t, within, func() error {
		missing := 0
		for _, a := range nodes {
			for _, b := range nodes {
				if a != b && a.Host().Network().Connectedness(b.ID()) != network.Connected {
					missing++
				}
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d node pairs are still not connected", missing, len(nodes)*(len(nodes)-1))
		}
		return nil
	})
}

func logger(t testing.TB, level *slog.Level, i int) *slog.Logger {
	if level == nil {
		return nil
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: *level})).With("node", i)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
