package market

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"golang.org/x/sync/errgroup"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Options configure the market service. The zero value is a buyer-only node with the
// defaults below.
type Options struct {
	Logger *slog.Logger

	// Provider makes the node sell machines: it keeps machines, publishes their offers and
	// answers store and control requests.
	Provider bool
	// Manager returns the provider's VM manager, called once at Start with the started node
	// (the manager's inventory lives in the node's store). Without it a provider publishes
	// offers but refuses store requests with ErrNoHypervisor.
	Manager func(*node.Node) (*vm.Manager, error)
	// Images are the OS images the provider holds for preconfigured VMs.
	Images []Image

	// Republish is how often a provider publishes its offers again (default 2m); OfferTTL how
	// long each stays valid (default 10m, at most MaxOfferTTL).
	Republish time.Duration
	OfferTTL  time.Duration
	// AverageInterval is how often market averages are computed (default 60s, the report's
	// priceaverage period); History how many samples per configuration are kept (default 1440).
	AverageInterval time.Duration
	History         int
	// Housekeeping is how often expired offers are pruned and pending leases retried
	// (default 10s).
	Housekeeping time.Duration
	// StoreTimeout bounds a store request, VM creation included (default 5m); ControlTimeout
	// a control request (default 2m: a stop waits for the guest).
	StoreTimeout   time.Duration
	ControlTimeout time.Duration
	// ConsoleIdle closes a console tunnel nobody used for this long (default 10m).
	ConsoleIdle time.Duration
	// RejectLimit is how many invalid offers a peer may forward before it is blacklisted by
	// the gossip router (default 16).
	RejectLimit int
	// OnOffer, if set, is called after a new offer entered the book (tests, benchmarks).
	OnOffer func(Offer)
}

