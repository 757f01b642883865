package market

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
)

// validate is the gossipsub validator of the offers topic: forged, malformed and out-of-range
// offers are rejected (which counts against the peer that sent them); expired, replayed and
// future-dated ones are ignored (not forwarded, not penalised: they may be honest but late).
// The rest of the service only ever sees offers that passed it.
func (s *Service) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	so, err := DecodeOffer(msg.GetData())
	if err == nil && so.Provider != msg.GetFrom() {
		err = fmt.Errorf("%w: offer of %s published by %s", ErrForged, so.Provider, msg.GetFrom())
	}
	if err != nil {
		s.log.Debug("offer rejected", "from", from, "err", err)
		if !msg.Local {
			s.penalise(from)
		}
		return pubsub.ValidationReject
	}
	if v := s.book.Check(so.Offer, s.now()); v != Newer {
		return pubsub.ValidationIgnore
	}
	msg.ValidatorData = so
	return pubsub.ValidationAccept
}

// penalise counts an invalid offer against the peer it came from; past the limit the gossip
// router blacklists the peer.
func (s *Service) penalise(p peer.ID) {
	s.mu.Lock()
	s.rejects[p]++
	n := s.rejects[p]
	s.mu.Unlock()
	if n == s.opts.RejectLimit {
		s.log.Warn("peer sent too many invalid offers; blacklisted", "from", p, "invalid", n)
		s.n.PubSub().BlacklistPeer(p)
	}
}

// Rejected is how many invalid offers peer p has sent this node.
func (s *Service) Rejected(p peer.ID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejects[p]
}

// readOffers takes validated offers from the subscription into the book.
func (s *Service) readOffers() error {
	for {
		msg, err := s.sub.Next(s.ctx)
		if err != nil {
			return nil // cancelled: the service is closing
		}
		if so, ok := msg.ValidatorData.(SignedOffer); ok {
			s.accept(so)
		}
	}
}

// accept puts a verified offer into the book and persists it.
func (s *Service) accept(so SignedOffer) bool {
	return s.acceptAll([]SignedOffer{so}) == 1
}

// acceptAll puts verified offers into the book and persists the new ones in one
// transaction; it returns how many were new.
func (s *Service) acceptAll(offers []SignedOffer) int {
	now := s.now()
	var taken []SignedOffer
	for _, so := range offers {
		if s.book.Put(so, now) {
			taken = append(taken, so)
		}
	}
	if len(taken) == 0 {
		return 0
	}
	select {
	case s.booked <- struct{}{}:
	default:
	}
	err := s.bookSpace.Update(func(tx *node.Txn) error {
		for _, so := range taken {
			if err := tx.Put(bookKey(so.Offer), so.Raw); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("persist offers", "err", err)
	}
	if s.opts.OnOffer != nil {
		for _, so := range taken {
			s.opts.OnOffer(so.Offer)
		}
	}
	return len(taken)
}

func bookKey(o Offer) string { return o.Provider.String() + "/" + o.Machine.String() }

// loadBook reads the persisted book, dropping what expired or no longer verifies.
func (s *Service) loadBook() error {
	now := s.now()
	var drop []string
	err := s.bookSpace.List(func(key string, val []byte) error {
		so, err := DecodeOffer(val)
		if err != nil || !now.Before(so.Expires) {
			drop = append(drop, key)
			return nil
		}
		s.book.Put(so, now)
		return nil
	})
	if err != nil {
		return fmt.Errorf("market: load offer book: %w", err)
	}
	for _, k := range drop {
		s.bookSpace.Delete(k)
	}
	return nil
}

// prune drops expired offers from the book and the store.
func (s *Service) prune() {
	for _, o := range s.book.Prune(s.now()) {
		s.bookSpace.Delete(bookKey(o))
	}
}

// handleQuery answers an offers query: the node's own offers first, then the rest of its book,
// newest first, each as a frame holding the offer envelope, then an empty frame.
func (s *Service) handleQuery(_ context.Context, st network.Stream, r *bufio.Reader) error {
	b, err := readFrame(r, 1024)
	if err != nil {
		return err
	}
	req, err := decodeQueryRequest(b)
	if err != nil {
		return err
	}
	limit := MaxQueryOffers
	if req.Max > 0 {
		limit = min(req.Max, limit)
	}
	offers := s.book.Signed(s.now(), MaxQueryOffers)
	self := s.n.ID()
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
func (s *Service) QueryOffers(ctx context.Context, p peer.ID) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := s.open(ctx, peerAddr{id: p}, OffersQueryID)
	if err != nil {
		return 0, err
	}
	defer st.Reset() // a no-op after Close
	st.SetDeadline(time.Now().Add(30 * time.Second))
	if err := writeJSON(st, queryRequest{Max: MaxQueryOffers}); err != nil {
		return 0, fmt.Errorf("%w: query %s: %v", ErrUnavailable, p.ShortString(), err)
	}
	st.CloseWrite()
	r := bufio.NewReader(st)
	// Offers are taken in batches: one store transaction per batch, not per offer.
	var batch []SignedOffer
	added := 0
	flush := func() {
		added += s.acceptAll(batch)
		batch = batch[:0]
	}
	defer flush()
	for i := 0; ; i++ {
		raw, err := readFrame(r, MaxOfferBytes)
		if err != nil {
			if errors.Is(err, ErrMalformed) {
				s.penalise(p)
			}
			return added, fmt.Errorf("query %s: %w", p.ShortString(), err)
		}
		if len(raw) == 0 {
			break
		}
		if i >= MaxQueryOffers {
			s.penalise(p)
			return added, fmt.Errorf("%w: %s sent more than %d offers", ErrMalformed, p.ShortString(), MaxQueryOffers)
		}
		so, err := DecodeOffer(raw)
		if err != nil {
			s.penalise(p)
			continue
		}
		if s.book.Check(so.Offer, s.now()) == Newer {
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
func (s *Service) startQueries() error {
	h := s.n.Host()
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted))
	if err != nil {
		return fmt.Errorf("market: identify events: %w", err)
	}
	taken := 0 // queries running or succeeded; guarded by s.mu
	query := func(p peer.ID) {
		s.mu.Lock()
		_, seen := s.queried[p]
		ok := !seen && taken < catchupPeers
		if ok {
			s.queried[p] = time.Now()
			taken++
		}
		s.mu.Unlock()
		if !ok {
			return
		}
		s.group.Go(func() error {
			n, err := s.QueryOffers(s.ctx, p)
			if err != nil {
				s.log.Debug("offers query", "to", p, "err", err)
				s.mu.Lock()
				taken-- // let another peer be asked instead
				s.mu.Unlock()
				return nil
			}
			s.log.Debug("offers query", "to", p, "new", n)
			return nil
		})
	}
	for _, p := range h.Network().Peers() {
		if ok, _ := h.Peerstore().SupportsProtocols(p, OffersQueryID); len(ok) > 0 {
			query(p)
		}
	}
	s.group.Go(func() error {
		defer sub.Close()
		for {
			select {
			case <-s.ctx.Done():
				return nil
			case e, ok := <-sub.Out():
				if !ok {
					return nil
				}
				ev := e.(event.EvtPeerIdentificationCompleted)
				if slices.Contains(ev.Protocols, OffersQueryID) {
					query(ev.Peer)
				}
			}
		}
	})
	return nil
}

// housekeeping prunes the book, closes idle console tunnels and retries pending leases.
func (s *Service) housekeeping() error {
	t := time.NewTicker(s.opts.Housekeeping)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case <-t.C:
		}
		s.prune()
		s.closeIdleTunnels()
		s.retryPending(s.ctx)
	}
}
