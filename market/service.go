package market

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"golang.org/x/sync/errgroup"

	"github.com/virtuoso-market/virtuoso/node"
)

// base is what each of the market's services (Book, Buyer, Provider) holds of its node: the
// node, a logger, and the lifetime of its goroutines and stream handlers, with the stream
// plumbing every protocol uses.
type base struct {
	n          *node.Node
	log        *slog.Logger
	protocols  []protocol.ID // handlers registered by serve, removed by stop
	firstFrame time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	group  *errgroup.Group
}

// begin binds the service to n; its goroutines run until stop.
func (b *base) begin(ctx context.Context, n *node.Node, logger *slog.Logger, role string, so StreamOptions) {
	b.n = n
	b.firstFrame = cmpOr(so.FirstFrame, DefaultFirstFrame)
	if logger == nil {
		logger = n.Logger()
	}
	b.log = logger.With("service", role)
	b.ctx, b.cancel = context.WithCancel(ctx)
	b.group, b.ctx = errgroup.WithContext(b.ctx)
}

// stop removes the stream handlers and waits for the goroutines.
func (b *base) stop() error {
	if b.cancel == nil {
		return nil
	}
	for _, id := range b.protocols {
		b.n.Host().RemoveStreamHandler(id)
	}
	b.cancel()
	err := b.group.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (b *base) now() time.Time { return time.Now().UTC() }

// every runs fn every d until the service stops; for its group.
func (b *base) every(d time.Duration, fn func()) func() error {
	return func() error {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-b.ctx.Done():
				return nil
			case <-t.C:
			}
			fn()
		}
	}
}

// peerAddr is a peer to dial, with addresses learnt from its offer.
type peerAddr struct {
	id    peer.ID
	addrs []string
}

// open opens a stream to p, connecting first (connect).
func (b *base) open(ctx context.Context, p peerAddr, id protocol.ID) (network.Stream, error) {
	if err := b.connect(ctx, p); err != nil {
		return nil, err
	}
	h := b.n.Host()
	st, err := h.NewStream(ctx, p.id, id)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: open %s: %w", ErrUnavailable, Short(p.id), id, err)
	}
	if err := st.Scope().SetService(serviceName); err != nil {
		st.Reset()
		return nil, fmt.Errorf("open %s: %w", id, err)
	}
	return st, nil
}

// connect connects to p unless connected: to the addresses p advertised in its offer, then
// to whatever the DHT knows of p.
func (b *base) connect(ctx context.Context, p peerAddr) error {
	h := b.n.Host()
	if h.Network().Connectedness(p.id) == network.Connected {
		return nil
	}
	var addrs []ma.Multiaddr
	for _, a := range p.addrs {
		if m, err := ma.NewMultiaddr(a); err == nil {
			addrs = append(addrs, m)
		}
	}
	err := h.Connect(ctx, peer.AddrInfo{ID: p.id, Addrs: addrs})
	if err != nil {
		var info peer.AddrInfo
		if info, err = b.n.DHT().FindPeer(ctx, p.id); err == nil {
			err = h.Connect(ctx, info)
		}
	}
	if err != nil {
		return fmt.Errorf("%w: cannot reach %s: %w", ErrUnavailable, Short(p.id), err)
	}
	return nil
}

// DefaultFirstFrame is StreamOptions.FirstFrame's default.
const DefaultFirstFrame = 5 * time.Second

// StreamOptions are what the stream handlers of every service share.
type StreamOptions struct {
	// FirstFrame is how long a peer has, after opening a stream, to send its request
	// (default DefaultFirstFrame); a stream that stays silent is reset, so that idle streams
	// cost their opener, not this node.
	FirstFrame time.Duration
}

// serve registers a stream handler: it sets the resource scope, gives the peer
// StreamOptions.FirstFrame to send its request frame (at most frameCap bytes), then reserves memory,
// sets the protocol's deadline and hands the frame to handle; it resets the stream when the
// handler fails. A malformed request is answered with an error. A timeout of 0 is a tunnel:
// only its handshake has a deadline, which the handler clears.
func (b *base) serve(id protocol.ID, frameCap, memory int, timeout time.Duration, handle func(ctx context.Context, st network.Stream, frame []byte, r *bufio.Reader) error) {
	b.protocols = append(b.protocols, id)
	b.n.Host().SetStreamHandler(id, func(st network.Stream) {
		if err := st.Scope().SetService(serviceName); err != nil {
			st.Reset()
			return
		}
		st.SetDeadline(time.Now().Add(b.firstFrame))
		r := bufio.NewReader(st)
		frame, err := ReadFrame(r, frameCap)
		if err != nil {
			if rerr := replyMalformed(st, err); rerr != nil {
				b.log.Debug("stream failed", "protocol", id, "peer", st.Conn().RemotePeer(), "err", err)
				st.Reset()
				return
			}
			st.Close()
			return
		}
		if err := st.Scope().ReserveMemory(memory, network.ReservationPriorityAlways); err != nil {
			st.Reset()
			return
		}
		defer st.Scope().ReleaseMemory(memory)
		var ctx context.Context
		var cancel context.CancelFunc
		if timeout > 0 {
			ctx, cancel = context.WithTimeout(b.ctx, timeout)
			st.SetDeadline(time.Now().Add(timeout))
		} else {
			ctx, cancel = context.WithCancel(b.ctx)
			st.SetDeadline(time.Now().Add(30 * time.Second))
		}
		defer cancel()
		if err := handle(ctx, st, frame, r); err != nil {
			b.log.Debug("stream failed", "protocol", id, "peer", st.Conn().RemotePeer(), "err", err)
			st.Reset()
			return
		}
		st.Close()
	})
}

// checked is an answer with limits beyond its JSON shape.
type checked interface{ check() error }

// request opens a stream to p, writes req and reads one JSON answer into resp (checked, if
// it is a checked).
func (b *base) request(ctx context.Context, p peerAddr, id protocol.ID, timeout time.Duration, req, resp any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := b.open(ctx, p, id)
	if err != nil {
		return err
	}
	st.SetDeadline(time.Now().Add(timeout))
	if err := WriteJSON(st, req); err != nil {
		st.Reset()
		return fmt.Errorf("%w: send to %s: %w", ErrUnavailable, Short(p.id), err)
	}
	st.CloseWrite()
	if err := ReadJSON(bufio.NewReader(st), resp); err != nil {
		st.Reset()
		if errors.Is(err, ErrMalformed) {
			return fmt.Errorf("answer of %s: %w", Short(p.id), err)
		}
		return fmt.Errorf("%w: %s did not answer: %w", ErrUnavailable, Short(p.id), err)
	}
	st.Close()
	if c, ok := resp.(checked); ok {
		if err := c.check(); err != nil {
			return fmt.Errorf("answer of %s: %w", Short(p.id), err)
		}
	}
	return nil
}

// signal wakes whoever waits on c, without blocking when a wake-up is already pending.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Short is a peer ID shortened for people to read ("12D3KooW…J5KttS"): the prefix all
// ed25519 peer IDs share and the tail that tells them apart.
func Short(p peer.ID) string {
	s := p.String()
	if len(s) > 16 {
		return s[:8] + "…" + s[len(s)-6:]
	}
	return s
}
