package ledger

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
)

// ErrNotLeader: the coordinator asked is not the raft leader; the answer names the leader.
var ErrNotLeader = errors.New("not the coordinators' leader")

// CoordinatorOptions tune a Coordinator.
type CoordinatorOptions struct {
	// Log is where the coordinator and raft log; nil is the node's logger.
	Log *slog.Logger
	// Bootstrap makes a coordinator without raft state the first server of a new group.
	Bootstrap bool
	// TickInterval is how often the leader appends a tick (charges fall due at ticks).
	TickInterval time.Duration
	// WarnPeriods: a buyer whose balance covers fewer rounds of its upcoming periods is warned.
	WarnPeriods int64
	// Resolve finds a coordinator's addresses (the DHT's FindPeer); optional.
	Resolve func(context.Context, peer.ID) (peer.AddrInfo, error)
}

// DefaultCoordinatorOptions are the production settings.
func DefaultCoordinatorOptions() CoordinatorOptions {
	return CoordinatorOptions{TickInterval: 5 * time.Second, WarnPeriods: 3}
}

// CoordinatorStatus is what a coordinator says of its group.
type CoordinatorStatus struct {
	Self         peer.ID   `json:"self"`
	Leader       peer.ID   `json:"leader,omitempty"`
	State        string    `json:"state"`
	Servers      []peer.ID `json:"servers"`
	Coordinators []peer.ID `json:"coordinators"`
	Meta         Meta      `json:"meta"`
	// Applied is the last raft index this server applied (commands and configurations).
	Applied uint64 `json:"applied"`
}

// Coordinator is a coordinator node's service: a server of the raft group that replicates the
// settlement State, answering pushes on MirrorID when it is the leader; the leader ticks.
type Coordinator struct {
	n    *node.Node
	own  *Log
	opts CoordinatorOptions
	log  *slog.Logger
	st   *State

	raft  *raft.Raft
	layer *RaftLayer

	mu      sync.Mutex
	joining map[peer.ID]bool // admitted to raft streams before they are servers

	batch  chan *pending
	kick   func() // pushes the node's own log now (set by the Mirror)
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// pending is one push waiting for the batcher.
type pending struct {
	raws [][]byte
	done chan applied
}

// NewCoordinator makes the coordinator of n; own is the node's own log (ticks, deposits and
// coordinator changes are its entries).
func NewCoordinator(n *node.Node, own *Log, opts CoordinatorOptions) *Coordinator {
	def := DefaultCoordinatorOptions()
	if opts.TickInterval <= 0 {
		opts.TickInterval = def.TickInterval
	}
	if opts.WarnPeriods <= 0 {
		opts.WarnPeriods = def.WarnPeriods
	}
	if opts.Log == nil {
		opts.Log = n.Logger()
	}
	return &Coordinator{n: n, own: own, opts: opts, log: opts.Log.With("service", "coordinator"),
		st: NewState(n.Store().Space("ledger/state/")), joining: map[peer.ID]bool{}, batch: make(chan *pending, 64)}
}

// Name names the service.
func (c *Coordinator) Name() string { return "coordinator" }

// State is the replicated state as this server has applied it.
func (c *Coordinator) State() *State { return c.st }

// Start starts the raft server, bootstrapping a new group if asked and there is no state.
func (c *Coordinator) Start(context.Context, *node.Node) error {
	self := c.n.ID()
	store := NewRaftStore(c.n.Store().Space("ledger/raft/"))
	snaps, err := raft.NewFileSnapshotStore(filepath.Join(c.n.Home().Dir, "raft"), 2, io.Discard)
	if err != nil {
		return fmt.Errorf("coordinator: snapshots: %w", err)
	}
	c.layer, err = NewRaftLayer(c.n.Host(), RaftLayerOptions{Allow: c.allowed, Resolve: c.opts.Resolve})
	if err != nil {
		return err
	}
	trans := NewRaftTransport(c.layer, nil)
	cfg := RaftConfig(self, nil)
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if !has && c.opts.Bootstrap {
		if err := raft.BootstrapCluster(cfg, store, store, snaps, trans, raft.Configuration{Servers: []raft.Server{RaftServer(self)}}); err != nil {
			return fmt.Errorf("coordinator: bootstrap: %w", err)
		}
	}
	c.raft, err = raft.NewRaft(cfg, &fsm{st: c.st}, store, store, snaps, trans)
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.n.Host().SetStreamHandler(MirrorID, c.serve)
	c.wg.Go(c.batcher)
	c.wg.Go(c.ticker)
	return nil
}

// Close stops serving and shuts the raft server down.
func (c *Coordinator) Close() error {
	if c.raft == nil {
		return nil
	}
	c.n.Host().RemoveStreamHandler(MirrorID)
	c.cancel()
	c.wg.Wait()
	return c.raft.Shutdown().Error()
}

// allowed admits raft streams of the group's servers and of peers joining it.
func (c *Coordinator) allowed(p peer.ID) bool {
	c.mu.Lock()
	joining := c.joining[p]
	c.mu.Unlock()
	if joining || c.raft == nil {
		return joining
	}
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == p.String() {
			return true
		}
	}
	return false
}

