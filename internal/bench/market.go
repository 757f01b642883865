package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
)

// MarketOptions configure the market benchmark. Zero values take the defaults of
// `virtuoso bench market`.
type MarketOptions struct {
	Dir      string // where the nodes' homes are made (default: the system temp dir)
	Nodes    int    // nodes on loopback for offer propagation (default 30)
	Rounds   int    // offers published, one after the other (default 20)
	Offers   int    // offers in the book searched (default 10000)
	Searches int    // searches timed (default 300)
	Log      *slog.Logger
}

func (o *MarketOptions) defaults() error {
	if o.Nodes == 0 {
		o.Nodes = 30
	}
	if o.Rounds == 0 {
		o.Rounds = 20
	}
	if o.Offers == 0 {
		o.Offers = 10_000
	}
	if o.Searches == 0 {
		o.Searches = 300
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.Nodes < 2 || o.Nodes > 200:
		return fmt.Errorf("bench market: %d nodes: want 2 to 200", o.Nodes)
	case o.Rounds < 1 || o.Offers < 1 || o.Searches < 1:
		return errors.New("bench market: rounds, offers and searches must be positive")
	}
	return nil
}

// MarketResult holds the figures the market benchmark prints.
type MarketResult struct {
	Propagation     []time.Duration // publish → in another node's book, one per node and round
	Lost            int             // deliveries that did not happen within roundTimeout
	Catchup         time.Duration   // connect → a joining node holds the provider's book (its offers query)
	CatchupOffers   int
	Search          []time.Duration // one search over the book
	SearchMatches   int             // matches of the last search
	Verify          time.Duration   // decoding and verifying one offer, average
	StartupDuration time.Duration   // starting the nodes

	// The same while one identity floods the offers topic with validly signed offers of
	// made-up machines, as fast as it can: propagation of the honest provider's offers, and
	// searches of a node's own book, quiet and flooded.
	HostilePropagation []time.Duration
	HostileLost        int
	BookSearch         []time.Duration
	HostileBookSearch  []time.Duration
	Flooded            int // offers the flooder published
	FlooderHeld        int // of them, in the searched node's book at the end
}

// Market measures the marketplace: how long an offer takes to reach every offer book of
// opts.Nodes nodes on loopback (gossipsub), how long a joining node's catch-up query for the
// whole book takes, and how long a search over opts.Offers offers takes. It prints one table.
func Market(ctx context.Context, opts MarketOptions, out io.Writer) error {
	if err := opts.defaults(); err != nil {
		return err
	}
	res, err := RunMarket(ctx, opts)
	if err != nil {
		return err
	}
	res.Print(out, opts)
	return nil
}

// RunMarket runs the market benchmark and returns its figures.
func RunMarket(ctx context.Context, opts MarketOptions) (MarketResult, error) {
	var res MarketResult
	if err := opts.defaults(); err != nil {
		return res, err
	}
	dir, err := os.MkdirTemp(opts.Dir, "virtuoso-bench-market-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)

	offers, err := syntheticOffers(opts.Offers)
	if err != nil {
		return res, err
	}
	res.Verify = verifyTime(offers)
	res.Search, res.SearchMatches, err = searchTimes(offers, opts.Searches)
	if err != nil {
		return res, err
	}
	if err := propagation(ctx, dir, opts, offers, &res); err != nil {
		return res, err
	}
	return res, nil
}

// arrivals records when each node took each offer of the provider's machine into its book.
type arrivals struct {
	mu   sync.Mutex
	seen map[uint64]map[int]time.Time // seq → node → time
	ch   chan struct{}
}

func (a *arrivals) add(i int, o market.Offer) {
	a.mu.Lock()
	if a.seen[o.Seq] == nil {
		a.seen[o.Seq] = map[int]time.Time{}
	}
	a.seen[o.Seq][i] = time.Now()
	a.mu.Unlock()
	select {
	case a.ch <- struct{}{}:
	default:
	}
}

func (a *arrivals) count(seq uint64) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.seen[seq])
}

