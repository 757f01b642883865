package ledger

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/virtuoso-market/virtuoso/internal/nodetest"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/node"
	"go.uber.org/goleak"
)

// raftFSM is a state machine that keeps the commands applied to it, in order.
type raftFSM struct {
	mu       sync.Mutex
	applied  []string
	restores int
}

func (f *raftFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, string(l.Data))
	return len(f.applied)
}

func (f *raftFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return raftFSMSnapshot(slices.Clone(f.applied)), nil
}

func (f *raftFSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	var applied []string
	if err := json.NewDecoder(r).Decode(&applied); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied, f.restores = applied, f.restores+1
	return nil
}

func (f *raftFSM) state() (applied []string, restores int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.applied), f.restores
}

type raftFSMSnapshot []string

func (s raftFSMSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]string(s)); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (raftFSMSnapshot) Release() {}

// raftMembers is the set of peers the test's servers admit, as a coordinator admits the
// servers of its configuration.
type raftMembers struct {
	mu  sync.Mutex
	ids map[peer.ID]bool
}

func (m *raftMembers) add(id peer.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ids == nil {
		m.ids = map[peer.ID]bool{}
	}
	m.ids[id] = true
}

func (m *raftMembers) has(id peer.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ids[id]
}

// raftServer is one coordinator of a test: a node, and raft on it over the badger store
// and the libp2p layer.
type raftServer struct {
	n     *node.Node
	fsm   *raftFSM
	raft  *raft.Raft
	store *RaftStore
}

// startRaftServer runs raft on n, shut down at the end of the test (before n closes).
func startRaftServer(t testing.TB, n *node.Node, members *raftMembers, edit func(*raft.Config)) *raftServer {
	t.Helper()
	layer, err := NewRaftLayer(n.Host(), RaftLayerOptions{Allow: members.has, Resolve: n.DHT().FindPeer})
	if err != nil {
		t.Fatal(err)
	}
	store := NewRaftStore(n.Store().Space("ledger/raft/"))
	snaps, err := raft.NewFileSnapshotStore(filepath.Join(n.Home().Dir, "raft"), 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg := RaftConfig(n.ID(), nil)
	if edit != nil {
		edit(cfg)
	}
	s := &raftServer{n: n, fsm: &raftFSM{}, store: store}
	s.raft, err = raft.NewRaft(cfg, s.fsm, store, store, snaps, NewRaftTransport(layer, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.raft.Shutdown().Error(); err != nil {
			t.Errorf("shut raft down: %v", err)
		}
	})
	return s
}

// stop ends the server abruptly: its host goes first, so no message leaves it, and its
// raft stops without handing leadership over.
func (s *raftServer) stop(t testing.TB) {
	t.Helper()
	if err := s.n.Host().Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.raft.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	if err := s.n.Close(); err != nil {
		t.Fatal(err)
	}
}

// waitLeader waits until one of servers leads, in a term after term, and returns it.
func waitLeader(t testing.TB, servers []*raftServer, after uint64, within time.Duration) *raftServer {
	t.Helper()
	var leader *raftServer
	testwait.Eventually(t, within, func() error {
		var states []string
		for _, s := range servers {
			if s.raft.State() == raft.Leader && s.raft.CurrentTerm() > after {
				leader = s
				return nil
			}
			states = append(states, fmt.Sprintf("%s %v in term %d", s.n.ID().ShortString(), s.raft.State(), s.raft.CurrentTerm()))
		}
		return fmt.Errorf("no leader after term %d: %v", after, states)
	})
	return leader
}

// applyRaft applies commands on the leader, each committed before the next.
func applyRaft(t testing.TB, leader *raftServer, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if err := leader.raft.Apply([]byte(c), 10*time.Second).Error(); err != nil {
			t.Fatalf("apply %q on %s: %v", c, leader.n.ID().ShortString(), err)
		}
	}
}

// waitApplied waits until every server has applied want, in order.
func waitApplied(t testing.TB, servers []*raftServer, want []string, within time.Duration) {
	t.Helper()
	testwait.Eventually(t, within, func() error {
		for _, s := range servers {
			if got, _ := s.fsm.state(); !slices.Equal(got, want) {
				return fmt.Errorf("%s applied %d commands %q, want %d", s.n.ID().ShortString(), len(got), got, len(want))
			}
		}
		return nil
	})
}

