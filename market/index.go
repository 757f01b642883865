package market

import (
	"bytes"
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// offerIndex is the Book's offers in memory: the newest offer of every machine it has heard
// of. It is safe for concurrent use (the gossip validator reads it while the subscription loop
// writes it). Withdrawn and expired offers stay as tombstones until their expiry so that a
// replay of an older offer is recognised; Prune removes them.
//
// It is bounded: at most perProvider machines of one provider identity, and total entries in
// all. A provider's offers count against its identity only, so a flood of one identity's
// offers leaves the others' machines where they are; when the index is full, a machine new to
// it displaces one of the provider that holds the most, unless that is its own provider or
// one no larger, so established providers keep their place.
type offerIndex struct {
	mu          sync.RWMutex
	offers      map[offerKey]*SignedOffer
	count       map[peer.ID]int // entries per provider
	perProvider int
	total       int
}

func newOfferIndex(perProvider, total int) *offerIndex {
	return &offerIndex{offers: make(map[offerKey]*SignedOffer), count: map[peer.ID]int{}, perProvider: perProvider, total: total}
}

// Verdict is what the book thinks of an offer.
type Verdict int

// Verdicts of Check.
const (
	Newer    Verdict = iota // newer than what the book holds: take it
	Replayed                // same or older sequence number than the book's
	Expired                 // past its expiry
	Future                  // dated too far in the future
	Crowded                 // a machine more than the book holds of one provider
)

// Check tells whether offer o is worth taking at now.
func (b *offerIndex) Check(o Offer, now time.Time) Verdict {
	if !now.Before(o.Expires) {
		return Expired
	}
	if o.Issued.After(now.Add(MaxClockSkew)) {
		return Future
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	old, ok := b.offers[o.key()]
	switch {
	case ok && o.Seq <= old.Seq:
		return Replayed
	case !ok && b.count[o.Provider] >= b.perProvider:
		return Crowded
	}
	return Newer
}

// Put takes the offer if it is newer than the book's for its machine and within the bounds,
// and reports whether it did, with the offer it displaced, if any.
func (b *offerIndex) Put(so SignedOffer, now time.Time) (bool, *Offer) {
	if !now.Before(so.Expires) {
		return false, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old, ok := b.offers[so.key()]
	if ok && so.Seq <= old.Seq {
		return false, nil
	}
	var evicted *Offer
	if !ok {
		if b.count[so.Provider] >= b.perProvider {
			return false, nil
		}
		if len(b.offers) >= b.total {
			if evicted = b.evict(so.Provider); evicted == nil {
				return false, nil
			}
		}
		b.count[so.Provider]++
	}
	b.offers[so.key()] = &so // never modified after: readers may keep pointers
	return true, evicted
}

// evict drops the oldest entry of the provider holding the most, if that is not p and holds
// more than p would after its new one; lock held.
func (b *offerIndex) evict(p peer.ID) *Offer {
	var victim peer.ID
	for q, n := range b.count {
		if n > b.count[victim] || n == b.count[victim] && q > victim {
			victim = q
		}
	}
	if victim == p || b.count[victim] <= b.count[p]+1 {
		return nil
	}
	var oldest *SignedOffer
	for k, so := range b.offers {
		if k.provider == victim && (oldest == nil || so.Issued.Before(oldest.Issued)) {
			oldest = so
		}
	}
	b.drop(oldest.key())
	return &oldest.Offer
}

// drop removes the entry of k; lock held.
func (b *offerIndex) drop(k offerKey) {
	delete(b.offers, k)
	if b.count[k.provider]--; b.count[k.provider] <= 0 {
		delete(b.count, k.provider)
	}
}

// Get returns the live offer of a provider's machine.
func (b *offerIndex) Get(provider peer.ID, machine MachineID, now time.Time) (SignedOffer, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	so, ok := b.offers[offerKey{provider, machine}]
	if !ok || !so.Live(now) {
		return SignedOffer{}, false
	}
	return *so, true
}

// Snapshot returns every live offer, in no particular order.
func (b *offerIndex) Snapshot(now time.Time) []Offer {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]Offer, 0, len(b.offers))
	for _, so := range b.offers {
		if so.Live(now) {
			out = append(out, so.Offer)
		}
	}
	return out
}

// Search runs Search over the book's live offers without copying them.
func (b *offerIndex) Search(now time.Time, req SearchRequest) ([]Match, error) {
	b.mu.RLock()
	live := make([]*Offer, 0, len(b.offers))
	for _, so := range b.offers {
		if so.Live(now) {
			live = append(live, &so.Offer)
		}
	}
	b.mu.RUnlock()
	return search(live, req)
}

// Live returns every live offer, newest first.
func (b *offerIndex) Live(now time.Time) []Offer {
	out := b.Snapshot(now)
	slices.SortFunc(out, func(x, y Offer) int {
		if c := y.Issued.Compare(x.Issued); c != 0 {
			return c
		}
		if c := cmp.Compare(x.Provider, y.Provider); c != 0 {
			return c
		}
		return bytes.Compare(x.Machine[:], y.Machine[:])
	})
	return out
}

// Signed returns up to max live offers with their envelopes, newest first.
func (b *offerIndex) Signed(now time.Time, max int) []SignedOffer {
	b.mu.RLock()
	out := make([]SignedOffer, 0, min(max, len(b.offers)))
	for _, so := range b.offers {
		if so.Live(now) {
			out = append(out, *so)
		}
	}
	b.mu.RUnlock()
	slices.SortFunc(out, func(x, y SignedOffer) int { return y.Issued.Compare(x.Issued) })
	if len(out) > max {
		out = out[:max]
	}
	return out
}

// Prune drops offers (and tombstones) past their expiry and returns them.
func (b *offerIndex) Prune(now time.Time) []Offer {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Offer
	for k, so := range b.offers {
		if !now.Before(so.Expires) {
			out = append(out, so.Offer)
			b.drop(k)
		}
	}
	return out
}

// Len is the number of entries, tombstones included.
func (b *offerIndex) Len() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.offers)
}
