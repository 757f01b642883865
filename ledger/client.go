package ledger

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
)

// MirrorOptions tune a Mirror.
type MirrorOptions struct {
	// Log is where the mirror logs; nil is the node's logger.
	Log *slog.Logger
	// Coordinators are the coordinators to push to (any of them: a follower names the leader).
	Coordinators []peer.AddrInfo
	// Interval is how often the node pushes and asks for its view even when it appended
	// nothing (to learn of charges, warnings and VMs to stop).
	Interval time.Duration
	// Local is the node's own coordinator, if it is one: a request to itself takes no stream.
	Local *Coordinator
	// OnView is called with the node's view after each sync.
	OnView func(View)
}

// Mirror is every node's side of the ledger: it pushes the node's own log to the leader,
// retrying until every entry is taken, keeps the checkpoints it is answered with, and reads
// its account.
type Mirror struct {
	n    *node.Node
	own  *Log
	cps  *Checkpoints
	opts MirrorOptions
	log  *slog.Logger

	mu     sync.Mutex
	leader peer.ID
	last   View
	synced bool
	err    error
	// refused is the last refusal told to the event log.
	refused string

	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewMirror makes the mirror of n's own log.
func NewMirror(n *node.Node, own *Log, opts MirrorOptions) *Mirror {
	if opts.Interval <= 0 {
		opts.Interval = 5 * time.Second
	}
	if opts.Log == nil {
		opts.Log = n.Logger()
	}
	m := &Mirror{n: n, own: own, cps: NewCheckpoints(n.Store().Space("ledger/checkpoints/")), opts: opts,
		log: opts.Log.With("service", "ledger"), kick: make(chan struct{}, 1)}
	if opts.Local != nil {
		opts.Local.kick = m.Kick
		if !slices.ContainsFunc(opts.Coordinators, func(c peer.AddrInfo) bool { return c.ID == n.ID() }) {
			m.opts.Coordinators = append([]peer.AddrInfo{{ID: n.ID()}}, opts.Coordinators...) // itself first
		}
	}
	return m
}

// Name names the service.
func (m *Mirror) Name() string { return "ledger" }

// Checkpoints are the checkpoints the node was answered with.
func (m *Mirror) Checkpoints() *Checkpoints { return m.cps }

// Own is the node's own log.
func (m *Mirror) Own() *Log { return m.own }

// Start pushes in the background.
func (m *Mirror) Start(_ context.Context, n *node.Node) error {
	m.routes(n.API())
	for _, c := range m.opts.Coordinators {
		m.n.Host().Peerstore().AddAddrs(c.ID, c.Addrs, time.Hour)
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.wg.Go(m.loop)
	return nil
}

// Close stops pushing.
func (m *Mirror) Close() error {
	if m.cancel != nil {
		m.cancel()
		m.wg.Wait()
	}
	return nil
}

// Settles reports whether the node has a coordinator to settle with (configured, or its own).
func (m *Mirror) Settles() bool { return len(m.opts.Coordinators) > 0 || m.opts.Local != nil }

// Kick pushes now.
func (m *Mirror) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func (m *Mirror) loop() {
	t := time.NewTicker(m.opts.Interval)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(m.ctx, time.Minute)
		if _, err := m.Sync(ctx); err != nil && m.ctx.Err() == nil {
			m.log.Debug("ledger sync", "err", err)
		}
		cancel()
		select {
		case <-m.ctx.Done():
			return
		case <-m.own.Appended:
		case <-m.kick:
		case <-t.C:
		}
	}
}

// Sync pushes every entry the coordinator has not taken yet, then reads the node's view.
// It returns the view; the entries refused stop the push (their results say why).
func (m *Mirror) Sync(ctx context.Context) (View, error) {
	err := m.push(ctx)
	var v View
	if err == nil {
		v, err = m.View(ctx, "")
	}
	m.mu.Lock()
	m.err = err
	old, first := m.last, !m.synced
	if err == nil {
		m.last, m.synced = v, true
	}
	tell := errors.Is(err, ErrRefused) && err.Error() != m.refused
	if tell {
		m.refused = err.Error() // once, not at every retry
	}
	m.mu.Unlock()
	if tell {
		m.publish(Event{Kind: node.KindLedgerRefused, Time: time.Now(), Message: err.Error()})
	}
	if err != nil {
		return v, err
	}
	for _, e := range changes(old, v, first, time.Now()) {
		m.publish(e)
	}
	if m.opts.OnView != nil {
		m.opts.OnView(v)
	}
	return v, nil
}

func (m *Mirror) publish(e Event) { m.n.Events().Publish(e) }

// Last returns the view of the last sync, whether there was one, and the last sync's error.
func (m *Mirror) Last() (View, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last, m.synced, m.err
}

// ErrRefused: the coordinator refused one of the node's entries.
var ErrRefused = errors.New("the coordinator refused an entry")

func (m *Mirror) push(ctx context.Context) error {
	for m.own.Acked() < m.own.Last() {
		entries, err := m.own.Range(m.own.Acked()+1, MaxPushEntries)
		if err != nil {
			return err
		}
		raws := make([][]byte, len(entries))
		for i, e := range entries {
			raws[i] = e.Raw
		}
		a, err := m.request(ctx, mirrorRequest{Push: raws})
		if err != nil {
			return err
		}
		if len(a.Checkpoint) > 0 {
			if _, err := m.cps.Keep(m.n.ID(), a.Checkpoint); err != nil {
				m.log.Warn("a coordinator's checkpoint", "err", err)
			}
		}
		acked := m.own.Acked()
		for i, r := range a.Results {
			if r.Outcome == Refused {
				return fmt.Errorf("%w: entry %d: %s", ErrRefused, entries[i].Seq, r.Message)
			}
			acked = entries[i].Seq
		}
		if len(a.Results) != len(raws) {
			return fmt.Errorf("the coordinator answered %d results for %d entries", len(a.Results), len(raws))
		}
		if err := m.own.Ack(acked); err != nil {
			return err
		}
	}
	return nil
}

// View returns the ledger's view of p (the node itself when empty).
func (m *Mirror) View(ctx context.Context, p peer.ID) (View, error) {
	a, err := m.request(ctx, mirrorRequest{View: true, Of: p})
	if err != nil {
		return View{}, err
	}
	if len(a.Checkpoint) > 0 {
		if _, err := m.cps.Keep(m.n.ID(), a.Checkpoint); err != nil {
			m.log.Warn("a coordinator's checkpoint", "err", err)
		}
	}
	if a.View == nil {
		return View{}, errors.New("the coordinator answered no view")
	}
	return *a.View, nil
}

// Status asks a coordinator (this node's own, if it is one) for its group's status.
func (m *Mirror) Status(ctx context.Context) (CoordinatorStatus, error) {
	if m.opts.Local != nil {
		return m.opts.Local.Status()
	}
	a, err := m.request(ctx, mirrorRequest{Status: true})
	if err != nil {
		return CoordinatorStatus{}, err
	}
	if a.Status == nil {
		return CoordinatorStatus{}, errors.New("the coordinator answered no status")
	}
	return *a.Status, nil
}

// Join asks the leader, reached through coordinator to, to add this node's coordinator.
func (m *Mirror) Join(ctx context.Context, to peer.AddrInfo) error {
	if m.opts.Local == nil {
		return errors.New("this node is not a coordinator: run it with the coordinator role")
	}
	m.n.Host().Peerstore().AddAddrs(to.ID, to.Addrs, time.Hour)
	target := to.ID
	for range 3 {
		m.opts.Local.Expect(target)
		a, err := m.ask(ctx, target, mirrorRequest{Join: true})
		if err != nil {
			return err
		}
		if a.Leader != nil {
			m.n.Host().Peerstore().AddAddrs(a.Leader.ID, a.Leader.Addrs, time.Hour)
			target = a.Leader.ID
			continue
		}
		if a.Error != nil {
			return fmt.Errorf("join the coordinators: %s", a.Error.Message)
		}
		return nil
	}
	return errors.New("join the coordinators: no leader answered")
}

// request sends req to the leader, following not-leader answers; it tries the known leader,
// then each configured coordinator.
func (m *Mirror) request(ctx context.Context, req mirrorRequest) (mirrorAnswer, error) {
	m.mu.Lock()
	targets := []peer.ID{m.leader}
	m.mu.Unlock()
	for _, c := range m.opts.Coordinators {
		targets = append(targets, c.ID)
	}
	var lastErr error = errors.New("no coordinator is configured: set [ledger] coordinators")
	for hops := 0; len(targets) > 0 && hops < 8; hops++ {
		to := targets[0]
		targets = targets[1:]
		if to == "" {
			continue
		}
		a, err := m.ask(ctx, to, req)
		if err != nil {
			lastErr = err
			continue
		}
		if a.Leader != nil {
			m.n.Host().Peerstore().AddAddrs(a.Leader.ID, a.Leader.Addrs, time.Hour)
			targets = append([]peer.ID{a.Leader.ID}, targets...)
			lastErr = fmt.Errorf("%s is not the leader", market.Short(to))
			continue
		}
		if a.Error != nil {
			lastErr = fmt.Errorf("coordinator %s: %s", market.Short(to), a.Error.Message)
			if a.Error.Code == "not_leader" {
				continue // an election is under way: try another
			}
			return a, lastErr
		}
		m.mu.Lock()
		m.leader = to
		m.mu.Unlock()
		return a, nil
	}
	return mirrorAnswer{}, lastErr
}

// ask sends req to one coordinator.
func (m *Mirror) ask(ctx context.Context, to peer.ID, req mirrorRequest) (mirrorAnswer, error) {
	if l := m.opts.Local; l != nil && to == m.n.ID() {
		return l.answer(ctx, to, req), nil
	}
	return askPeer(ctx, m.n, to, req)
}

// askPeer sends req to coordinator to over a stream of n and reads its answer.
func askPeer(ctx context.Context, n *node.Node, to peer.ID, req mirrorRequest) (mirrorAnswer, error) {
	timeout := 30 * time.Second
	if req.Join {
		timeout = 90 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := n.Host().NewStream(ctx, to, MirrorID)
	if err != nil {
		return mirrorAnswer{}, fmt.Errorf("reach coordinator %s: %w", market.Short(to), err)
	}
	defer st.Close()
	if d, ok := ctx.Deadline(); ok {
		st.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { st.Reset() }) // a node shutting down does not wait
	defer stop()
	if err := writeFrame(st, req); err != nil {
		st.Reset()
		return mirrorAnswer{}, err
	}
	st.CloseWrite()
	var a mirrorAnswer
	if err := readFrame(bufio.NewReader(st), maxAnswerFrame, &a); err != nil {
		st.Reset()
		return mirrorAnswer{}, fmt.Errorf("coordinator %s: %w", market.Short(to), err)
	}
	return a, nil
}