func raftCommands(lo, hi int) []string {
	var out []string
	for i := lo; i <= hi; i++ {
		out = append(out, fmt.Sprintf("command %d", i))
	}
	return out
}

// TestRaftCluster runs three coordinators' raft over libp2p and badger: one bootstraps, the
// others join through it, commands reach all; the leader dies and the other two elect one
// and go on; the dead one restarts from its database and catches up by snapshot.
func TestRaftCluster(t *testing.T) {
	nodes := nodetest.Cluster(t, 3, nodetest.Options{Protocols: []node.ProtocolLimit{RaftLimit()}})
	members := &raftMembers{}
	for _, n := range nodes {
		members.add(n.ID())
	}
	// The snapshot taken while a server is down keeps only 2 entries behind it, so that the
	// server can only catch up through InstallSnapshot.
	edit := func(c *raft.Config) { c.TrailingLogs = 2 }
	servers := make([]*raftServer, len(nodes))
	for i, n := range nodes {
		servers[i] = startRaftServer(t, n, members, edit)
	}

	start := time.Now()
	boot := raft.Configuration{Servers: []raft.Server{RaftServer(nodes[0].ID())}}
	if err := servers[0].raft.BootstrapCluster(boot).Error(); err != nil {
		t.Fatal(err)
	}
	leader := waitLeader(t, servers[:1], 0, 20*time.Second)
	for _, s := range servers[1:] {
		id := s.n.ID()
		if err := leader.raft.AddVoter(raft.ServerID(id.String()), raft.ServerAddress(id.String()), 0, 20*time.Second).Error(); err != nil {
			t.Fatalf("add voter %s: %v", id.ShortString(), err)
		}
	}
	want := raftCommands(1, 10)
	applyRaft(t, leader, want...)
	waitApplied(t, servers, want, 20*time.Second)
	for _, s := range servers {
		f := s.raft.GetConfiguration()
		if err := f.Error(); err != nil {
			t.Fatal(err)
		}
		if got := f.Configuration().Servers; len(got) != 3 {
			t.Errorf("%s's configuration: %v, want the 3 voters", s.n.ID().ShortString(), got)
		}
	}
	t.Logf("bootstrap, 2 joins and 10 commands on all: %v", time.Since(start).Round(time.Millisecond))

	// The leader dies; the two left elect one of them and carry on.
	term := leader.raft.CurrentTerm()
	lost := slices.Index(servers, leader)
	home, cfg := leader.n.Home(), leader.n.Config()
	leader.stop(t)
	start = time.Now()
	alive := slices.Delete(slices.Clone(servers), lost, lost+1)
	leader = waitLeader(t, alive, term, 30*time.Second)
	t.Logf("new leader %s after the old one stopped: %v", leader.n.ID().ShortString(), time.Since(start).Round(time.Millisecond))
	want = append(want, raftCommands(11, 20)...)
	applyRaft(t, leader, want[10:]...)
	waitApplied(t, alive, want, 20*time.Second)
	if err := leader.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot on the new leader: %v", err)
	}
	if first, err := leader.store.FirstIndex(); err != nil || first <= 1 {
		t.Fatalf("the new leader's log starts at %d (%v) after its snapshot: not compacted", first, err)
	}

	// The dead server restarts from its database, on a new port, with no peer but one
	// bootstrap address; it finds the leader and catches up.
	cfg.Network.Bootstrap = nodetest.Addrs(alive[0].n)[:1]
	n := nodetest.Start(t, home, cfg, node.Options{Protocols: []node.ProtocolLimit{RaftLimit()}})
	start = time.Now()
	back := startRaftServer(t, n, members, edit)
	if last := back.raft.LastIndex(); last < 10 {
		t.Fatalf("the restarted server's log ends at %d: it did not keep its entries", last)
	}
	alive = append(alive, back)
	waitApplied(t, alive, want, 30*time.Second)
	if _, restores := back.fsm.state(); restores == 0 {
		t.Error("the restarted server caught up without restoring the leader's snapshot")
	}
	t.Logf("restarted server caught up: %v", time.Since(start).Round(time.Millisecond))
	want = append(want, "after the restart")
	applyRaft(t, leader, want[len(want)-1])
	waitApplied(t, alive, want, 20*time.Second)
}

