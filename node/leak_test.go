package node_test

import (
	"context"
	"testing"

	"github.com/virtuoso-market/virtuoso/node"
	"go.uber.org/goleak"
)

// TestCloseLeavesNoGoroutine starts and closes a node and checks that nothing it started is
// still running.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := goleak.IgnoreCurrent()
	home := node.Home{Dir: t.TempDir()}
	cfg := node.DefaultConfig(node.ProfileLocal)
	if err := home.Init(cfg, false); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(home, cfg, node.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Topic("/virtuoso/test/1", nil); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, before)
}
