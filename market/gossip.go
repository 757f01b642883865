package market

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
)

// validate is the gossipsub validator of the offers topic: forged, malformed and out-of-range
// offers are rejected (which counts against the peer that sent them); expired, replayed and
// future-dated ones are ignored (not forwarded, not penalised: they may be honest but late),
// and so are offers in an envelope version this node does not read (a newer node's). Unknown
// fields in an offer's body are ignored: the signature covers the exact bytes. The rest of the
// Book only ever sees offers that passed it.
func (b *Book) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	o, f, err := openOffer(msg.GetData())
	if errors.Is(err, ErrUnknownVersion) {
		return pubsub.ValidationIgnore // a newer node's offer: not for us, not its fault
	}
	if err == nil && o.Provider != msg.GetFrom() {
		err = fmt.Errorf("%w: offer of %s published by %s", ErrForged, o.Provider, msg.GetFrom())
	}
	// An offer the book would not take (expired, replayed, or past its provider's bound) is
	// ignored before its signature is checked, so a flood of them costs a decode each. The
	// message's own signature (gossipsub's) already names its publisher, who is the offer's
	// provider. An offer past its provider's bound (Crowded) is ignored, not rejected: whether
	// a book is full depends on what this node holds, so an honest peer relaying it is not at
	// fault.
	if err == nil && b.offers.Check(o, b.now()) != Newer {
		return pubsub.ValidationIgnore
	}
	var so SignedOffer
	if err == nil {
		so, err = verifyOffer(o, f, msg.GetData())
	}
	if err != nil {
		b.log.Debug("offer rejected", "from", from, "err", err)
		if !msg.Local {
			b.count(from, false) // gossipsub scores the reject itself
		}
		return pubsub.ValidationReject
	}
	msg.ValidatorData = so
	return pubsub.ValidationAccept
}

// offerScore is the weight of one invalid offer in a gossip peer's score: with the offers
// topic's (scoreTopic) or the application's (a catch-up answer), a handful of invalid offers
// puts a peer below gossipsub's graylist threshold, whatever its identity; the score decays,
// so an honest peer that relayed a bad offer once recovers.
const offerScore = -100

// scoreTopic is the offers topic's part of gossip peer scores: invalid messages delivered
// (the validator's rejects) count quadratically.
var scoreTopic = pubsub.TopicScoreParams{
	SkipAtomicValidation: true, TopicWeight: 1,
	TimeInMeshQuantum:              time.Second, // unweighted, but the score divides by it
	InvalidMessageDeliveriesWeight: offerScore, InvalidMessageDeliveriesDecay: 0.99,
}

// count records an invalid offer from p; queried is set for one that came in a catch-up
// answer, which gossipsub does not see, so it counts in the application's score of p.
func (b *Book) count(p peer.ID, queried bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rejects[p]++
	if queried {
		b.queryRejects[p]++
	}
}

// appScore is the application's part of p's gossip score: its invalid catch-up answers.
func (b *Book) appScore(p peer.ID) float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := float64(b.queryRejects[p])
	return offerScore * n * n
}

// Rejected is how many invalid offers peer p has sent this node.
func (b *Book) Rejected(p peer.ID) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rejects[p]
}

// readOffers takes validated offers from the subscription into the book.
func (b *Book) readOffers() error {
	for {
		msg, err := b.sub.Next(b.ctx)
		if err != nil {
			return nil // cancelled: the service is closing
		}
		if so, ok := msg.ValidatorData.(SignedOffer); ok {
			b.accept(so)
		}
	}
}

// accept puts a verified offer into the book and persists it.
func (b *Book) accept(so SignedOffer) bool {
	return b.acceptAll([]SignedOffer{so}) == 1
}

// acceptAll puts verified offers into the book and persists the new ones, persistBatch to a
// store transaction; it returns how many were new.
func (b *Book) acceptAll(offers []SignedOffer) int {
	if len(offers) > persistBatch {
		n := 0
		for part := range slices.Chunk(offers, persistBatch) {
			n += b.acceptAll(part)
		}
		return n
	}
	// The images' names are bound before the offers enter the index, so no reader sees an
	// offer whose image the catalog does not list under its name yet.
	if err := b.bindNames(offers); err != nil {
		b.log.Warn("bind image names", "err", err)
	}
	now := b.now()
	var taken []SignedOffer
	var evicted []Offer
	for _, so := range offers {
		ok, out := b.offers.Put(so, now)
		if ok {
			taken = append(taken, so)
		}
		if out != nil {
			evicted = append(evicted, *out)
		}
	}
	if len(taken) == 0 {
		return 0
	}
	signal(b.booked)
	err := b.bookSpace.Update(func(tx *node.Txn) error {
		for _, so := range taken {
			if err := tx.Put(bookKey(so.Offer), so.Raw); err != nil {
				return err
			}
		}
		for _, o := range evicted {
			if err := tx.Delete(bookKey(o)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.log.Warn("persist offers", "err", err)
	}
	if b.opts.OnOffer != nil {
		for _, so := range taken {
			b.opts.OnOffer(so.Offer)
		}
	}
	return len(taken)
}

// persistBatch is how many offers one store transaction holds (a transaction is bounded).
const persistBatch = 256

func bookKey(o Offer) string { return o.Provider.String() + "/" + o.Machine.String() }

// loadBook reads the persisted book, dropping what expired or no longer verifies.
func (b *Book) loadBook() error {
	now := b.now()
	var drop []string
	var loaded []SignedOffer
	err := b.bookSpace.List(func(key string, val []byte) error {
		so, err := DecodeOffer(val)
		if err != nil || !now.Before(so.Expires) {
			drop = append(drop, key)
			return nil
		}
		if ok, _ := b.offers.Put(so, now); ok {
			loaded = append(loaded, so)
		} else {
			drop = append(drop, key)
		}
		return nil
	})
	if err == nil {
		err = b.bindNames(loaded)
	}
	if err != nil {
		return fmt.Errorf("market: load offer book: %w", err)
	}
	for _, k := range drop {
		if err := b.bookSpace.Delete(k); err != nil {
			return fmt.Errorf("market: drop expired offer %s: %w", k, err)
		}
	}
	return nil
}
