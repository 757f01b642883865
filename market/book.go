package market

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
)

// BookOptions configure the Book. The zero value takes the defaults below.
type BookOptions struct {
	Logger *slog.Logger
	StreamOptions
	// AverageInterval is how often market averages are computed (default 60s, the report's
	// priceaverage period); History how many samples per configuration are kept (default 1440).
	AverageInterval time.Duration
	History         int
	// Housekeeping is how often expired offers are pruned (default 10s).
	Housekeeping time.Duration
	// MaxOffersPerProvider bounds the machines of one provider identity the book holds
	// (default 64); MaxOffers the whole book (default 16384).
	MaxOffersPerProvider int
	MaxOffers            int
	// OnOffer, if set, is called after a new offer entered the book (benchmarks).
	OnOffer func(Offer)
}

func (o *BookOptions) fill() {
	o.AverageInterval = cmpOr(o.AverageInterval, time.Minute)
	o.Housekeeping = cmpOr(o.Housekeeping, 10*time.Second)
	if o.History <= 0 {
		o.History = 1440
	}
	if o.MaxOffersPerProvider <= 0 {
		o.MaxOffersPerProvider = 64
	}
	if o.MaxOffers <= 0 {
		o.MaxOffers = 16384
	}
}

// cmpOr is d, or def when d is not positive.
func cmpOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Book is the offer book every node keeps (a node.Service): the offers gossiped on the
// offers topic and caught up from peers at start, persisted under market/book/; the catalog of
// configurations (standard, preconfigured from the offers' images, the owner's own under
// market/configs/); search; and the market averages with their history (market/averages/).
type Book struct {
	base
	opts   BookOptions
	offers *offerIndex

	topic *pubsub.Topic
	sub   *pubsub.Subscription

	bookSpace, cfgSpace, avgSpace, nameSpace *node.Space

	// booked signals that the book took new offers, so market averages follow the offers as
	// they arrive instead of waiting for the next period.
	booked chan struct{}

	mu           sync.Mutex
	rejects      map[peer.ID]int       // invalid offers received, for the record
	queryRejects map[peer.ID]int       // of them, those in catch-up answers
	queried      map[peer.ID]time.Time // peers asked for their offers after start
	taken        int                   // catch-up queries running or succeeded
	avgs         map[string]ConfigAverage
	resources    ResourceAverages
	bound        imageNames // persisted under market/imagenames/
}

// NewBook returns the offer book; attach it to a node before the Buyer and the Provider,
// which use it.
func NewBook(opts BookOptions) *Book {
	opts.fill()
	return &Book{opts: opts, offers: newOfferIndex(opts.MaxOffersPerProvider, opts.MaxOffers), booked: make(chan struct{}, 1),
		rejects: map[peer.ID]int{}, queryRejects: map[peer.ID]int{}, queried: map[peer.ID]time.Time{}, avgs: map[string]ConfigAverage{}, bound: imageNames{}}
}

// Start implements node.Service: it loads the persisted book and averages, joins the offers
// topic, serves the offers query, adds its API routes and starts catching up from peers.
func (b *Book) Start(ctx context.Context, n *node.Node) error {
	b.begin(ctx, n, b.opts.Logger, "book", b.opts.StreamOptions)
	st := n.Store()
	b.bookSpace, b.cfgSpace, b.avgSpace = st.Space("market/book/"), st.Space("market/configs/"), st.Space("market/averages/")
	b.nameSpace = st.Space("market/imagenames/")
	if err := b.nameSpace.List(func(name string, hash []byte) error {
		b.bound[name] = string(hash)
		return nil
	}); err != nil {
		return fmt.Errorf("market: image names: %w", err)
	}
	if err := b.loadBook(); err != nil {
		return err
	}
	b.loadAverages()
	topic, err := n.Topic(OffersTopic, b.validate)
	if err != nil {
		return fmt.Errorf("market: %w", err)
	}
	b.topic = topic
	score := scoreTopic
	if err := topic.SetScoreParams(&score); err != nil {
		return fmt.Errorf("market: score %s: %w", OffersTopic, err)
	}
	n.ScorePeers(b.appScore)
	// gossipsub drops what a subscriber is too slow to take; persisting an offer takes a store
	// transaction, so the queue is deep enough for bursts (a flood, a busy store) to wait.
	if b.sub, err = topic.Subscribe(pubsub.WithBufferSize(subscriptionBuffer)); err != nil {
		return fmt.Errorf("market: subscribe %s: %w", OffersTopic, err)
	}
	b.serve(OffersQueryID, 1024, 1<<20, 30*time.Second, b.handleQuery)
	b.routes(n.API())
	b.group.Go(b.readOffers)
	b.group.Go(b.every(b.opts.Housekeeping, b.prune))
	b.group.Go(b.averageLoop)
	return b.startQueries()
}

