package market

import (
	"bufio"
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

// queryRequest asks for at most Max offers.
type queryRequest struct {
	Max int `json:"max"`
}

// MaxQueryOffers caps the offers of one query answer.
const MaxQueryOffers = 4096

func decodeQueryRequest(b []byte) (queryRequest, error) {
	var r queryRequest
	if err := decodeJSON(b, &r); err != nil {
		return r, err
	}
	if r.Max < 0 {
		return r, fmt.Errorf("%w: negative max", ErrMalformed)
	}
	return r, nil
}

// handleQuery answers an offers query: the node's own offers first, then the rest of its book,
// newest first, each as a frame holding the offer envelope, then an empty frame.
func (b *Book) handleQuery(_ context.Context, st network.Stream, frame []byte, _ *bufio.Reader) error {
	req, err := decodeQueryRequest(frame)
	if err != nil {
		return err
	}
	limit := MaxQueryOffers
	if req.Max > 0 {
		limit = min(req.Max, limit)
	}
	offers := b.offers.Signed(b.now(), MaxQueryOffers)
	self := b.n.ID()
	slices.SortStableFunc(offers, func(a, b SignedOffer) int {
		switch {
		case a.Provider == self && b.Provider != self:
			return -1
		case b.Provider == self && a.Provider != self:
			return 1
		}
		return 0
	})
	w := bufio.NewWriter(st)
	for _, so := range offers[:min(limit, len(offers))] {
		if err := writeFrame(w, so.Raw); err != nil {
			return err
		}
	}
	if err := writeFrame(w, nil); err != nil {
		return err
	}
	return w.Flush()
}

// QueryOffers asks peer p for the offers it holds and takes the valid new ones into the book.
// It returns how many were new. Invalid offers count against p.
func (b *Book) QueryOffers(ctx context.Context, p peer.ID) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := b.open(ctx, peerAddr{id: p}, OffersQueryID)
	if err != nil {
		return 0, err
	}
	defer st.Reset() // a no-op after Close
	st.SetDeadline(time.Now().Add(30 * time.Second))
	if err := writeJSON(st, queryRequest{Max: MaxQueryOffers}); err != nil {
		return 0, fmt.Errorf("%w: query %s: %w", ErrUnavailable, Short(p), err)
	}
	st.CloseWrite()
	r := bufio.NewReader(st)
	// Offers are taken in batches: one store transaction per batch, not per offer.
	var batch []SignedOffer
	added := 0
	flush := func() {
		added += b.acceptAll(batch)
		batch = batch[:0]
	}
	defer flush()
	for i := 0; ; i++ {
		raw, err := readFrame(r, MaxOfferBytes)
		if err != nil {
			if errors.Is(err, ErrMalformed) {
				b.penalise(p)
			}
			return added, fmt.Errorf("query %s: %w", Short(p), err)
		}
		if len(raw) == 0 {
			break
		}
		if i >= MaxQueryOffers {
			b.penalise(p)
			return added, fmt.Errorf("%w: %s sent more than %d offers", ErrMalformed, Short(p), MaxQueryOffers)
		}
		so, err := DecodeOffer(raw)
		if err != nil {
			b.penalise(p)
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
	return added, nil
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
