package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	drouting "github.com/libp2p/go-libp2p/p2p/discovery/routing"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
)

// DHTPrefix is the protocol prefix of the marketplace's own DHT, kept apart from IPFS's.
const DHTPrefix protocol.ID = "/virtuoso"

// ErrNotStarted is returned by calls that need a running node.
var ErrNotStarted = errors.New("node is not started")

// Service is a role's component (provider, coordinator, market, …) attached to a node. Start is
// called once the network is up, in the order services were given; Close in reverse order,
// before the network stops.
type Service interface {
	Start(ctx context.Context, n *Node) error
	Close() error
}

// ProtocolLimit is the resource-manager limit of one of our stream protocols.
type ProtocolLimit struct {
	Protocol protocol.ID
	// Streams is the most streams of the protocol open at once, over all peers;
	// StreamsPerPeer the most with one peer.
	Streams, StreamsPerPeer int
	// Memory is the most memory the protocol's streams may reserve, in bytes.
	Memory int64
}

// Options are what a node is built with beyond its config; the zero value is usable.
type Options struct {
	Logger   *slog.Logger
	Version  string
	Services []Service
	// Protocols lists our stream protocols with explicit limits.
	Protocols []ProtocolLimit
	// Fast shortens DHT and pubsub intervals, for tests on loopback.
	Fast bool
}

// Node is one participant of the marketplace.
type Node struct {
	home   Home
	cfg    Config
	opts   Options
	log    *slog.Logger
	priv   crypto.PrivKey
	id     peer.ID
	store  *Store
	events *Events

	host    host.Host
	dht     *dht.IpfsDHT
	ps      *pubsub.PubSub
	api     *API
	metrics *metrics

	appScore atomic.Value // func(peer.ID) float64, set by ScorePeers
	gater    *gater

	topicsMu sync.Mutex
	topics   map[string]*pubsub.Topic

	cancel  context.CancelFunc
	group   *errgroup.Group
	failed  <-chan struct{}
	started []Service

	closeOnce sync.Once
	closeErr  error
	closed    bool // set by Close; read by Start, which is not called concurrently with it
}

// New loads the home's identity and opens its store; nothing touches the network until Start.
func New(home Home, cfg Config, opts Options) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	priv, err := home.Identity()
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("peer id: %w", err)
	}
	store, err := OpenStore(home.DataDir(), log)
	if err != nil {
		if errors.Is(err, ErrHomeLocked) {
			return nil, fmt.Errorf("another node is already running on home %s: stop it, or use another --home: %w", home.Dir, err)
		}
		return nil, err
	}
	return &Node{
		home: home, cfg: cfg, opts: opts, log: log.With("peer", id.String()),
		priv: priv, id: id, store: store, events: NewEvents(), topics: map[string]*pubsub.Topic{},
	}, nil
}

// ID is the node's peer ID, its identity everywhere.
func (n *Node) ID() peer.ID { return n.id }

// PrivKey is the node's signing key.
func (n *Node) PrivKey() crypto.PrivKey { return n.priv }

// Home is the node's home directory.
func (n *Node) Home() Home { return n.home }

// Config is the node's configuration.
func (n *Node) Config() Config { return n.cfg }

// Logger is the node's logger, with its peer attached.
func (n *Node) Logger() *slog.Logger { return n.log }

// Store is the node's database.
func (n *Node) Store() *Store { return n.store }

// Events is the node's event stream; usable from New on.
func (n *Node) Events() *Events { return n.events }

// Host is the libp2p host; nil before Start.
func (n *Node) Host() host.Host { return n.host }

// DHT is the node's DHT; nil before Start.
func (n *Node) DHT() *dht.IpfsDHT { return n.dht }

// PubSub is the node's gossipsub router; nil before Start.
func (n *Node) PubSub() *pubsub.PubSub { return n.ps }

// API is the node's local HTTP API; services add their routes to it in Start.
func (n *Node) API() *API { return n.api }

// Attach adds a service after New and before Start; it starts after those given in Options.
func (n *Node) Attach(s Service) {
	n.opts.Services = append(n.opts.Services, s)
}