func propagation(ctx context.Context, dir string, opts MarketOptions, offers []market.SignedOffer, res *MarketResult) error {
	arr := &arrivals{seen: map[uint64]map[int]time.Time{}, ch: make(chan struct{}, 1)}
	var provider *daemon.Node
	var nodes []*node.Node
	var all []*daemon.Node
	defer func() {
		for _, n := range slices.Backward(nodes) {
			n.Close()
		}
	}()
	start := time.Now()
	for i := range opts.Nodes {
		dopts := daemon.Options{
			Book: market.BookOptions{OnOffer: func(o market.Offer) { arr.add(i, o) }},
			// Periodic republishing would blur the figures: every offer here is published once.
			Provider: market.ProviderOptions{Republish: time.Hour, OfferTTL: time.Hour},
		}
		n, err := startBenchNode(ctx, filepath.Join(dir, fmt.Sprintf("node-%02d", i)), nodes, opts.Log, i == 0, dopts)
		if err != nil {
			return err
		}
		if i == 0 {
			provider = n
		}
		nodes = append(nodes, n.Node)
		all = append(all, n)
	}
	res.StartupDuration = time.Since(start)

	m, err := provider.Provider.AddMachine(ctx, market.MachineSpec{Name: "bench", Capacity: market.Resources{SpeedBogomips: 64000, MemoryMB: 262144, StorageMB: 1 << 30}})
	if err != nil {
		return err
	}
	// Warm-up: wait until the first offer is everywhere (queries help here), then until one
	// edit reaches every node by gossip alone: the mesh has formed.
	if err := waitAll(ctx, arr, opts.Nodes, 2*time.Minute); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	terms := m.Terms
	publish := func() (uint64, time.Time, error) {
		before := latestSeq(provider.Book, nodes[0].ID(), m.ID)
		terms.StoragePrice++
		t0 := time.Now()
		if _, err := provider.Provider.EditMachine(ctx, m.ID, market.MachineEdit{Terms: &terms}); err != nil {
			return 0, t0, err
		}
		seq, err := waitNewSeq(ctx, provider.Book, nodes[0].ID(), m.ID, before)
		return seq, t0, err
	}
	formed := false
	for range 30 {
		seq, _, err := publish()
		if err != nil {
			return err
		}
		if waitSeq(ctx, arr, seq, opts.Nodes, 5*time.Second) == nil {
			formed = true
			break
		}
	}
	if !formed {
		return errors.New("warm-up: no edit reached every node by gossip in 30 tries")
	}
	rounds := func(prop *[]time.Duration, lost *int) error {
		for range opts.Rounds {
			seq, t0, err := publish()
			if err != nil {
				return err
			}
			waitSeq(ctx, arr, seq, opts.Nodes, roundTimeout)
			arr.mu.Lock()
			for i, at := range arr.seen[seq] {
				if i != 0 {
					*prop = append(*prop, at.Sub(t0))
				}
			}
			*lost += opts.Nodes - len(arr.seen[seq])
			arr.mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}
	if err := rounds(&res.Propagation, &res.Lost); err != nil {
		return err
	}
	searched := all[1].Book
	if res.BookSearch, err = bookSearches(searched, opts.Searches); err != nil {
		return err
	}

	// Hostile: one identity floods the topic while the same rounds and searches run.
	fl, err := startFlooder(ctx, filepath.Join(dir, "flooder"), nodes, opts.Log)
	if err != nil {
		return err
	}
	defer fl.n.Close()
	fctx, stop := context.WithCancel(ctx)
	flooded := make(chan int, 1)
	go func() { flooded <- fl.flood(fctx) }()
	if err := rounds(&res.HostilePropagation, &res.HostileLost); err != nil {
		stop()
		return err
	}
	res.HostileBookSearch, err = bookSearches(searched, opts.Searches)
	stop()
	res.Flooded = <-flooded
	fl.n.Close() // its backlog must not slow the catch-up timed next
	for _, o := range searched.Offers() {
		if o.Provider == fl.n.ID() {
			res.FlooderHeld++
		}
	}
	if err != nil {
		return err
	}

	// Catch-up: the provider's book gets the synthetic offers; a new node asks for them.
	provider.Book.Add(offers)
	// Join without a bootstrap peer so that nothing arrives before the timed catch-up: the
	// joiner queries the provider as soon as the connection is identified.
	jn, err := startBenchNode(ctx, filepath.Join(dir, "joiner"), nil, opts.Log, false, daemon.Options{})
	if err != nil {
		return err
	}
	joiner := jn.Book
	nodes = append(nodes, jn.Node)
	want := min(provider.Book.Len(), market.MaxQueryOffers)
	t0 := time.Now()
	if err := jn.Host().Connect(ctx, peer.AddrInfo{ID: nodes[0].ID(), Addrs: nodes[0].Host().Addrs()}); err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for joiner.Len() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("catch-up: the joining node has %d of %d offers after 2m", joiner.Len(), want)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	res.Catchup = time.Since(t0)
	res.CatchupOffers = joiner.Len()

	return nil
}

func latestSeq(b *market.Book, p peer.ID, m market.MachineID) uint64 {
	if so, ok := b.Get(p, m); ok {
		return so.Seq
	}
	return 0
}

// waitNewSeq waits for the provider's own book to hold a newer offer of m than before.
func waitNewSeq(ctx context.Context, s *market.Book, p peer.ID, m market.MachineID, before uint64) (uint64, error) {
	deadline := time.Now().Add(60 * time.Second) // a flooded topic throttles the provider's own validation
	for time.Now().Before(deadline) {
		if seq := latestSeq(s, p, m); seq > before {
			return seq, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return 0, errors.New("the provider never published the edited offer")
}

func waitAll(ctx context.Context, arr *arrivals, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		arr.mu.Lock()
		got := map[int]bool{}
		for _, byNode := range arr.seen {
			for i := range byNode {
				got[i] = true
			}
		}
		arr.mu.Unlock()
		if len(got) == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("after %v the offer had not reached all %d nodes", within, n)
}

func waitSeq(ctx context.Context, arr *arrivals, seq uint64, n int, within time.Duration) error {
	t := time.NewTimer(within)
	defer t.Stop()
	for arr.count(seq) < n {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return fmt.Errorf("offer %d reached %d of %d nodes in %v", seq, arr.count(seq), n, within)
		case <-arr.ch:
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// roundTimeout is how long a published offer may take to reach every book before the
// missing deliveries count as lost (offers are republished every few minutes in real use).
const roundTimeout = 10 * time.Second

// startBenchNode starts a node on loopback with fast discovery, bootstrapped from the first
// of peers; a provider's VMs are emulated (TCG), so that no accelerator probe runs.
func startBenchNode(ctx context.Context, dir string, peers []*node.Node, log *slog.Logger, provider bool, opts daemon.Options) (*daemon.Node, error) {
	home := node.Home{Dir: dir}
	cfg := node.DefaultConfig(node.ProfileLocal)
	cfg.Network.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Network.DiscoveryInterval = 200 * time.Millisecond
	if len(peers) > 0 {
		for _, a := range peers[0].Host().Addrs() {
			cfg.Network.Bootstrap = append(cfg.Network.Bootstrap, fmt.Sprintf("%s/p2p/%s", a, peers[0].ID()))
		}
	}
	cfg.Roles.Provider = provider
	cfg.Provider.Accel = "tcg"
	return runBenchNode(ctx, home, cfg, log, opts)
}

// runBenchNode makes home a node's home with cfg and starts the node with opts.
func runBenchNode(ctx context.Context, home node.Home, cfg node.Config, log *slog.Logger, opts daemon.Options) (*daemon.Node, error) {
	if err := home.Init(cfg, false); err != nil {
		return nil, err
	}
	opts.Options = node.Options{Logger: log, Fast: true, Version: "bench"}
	n, err := daemon.New(home, cfg, opts)
	if err != nil {
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// syntheticOffers signs n offers of n providers with varied terms and free capacity.
func syntheticOffers(n int) ([]market.SignedOffer, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now().UTC().Truncate(time.Millisecond)
	out := make([]market.SignedOffer, 0, n)
	for i := range n {
		priv, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			return nil, err
		}
		id, err := peer.IDFromPrivateKey(priv)
		if err != nil {
			return nil, err
		}
		capacity := market.Resources{SpeedBogomips: 4000 + rng.Int64N(60000), MemoryMB: 4096 + rng.Int64N(262144), StorageMB: 100_000 + rng.Int64N(10_000_000)}
		free := market.Resources{SpeedBogomips: rng.Int64N(capacity.SpeedBogomips + 1), MemoryMB: rng.Int64N(capacity.MemoryMB + 1), StorageMB: rng.Int64N(capacity.StorageMB + 1)}
		t := market.DefaultTerms()
		t.SpeedPrice = market.Money(100 + rng.Int64N(10_000))
		t.MemoryPrice = market.Money(100 + rng.Int64N(10_000))
		t.StoragePrice = market.Money(100 + rng.Int64N(50_000))
		t.RunningSecs = []int64{600, 3600, 7200}[rng.IntN(3)]
		t.StorageSecs = []int64{86400, 7 * 86400, 30 * 86400}[rng.IntN(3)]
		var mid market.MachineID
		mid[0], mid[1], mid[2], mid[15] = byte(i>>16), byte(i>>8), byte(i), 1
		so, err := market.SignOffer(market.Offer{
			Provider: id, Machine: mid, Seq: 1, Issued: now, Expires: now.Add(market.MaxOfferTTL),
			Name: fmt.Sprintf("m%05d", i), Processor: "x86_64", NetworkMbps: []int64{100, 1000, 10000}[rng.IntN(3)],
			Methods: market.DefaultMethods(), Capacity: capacity, Free: free, Terms: t,
		}, priv)
		if err != nil {
			return nil, err
		}
		out = append(out, so)
	}
	return out, nil
}

// verifyTime is the average time to decode and verify one offer from its bytes.
func verifyTime(offers []market.SignedOffer) time.Duration {
	k := min(len(offers), 2000)
	t0 := time.Now()
	for _, so := range offers[:k] {
		market.DecodeOffer(so.Raw)
	}
	return time.Since(t0) / time.Duration(k)
}

// searchTimes times searches over the offers, for several configurations and orders.
func searchTimes(offers []market.SignedOffer, n int) ([]time.Duration, int, error) {
	live := make([]market.Offer, len(offers))
	for i, so := range offers {
		live[i] = so.Offer
	}
	cfgs := market.StandardConfigs()
	sorts := []string{market.SortTotal, market.SortStorage, market.SortRunning}
	out := make([]time.Duration, 0, n)
	matches := 0
	for i := range n {
		req := market.SearchRequest{Config: cfgs[i%len(cfgs)], Sort: sorts[i%len(sorts)], Limit: 20}
		t0 := time.Now()
		ms, err := market.Search(live, req)
		out = append(out, time.Since(t0))
		if err != nil {
			return nil, 0, err
		}
		matches = len(ms)
	}
	return out, matches, nil
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s)) + 0.5)
	return s[min(max(i-1, 0), len(s)-1)]
}

// Print writes the result table.
func (r MarketResult) Print(out io.Writer, opts MarketOptions) {
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
	fmt.Fprintf(tw, "what\tsamples\tp50\tp99\tmax\n")
	fmt.Fprintf(tw, "offer propagation, gossipsub, %d nodes on loopback\t%d\t%s\t%s\t%s\n", opts.Nodes, len(r.Propagation),
		ms(percentile(r.Propagation, 0.5)), ms(percentile(r.Propagation, 0.99)), ms(percentile(r.Propagation, 1)))
	fmt.Fprintf(tw, "search over %d offers (book snapshot + rank)\t%d\t%s\t%s\t%s\n", opts.Offers, len(r.Search),
		ms(percentile(r.Search, 0.5)), ms(percentile(r.Search, 0.99)), ms(percentile(r.Search, 1)))
	fmt.Fprintf(tw, "offer propagation while one identity floods\t%d\t%s\t%s\t%s\n", len(r.HostilePropagation),
		ms(percentile(r.HostilePropagation, 0.5)), ms(percentile(r.HostilePropagation, 0.99)), ms(percentile(r.HostilePropagation, 1)))
	fmt.Fprintf(tw, "search of a node's own book, quiet\t%d\t%s\t%s\t%s\n", len(r.BookSearch),
		ms(percentile(r.BookSearch, 0.5)), ms(percentile(r.BookSearch, 0.99)), ms(percentile(r.BookSearch, 1)))
	fmt.Fprintf(tw, "search of a node's own book, one identity flooding\t%d\t%s\t%s\t%s\n", len(r.HostileBookSearch),
		ms(percentile(r.HostileBookSearch, 0.5)), ms(percentile(r.HostileBookSearch, 0.99)), ms(percentile(r.HostileBookSearch, 1)))
	fmt.Fprintf(tw, "catch-up query of a joining node (%d offers)\t1\t%s\t\t\n", r.CatchupOffers, ms(r.Catchup))
	fmt.Fprintf(tw, "decode and verify one offer\t%d\t%s\t\t\n", min(opts.Offers, 2000), ms(r.Verify))
	tw.Flush()
	fmt.Fprintf(out, "\n%d nodes started in %v; %d of %d deliveries missed the %v round (lost to gossip until the next republish); the last search matched %d offers.\n",
		opts.Nodes, r.StartupDuration.Round(time.Millisecond), r.Lost, r.Lost+len(r.Propagation), roundTimeout, r.SearchMatches)
	fmt.Fprintf(out, "While flooding: %d of %d deliveries missed the round; the flooder published %d offers, of which the searched node's book holds %d.\n",
		r.HostileLost, r.HostileLost+len(r.HostilePropagation), r.Flooded, r.FlooderHeld)
}

// bookSearches times n searches of a node's own book, as its owner runs them.
func bookSearches(b *market.Book, n int) ([]time.Duration, error) {
	out := make([]time.Duration, 0, n)
	cfgs := market.StandardConfigs()
	for i := range n {
		t0 := time.Now()
		if _, err := b.Search(market.SearchQuery{ConfigName: cfgs[i%len(cfgs)].Name}); err != nil {
			return nil, err
		}
		out = append(out, time.Since(t0))
	}
	return out, nil
}

// flooder is a node without the market that publishes validly signed offers of made-up
// machines under its own identity, as fast as the topic takes them.
type flooder struct {
	n     *node.Node
	topic *pubsub.Topic
}

func startFlooder(ctx context.Context, dir string, peers []*node.Node, log *slog.Logger) (*flooder, error) {
	home := node.Home{Dir: dir}
	cfg := node.DefaultConfig(node.ProfileLocal)
	cfg.Network.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Network.DiscoveryInterval = 200 * time.Millisecond
	for _, a := range peers[0].Host().Addrs() {
		cfg.Network.Bootstrap = append(cfg.Network.Bootstrap, fmt.Sprintf("%s/p2p/%s", a, peers[0].ID()))
	}
	if err := home.Init(cfg, false); err != nil {
		return nil, err
	}
	n, err := node.New(home, cfg, node.Options{Logger: log, Fast: true, Version: "bench"})
	if err != nil {
		return nil, err
	}
	if err := n.Start(ctx); err != nil {
		n.Close()
		return nil, err
	}
	t, err := n.Topic(market.OffersTopic, nil)
	if err != nil {
		n.Close()
		return nil, err
	}
	for range 100 { // until it has mesh peers
		if len(t.ListPeers()) > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &flooder{n: n, topic: t}, nil
}

// flood publishes until ctx ends and returns how many offers it published.
func (f *flooder) flood(ctx context.Context) int {
	priv := f.n.PrivKey()
	sent := 0
	for i := uint32(0); ctx.Err() == nil; i++ {
		now := time.Now().UTC().Truncate(time.Millisecond)
		var mid market.MachineID
		mid[0], mid[12], mid[13], mid[14], mid[15] = 0xfd, byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		so, err := market.SignOffer(market.Offer{
			Provider: f.n.ID(), Machine: mid, Seq: 1, Issued: now, Expires: now.Add(market.MaxOfferTTL),
			Name: fmt.Sprintf("flood-%d", i), Processor: "x86_64", NetworkMbps: 1000, Methods: market.DefaultMethods(),
			Capacity: market.Resources{SpeedBogomips: 64000, MemoryMB: 262144, StorageMB: 1 << 30},
			Free:     market.Resources{SpeedBogomips: 64000, MemoryMB: 262144, StorageMB: 1 << 30},
			Terms:    market.DefaultTerms(),
		}, priv)
		if err != nil || f.topic.Publish(ctx, so.Raw) != nil {
			continue
		}
		sent++
	}
	return sent
}
