package ledger

import (
	"fmt"
	"time"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
)

// Event is what the ledger tells the node's event log: a charge, a payment, a warning, a
// stop, a refusal or evidence (the node.KindLedger… kinds).
type Event struct {
	Kind    string         `json:"kind"`
	Message string         `json:"message"`
	Lease   market.LeaseID `json:"lease,omitzero"`
	Time    time.Time      `json:"time"`
}

// LogRecord makes the event a record of the node's event log.
func (e Event) LogRecord() node.EventRecord {
	r := node.EventRecord{Kind: e.Kind, Message: e.Message, Time: e.Time}
	if !e.Lease.IsZero() {
		r.Lease = e.Lease.String()
	}
	return r
}

// changes are the events between two views of one account.
func changes(old, v View, first bool, now time.Time) []Event {
	var out []Event
	a, b := old.Account, v.Account
	if d := (b.Earned - a.Earned) - (b.Spent - a.Spent); !first && d != 0 {
		out = append(out, Event{Kind: node.KindLedgerCharged, Time: now,
			Message: fmt.Sprintf("%s%s for storage and running; balance %s", sign(d), abs(d), b.Balance)})
	}
	if d := (b.Deposited + b.Received) - (a.Deposited + a.Received); !first && d > 0 {
		out = append(out, Event{Kind: node.KindLedgerPayment, Time: now, Message: fmt.Sprintf("received %s; balance %s", d, b.Balance)})
	}
	if v.Low && (first || !old.Low) {
		out = append(out, Event{Kind: node.KindLedgerLow, Time: now,
			Message: fmt.Sprintf("the balance %s will not pay the coming periods (%s each round) for long: running VMs are stopped when a period cannot be paid", b.Balance, v.Upcoming)})
	}
	seen := map[market.LeaseID]bool{}
	for _, id := range old.Stop {
		seen[id] = true
	}
	for _, id := range v.Stop {
		if !seen[id] || first {
			out = append(out, Event{Kind: node.KindLedgerStop, Time: now, Lease: id,
				Message: fmt.Sprintf("lease %s: the buyer's balance did not pay a running period; its vm is stopped (not deleted)", id.String()[:8])})
		}
	}
	return out
}

func sign(m market.Money) string {
	if m < 0 {
		return "charged "
	}
	return "earned "
}

func abs(m market.Money) market.Money {
	if m < 0 {
		return -m
	}
	return m
}