// Close implements node.Service.
func (b *Book) Close() error {
	if b.sub != nil {
		b.sub.Cancel()
	}
	return b.stop()
}

// Get returns the live offer of a provider's machine.
func (b *Book) Get(provider peer.ID, machine MachineID) (SignedOffer, bool) {
	return b.offers.Get(provider, machine, b.now())
}

// Offers lists the live offers, newest first.
func (b *Book) Offers() []Offer { return b.offers.Live(b.now()) }

// Len is the number of offers held, tombstones of withdrawn ones included.
func (b *Book) Len() int { return b.offers.Len() }

// subscriptionBuffer is how many validated offers may wait for the book.
const subscriptionBuffer = 4096

// publish sends an offer envelope on the offers topic (the Provider's offers). The local
// validation of one's own offer can be throttled while the topic is flooded; it is tried
// again a few times, backing off, rather than left to the next republish.
func (b *Book) publish(ctx context.Context, raw []byte) error {
	wait := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := b.topic.Publish(ctx, raw)
		if err == nil || attempt == publishAttempts || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// publishAttempts is how often publish tries one offer (the waits add up to 1.55 s).
const publishAttempts = 6

// topicEvents follows peers joining the offers topic (the Provider republishes for them).
func (b *Book) topicEvents() (*pubsub.TopicEventHandler, error) { return b.topic.EventHandler() }

// prune drops expired offers from the book and the store.
func (b *Book) prune() {
	for _, o := range b.offers.Prune(b.now()) {
		if err := b.bookSpace.Delete(bookKey(o)); err != nil {
			b.log.Warn("prune offer", "machine", o.Machine, "err", err)
		}
	}
}

// Add takes offers into the book as if they had arrived (seeding a book in benchmarks and
// tests); they must come from SignOffer or DecodeOffer. It returns how many were new.
func (b *Book) Add(offers []SignedOffer) int { return b.acceptAll(offers) }

// names is a copy of the image-name bindings.
func (b *Book) names() imageNames {
	b.mu.Lock()
	defer b.mu.Unlock()
	return maps.Clone(b.bound)
}

// bindNames binds the names of the offers' images that are not bound yet to their hashes:
// at once in memory, where the catalog reads them, then in the store. A batch whose names are
// all bound opens no store transaction.
func (b *Book) bindNames(offers []SignedOffer) error {
	fresh := imageNames{}
	b.mu.Lock()
	for _, so := range offers {
		for _, img := range so.Images {
			if _, ok := b.bound[img.Name]; ok || len(b.bound) >= maxImageNames {
				continue
			}
			b.bound[img.Name] = img.Hash
			fresh[img.Name] = img.Hash
		}
	}
	b.mu.Unlock()
	if len(fresh) == 0 {
		return nil
	}
	return b.nameSpace.Update(func(tx *node.Txn) error {
		for name, hash := range fresh {
			if err := tx.Put(name, []byte(hash)); err != nil {
				return err
			}
		}
		return nil
	})
}
