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
type offerIndex struct {
	mu     sync.RWMutex
	offers map[offerKey]*SignedOffer
}

func newOfferIndex() *offerIndex { return &offerIndex{offers: make(map[offerKey]*SignedOffer)} }

// Verdict is what the book thinks of an offer.
type Verdict int

// Verdicts of Check.
const (
	Newer    Verdict = iota // newer than what the book holds: take it
	Replayed                // same or older sequence number than the book's
	Expired                 // past its expiry
	Future                  // dated too far in the future
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
	old, ok := b.offers[o.key()]
	b.mu.RUnlock()
	if ok && o.Seq <= old.Seq {
		return Replayed
	}
	return Newer
}

// Put takes the offer if it is newer than the book's for its machine, and reports whether it
// did.
func (b *offerIndex) Put(so SignedOffer, now time.Time) bool {
	if !now.Before(so.Expires) {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.offers[so.key()]; ok && so.Seq <= old.Seq {
		return false
	}
	b.offers[so.key()] = &so // never modified after: readers may keep pointers
	return true
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
			delete(b.offers, k)
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
