package daemon_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
)

// TestCloseLeavesNoGoroutine starts a node with every service — the event log, the VM stack,
// the Book, the Buyer and the Provider — next to a buyer-only node it sells to, closes both,
// and checks that nothing they started is still running.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := goleak.IgnoreCurrent()
	seller, buyer, _ := sellingTo(t)
	for _, n := range []*daemon.Node{seller, buyer} {
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	goleak.VerifyNone(t, before)
}