// Start brings the node up: host, DHT, gossipsub, the API, peer discovery, then services.
func (n *Node) Start(ctx context.Context) (err error) {
	if n.closed {
		return errors.New("node is closed: build a new one to start again")
	}
	if n.host != nil {
		return errors.New("node already started")
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n.cancel = cancel
	n.group, ctx = errgroup.WithContext(ctx)
	n.failed = ctx.Done()
	defer func() {
		if err != nil {
			n.Close()
		}
	}()

	reg := prometheus.NewRegistry()
	if err := n.startHost(reg); err != nil {
		return err
	}
	n.metrics = newMetrics(reg, n.host)
	if err := n.startRouting(ctx); err != nil {
		return err
	}
	n.api, err = newAPI(n, reg)
	if err != nil {
		return err
	}
	n.group.Go(func() error { return n.api.serve() })
	n.group.Go(func() error { n.discover(ctx); return nil })

	for _, s := range n.opts.Services {
		if err := s.Start(ctx, n); err != nil {
			return fmt.Errorf("start %T: %w", s, err)
		}
		n.started = append(n.started, s)
	}
	if err := n.api.publish(); err != nil {
		return err
	}
	n.log.Info("node started", "addrs", n.host.Addrs(), "api", n.api.Addr(), "provider", n.cfg.Roles.Provider, "coordinator", n.cfg.Roles.Coordinator)
	return nil
}

func (n *Node) startHost(reg prometheus.Registerer) error {
	limits := rcmgr.DefaultLimits
	for _, p := range n.opts.Protocols {
		limits.AddProtocolLimit(p.Protocol,
			rcmgr.BaseLimit{StreamsInbound: p.Streams, StreamsOutbound: p.Streams, Streams: p.Streams, Memory: p.Memory},
			rcmgr.BaseLimitIncrease{})
		limits.AddProtocolPeerLimit(p.Protocol,
			rcmgr.BaseLimit{StreamsInbound: p.StreamsPerPeer, StreamsOutbound: p.StreamsPerPeer, Streams: p.StreamsPerPeer, Memory: p.Memory},
			rcmgr.BaseLimitIncrease{})
	}
	libp2p.SetDefaultServiceLimits(&limits)
	conc := limits.AutoScale()
	partial := rcmgr.PartialLimitConfig{System: rcmgr.ResourceLimits{
		Conns: rcmgr.LimitVal(n.cfg.Network.MaxConnections),
	}}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(partial.Build(conc)))
	if err != nil {
		return fmt.Errorf("resource manager: %w", err)
	}

	opts := []libp2p.Option{
		libp2p.Identity(n.priv),
		libp2p.ListenAddrs(n.cfg.ListenAddrs()...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ResourceManager(rm),
		libp2p.PrometheusRegisterer(reg),
		libp2p.UserAgent("virtuoso/" + n.opts.Version),
	}
	if n.cfg.Profile == ProfilePublic {
		opts = append(opts, libp2p.EnableRelay())
		if n.cfg.Network.NATPortMap {
			opts = append(opts, libp2p.NATPortMap())
		}
		if n.cfg.Network.HolePunching {
			opts = append(opts, libp2p.EnableHolePunching())
		}
	} else {
		opts = append(opts, libp2p.DisableRelay(), libp2p.ForceReachabilityPrivate())
	}
	n.gater = newGater(n.cfg.Profile != ProfilePublic)
	opts = append(opts, libp2p.ConnectionGater(n.gater))
	h, err := libp2p.New(opts...)
	if err != nil {
		rm.Close()
		return listenError(err)
	}
	n.host = h
	return nil
}

// listenError turns a failed listen into a message that says what to do.
func listenError(err error) error {
	var opErr *net.OpError
	if errors.As(err, &opErr) || errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("cannot listen (%w): the port is in use or not allowed; change network.listen in config.toml or stop the other program", err)
	}
	return fmt.Errorf("start host: %w", err)
}