func (o *Options) fill() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.Republish, 2*time.Minute)
	def(&o.OfferTTL, 10*time.Minute)
	o.OfferTTL = min(o.OfferTTL, MaxOfferTTL)
	def(&o.AverageInterval, time.Minute)
	def(&o.Housekeeping, 10*time.Second)
	def(&o.StoreTimeout, 5*time.Minute)
	def(&o.ControlTimeout, 2*time.Minute)
	def(&o.ConsoleIdle, 10*time.Minute)
	if o.History <= 0 {
		o.History = 1440
	}
	if o.RejectLimit <= 0 {
		o.RejectLimit = 16
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Service is the marketplace on one node (a node.Service): every node keeps the offer book,
// the catalog and the averages and acts as a buyer; a provider also sells its machines.
type Service struct {
	opts Options
	log  *slog.Logger
	n    *node.Node
	mgr  *vm.Manager
	book *Book

	ctx    context.Context
	cancel context.CancelFunc
	group  *errgroup.Group

	topic *pubsub.Topic
	sub   *pubsub.Subscription

	bookSpace, provSpace, buyerSpace, cfgSpace, avgSpace, hashSpace *node.Space

	images []Image // with hashes

	// provMu serialises machine changes and offer publishing (sequence numbers).
	provMu  sync.Mutex
	lastSeq uint64
	publish chan struct{} // a change to publish soon
	// booked signals that the offer book took new offers, so market averages follow the
	// offers as they arrive instead of waiting for the next period.
	booked chan struct{}

	mu        sync.Mutex
	consoles  map[vm.ID]string // provider: VNC address of each open console session
	tunnels   map[vm.ID]*tunnel
	rejects   map[peer.ID]int
	queried   map[peer.ID]time.Time // peers asked for their offers after start
	avgs      map[string]ConfigAverage
	resources ResourceAverages
}

// New returns the market service; attach it to a node through node.Options.Services.
func New(opts Options) *Service {
	opts.fill()
	return &Service{
		opts: opts, log: opts.Logger, book: NewBook(),
		publish: make(chan struct{}, 1), booked: make(chan struct{}, 1),
		consoles: map[vm.ID]string{}, tunnels: map[vm.ID]*tunnel{},
		rejects: map[peer.ID]int{}, queried: map[peer.ID]time.Time{}, avgs: map[string]ConfigAverage{},
	}
}

// Book is the node's offer book.
func (s *Service) Book() *Book { return s.book }

// Start implements node.Service: it loads the persisted book, joins the offers topic, registers
// the stream protocols and the API routes, and starts the background loops.
func (s *Service) Start(ctx context.Context, n *node.Node) error {
	s.n = n
	s.log = s.opts.Logger.With("peer", n.ID().ShortString())
	st := n.Store()
	s.bookSpace = st.Space("market/book/")
	s.provSpace = st.Space("market/provider/")
	s.buyerSpace = st.Space("market/buyer/")
	s.cfgSpace = st.Space("market/configs/")
	s.avgSpace = st.Space("market/averages/")
	s.hashSpace = st.Space("market/imagehash/")
	s.ctx, s.cancel = context.WithCancel(ctx)
	s.group, s.ctx = errgroup.WithContext(s.ctx)

	if s.opts.Provider && s.opts.Manager != nil {
		mgr, err := s.opts.Manager(n)
		if err != nil {
			return fmt.Errorf("market: vm manager: %w", err)
		}
		s.mgr = mgr
	}
	if err := s.loadImages(ctx); err != nil {
		return err
	}
	if err := s.loadBook(); err != nil {
		return err
	}
	s.loadAverages()
	if s.opts.Provider {
		if err := s.recoverPending(ctx); err != nil {
			return err
		}
	}

	topic, err := n.Topic(OffersTopic, s.validate)
	if err != nil {
		return fmt.Errorf("market: %w", err)
	}
	s.topic = topic
	if s.sub, err = topic.Subscribe(); err != nil {
		return fmt.Errorf("market: subscribe %s: %w", OffersTopic, err)
	}

	s.serve(OffersQueryID, 1<<20, 30*time.Second, s.handleQuery)
	s.serve(NoticeID, 64<<10, 30*time.Second, s.handleNotice)
	if s.opts.Provider {
		s.serve(StoreID, 256<<10, s.opts.StoreTimeout, s.handleStore)
		s.serve(ControlID, 128<<10, s.opts.ControlTimeout, s.handleControl)
		s.serve(ConsoleID, 256<<10, 0, s.handleConsole)
	}
	s.routes(n.API())

	s.group.Go(s.readOffers)
	s.group.Go(s.housekeeping)
	s.group.Go(s.averageLoop)
	if err := s.startQueries(); err != nil {
		return err
	}
	if s.opts.Provider {
		s.group.Go(s.publishLoop)
	}
	return nil
}

// Close implements node.Service: it stops what Start started.
func (s *Service) Close() error {
	if s.cancel == nil {
		return nil
	}
	h := s.n.Host()
	for _, id := range []protocol.ID{OffersQueryID, NoticeID, StoreID, ControlID, ConsoleID} {
		h.RemoveStreamHandler(id)
	}
	s.cancel()
	if s.sub != nil {
		s.sub.Cancel()
	}
	s.mu.Lock()
	for id, t := range s.tunnels {
		t.close()
		delete(s.tunnels, id)
	}
	s.mu.Unlock()
	err := s.group.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// peerAddr is a peer to dial, with addresses learnt from its offer.
type peerAddr struct {
	id    peer.ID
	addrs []string
}

// open opens a stream to p. When not connected it dials the addresses p advertised in its
// offer, then whatever the DHT knows of p.
func (s *Service) open(ctx context.Context, p peerAddr, id protocol.ID) (network.Stream, error) {
	h := s.n.Host()
	if h.Network().Connectedness(p.id) != network.Connected {
		var addrs []ma.Multiaddr
		for _, a := range p.addrs {
			if m, err := ma.NewMultiaddr(a); err == nil {
				addrs = append(addrs, m)
			}
		}
		err := h.Connect(ctx, peer.AddrInfo{ID: p.id, Addrs: addrs})
		if err != nil {
			var info peer.AddrInfo
			if info, err = s.n.DHT().FindPeer(ctx, p.id); err == nil {
				err = h.Connect(ctx, info)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: cannot reach %s: %v", ErrUnavailable, p.id.ShortString(), err)
		}
	}
	st, err := h.NewStream(ctx, p.id, id)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: open %s: %v", ErrUnavailable, p.id.ShortString(), id, err)
	}
	if err := st.Scope().SetService(serviceName); err != nil {
		st.Reset()
		return nil, fmt.Errorf("open %s: %w", id, err)
	}
	return st, nil
}

func (s *Service) now() time.Time { return time.Now().UTC() }