// Leader returns the leader's peer ID, if one is known.
func (c *Coordinator) Leader() (peer.ID, bool) {
	_, id := c.raft.LeaderWithID()
	p, err := peer.Decode(string(id))
	return p, err == nil
}

// IsLeader reports whether this server leads.
func (c *Coordinator) IsLeader() bool { return c.raft.State() == raft.Leader }

// Status returns what this server knows of the group.
func (c *Coordinator) Status() (CoordinatorStatus, error) {
	s := CoordinatorStatus{Self: c.n.ID(), State: c.raft.State().String(), Applied: c.raft.AppliedIndex()}
	if l, ok := c.Leader(); ok {
		s.Leader = l
	}
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return s, err
	}
	for _, srv := range f.Configuration().Servers {
		if p, err := peer.Decode(string(srv.ID)); err == nil {
			s.Servers = append(s.Servers, p)
		}
	}
	var err error
	if s.Coordinators, err = c.st.Coordinators(); err != nil {
		return s, err
	}
	s.Meta, err = c.st.Meta()
	return s, err
}

// ticker appends the leader's genesis as soon as it leads an empty ledger, then a tick
// every TickInterval.
func (c *Coordinator) ticker() {
	poll := time.NewTicker(min(c.opts.TickInterval, 200*time.Millisecond))
	defer poll.Stop()
	var last time.Time
	genesis := false
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-poll.C:
		}
		if !c.IsLeader() {
			genesis = false
			continue
		}
		var body Body
		var typ Type
		switch {
		case !genesis:
			coords, err := c.st.Coordinators()
			if err != nil {
				c.log.Warn("coordinator state", "err", err)
				continue
			}
			if genesis = len(coords) > 0; genesis {
				continue
			}
			body, typ = &CoordinatorBody{Peer: c.n.ID()}, TypeCoordinator
			genesis = true
		case time.Since(last) >= c.opts.TickInterval:
			body, typ = &TickBody{}, TypeTick
		default:
			continue
		}
		last = time.Now()
		if _, err := c.own.Append(last, typ, body); err != nil {
			c.log.Warn("append to the ledger", "type", typ, "err", err)
			continue
		}
		if c.kick != nil {
			c.kick()
		}
	}
}

// batcher applies pending pushes through raft, several per raft log entry.
func (c *Coordinator) batcher() {
	for {
		var batch []*pending
		select {
		case <-c.ctx.Done():
			return
		case p := <-c.batch:
			batch = append(batch, p)
		}
		n := len(batch[0].raws)
	more:
		for n < maxCommandEntries {
			select {
			case p := <-c.batch:
				batch = append(batch, p)
				n += len(p.raws)
			default:
				break more
			}
		}
		var raws [][]byte
		for _, p := range batch {
			raws = append(raws, p.raws...)
		}
		res := c.apply(raws)
		for _, p := range batch {
			out := applied{err: res.err}
			if res.err == nil {
				out.results, res.results = res.results[:len(p.raws)], res.results[len(p.raws):]
			}
			p.done <- out
		}
	}
}

func (c *Coordinator) apply(raws [][]byte) applied {
	f := c.raft.Apply(encodeCommand(raws), 10*time.Second)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			err = ErrNotLeader
		}
		return applied{err: err}
	}
	a, _ := f.Response().(applied)
	if a.err == nil && len(a.results) != len(raws) {
		// A replay of the index (never for a new one): the entries are in the state.
		a.results = make([]Result, len(raws))
		for i := range a.results {
			a.results[i] = Result{Outcome: Duplicate}
		}
	}
	return a
}