func (n *Node) startRouting(ctx context.Context) error {
	dopts := []dht.Option{
		dht.Mode(dht.ModeServer),
		dht.ProtocolPrefix(DHTPrefix),
		dht.BootstrapPeers(n.cfg.BootstrapPeers()...),
	}
	if n.opts.Fast {
		dopts = append(dopts, dht.RoutingTableRefreshPeriod(time.Second))
	}
	d, err := dht.New(n.host, dopts...)
	if err != nil {
		return fmt.Errorf("start DHT: %w", err)
	}
	n.dht = d

	psOpts := []pubsub.Option{
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithPeerExchange(true),
		pubsub.WithRawTracer(n.metrics),
		pubsub.WithDiscovery(drouting.NewRoutingDiscovery(d)),
		pubsub.WithMaxMessageSize(1 << 20),
		pubsub.WithPeerScore(n.scoreParams(), &ScoreThresholds),
		pubsub.WithPeerScoreInspect(n.banGraylisted, time.Second),
	}
	ps, err := pubsub.NewGossipSub(ctx, n.host, psOpts...)
	if err != nil {
		return fmt.Errorf("start gossipsub: %w", err)
	}
	n.ps = ps

	if n.cfg.Profile == ProfilePublic && n.cfg.Network.MDNS {
		if err := n.startMDNS(); err != nil {
			return err
		}
	}
	for _, info := range n.cfg.BootstrapPeers() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := n.host.Connect(cctx, info); err != nil {
			n.log.Warn("bootstrap peer unreachable", "bootstrap", info.ID, "err", err)
		}
		cancel()
	}
	return d.Bootstrap(ctx)
}

// discover advertises the node under the marketplace's rendezvous key and connects to every
// node found there, so that one bootstrap peer is enough to reach the whole marketplace.
func (n *Node) discover(ctx context.Context) {
	disc := drouting.NewRoutingDiscovery(n.dht)
	ns := n.cfg.Network.Rendezvous
	interval := n.cfg.Network.DiscoveryInterval
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n.dht.RoutingTable().Size() > 0 {
			actx, cancel := context.WithTimeout(ctx, interval+5*time.Second)
			if _, err := disc.Advertise(actx, ns); err != nil && ctx.Err() == nil {
				n.log.Debug("advertise", "err", err)
			}
			n.connectFound(actx, disc, ns)
			cancel()
		}
		t.Reset(interval)
	}
}

func (n *Node) connectFound(ctx context.Context, disc *drouting.RoutingDiscovery, ns string) {
	found, err := disc.FindPeers(ctx, ns)
	if err != nil {
		return
	}
	for info := range found {
		if n.cfg.Profile == ProfileLocal {
			info.Addrs = slices.DeleteFunc(info.Addrs, isNotLoopback)
		}
		if info.ID == n.id || len(info.Addrs) == 0 || n.host.Network().Connectedness(info.ID) == network.Connected {
			continue
		}
		if err := n.host.Connect(ctx, info); err != nil {
			n.log.Debug("connect to discovered peer", "to", info.ID, "err", err)
		}
	}
}

// Topic joins a gossipsub topic once and returns it; later calls return the same *Topic. A
// validator, when given, is registered before joining, so that the rest of the code only
// ever sees messages that passed it.
func (n *Node) Topic(name string, validator pubsub.ValidatorEx, opts ...pubsub.ValidatorOpt) (*pubsub.Topic, error) {
	if n.ps == nil {
		return nil, ErrNotStarted
	}
	n.topicsMu.Lock()
	defer n.topicsMu.Unlock()
	if t, ok := n.topics[name]; ok {
		return t, nil
	}
	if validator != nil {
		if err := n.ps.RegisterTopicValidator(name, validator, opts...); err != nil {
			return nil, fmt.Errorf("validator for %s: %w", name, err)
		}
	}
	t, err := n.ps.Join(name)
	if err != nil {
		if validator != nil {
			n.ps.UnregisterTopicValidator(name)
		}
		return nil, fmt.Errorf("join %s: %w", name, err)
	}
	n.topics[name] = t
	return t, nil
}

// ScoreThresholds are where a gossip peer's score stops its gossip being taken, its messages
// being published to it, and everything it sends being read (graylisted). A peer reaches
// them by sending messages a topic's validator rejects (each topic sets its weight, see
// ScoreTopic) or by what the application scores it (ScorePeers).
var ScoreThresholds = pubsub.PeerScoreThresholds{
	GossipThreshold: -100, PublishThreshold: -500, GraylistThreshold: -1000,
	AcceptPXThreshold: 100, OpportunisticGraftThreshold: 5,
}

