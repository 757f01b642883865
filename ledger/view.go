package ledger

import (
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/vm"
)

// View is what the ledger says of one peer (report §5.2.4, my accounts): its account, the
// leases it buys or sells with what each has cost, its deposits and transfers, and what it
// should do about it.
type View struct {
	Account Account      `json:"account"`
	Leases  []LeaseState `json:"leases"`
	Lines   []Line       `json:"lines"`
	// Upcoming is what the peer's VMs cost in their next periods: the storage of every VM it
	// has stored and the running period of every VM that runs.
	Upcoming market.Money `json:"upcoming"`
	// Low: the balance does not cover the upcoming periods the given number of times: the
	// buyer is warned that its VMs will be stopped.
	Low bool `json:"low,omitempty"`
	// Stop lists the leases the peer provides whose running period went unpaid: their VMs
	// are to be stopped (never deleted).
	Stop []market.LeaseID `json:"stop,omitempty"`
}

// MaxViewLines is how many of the newest deposits and transfers a view carries.
const MaxViewLines = 100

// View returns p's view, warning when the balance covers fewer than warn rounds of its
// upcoming periods.
func (s *State) View(p peer.ID, warn int64) (View, error) {
	a, err := s.Account(p)
	if err != nil {
		return View{}, err
	}
	leases, err := s.Leases(p)
	if err != nil {
		return View{}, err
	}
	lines, err := s.Lines(p, MaxViewLines)
	if err != nil {
		return View{}, err
	}
	v := View{Account: a, Leases: leases, Lines: lines}
	for _, l := range leases {
		if !l.Active() {
			continue
		}
		if l.Buyer == p {
			v.Upcoming += l.Quote.StoragePrice
			if !l.RunningDue.IsZero() {
				v.Upcoming += l.Quote.RunningPrice
			}
		}
		if l.Provider == p && l.Unpaid && l.Status == vm.StatusStarted {
			v.Stop = append(v.Stop, l.ID)
		}
	}
	v.Low = v.Upcoming > 0 && a.Balance < v.Upcoming*market.Money(max(warn, 1))
	return v, nil
}
