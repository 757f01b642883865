package market

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/virtuoso-market/virtuoso/node"
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
	var p node.Problems
	if r.Sort != SortTotal && r.Sort != SortStorage && r.Sort != SortRunning {
		p.Add("sort", fmt.Sprintf("%q: use total, storage or running", truncate(r.Sort)))
	}
	if r.Processor == "" {
		r.Processor = r.Config.Processor
	}
	p.Nest("config", r.Config.Validate())
	p.Nest("usage", r.Usage.Validate())
	for _, m := range []struct {
		name string
		v    Money
	}{{"max_total", r.MaxTotal}, {"max_storage", r.MaxStorage}, {"max_running", r.MaxRunning}} {
		if m.v < 0 {
			p.Add(m.name, fmt.Sprintf("%s is negative", m.v))
		}
	}
	if r.MinNetworkMbps < 0 || r.MinNetworkMbps > maxNetworkMbps {
		p.Add("min_network_mbps", fmt.Sprintf("%d out of range 0..%d", r.MinNetworkMbps, maxNetworkMbps))
	}
	if r.Limit < 0 {
		p.Add("limit", fmt.Sprintf("%d is negative", r.Limit))
	}
	return p.Err(ErrInvalid, "search")
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
// (ties: lower total, faster network, then provider and machine IDs, so the order is stable).
func Search(offers []Offer, req SearchRequest) ([]Match, error) {
	ptrs := make([]*Offer, len(offers))
	for i := range offers {
		ptrs[i] = &offers[i]
	}
	return search(ptrs, req)
}

func search(offers []*Offer, req SearchRequest) ([]Match, error) {
	if err := req.normalise(); err != nil {
		return nil, err
	}
	need := req.Config.Resources()
	type cand struct {
		o    *Offer
		q    Quote
		c    Cost
		rank Money
	}
	var cands []cand
	for _, o := range offers {
		if !Hosts(*o, req.Config, req.Processor) || o.NetworkMbps < req.MinNetworkMbps ||
			slices.ContainsFunc(req.Methods, func(m string) bool { return !slices.Contains(o.Methods, m) }) {
			continue
		}
		q, err := o.Terms.quote(need)
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
		rank := c.Total
		switch req.Sort {
		case SortStorage:
			rank = c.Storage
		case SortRunning:
			rank = c.Running
		}
		cands = append(cands, cand{o, q, c, rank})
	}
	// Sort indices, not the candidates: swaps stay cheap with thousands of matches.
	idx := make([]int32, len(cands))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(i, j int32) int {
		a, b := &cands[i], &cands[j]
		// Early returns, not cmp.Or: its arguments, string comparisons included, would all
		// be evaluated for every pair.
		if c := cmp.Compare(a.rank, b.rank); c != 0 {
			return c
		}
		if c := cmp.Compare(a.c.Total, b.c.Total); c != 0 {
			return c
		}
		if c := cmp.Compare(b.o.NetworkMbps, a.o.NetworkMbps); c != 0 {
			return c
		}
		if c := cmp.Compare(a.o.Provider, b.o.Provider); c != 0 {
			return c
		}
		return bytes.Compare(a.o.Machine[:], b.o.Machine[:])
	})
	if req.Limit > 0 && len(idx) > req.Limit {
		idx = idx[:req.Limit]
	}
	out := make([]Match, len(idx))
	for k, i := range idx {
		c := &cands[i]
		o := c.o
		out[k] = Match{Provider: o.Provider, Machine: o.Machine, Name: o.Name, Processor: o.Processor,
			NetworkMbps: o.NetworkMbps, Methods: o.Methods, Free: o.Free, Seq: o.Seq, Terms: o.Terms, Quote: c.q, Cost: c.c}
	}
	return out, nil
}
