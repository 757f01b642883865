// Package daemontest starts whole nodes (daemon.New) on loopback for tests of the packages that
// use them.
package daemontest

import (
	"context"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/node"
)

// Start builds a node with daemon.New from the default local config, edited by edit, in a
// temporary home, and starts it on loopback with fast discovery; it is closed when the test ends.
func Start(t testing.TB, edit func(*node.Config), opts daemon.Options) *daemon.Node {
	t.Helper()
	home := node.Home{Dir: t.TempDir()}
	cfg := node.DefaultConfig(node.ProfileLocal)
	cfg.Network.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Network.DiscoveryInterval = 200 * time.Millisecond
	if edit != nil {
		edit(&cfg)
	}
	if err := home.Init(cfg, false); err != nil {
		t.Fatal(err)
	}
	opts.Fast = true
	n, err := daemon.New(home, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return n
}
