package ledger

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/virtuoso-market/virtuoso/node"
)

// RaftID is the protocol the coordinators' raft messages travel on. Its wire is hashicorp/raft's
// NetworkTransport unchanged (each RPC a type byte and a msgpack body, answered by an error
// string and a msgpack body), one libp2p stream for each of the transport's connections. A
// raft server's ID and address are both its peer ID: libp2p authenticates the peer, and
// RaftLayerOptions.Allow decides which peers may speak raft at all.
const RaftID protocol.ID = "/virtuoso/raft/1.0.0"

// raftService is the resource-manager service of raft streams.
const raftService = "virtuoso.raft"

// raftStreamMemory is reserved for each raft stream: the transport gives every connection a
// 256 KiB buffer one way and a 4 KiB one the other.
const raftStreamMemory = 260 << 10

// raftResolvedTTL is how long addresses found by RaftLayerOptions.Resolve stay in the
// peerstore; a dial that fails on them resolves again.
const raftResolvedTTL = 30 * time.Minute

// Raft transport settings: connections pooled per server, and the I/O deadline of one RPC
// (a snapshot's is scaled by its size), which also bounds a dial and its address lookup.
const (
	raftMaxPool = 3
	raftTimeout = 10 * time.Second
)

// RaftLimit is the resource-manager limit of RaftID, for node.Options.Protocols. A leader
// holds a few streams with each follower (the pipeline, the heartbeat, pooled RPCs and a
// snapshot at times); a coordinator group is a handful of servers.
func RaftLimit() node.ProtocolLimit {
	const streams = 128
	return node.ProtocolLimit{Protocol: RaftID, Streams: streams, StreamsPerPeer: 16, Memory: streams * raftStreamMemory}
}

// RaftConfig is the raft configuration of the coordinator with peer ID id. Its timeouts are
// raft's defaults (a 1 s heartbeat and election timeout, a 500 ms leader lease): short enough
// that a lost leader is replaced within seconds, long enough for a loaded machine and for
// peers an internet apart. Raft logs to log, or nowhere when log is nil.
func RaftConfig(id peer.ID, log *slog.Logger) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(id.String())
	c.Logger = raftLogger(log)
	return c
}

// RaftServer is the voting raft server that the coordinator with peer ID id is, for
// raft.Raft.BootstrapCluster.
func RaftServer(id peer.ID) raft.Server {
	return raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id.String()), Address: raft.ServerAddress(id.String())}
}

// NewRaftTransport is raft's network transport over layer, logging to log (nowhere when nil).
// raft.Raft.Shutdown closes it, and it closes the layer.
func NewRaftTransport(layer *RaftLayer, log *slog.Logger) *raft.NetworkTransport {
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  layer,
		MaxPool: raftMaxPool,
		Timeout: raftTimeout,
		Logger:  raftLogger(log).Named("net"),
	})
}

// RaftLayerOptions are what a RaftLayer asks of the coordinator that runs it.
type RaftLayerOptions struct {
	// Allow admits the peers whose raft streams are served: the servers of the current
	// configuration and a peer whose join is under way. Raft does not authenticate its
	// messages, so a stream from any other peer is reset at once. It is asked when a stream
	// opens: Forget resets the streams of a peer admitted no longer. Required.
	Allow func(peer.ID) bool
	// Resolve finds the addresses of a server the host cannot reach with what its peerstore
	// holds (the DHT's FindPeer). Optional: without it, only known addresses are dialled.
	Resolve func(context.Context, peer.ID) (peer.AddrInfo, error)
}

// RaftLayer carries raft between coordinators over libp2p streams on RaftID: it is the
// raft.StreamLayer of NewRaftTransport, accepting the streams of admitted peers and dialling
// servers by peer ID. Close stops it; raft closes it when it shuts down.
type RaftLayer struct {
	host    host.Host
	allow   func(peer.ID) bool
	resolve func(context.Context, peer.ID) (peer.AddrInfo, error)

	accepted chan *raftConn
	// ctx ends with Close: it stops the handlers waiting to hand a stream over and the
	// dials under way.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	conns  map[*raftConn]struct{}     // every stream open through the layer, both ways
	added  map[peer.ID][]ma.Multiaddr // addresses the layer put in the peerstore
}