// TestRaftLayerRefusesStrangers checks that a peer the layer does not admit gets its raft
// streams reset, and that an RPC it sends leaves the leader as it was; once admitted, the
// same RPC moves the leader's term.
func TestRaftLayerRefusesStrangers(t *testing.T) {
	nodes := nodetest.Cluster(t, 2, nodetest.Options{Protocols: []node.ProtocolLimit{RaftLimit()}})
	members := &raftMembers{}
	members.add(nodes[0].ID())
	server := startRaftServer(t, nodes[0], members, nil)
	if err := server.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{RaftServer(nodes[0].ID())}}).Error(); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, []*raftServer{server}, 0, 20*time.Second)
	term := server.raft.CurrentTerm()

	stranger := nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := stranger.Host().NewStream(ctx, nodes[0].ID(), RaftID); err == nil {
		st.SetDeadline(time.Now().Add(10 * time.Second))
		st.Write([]byte{0})
		if _, err := st.Read(make([]byte, 1)); !errors.Is(err, network.ErrReset) {
			t.Errorf("a stranger's raft stream read %v, want a reset", err)
		}
	}

	// The stranger speaks raft properly: a heartbeat from a leader of a much later term.
	layer, err := NewRaftLayer(stranger.Host(), RaftLayerOptions{Allow: func(peer.ID) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	trans := NewRaftTransport(layer, nil)
	defer trans.Close()
	self := []byte(stranger.ID().String())
	heartbeat := func() error {
		req := raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: self, Addr: self}, Term: term + 1000}
		var resp raft.AppendEntriesResponse
		return trans.AppendEntries(RaftServer(nodes[0].ID()).ID, RaftServer(nodes[0].ID()).Address, &req, &resp)
	}
	if err := heartbeat(); err == nil {
		t.Error("a stranger's heartbeat was answered")
	}
	if state, now := server.raft.State(), server.raft.CurrentTerm(); state != raft.Leader || now != term {
		t.Fatalf("after a stranger's heartbeat of term %d the server is %v in term %d, want leader in term %d", term+1000, state, now, term)
	}

	members.add(stranger.ID())
	if err := heartbeat(); err != nil {
		t.Fatalf("an admitted peer's heartbeat: %v", err)
	}
	if now := server.raft.CurrentTerm(); now < term+1000 {
		t.Errorf("after an admitted peer's heartbeat of term %d the server is in term %d", term+1000, now)
	}
}

