package daemon_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
)

// TestEveryNodeLogsItsEvents: the nodes daemon builds keep an event log. A provider's records
// the machine it sells and the VM it stores on it under a lease; the buyer's records its VM
// stored there; each in the order it happened.
func TestEveryNodeLogsItsEvents(t *testing.T) {
	seller, buyer, m := sellingTo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := buyer.Buyer.Store(ctx, market.StoreRequest{ConfigName: "tiny", Provider: seller.ID().String(), Machine: m.ID})
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		n    *daemon.Node
		want []string // kind: the start of the message
	}{
		{"provider", seller, []string{
			"machine.added: machine " + m.ID.String()[:8],
			"vm.status: vm " + v.ID.String()[:8] + " stored (version 1)",
			"lease.created: lease " + v.Lease.String()[:8] + " created: vm " + v.ID.String()[:8] + ", buyer " + market.Short(buyer.ID()),
		}},
		{"buyer", buyer, []string{
			"vm.changed: vm " + v.ID.String()[:8] + " registered (version 0), lease pending",
			"vm.changed: vm " + v.ID.String()[:8] + " stored (version 1), lease active",
			"lease.created: lease " + v.Lease.String()[:8] + " created",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testwait.Eventually(t, 10*time.Second, func() error {
				recs, err := tc.n.EventLog.Query(node.EventQuery{})
				if err != nil {
					return err
				}
				var got []string
				for _, r := range recs {
					got = append(got, r.Kind+": "+r.Message)
				}
				for i, w := range tc.want {
					if len(got) != len(tc.want) || !strings.HasPrefix(got[i], w) {
						return fmt.Errorf("the %s's log:\n%s\nwant records starting\n%s", tc.name, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
					}
				}
				return nil
			})
		})
	}
}
