package market

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The offers query, /virtuoso/offers-query/1.0.0: a joining node asks a few peers directly for
// the offers they hold (gossip is lossy right after peers join). One request frame, then one
// frame per offer envelope and an empty frame.

// queryRequest asks for at most Max offers (at most MaxQueryPage) after the first Skip of the
// answering node's order: its own offers first, then the rest of its book, each part by
// provider and machine. A querier pages through with Skip.
type queryRequest struct {
	Max  int `json:"max"`
	Skip int `json:"skip,omitempty"`
}

// MaxQueryPage caps the offers of one answer; MaxQueryOffers what one catch-up takes in all.
const (
	MaxQueryPage   = 512
	MaxQueryOffers = 4096
)

func decodeQueryRequest(b []byte) (queryRequest, error) {
	var r queryRequest
	if err := DecodeStrict(b, &r); err != nil {
		return r, err
	}
	if r.Max < 0 || r.Skip < 0 {
		return r, fmt.Errorf("%w: negative max or skip", ErrMalformed)
	}
	return r, nil
}

// handleQuery answers an offers query with one page: each offer envelope as a frame, then an
// empty frame.
func (b *Book) handleQuery(_ context.Context, st network.Stream, frame []byte, _ *bufio.Reader) error {
	req, err := decodeQueryRequest(frame)
	if err != nil {
		return err
	}
	limit := MaxQueryPage
	if req.Max > 0 {
		limit = min(req.Max, limit)
	}
	offers := b.offers.Signed(b.now(), b.opts.MaxOffers)
	self := b.n.ID()
	slices.SortFunc(offers, func(x, y SignedOffer) int {
		if own := cmp.Compare(boolRank(x.Provider != self), boolRank(y.Provider != self)); own != 0 {
			return own
		}
		if c := cmp.Compare(x.Provider, y.Provider); c != 0 { // raw ID bytes: no encoding per comparison
			return c
		}
		return bytes.Compare(x.Machine[:], y.Machine[:])
	})
	offers = offers[min(req.Skip, len(offers)):]
	w := bufio.NewWriter(st)
	for _, so := range offers[:min(limit, len(offers))] {
		if err := WriteFrame(w, so.Raw); err != nil {
			return err
		}
	}
	if err := WriteFrame(w, nil); err != nil {
		return err
	}
	return w.Flush()
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// QueryOffers asks peer p for the offers it holds, page by page up to MaxQueryOffers, and
// takes the valid new ones into the book. It returns how many were new. Invalid offers count
// against p.
func (b *Book) QueryOffers(ctx context.Context, p peer.ID) (int, error) {
	added := 0
	for skip := 0; skip < MaxQueryOffers; skip += MaxQueryPage {
		n, got, err := b.queryPage(ctx, p, skip)
		added += n
		if err != nil || got < MaxQueryPage {
			return added, err
		}
	}
	return added, nil
}

// queryPage asks p for one page of offers; it returns how many were new and how many came.
func (b *Book) queryPage(ctx context.Context, p peer.ID, skip int) (added, got int, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := b.open(ctx, peerAddr{id: p}, OffersQueryID)
	if err != nil {
		return 0, 0, err
	}
	defer st.Reset() // a no-op after Close
	st.SetDeadline(time.Now().Add(30 * time.Second))
	if err := WriteJSON(st, queryRequest{Max: MaxQueryPage, Skip: skip}); err != nil {
		return 0, 0, fmt.Errorf("%w: query %s: %w", ErrUnavailable, Short(p), err)
	}
	st.CloseWrite()
	r := bufio.NewReader(st)
	// Offers are taken in batches: one store transaction per batch, not per offer.
	var batch []SignedOffer
	flush := func() {
		added += b.acceptAll(batch)
		batch = batch[:0]
	}
	defer flush()
	for ; ; got++ {
		raw, err := ReadFrame(r, MaxOfferBytes)
		if err != nil {
			if errors.Is(err, ErrMalformed) {
				b.count(p, true)
			}
			return added, got, fmt.Errorf("query %s: %w", Short(p), err)
		}
		if len(raw) == 0 {
			break
		}
		if got >= MaxQueryPage {
			b.count(p, true)
			return added, got, fmt.Errorf("%w: %s sent more than %d offers in a page", ErrMalformed, Short(p), MaxQueryPage)
		}
		so, err := DecodeOffer(raw)
		if err != nil {
			b.count(p, true)
			continue
		}
		if b.offers.Check(so.Offer, b.now()) == Newer {
			if batch = append(batch, so); len(batch) == 256 {
				flush()
			}
		}
	}
	st.Close()
	flush()
	return added, got, nil
}

// catchupPeers is how many peers a node queries for their offers after it starts. A
// newcomer needs a few full books, not every peer's; and the nodes already in the
// marketplace do not query the newcomer back, or every join would move the whole book N
// times.
const catchupPeers = 3

// startQueries queries the peers already connected and then those identified later that speak
// the query protocol, until catchupPeers queries succeeded, so that a starting node does not
// wait for the next republish of every offer.
func (b *Book) startQueries() error {
	h := b.n.Host()
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted))
	if err != nil {
		return fmt.Errorf("market: identify events: %w", err)
	}
	for _, p := range h.Network().Peers() {
		if ok, _ := h.Peerstore().SupportsProtocols(p, OffersQueryID); len(ok) > 0 {
			b.catchUp(p)
		}
	}
	b.group.Go(func() error {
		defer sub.Close()
		for {
			select {
			case <-b.ctx.Done():
				return nil
			case e, ok := <-sub.Out():
				if !ok {
					return nil
				}
				ev := e.(event.EvtPeerIdentificationCompleted)
				if slices.Contains(ev.Protocols, OffersQueryID) {
					b.catchUp(ev.Peer)
				}
			}
		}
	})
	return nil
}

// catchUp queries p for its offers, unless p was asked already or catchupPeers queries are
// running or done.
func (b *Book) catchUp(p peer.ID) {
	b.mu.Lock()
	_, seen := b.queried[p]
	ok := !seen && b.taken < catchupPeers
	if ok {
		b.queried[p] = time.Now()
		b.taken++
	}
	b.mu.Unlock()
	if !ok {
		return
	}
	b.group.Go(func() error {
		n, err := b.QueryOffers(b.ctx, p)
		if err != nil {
			b.log.Debug("offers query", "peer", p, "err", err)
			b.mu.Lock()
			b.taken-- // let another peer be asked instead
			b.mu.Unlock()
			return nil
		}
		b.log.Debug("offers query", "peer", p, "new", n)
		return nil
	})
}
