package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sync/errgroup"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/ledger"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// LedgerOptions size `virtuoso bench ledger`.
type LedgerOptions struct {
	// Dir holds the nodes' homes (default: a temp dir, removed after).
	Dir string
	// Pushers are the nodes pushing entries at once; Entries how many each pushes.
	Pushers, Entries int
	// Checkpoints is how many single entries are timed from append to checkpoint.
	Checkpoints int
	// Leases is how many leases one billing sweep charges.
	Leases int
	Log    *slog.Logger
}

func (o *LedgerOptions) defaults() error {
	if o.Pushers <= 0 {
		o.Pushers = 8
	}
	if o.Entries <= 0 {
		o.Entries = 5000
	}
	if o.Checkpoints <= 0 {
		o.Checkpoints = 200
	}
	if o.Leases <= 0 {
		o.Leases = 100_000
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// LedgerResult is what the ledger bench measured.
type LedgerResult struct {
	Entries     int
	Throughput  time.Duration // all pushers' entries, until every one is taken
	Signing     time.Duration // of which the pushers took to sign and store them (the longest)
	Replicated  time.Duration // until the followers hold them too
	CPU         time.Duration // the process's CPU time over Throughput
	Checkpoint  []time.Duration
	Leases      int
	Sweep       time.Duration
	SweepSetup  time.Duration
	Failover    time.Duration // leader closed → a push taken by the new leader
	LoadAverage string
}

// Ledger runs the ledger bench and prints its table.
func Ledger(ctx context.Context, opts LedgerOptions, out io.Writer) error {
	res, err := RunLedger(ctx, opts)
	if err != nil {
		return err
	}
	res.Print(out)
	return nil
}

// RunLedger measures a three-coordinator group on loopback: entries verified and applied per
// second (batched), latency from a node's append to its checkpoint, failover after the
// leader is closed; and one billing sweep over opts.Leases leases.
func RunLedger(ctx context.Context, opts LedgerOptions) (LedgerResult, error) {
	if err := opts.defaults(); err != nil {
		return LedgerResult{}, err
	}
	dir := opts.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "virtuoso-bench-ledger-")
		if err != nil {
			return LedgerResult{}, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	res := LedgerResult{LoadAverage: loadAverage()}
	if err := group(ctx, dir, opts, &res); err != nil {
		return res, err
	}
	if err := sweep(filepath.Join(dir, "sweep"), opts.Leases, &res); err != nil {
		return res, err
	}
	return res, nil
}

// group runs three coordinators and the pushers.
func group(ctx context.Context, dir string, opts LedgerOptions, res *LedgerResult) error {
	var nodes []*daemon.Node
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()
	start := func(name string, edit func(*node.Config)) (*daemon.Node, error) {
		home := node.Home{Dir: filepath.Join(dir, name)}
		cfg := node.DefaultConfig(node.ProfileLocal)
		cfg.Network.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		cfg.Ledger.TickInterval, cfg.Ledger.SyncInterval = time.Hour, time.Hour // pushes are the bench's
		if len(nodes) > 0 {
			cfg.Network.Bootstrap = []string{addrOf(nodes[0])}
		}
		edit(&cfg)
		if err := home.Init(cfg, false); err != nil {
			return nil, err
		}
		n, err := daemon.New(home, cfg, daemon.Options{Options: node.Options{Logger: opts.Log, Fast: true, Version: "bench"}})
		if err != nil {
			return nil, err
		}
		if err := n.Start(ctx); err != nil {
			n.Close()
			return nil, err
		}
		nodes = append(nodes, n)
		return n, nil
	}
	var coords []*daemon.Node
	for i := range 3 {
		c, err := start(fmt.Sprintf("coordinator-%d", i), func(cfg *node.Config) {
			cfg.Roles.Coordinator, cfg.Ledger.Bootstrap = true, i == 0
		})
		if err != nil {
			return err
		}
		coords = append(coords, c)
		if i == 0 {
			if err := wait(ctx, 30*time.Second, func() bool {
				cs, _ := c.Coordinator.State().Coordinators()
				return len(cs) > 0
			}); err != nil {
				return fmt.Errorf("the first coordinator did not start its ledger: %w", err)
			}
			continue
		}
		if err := c.Ledger.Join(ctx, peer.AddrInfo{ID: coords[0].ID(), Addrs: coords[0].Host().Addrs()}); err != nil {
			return err
		}
	}
	var all []string
	for _, c := range coords {
		all = append(all, addrOf(c))
	}
	var pushers []*daemon.Node
	for i := range opts.Pushers {
		p, err := start(fmt.Sprintf("pusher-%d", i), func(cfg *node.Config) { cfg.Ledger.Coordinators = all })
		if err != nil {
			return err
		}
		pushers = append(pushers, p)
		if _, err := coords[0].Ledger.Own().Append(time.Now(), ledger.TypeDeposit, &ledger.DepositBody{To: p.ID(), Amount: market.Unit}); err != nil {
			return err
		}
	}
	if _, err := coords[0].Ledger.Sync(ctx); err != nil {
		return err
	}
	// Each pusher appends its entries in one batch (signing them: the node's cost, shown
	// apart) and its mirror pushes them, 256 a request, as any node does.
	payee := coords[1].ID()
	bodies := make([]ledger.Body, opts.Entries)
	for i := range bodies {
		bodies[i] = &ledger.TransferBody{To: payee, Amount: 1}
	}
	res.Entries = opts.Pushers * opts.Entries
	cpu0 := cpuTime()
	t0 := time.Now()
	var g errgroup.Group
	var signing time.Duration
	var signMu sync.Mutex
	for _, p := range pushers {
		g.Go(func() error {
			ts := time.Now()
			if _, err := p.Ledger.Own().AppendAll(time.Now(), ledger.TypeTransfer, bodies); err != nil {
				return err
			}
			signMu.Lock()
			signing = max(signing, time.Since(ts))
			signMu.Unlock()
			return wait(ctx, 5*time.Minute, func() bool { return p.Ledger.Own().Acked() == p.Ledger.Own().Last() })
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	res.Throughput, res.Signing = time.Since(t0), signing
	res.CPU = cpuTime() - cpu0
	lead, _ := coords[0].Coordinator.State().Meta()
	want := lead.Height
	if err := wait(ctx, time.Minute, func() bool {
		for _, c := range coords {
			if m, _ := c.Coordinator.State().Meta(); m.Height < want {
				return false
			}
		}
		return true
	}); err != nil {
		var hs []uint64
		for _, c := range coords {
			m, _ := c.Coordinator.State().Meta()
			hs = append(hs, m.Height)
		}
		return fmt.Errorf("the followers did not apply the entries: heights %v, want %d: %w", hs, want, err)
	}
	res.Replicated = time.Since(t0)
	if a, err := coords[1].Coordinator.State().Account(payee); err != nil || a.Received != market.Money(res.Entries) {
		return fmt.Errorf("the payee received %s of %d transfers (%v): entries were lost or void", a.Received, res.Entries, err)
	}

	// Append to checkpoint, one entry at a time.
	p := pushers[0]
	for range opts.Checkpoints {
		t := time.Now()
		if _, err := p.Ledger.Own().Append(t, ledger.TypeTransfer, &ledger.TransferBody{To: payee, Amount: 1}); err != nil {
			return err
		}
		if _, err := p.Ledger.Sync(ctx); err != nil {
			return err
		}
		cp, ok, err := p.Ledger.Checkpoints().Latest()
		if err != nil || !ok || cp.Seq != p.Ledger.Own().Last() {
			return fmt.Errorf("no checkpoint of the entry just pushed: %v", err)
		}
		res.Checkpoint = append(res.Checkpoint, time.Since(t))
	}

	// Failover: the leader goes; time until the new one takes a push.
	coords[0].Close()
	nodes = nodes[1:]
	t1 := time.Now()
	if _, err := p.Ledger.Own().Append(time.Now(), ledger.TypeTransfer, &ledger.TransferBody{To: payee, Amount: 1}); err != nil {
		return err
	}
	if err := wait(ctx, time.Minute, func() bool {
		p.Ledger.Sync(ctx)
		return p.Ledger.Own().Acked() == p.Ledger.Own().Last()
	}); err != nil {
		return fmt.Errorf("no new leader took a push: %w", err)
	}
	res.Failover = time.Since(t1)
	return nil
}

// sweep times one tick that charges n leases, in a ledger State of its own.
func sweep(dir string, n int, res *LedgerResult) error {
	store, err := node.OpenStore(dir, nil)
	if err != nil {
		return err
	}
	defer store.Close()
	st := ledger.NewState(store.Space("ledger/state/"))
	t0 := time.Now()
	coord, err := newSigner()
	if err != nil {
		return err
	}
	buyer, err := newSigner()
	if err != nil {
		return err
	}
	provider, err := newSigner()
	if err != nil {
		return err
	}
	now := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	index := uint64(0)
	apply := func(raws ...[]byte) error {
		index++
		rs, err := st.Apply(index, raws)
		for _, r := range rs {
			if r.Outcome != ledger.Applied {
				return fmt.Errorf("setup entry %s: %s", r.Outcome, r.Message)
			}
		}
		return err
	}
	if err := apply(coord.sign(now, ledger.TypeCoordinator, &ledger.CoordinatorBody{Peer: coord.id})); err != nil {
		return err
	}
	if err := apply(coord.sign(now, ledger.TypeDeposit, &ledger.DepositBody{To: buyer.id, Amount: ledger.MaxAmount})); err != nil {
		return err
	}
	terms := market.Terms{SpeedUnit: 500, MemoryUnit: 256, StorageUnit: 1024, SpeedPrice: 10, MemoryPrice: 10, StoragePrice: 10, RunningSecs: 60, StorageSecs: 60}
	cfg := market.StandardConfigs()[0]
	q, err := terms.Quote(cfg.Resources())
	if err != nil {
		return err
	}
	// The leases are signed in parallel, then entered by the buyer in order.
	leases := make([][]byte, n)
	var g errgroup.Group
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		g.Go(func() error {
			for i := w; i < n; i += workers {
				l := market.Lease{ID: market.NewLeaseID(), VM: vm.NewID(), Buyer: buyer.id, Provider: provider.id,
					Machine: market.MachineID{1}, Config: cfg, Terms: terms, Quote: q, Created: now}
				prop, err := market.ProposeLease(l, buyer.key)
				if err != nil {
					return err
				}
				full, err := prop.Countersign(provider.key)
				if err != nil {
					return err
				}
				leases[i] = full.Encode()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i := 0; i < n; i += 1000 {
		var batch [][]byte
		for _, l := range leases[i:min(n, i+1000)] {
			batch = append(batch, buyer.sign(now, ledger.TypeLease, &ledger.LeaseBody{Lease: l}))
		}
		if err := apply(batch...); err != nil {
			return err
		}
	}
	res.SweepSetup = time.Since(t0)
	tick := coord.sign(now.Add(90*time.Second), ledger.TypeTick, &ledger.TickBody{})
	t1 := time.Now()
	if err := apply(tick); err != nil {
		return err
	}
	res.Sweep, res.Leases = time.Since(t1), n
	a, err := st.Account(provider.id)
	if err != nil {
		return err
	}
	if want := 2 * q.StoragePrice * market.Money(n); a.Earned != want {
		return fmt.Errorf("the sweep credited %s, want %s: it missed leases", a.Earned, want)
	}
	return nil
}

// signer is an identity appending to a log of its own, outside any node.
type signer struct {
	key  crypto.PrivKey
	id   peer.ID
	last *ledger.Signed
}

func newSigner() (*signer, error) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, err
	}
	id, err := peer.IDFromPrivateKey(key)
	return &signer{key: key, id: id}, err
}

func (s *signer) sign(at time.Time, t ledger.Type, b ledger.Body) []byte {
	e, err := ledger.NewEntry(s.id, s.last, at, t, b)
	if err != nil {
		panic(err) // the bench's own entries are valid
	}
	signed, err := ledger.Sign(e, s.key)
	if err != nil {
		panic(err)
	}
	s.last = &signed
	return signed.Raw
}

func addrOf(n *daemon.Node) string { return fmt.Sprintf("%s/p2p/%s", n.Host().Addrs()[0], n.ID()) }

// wait polls done every 50 ms until it holds or within passes.
func wait(ctx context.Context, within time.Duration, done func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for !done() {
		select {
		case <-ctx.Done():
			return errors.New("timed out")
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil || len(b) < 14 {
		return "unknown"
	}
	return string(b[:14])
}

// Print writes the result as a table.
func (r LedgerResult) Print(out io.Writer) {
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
	rate := float64(r.Entries) / r.Throughput.Seconds()
	fmt.Fprintf(tw, "what\tfigure\tdetail\n")
	fmt.Fprintf(tw, "entries taken by the leader, 3 replicas, batched\t%.0f /s\t%d entries in %v; %.1f CPU-s in all (%.0f µs of CPU per entry, all nodes in this process)\n",
		rate, r.Entries, r.Throughput.Round(time.Millisecond), r.CPU.Seconds(), float64(r.CPU.Microseconds())/float64(r.Entries))
	fmt.Fprintf(tw, "of which the pushers signing their entries\t%v\t(the slowest pusher; the same cores)\n", r.Signing.Round(time.Millisecond))
	fmt.Fprintf(tw, "applied by every replica\t%.0f /s\t%v\n", float64(r.Entries)/r.Replicated.Seconds(), r.Replicated.Round(time.Millisecond))
	fmt.Fprintf(tw, "append to signed checkpoint, p50\t%s\t%d samples\n", ms(percentile(r.Checkpoint, 0.5)), len(r.Checkpoint))
	fmt.Fprintf(tw, "append to signed checkpoint, p99\t%s\t\n", ms(percentile(r.Checkpoint, 0.99)))
	fmt.Fprintf(tw, "billing sweep over %d leases\t%s\tone tick charging every lease (setup %v)\n", r.Leases, ms(r.Sweep), r.SweepSetup.Round(time.Second))
	fmt.Fprintf(tw, "failover: leader closed to a push taken\t%s\t\n", ms(r.Failover))
	tw.Flush()
	fmt.Fprintf(out, "\nload average %s; %d cores\n", r.LoadAverage, runtime.NumCPU())
}