// NewRaftLayer registers the raft stream handler on h.
func NewRaftLayer(h host.Host, opts RaftLayerOptions) (*RaftLayer, error) {
	if opts.Allow == nil {
		return nil, errors.New("raft layer: RaftLayerOptions.Allow is required: raft messages are unauthenticated, so the layer must know which peers are servers")
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &RaftLayer{
		host: h, allow: opts.Allow, resolve: opts.Resolve,
		accepted: make(chan *raftConn),
		ctx:      ctx, cancel: cancel,
		conns: map[*raftConn]struct{}{}, added: map[peer.ID][]ma.Multiaddr{},
	}
	h.SetStreamHandler(RaftID, l.handle)
	return l, nil
}

// handle admits a stream of an allowed peer and waits until raft accepts it.
func (l *RaftLayer) handle(st network.Stream) {
	if !l.allow(st.Conn().RemotePeer()) {
		st.Reset()
		return
	}
	c, err := l.open(st)
	if err != nil {
		return
	}
	select {
	case l.accepted <- c:
	case <-l.ctx.Done():
		c.reset()
	}
}

// open sets a new stream's resource scope and memory and tracks it; it resets the stream
// when one of them fails or the layer is closed.
func (l *RaftLayer) open(st network.Stream) (*raftConn, error) {
	if err := st.Scope().SetService(raftService); err != nil {
		st.Reset()
		return nil, fmt.Errorf("raft stream with %s: %w", st.Conn().RemotePeer(), err)
	}
	if err := st.Scope().ReserveMemory(raftStreamMemory, network.ReservationPriorityAlways); err != nil {
		st.Reset()
		return nil, fmt.Errorf("raft stream with %s: %w", st.Conn().RemotePeer(), err)
	}
	c := &raftConn{Stream: st, layer: l}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		st.Reset()
		return nil, fmt.Errorf("raft stream with %s: %w", st.Conn().RemotePeer(), net.ErrClosed)
	}
	l.conns[c] = struct{}{}
	return c, nil
}

// Accept waits for the next admitted inbound stream; after Close it returns an error
// matching net.ErrClosed, which ends raft's accept loop.
func (l *RaftLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.accepted:
		return c, nil
	case <-l.ctx.Done():
		return nil, fmt.Errorf("accept raft stream: %w", net.ErrClosed)
	}
}

// Addr is this server's raft address: its peer ID.
func (l *RaftLayer) Addr() net.Addr { return raftAddr(l.host.ID()) }

// Dial opens a raft stream to the server at address, which must be a peer ID. When the host
// cannot reach the peer with the addresses it knows, Dial asks RaftLayerOptions.Resolve for
// others and keeps them in the peerstore (Forget drops them).
func (l *RaftLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	id, err := peer.Decode(string(address))
	if err != nil {
		return nil, fmt.Errorf("dial raft server %q: not a peer ID, and raft servers are addressed by peer ID: %w", address, err)
	}
	if id == l.host.ID() {
		return nil, fmt.Errorf("dial raft server %s: that is this node", id)
	}
	if timeout <= 0 {
		timeout = raftTimeout
	}
	ctx, cancel := context.WithTimeout(l.ctx, timeout)
	defer cancel()
	st, err := l.stream(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("dial raft server %s: %w", id, err)
	}
	c, err := l.open(st)
	if err != nil {
		return nil, fmt.Errorf("dial raft server %s: %w", id, err)
	}
	return c, nil
}

// connect makes sure the host has a connection to id, resolving its addresses when those in
// the peerstore fail or there are none.
func (l *RaftLayer) connect(ctx context.Context, id peer.ID) error {
	if l.host.Network().Connectedness(id) == network.Connected {
		return nil
	}
	err := errors.New("no address known")
	if len(l.host.Peerstore().Addrs(id)) > 0 {
		if err = l.host.Connect(ctx, peer.AddrInfo{ID: id}); err == nil {
			return nil
		}
	}
	if l.resolve == nil {
		return fmt.Errorf("%w (%w): connect to it, or give the raft layer a resolver", errNotFound, err)
	}
	info, rerr := l.resolve(ctx, id)
	if rerr == nil && info.ID != id {
		rerr = fmt.Errorf("the resolver answered for %s", info.ID)
	}
	if rerr == nil && len(info.Addrs) == 0 {
		rerr = errors.New("the resolver found no address")
	}
	if rerr != nil {
		return fmt.Errorf("%w (%w) nor find its addresses: %w", errNotFound, err, rerr)
	}
	l.remember(id, info.Addrs)
	if err := l.host.Connect(ctx, peer.AddrInfo{ID: id}); err != nil {
		return fmt.Errorf("cannot reach it at its resolved addresses %v: %w", info.Addrs, err)
	}
	return nil
}

