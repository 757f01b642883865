package market

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Sort orders of search results.
const (
	SortTotal   = "total"   // total cost of the usage profile
	SortStorage = "storage" // storage cost of the usage profile
	SortRunning = "running" // running cost of the usage profile
)

// SearchRequest asks which providers can host a configuration (report §5.1,
// searchproviders), and how to rank them.
type SearchRequest struct {
	Config Configuration `json:"config"`
	// Usage is the profile costs are computed for; zero means DefaultUsage.
	Usage Usage `json:"usage"`
	// Sort is SortTotal (default), SortStorage or SortRunning.
	Sort string `json:"sort,omitempty"`
	// Filters; zero values filter nothing.
	MaxTotal       Money    `json:"max_total,omitempty"`   // most the profile may cost in all
	MaxStorage     Money    `json:"max_storage,omitempty"` // most its storage may cost
	MaxRunning     Money    `json:"max_running,omitempty"` // most its running may cost
	Processor      string   `json:"processor,omitempty"`   // defaults to the configuration's
	MinNetworkMbps int64    `json:"min_network_mbps,omitempty"`
	Methods        []string `json:"methods,omitempty"` // migration methods the machine must accept
	Limit          int      `json:"limit,omitempty"`   // most results; 0 for all
}

func (r *SearchRequest) normalise() error {
	if r.Usage == (Usage{}) {
		r.Usage = DefaultUsage()
	}
	if r.Sort == "" {
		r.Sort = SortTotal
	}
	if r.Sort != SortTotal && r.Sort != SortStorage && r.Sort != SortRunning {
		return fmt.Errorf("%w: sort %q: use total, storage or running", ErrInvalid, truncate(r.Sort))
	}
	if r.Processor == "" {
		r.Processor = r.Config.Processor
	}
	if err := r.Config.Validate(); err != nil {
		return err
	}
	return r.Usage.Validate()
}

// Match is one provider machine that can host the configuration, with what it costs there.
type Match struct {
	Provider    peer.ID   `json:"provider"`
	Machine     MachineID `json:"machine"`
	Name        string    `json:"name"`
	Processor   string    `json:"processor"`
	NetworkMbps int64     `json:"network_mbps"`
	Methods     []string  `json:"methods"`
	Free        Resources `json:"free"`
	Seq         uint64    `json:"seq"`
	Terms       Terms     `json:"terms"`
	Quote       Quote     `json:"quote"`
	Cost        Cost      `json:"cost"`
}

// Hosts reports whether the offer's machine can take the configuration: free capacity,
// processor, and the OS image for a preconfigured one.
func Hosts(o Offer, c Configuration, processor string) bool {
	if !c.Resources().Fits(o.Free) {
		return false
	}
	if processor != "" && !strings.EqualFold(processor, o.Processor) {
		return false
	}
	if c.Image != "" && !slices.ContainsFunc(o.Images, func(i ImageInfo) bool { return i.Hash == c.Image }) {
		return false
	}
	return true
}

// Search returns the offers that can host the request's configuration and pass its filters,
// priced exactly under each offer's terms and sorted by the requested cost, cheapest first
// (ties: faster network, then provider and machine IDs, so the order is stable).
func Search(offers []Offer, req SearchRequest) ([]Match, error) {
	if err := req.normalise(); err != nil {
		return nil, err
	}
	need := req.Config.Resources()
	var out []Match
	for _, o := range offers {
		if !Hosts(o, req.Config, req.Processor) || o.NetworkMbps < req.MinNetworkMbps {
			continue
		}
		if !slices.ContainsFunc(req.Methods, func(m string) bool { return !slices.Contains(o.Methods, m) }) {
			q, err := o.Terms.Quote(need)
			if err != nil {
				continue // prices that overflow are no match
			}
			c, err := q.Cost(req.Usage)
			if err != nil {
				continue
			}
			if req.MaxTotal > 0 && c.Total > req.MaxTotal || req.MaxStorage > 0 && c.Storage > req.MaxStorage ||
				req.MaxRunning > 0 && c.Running > req.MaxRunning {
				continue
			}
			out = append(out, Match{Provider: o.Provider, Machine: o.Machine, Name: o.Name, Processor: o.Processor,
				NetworkMbps: o.NetworkMbps, Methods: o.Methods, Free: o.Free, Seq: o.Seq, Terms: o.Terms, Quote: q, Cost: c})
		}
	}
	key := func(m Match) Money {
		switch req.Sort {
		case SortStorage:
			return m.Cost.Storage
		case SortRunning:
			return m.Cost.Running
		}
		return m.Cost.Total
	}
	slices.SortFunc(out, func(a, b Match) int {
		return cmp.Or(cmp.Compare(key(a), key(b)), cmp.Compare(a.Cost.Total, b.Cost.Total),
			cmp.Compare(b.NetworkMbps, a.NetworkMbps), cmp.Compare(a.Provider, b.Provider),
			cmp.Compare(a.Machine.String(), b.Machine.String()))
	})
	if req.Limit > 0 && len(out) > req.Limit {
		out = out[:req.Limit]
	}
	return out, nil
}