// TestRaftLayerDial checks the layer's dialling on its own: addresses by peer ID only,
// resolved when the peerstore has none and forgotten on Forget, streams that carry bytes
// with the ends named by peer ID and the stream's deadlines, and Close.
func TestRaftLayerDial(t *testing.T) {
	// Two nodes that know nothing of each other.
	nodes := nodetest.Cluster(t, 2, nodetest.Options{Configure: func(_ int, c *node.Config) { c.Network.Bootstrap = nil }})
	a, b := nodes[0], nodes[1]
	var resolves atomic.Int32
	dialer, err := NewRaftLayer(a.Host(), RaftLayerOptions{
		Allow: func(peer.ID) bool { return false },
		Resolve: func(_ context.Context, id peer.ID) (peer.AddrInfo, error) {
			resolves.Add(1)
			if id != b.ID() {
				return peer.AddrInfo{}, errors.New("no such peer")
			}
			return peer.AddrInfo{ID: id, Addrs: b.Host().Addrs()}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dialer.Close()
	listener, err := NewRaftLayer(b.Host(), RaftLayerOptions{Allow: func(id peer.ID) bool { return id == a.ID() }})
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	if _, err := NewRaftLayer(a.Host(), RaftLayerOptions{}); err == nil {
		t.Error("a layer without Allow was built")
	}

	for _, addr := range []raft.ServerAddress{"127.0.0.1:8300", "", raft.ServerAddress(a.ID().String())} {
		if _, err := dialer.Dial(addr, 5*time.Second); err == nil {
			t.Errorf("Dial(%q) succeeded", addr)
		}
	}
	stranger := unknownPeer(t)
	if _, err := dialer.Dial(raft.ServerAddress(stranger.String()), 5*time.Second); err == nil {
		t.Error("Dial of a peer nobody can find succeeded")
	}
	if n := resolves.Load(); n != 1 {
		t.Fatalf("%d resolves, want 1 (only for the peer ID nobody knows)", n)
	}

	addr := raft.ServerAddress(b.ID().String())
	out, err := dialer.Dial(addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if resolves.Load() != 2 {
		t.Errorf("%d resolves, want 2: the first dial of b needs its addresses", resolves.Load())
	}
	if _, err := out.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	in := acceptWithin(t, listener, 10*time.Second)
	buf := make([]byte, 4)
	in.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(in, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if in.RemoteAddr().String() != a.ID().String() || in.LocalAddr().String() != b.ID().String() ||
		out.RemoteAddr().String() != b.ID().String() || dialer.Addr().String() != a.ID().String() {
		t.Errorf("addresses: in %s→%s, out →%s, dialer %s", in.RemoteAddr(), in.LocalAddr(), out.RemoteAddr(), dialer.Addr())
	}
	in.SetReadDeadline(time.Now().Add(-time.Second))
	var ne net.Error
	if _, err := in.Read(buf); !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("read past the deadline: %v, want a timeout", err)
	}

	// Forget resets the streams and drops the resolved addresses: the next dial resolves again.
	dialer.Forget(b.ID())
	out.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := out.Read(buf); !errors.Is(err, network.ErrReset) {
		t.Errorf("read on a forgotten server's stream: %v, want a reset", err)
	}
	if err := a.Host().Network().ClosePeer(b.ID()); err != nil {
		t.Fatal(err)
	}
	testwait.Eventually(t, 10*time.Second, func() error {
		if addrs := a.Host().Peerstore().Addrs(b.ID()); len(addrs) > 0 {
			return fmt.Errorf("a still knows b at %v", addrs)
		}
		return nil
	})
	again, err := dialer.Dial(addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	again.Close()
	if resolves.Load() != 3 {
		t.Errorf("%d resolves, want 3: after Forget the dial needs b's addresses again", resolves.Load())
	}

	// Close: a waiting Accept returns, later ones fail, and the protocol is gone.
	accepted := make(chan error, 1)
	go func() {
		_, err := listener.Accept()
		accepted <- err
	}()
	listener.Close()
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept during Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not return within 10s of Close")
	}
	if _, err := listener.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if c, err := dialer.Dial(addr, 10*time.Second); err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(buf); err == nil {
			t.Error("a stream to a closed layer carried data")
		}
	}
}

// acceptWithin accepts one stream on l or fails the test.
func acceptWithin(t testing.TB, l *RaftLayer, within time.Duration) net.Conn {
	t.Helper()
	got := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			got <- c
		}
	}()
	select {
	case c := <-got:
		return c
	case <-time.After(within):
		t.Fatalf("no stream accepted within %v", within)
		return nil
	}
}

// unknownPeer is a peer ID nobody runs.
func unknownPeer(t testing.TB) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestRaftCloseLeavesNoGoroutine runs two coordinators' raft to a commit and shuts both
// down: no raft stream stays open on either host, and once the nodes close, nothing raft, its
// transport or the layer started is still running.
func TestRaftCloseLeavesNoGoroutine(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Run("cluster", func(t *testing.T) {
		nodes := nodetest.Cluster(t, 2, nodetest.Options{Protocols: []node.ProtocolLimit{RaftLimit()}})
		members := &raftMembers{}
		servers := make([]*raftServer, len(nodes))
		for i, n := range nodes {
			members.add(n.ID())
			servers[i] = startRaftServer(t, n, members, nil)
		}
		if err := servers[0].raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{RaftServer(nodes[0].ID())}}).Error(); err != nil {
			t.Fatal(err)
		}
		leader := waitLeader(t, servers[:1], 0, 20*time.Second)
		if err := leader.raft.AddVoter(RaftServer(nodes[1].ID()).ID, RaftServer(nodes[1].ID()).Address, 0, 20*time.Second).Error(); err != nil {
			t.Fatal(err)
		}
		applyRaft(t, leader, "one")
		waitApplied(t, servers, []string{"one"}, 20*time.Second)
		// Beside the replication pipeline, the leader's heartbeats come to hold a pooled
		// stream, which raft's transport never closes itself.
		testwait.Eventually(t, 10*time.Second, func() error {
			if n := raftStreams(nodes[0]); n < 2 {
				return fmt.Errorf("the leader holds %d raft streams, want the pipeline and the heartbeat's", n)
			}
			return nil
		})
		for _, s := range servers {
			if err := s.raft.Shutdown().Error(); err != nil {
				t.Fatal(err)
			}
		}
		testwait.Eventually(t, 10*time.Second, func() error {
			for _, n := range nodes {
				if k := raftStreams(n); k > 0 {
					return fmt.Errorf("%s still holds %d raft streams after raft shut down", n.ID().ShortString(), k)
				}
			}
			return nil
		})
	})
	goleak.VerifyNone(t, before)
}