// errNotFound: no address of the server is known or can be found; trying again at once
// would not change that.
var errNotFound = errors.New("cannot reach it")

// stream opens a raft stream to id. A connection can fail for a moment after either side
// closed an earlier one (the remote still tearing it down, a handshake broken off): the
// stream is tried again, twice, past the swarm's dial backoff and at the addresses the first
// attempt found, rather than left to raft's next heartbeat a whole interval later.
func (l *RaftLayer) stream(ctx context.Context, id peer.ID) (network.Stream, error) {
	err := l.connect(ctx, id)
	if errors.Is(err, errNotFound) {
		return nil, err
	}
	var st network.Stream
	if err == nil {
		st, err = l.host.NewStream(ctx, id, RaftID)
	}
	for wait := 100 * time.Millisecond; err != nil && wait <= 200*time.Millisecond; wait *= 2 {
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		st, err = l.host.NewStream(network.WithForceDirectDial(ctx, "raft redial"), id, RaftID)
	}
	return st, err
}

// remember puts resolved addresses of id in the peerstore and notes them for Forget.
func (l *RaftLayer) remember(id peer.ID, addrs []ma.Multiaddr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range addrs {
		if !slices.ContainsFunc(l.added[id], a.Equal) {
			l.added[id] = append(l.added[id], a)
		}
	}
	l.host.Peerstore().AddAddrs(id, addrs, raftResolvedTTL)
}

// Forget is for a server removed from the configuration (or a join that failed): it resets
// the raft streams with id and drops from the peerstore the addresses the layer added for it.
// It does not stop Allow from admitting id again.
func (l *RaftLayer) Forget(id peer.ID) {
	l.mu.Lock()
	addrs := l.added[id]
	delete(l.added, id)
	var drop []*raftConn
	for c := range l.conns {
		if c.Conn().RemotePeer() == id {
			drop = append(drop, c)
		}
	}
	l.mu.Unlock()
	if len(addrs) > 0 {
		l.host.Peerstore().SetAddrs(id, addrs, 0)
	}
	for _, c := range drop {
		c.reset()
	}
}

// Close removes the stream handler and resets every raft stream the layer opened or
// accepted; Accept then fails. Closing twice is not an error.
func (l *RaftLayer) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	conns := l.conns
	l.conns = nil
	l.mu.Unlock()
	l.host.RemoveStreamHandler(RaftID)
	l.cancel()
	for c := range conns {
		c.Stream.Reset()
	}
	return nil
}

// forget stops tracking c.
func (l *RaftLayer) forget(c *raftConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
}

// raftConn is a raft stream as the net.Conn raft's transport uses; deadlines are the
// stream's, and both ends are named by peer ID.
type raftConn struct {
	network.Stream
	layer *RaftLayer
}

// Close closes the stream.
func (c *raftConn) Close() error {
	c.layer.forget(c)
	return c.Stream.Close()
}

// reset aborts the stream.
func (c *raftConn) reset() {
	c.layer.forget(c)
	c.Stream.Reset()
}

// LocalAddr is this node's peer ID.
func (c *raftConn) LocalAddr() net.Addr { return raftAddr(c.Conn().LocalPeer()) }

// RemoteAddr is the other server's peer ID.
func (c *raftConn) RemoteAddr() net.Addr { return raftAddr(c.Conn().RemotePeer()) }

// raftAddr is a raft server's address: its peer ID.
type raftAddr peer.ID

func (a raftAddr) Network() string { return "libp2p" }
func (a raftAddr) String() string  { return peer.ID(a).String() }

// raftLogger passes raft's log lines to log under component=raft, or discards them when log
// is nil.
func raftLogger(log *slog.Logger) hclog.Logger {
	if log == nil {
		return hclog.NewNullLogger()
	}
	// The intercepting logger's own output is off; its sink sees every line and slog's
	// handler decides which to keep.
	l := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: "raft", Level: hclog.Off, Output: io.Discard})
	l.RegisterSink(raftSink{log.With("component", "raft")})
	return l
}

// raftSink is an hclog sink writing to slog.
type raftSink struct{ log *slog.Logger }

func (s raftSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	var l slog.Level
	switch level {
	case hclog.Trace:
		l = slog.LevelDebug - 4
	case hclog.Debug:
		l = slog.LevelDebug
	case hclog.Warn:
		l = slog.LevelWarn
	case hclog.Error:
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	s.log.Log(context.Background(), l, msg, append([]any{"name", name}, args...)...)
}