// scoreParams are gossipsub's peer-score parameters: the topics' own (ScoreTopic) and the
// application's score (ScorePeers); scores decay by 1% a second. Peers sharing an IP address
// are not scored down for it: a marketplace may run several nodes on one host.
func (n *Node) scoreParams() *pubsub.PeerScoreParams {
	return &pubsub.PeerScoreParams{
		SkipAtomicValidation: true,
		Topics:               map[string]*pubsub.TopicScoreParams{},
		AppSpecificScore: func(p peer.ID) float64 {
			if fn, ok := n.appScore.Load().(func(peer.ID) float64); ok {
				return fn(p)
			}
			return 0
		},
		AppSpecificWeight: 1,
		// A peer that restarts within a minute grafts again during the backoff its last
		// life was pruned with, once per topic: a few such penalties are forgiven, so that
		// a node that crashed and came back is not refused for GraylistBan.
		BehaviourPenaltyWeight: -10, BehaviourPenaltyDecay: 0.99, BehaviourPenaltyThreshold: 20,
		DecayInterval: time.Second, DecayToZero: 0.01, RetainScore: 10 * time.Minute,
	}
}

// GraylistBan is how long a peer whose gossip score fell below the graylist threshold is
// disconnected and refused: graylisting alone drops its messages unread, but they still
// arrive and cost bandwidth.
const GraylistBan = 10 * time.Minute

// banGraylisted disconnects and refuses, for GraylistBan, the peers scored below the graylist
// threshold.
func (n *Node) banGraylisted(scores map[peer.ID]float64) {
	for p, s := range scores {
		if s < ScoreThresholds.GraylistThreshold && n.gater.ban(p, time.Now().Add(GraylistBan)) {
			n.log.Warn("gossip peer graylisted: disconnected and refused", "peer", p, "score", s, "for", GraylistBan)
			n.host.Network().ClosePeer(p)
		}
	}
}

// Refuse disconnects p and refuses every connection with it until the given time: an
// operator's ban, and how fault tests partition two nodes.
func (n *Node) Refuse(p peer.ID, until time.Time) {
	n.gater.ban(p, until)
	n.host.Network().ClosePeer(p)
}

// ScorePeers sets the application's part of gossip peers' scores (added to what the topics
// score): a service that judges peers by more than their gossip, e.g. the offers they sent in
// a direct query, calls it once at Start.
func (n *Node) ScorePeers(fn func(peer.ID) float64) { n.appScore.Store(fn) }

// Done is closed when the node stops: a part of it failed (the API server died), or Close was
// called. The error is Close's.
func (n *Node) Done() <-chan struct{} { return n.failed }

// Close stops the API (so no request reaches a closing service), the services in reverse order
// (those that never started too), then the network and the store. Calling it again returns the first call's result.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { n.closeErr = n.close() })
	return n.closeErr
}

func (n *Node) close() error {
	n.closed = true
	var errs []error
	if n.api != nil {
		errs = append(errs, n.api.close())
	}
	for _, s := range slices.Backward(n.started) {
		if err := s.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %T: %w", s, err))
		}
	}
	// Services that never started (the node was not started, or its start failed first)
	// are closed too: what they hold was built before Start.
	for _, s := range slices.Backward(n.opts.Services) {
		if !slices.Contains(n.started, s) {
			if err := s.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close %T: %w", s, err))
			}
		}
	}
	n.topicsMu.Lock()
	for name, t := range n.topics {
		if err := t.Close(); err != nil {
			errs = append(errs, fmt.Errorf("leave %s: %w", name, err))
		}
	}
	n.topicsMu.Unlock()
	if n.cancel != nil {
		n.cancel()
	}
	if n.dht != nil {
		errs = append(errs, n.dht.Close())
	}
	if n.host != nil {
		errs = append(errs, n.host.Close())
	}
	if n.group != nil {
		errs = append(errs, n.group.Wait())
	}
	errs = append(errs, n.store.Close())
	return errors.Join(errs...)
}