// Push applies entries of author from, in order, and returns their results and a checkpoint
// for from. Entries that are not from's, malformed or dated in the future are refused
// before raft; signatures are checked by every replica as it applies.
func (c *Coordinator) Push(ctx context.Context, from peer.ID, raws [][]byte) ([]Result, []byte, error) {
	if !c.IsLeader() {
		return nil, nil, ErrNotLeader
	}
	results := make([]Result, len(raws))
	var good [][]byte
	var at []int
	now := time.Now()
	for i, raw := range raws {
		s, err := peek(raw)
		switch {
		case err != nil:
			results[i] = Result{Outcome: Refused, Message: err.Error()}
		case s.Author != from:
			results[i] = Result{Author: s.Author, Seq: s.Seq, Outcome: Refused, Message: fmt.Sprintf("entry of %s pushed by %s: a node pushes its own entries", market.Short(s.Author), market.Short(from))}
		case s.Time.After(now.Add(market.MaxClockSkew)):
			results[i] = Result{Author: s.Author, Seq: s.Seq, Outcome: Refused, Message: fmt.Sprintf("entry %d is dated %v, in the future", s.Seq, s.Time)}
		default:
			good, at = append(good, raw), append(at, i)
		}
	}
	if len(good) > 0 {
		p := &pending{raws: good, done: make(chan applied, 1)}
		select {
		case c.batch <- p:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		var a applied
		select {
		case a = <-p.done:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
		if a.err != nil {
			return nil, nil, a.err
		}
		for k, i := range at {
			results[i] = a.results[k]
			if r := a.results[k]; r.Outcome == Refused && strings.Contains(r.Message, "two entries") {
				c.n.Events().Publish(Event{Kind: node.KindLedgerEvidence, Time: time.Now(),
					Message: fmt.Sprintf("%s signed two entries %d: the proof is kept (virtuoso ledger proofs), its later entries are refused", r.Author, r.Seq)})
			}
		}
	}
	cp, err := c.checkpoint(from)
	return results, cp, err
}

// checkpoint signs where the ledger stands for p.
func (c *Coordinator) checkpoint(p peer.ID) ([]byte, error) {
	m, err := c.st.Meta()
	if err != nil {
		return nil, err
	}
	seq, head, _, err := c.st.Head(p)
	if err != nil {
		return nil, err
	}
	a, err := c.st.Account(p)
	if err != nil {
		return nil, err
	}
	return SignCheckpoint(Checkpoint{Coordinator: c.n.ID(), Height: m.Height, Hash: m.Hash, Tick: m.Tick,
		Node: p, Balance: a.Balance, Seq: seq, Head: head, Signed: time.Now().UTC()}, c.n.PrivKey())
}

// Join adds p to the group and to the coordinators; the leader only. p joins as a non-voter
// and is promoted once it has applied what the leader had: raft counts a new voter at once,
// and one that cannot keep up would stall the group.
func (c *Coordinator) Join(ctx context.Context, p peer.ID, ask func(context.Context, peer.ID) (CoordinatorStatus, error)) error {
	if !c.IsLeader() {
		return ErrNotLeader
	}
	c.mu.Lock()
	c.joining[p] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.joining, p)
		c.mu.Unlock()
	}()
	id, addr := raft.ServerID(p.String()), raft.ServerAddress(p.String())
	if err := c.raft.AddNonvoter(id, addr, 0, 30*time.Second).Error(); err != nil {
		return fmt.Errorf("add %s to the coordinators: %w", market.Short(p), err)
	}
	target := c.raft.AppliedIndex()
	for {
		st, err := ask(ctx, p)
		if err == nil && st.Applied >= target {
			break
		}
		select {
		case <-ctx.Done():
			c.raft.RemoveServer(id, 0, 10*time.Second)
			return fmt.Errorf("%s did not catch up with the coordinators: %w", market.Short(p), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err := c.raft.AddVoter(id, addr, 0, 30*time.Second).Error(); err != nil {
		return fmt.Errorf("make %s a voting coordinator: %w", market.Short(p), err)
	}
	if _, err := c.own.Append(time.Now(), TypeCoordinator, &CoordinatorBody{Peer: p}); err != nil {
		return err
	}
	if c.kick != nil {
		c.kick()
	}
	return nil
}

// Leave removes p from the group and the coordinators; the leader only.
func (c *Coordinator) Leave(p peer.ID) error {
	if !c.IsLeader() {
		return ErrNotLeader
	}
	if _, err := c.own.Append(time.Now(), TypeCoordinator, &CoordinatorBody{Peer: p, Remove: true}); err != nil {
		return err
	}
	if c.kick != nil {
		c.kick()
	}
	if err := c.raft.RemoveServer(raft.ServerID(p.String()), 0, 30*time.Second).Error(); err != nil {
		return fmt.Errorf("remove %s from the coordinators: %w", market.Short(p), err)
	}
	c.layer.Forget(p)
	return nil
}

// Expect admits raft streams from p, the leader this server asked to join.
func (c *Coordinator) Expect(p peer.ID) {
	c.mu.Lock()
	c.joining[p] = true
	c.mu.Unlock()
}

// answer serves one mirror request of from.
func (c *Coordinator) answer(ctx context.Context, from peer.ID, req mirrorRequest) mirrorAnswer {
	if req.Join || req.Leave {
		var err error
		if req.Join {
			err = c.Join(ctx, from, c.ask)
		} else {
			err = c.Leave(from)
		}
		if err != nil {
			return c.failure(err)
		}
		st, _ := c.Status()
		return mirrorAnswer{Status: &st}
	}
	if req.Status {
		st, err := c.Status()
		if err != nil {
			return c.failure(err)
		}
		return mirrorAnswer{Status: &st}
	}
	if !c.IsLeader() {
		return c.failure(ErrNotLeader)
	}
	var a mirrorAnswer
	if req.Note > 0 {
		r, ok, err := c.st.Note(from, req.Note)
		if err != nil {
			return c.failure(err)
		}
		if !ok {
			r = Result{Author: from, Seq: req.Note, Outcome: Refused, Message: "the ledger does not hold this entry"}
		}
		a.Note = &r
		return a
	}
	if len(req.Push) > 0 || !req.View {
		rs, cp, err := c.Push(ctx, from, req.Push)
		if err != nil {
			return c.failure(err)
		}
		a.Results, a.Checkpoint = rs, cp
	}
	if req.View {
		of := req.Of
		if of == "" {
			of = from
		}
		v, err := c.st.View(of, c.opts.WarnPeriods)
		if err != nil {
			return c.failure(err)
		}
		a.View = &v
	}
	return a
}

// failure is the answer to a request that failed: a not-leader names the leader.
func (c *Coordinator) failure(err error) mirrorAnswer {
	a := mirrorAnswer{Error: &market.WireError{Code: "internal", Message: err.Error()}}
	if errors.Is(err, ErrNotLeader) {
		a.Error.Code = "not_leader"
		if l, ok := c.Leader(); ok && l != c.n.ID() {
			a.Leader = &peer.AddrInfo{ID: l, Addrs: c.n.Host().Peerstore().Addrs(l)}
		}
	}
	return a
}

// serve handles one mirror stream: a request frame, an answer frame.
func (c *Coordinator) serve(st network.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(30 * time.Second))
	var req mirrorRequest
	if err := readFrame(bufio.NewReader(st), maxMirrorFrame, &req); err != nil {
		writeFrame(st, mirrorAnswer{Error: &market.WireError{Code: "malformed", Message: err.Error()}})
		return
	}
	if len(req.Push) > MaxPushEntries {
		writeFrame(st, mirrorAnswer{Error: &market.WireError{Code: "malformed", Message: fmt.Sprintf("push of %d entries, over the %d cap", len(req.Push), MaxPushEntries)}})
		return
	}
	timeout := 25 * time.Second
	if req.Join {
		timeout = 85 * time.Second // the joiner catches up first
		st.SetDeadline(time.Now().Add(90 * time.Second))
	}
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	defer cancel()
	writeFrame(st, c.answer(ctx, st.Conn().RemotePeer(), req))
}

// ask asks coordinator p for its status over the mirror protocol.
func (c *Coordinator) ask(ctx context.Context, p peer.ID) (CoordinatorStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	a, err := askPeer(ctx, c.n, p, mirrorRequest{Status: true})
	if err != nil {
		return CoordinatorStatus{}, err
	}
	if a.Status == nil {
		return CoordinatorStatus{}, errors.New("no status in the answer")
	}
	return *a.Status, nil
}
