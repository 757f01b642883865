package market

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// The console protocol, /virtuoso/console/1.0.0: a byte tunnel from a viewer on the buyer's
// machine to the VNC server of the VM on the provider's loopback. The buyer first asks for
// the console over the control protocol (the provider opens a session with a one-time VNC
// password); its node then listens on a loopback port of its own and opens one console
// stream per viewer connection: {"vm"} → {} (or {"error"}), then raw VNC bytes both ways.

// consoleRequest opens the console tunnel of a VM; the answer is a consoleResponse, then the
// stream carries the VNC bytes both ways.
type consoleRequest struct {
	VM vm.ID `json:"vm"`
}

type consoleResponse struct {
	Error *WireError `json:"error,omitempty"`
}

func decodeConsoleRequest(b []byte) (consoleRequest, error) {
	var r consoleRequest
	if err := DecodeStrict(b, &r); err != nil {
		return r, err
	}
	if r.VM.IsZero() {
		return r, fmt.Errorf("%w: vm id is zero", ErrMalformed)
	}
	return r, nil
}

// ConsoleSession is where the buyer's VNC viewer connects: a port on the buyer's own loopback
// that tunnels to the provider's console of the VM, and the session's one-time password.
type ConsoleSession struct {
	VM       VM     `json:"vm"`
	Addr     string `json:"addr"`
	Password string `json:"password"`
}

// Console opens a console session on the buyer's running VM: the provider sets a new
// one-time VNC password, and the node listens on a loopback port whose connections it tunnels
// over /virtuoso/console/1.0.0.
func (b *Buyer) Console(ctx context.Context, id vm.ID) (ConsoleSession, error) {
	v, resp, err := b.control(ctx, controlRequest{VM: id, Action: vm.ActionView})
	if err != nil {
		return ConsoleSession{}, err
	}
	bl, err := node.GetJSON[buyerLease](b.space, leaseKey(id))
	if err != nil {
		return ConsoleSession{}, err
	}
	t, err := b.openTunnel(id, peerAddr{v.Provider, bl.Addrs})
	if err != nil {
		return ConsoleSession{}, err
	}
	return ConsoleSession{VM: v, Addr: t.ln.Addr().String(), Password: resp.Password}, nil
}

// tunnel is a buyer-side console listener of one VM.
type tunnel struct {
	ln       net.Listener
	vm       vm.ID
	provider peerAddr

	mu     sync.Mutex
	conns  map[net.Conn]bool
	last   time.Time
	closed bool
}

func (t *tunnel) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	t.ln.Close()
	for c := range t.conns {
		c.Close()
	}
}

func (b *Buyer) openTunnel(id vm.ID, p peerAddr) (*tunnel, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("console listener: %w", err)
	}
	t := &tunnel{ln: ln, vm: id, provider: p, conns: map[net.Conn]bool{}, last: time.Now()}
	b.mu.Lock()
	if old := b.tunnels[id]; old != nil {
		old.close()
	}
	b.tunnels[id] = t
	b.mu.Unlock()
	b.group.Go(func() error {
		for {
			c, err := ln.Accept()
			if err != nil {
				return nil
			}
			t.mu.Lock()
			if t.closed {
				t.mu.Unlock()
				c.Close()
				return nil
			}
			t.conns[c] = true
			t.last = time.Now()
			t.mu.Unlock()
			b.group.Go(func() error {
				defer func() {
					c.Close()
					t.mu.Lock()
					delete(t.conns, c)
					t.last = time.Now()
					t.mu.Unlock()
				}()
				if err := b.tunnelConn(t, c); err != nil {
					b.log.Debug("console tunnel", "vm", id, "err", err)
				}
				return nil
			})
		}
	})
	return t, nil
}

// tunnelConn carries one viewer connection to the provider.
func (b *Buyer) tunnelConn(t *tunnel, c net.Conn) error {
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	st, err := b.open(ctx, t.provider, ConsoleID)
	cancel()
	if err != nil {
		return err
	}
	st.SetDeadline(time.Now().Add(30 * time.Second))
	if err := WriteJSON(st, consoleRequest{VM: t.vm}); err != nil {
		st.Reset()
		return err
	}
	r := bufio.NewReader(st)
	var resp consoleResponse
	if err := ReadJSON(r, &resp); err != nil {
		st.Reset()
		return err
	}
	if resp.Error != nil {
		st.Reset()
		return resp.Error.err()
	}
	if err := pipe(b.ctx, st, r, c); err != nil {
		st.Reset()
		return err
	}
	st.Close()
	return nil
}

func (b *Buyer) closeTunnel(id vm.ID) {
	b.mu.Lock()
	t := b.tunnels[id]
	delete(b.tunnels, id)
	b.mu.Unlock()
	if t != nil {
		t.close()
	}
}

// closeIdleTunnels closes tunnels nobody used for ConsoleIdle.
func (b *Buyer) closeIdleTunnels() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, t := range b.tunnels {
		t.mu.Lock()
		idle := len(t.conns) == 0 && time.Since(t.last) > b.opts.ConsoleIdle
		t.mu.Unlock()
		if idle {
			t.close()
			delete(b.tunnels, id)
		}
	}
}

// handleConsole tunnels a buyer's VNC connection to its running VM's console: the provider
// dials its own VNC server on loopback, so no provider port is exposed.
func (p *Provider) handleConsole(ctx context.Context, st network.Stream, frame []byte, r *bufio.Reader) error {
	req, err := decodeConsoleRequest(frame)
	var conn net.Conn
	if err == nil {
		conn, err = p.dialConsole(ctx, st.Conn().RemotePeer(), req.VM)
	}
	if err != nil {
		return WriteJSON(st, consoleResponse{Error: toWire(err)})
	}
	defer conn.Close()
	if err := WriteJSON(st, consoleResponse{}); err != nil {
		return err
	}
	return pipe(ctx, st, r, conn)
}

func (p *Provider) dialConsole(ctx context.Context, from peer.ID, id vm.ID) (net.Conn, error) {
	if _, err := p.ownedLease(id, from); err != nil {
		return nil, err
	}
	// The session exists only while the VM runs: the Manager opened it (checking the status),
	// and stopping or suspending the VM drops it.
	p.mu.Lock()
	addr := p.consoles[id]
	p.mu.Unlock()
	if addr == "" {
		return nil, fmt.Errorf("%w: no console session is open for vm %s; ask for the console first", ErrNotFound, id)
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: console of vm %s: %w", vm.ErrHypervisor, id, err)
	}
	return conn, nil
}

// pipe copies bytes both ways between a stream (whose reader may hold buffered bytes) and a
// connection until either side ends or ctx is done.
func pipe(ctx context.Context, st network.Stream, r io.Reader, conn net.Conn) error {
	st.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() {
		st.Reset()
		conn.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(conn, r)
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.CloseWrite()
		} else {
			conn.Close()
		}
	}()
	_, err := io.Copy(st, conn)
	st.CloseWrite()
	wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