// raftStreams counts n's open streams of RaftID.
func raftStreams(n *node.Node) int {
	count := 0
	for _, c := range n.Host().Network().Conns() {
		for _, st := range c.GetStreams() {
			if st.Protocol() == RaftID {
				count++
			}
		}
	}
	return count
}

// TestRaftLogger checks that raft's lines reach slog at their levels, with raft's own
// fields, and that without a logger they go nowhere.
func TestRaftLogger(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg := RaftConfig(unknownPeer(t), log)
	cfg.Logger.Named("net").Warn("failed to heartbeat", "peer", "p1")
	cfg.Logger.Debug("a debug line")
	got := buf.String()
	for _, want := range []string{"level=WARN", `msg="failed to heartbeat"`, "component=raft", "name=raft.net", "peer=p1"} {
		if !strings.Contains(got, want) {
			t.Errorf("log %q lacks %s", got, want)
		}
	}
	if strings.Contains(got, "debug line") {
		t.Errorf("a debug line passed an info handler: %q", got)
	}
	if quiet := RaftConfig(unknownPeer(t), nil).Logger; quiet.IsError() {
		t.Error("without a slog logger raft still logs errors")
	}
}

// refuseFirst is a connection gater that refuses the first n secured inbound connections,
// as a node still tearing down an earlier connection does.
type refuseFirst struct{ n atomic.Int32 }

func (*refuseFirst) InterceptPeerDial(peer.ID) bool               { return true }
func (*refuseFirst) InterceptAddrDial(peer.ID, ma.Multiaddr) bool { return true }
func (*refuseFirst) InterceptAccept(network.ConnMultiaddrs) bool  { return true }
func (g *refuseFirst) InterceptSecured(dir network.Direction, _ peer.ID, _ network.ConnMultiaddrs) bool {
	return dir != network.DirInbound || g.n.Add(-1) < 0
}
func (*refuseFirst) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// A handshake the server breaks off (here refused twice) is dialled again: raft's next
// heartbeat would wait a whole interval for what a moment's retry mends.
func TestRaftLayerRedialsABrokenHandshake(t *testing.T) {
	gater := &refuseFirst{}
	gater.n.Store(2)
	server, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.ConnectionGater(gater))
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	client, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	listener, err := NewRaftLayer(server, RaftLayerOptions{Allow: func(id peer.ID) bool { return id == client.ID() }})
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	dialer, err := NewRaftLayer(client, RaftLayerOptions{
		Allow: func(peer.ID) bool { return false },
		Resolve: func(context.Context, peer.ID) (peer.AddrInfo, error) {
			return peer.AddrInfo{ID: server.ID(), Addrs: server.Addrs()}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dialer.Close()
	out, err := dialer.Dial(raft.ServerAddress(server.ID().String()), 10*time.Second)
	if err != nil {
		t.Fatalf("dial after two broken handshakes: %v", err)
	}
	defer out.Close()
	if n := gater.n.Load(); n > -1 {
		t.Fatalf("the server refused %d of 2 handshakes, then let one through; want all three tried", 2-n)
	}
	if _, err := out.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	in := acceptWithin(t, listener, 10*time.Second)
	defer in.Close()
	buf := make([]byte, 4)
	in.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(in, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
}
