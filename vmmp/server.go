package vmmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/virtuoso-market/virtuoso/internal/failpoint"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// OriginID is the back-end protocol a destination asks the origin on (report §7.2.3: ask_state,
// the files, make migratable): one JSON line each way, for a VM the origin granted it.
const OriginID protocol.ID = "/vmmp/origin/1.0.0"

// maxOriginLine caps a back-end line.
const maxOriginLine = 16 << 10

// originRequest asks for a granted VM; originAnswer is its state and files, or why not.
type originRequest struct {
	VM vm.ID `json:"vm"`
}

type originAnswer struct {
	State vm.State `json:"state"`
	Owner string   `json:"owner,omitempty"`
	Lease string   `json:"lease,omitempty"`
	Files []string `json:"files,omitempty"`
	Error string   `json:"error,omitempty"`
}

// ServeOrigin answers destinations' back-end queries on h for the VMs g granted them.
func (g *Grants) ServeOrigin(h host.Host) { h.SetStreamHandler(OriginID, g.answerOrigin) }

func (g *Grants) answerOrigin(st network.Stream) {
	defer st.Close()
	st.SetDeadline(time.Now().Add(30 * time.Second))
	var req originRequest
	var a originAnswer
	if err := readLine(bufio.NewReader(st), maxOriginLine, &req); err != nil {
		a.Error = err.Error()
	} else if gr, ok := g.live(req.VM, st.Conn().RemotePeer()); !ok {
		a.Error = ErrNotGranted.Error()
	} else {
		a = originAnswer{State: gr.rec.State, Owner: gr.rec.Owner, Lease: gr.rec.Lease, Files: gr.files.Names}
	}
	writeLine(st, a)
}

// askOrigin asks origin for VM id's state and files. A question the origin does not answer
// in askTimeout, or whose stream breaks, is asked again, up to askTries times, on a new
// connection: the one it went on may be the origin's last life's (it restarted, and this side
// has not yet noticed the connection is dead), which would swallow every question for as long
// as the transport takes to give up on it.
func askOrigin(ctx context.Context, h host.Host, origin peer.ID, id vm.ID) (originAnswer, error) {
	var err error
	for try := range askTries {
		if try > 0 {
			h.Network().ClosePeer(origin)
		}
		var a originAnswer
		if a, err = askOriginOnce(ctx, h, origin, id); err == nil || !errors.Is(err, errOriginUnreachable) || ctx.Err() != nil {
			return a, err
		}
	}
	return originAnswer{}, err
}

// askTries and askTimeout bound askOrigin: an origin that is up answers at once.
var (
	askTries   = 3
	askTimeout = 15 * time.Second
)

func askOriginOnce(ctx context.Context, h host.Host, origin peer.ID, id vm.ID) (originAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	st, err := h.NewStream(ctx, origin, OriginID)
	if err != nil {
		return originAnswer{}, fmt.Errorf("%w: ask the origin %s: %w", errOriginUnreachable, origin, err)
	}
	defer st.Close()
	if d, ok := ctx.Deadline(); ok {
		st.SetDeadline(d)
	}
	if err := writeLine(st, originRequest{VM: id}); err != nil {
		st.Reset()
		return originAnswer{}, fmt.Errorf("%w: ask the origin %s: %w", errOriginUnreachable, origin, err)
	}
	st.CloseWrite()
	var a originAnswer
	if err := readLine(bufio.NewReader(st), maxOriginLine, &a); err != nil {
		st.Reset()
		if errors.Is(err, ErrMalformed) {
			return originAnswer{}, fmt.Errorf("the origin's answer: %w", err)
		}
		return originAnswer{}, fmt.Errorf("%w: the origin %s did not answer: %w", errOriginUnreachable, origin, err)
	}
	if a.Error != "" {
		return a, fmt.Errorf("the origin refused: %s", a.Error)
	}
	return a, nil
}

func writeLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func readLine(r *bufio.Reader, limit int, v any) error {
	line, err := readCappedLine(r, limit)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}

// ServerOptions are what a destination's migration server asks of its provider.
type ServerOptions struct {
	// Methods are the transfer methods the destination can take VM id with (QUERY).
	Methods func(id vm.ID) []string
	// Admit decides whether the agent may migrate the VM here now (the destination agreed to
	// host it: a lease, capacity) and under which owner and lease the VM is to be kept here;
	// an error is a FAIL whose code it names (vm.Code). Without it, every REQ is admitted
	// under the origin's owner and lease.
	Admit func(ctx context.Context, agent peer.ID, req Message) (Admission, error)
	// Arrived, if set, is told of a VM adopted here, before RESP SUCCESS: it is the
	// migration's commit. An error deletes what was adopted and answers FAIL.
	Arrived func(ctx context.Context, rec vm.Record) error
	// Heartbeat is how often the server tells the agent it is still at it (default 1 s).
	Heartbeat time.Duration
	// Transfer options for the copy.
	Transfer []transfer.Option
	Log      *slog.Logger
}

// Admission is what a destination keeps an admitted VM under.
type Admission struct {
	Owner, Lease string
}

// Server is the migration server of a destination provider (report §7.2.3): it answers
// QUERY with its methods and carries out a REQ: it asks the origin for the VM's state and
// files, pulls them (Pull), adopts the VM, and answers RESP, heartbeating while it works.
type Server struct {
	h    host.Host
	mgr  *vm.Manager
	opts ServerOptions

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// NewServer registers the migration server of mgr on h.
func NewServer(h host.Host, mgr *vm.Manager, opts ServerOptions) *Server {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{h: h, mgr: mgr, opts: opts}
	h.SetStreamHandler(ProtocolID, s.handle)
	return s
}

// Close stops serving and waits for the migrations under way to end.
func (s *Server) Close() error {
	s.h.RemoveStreamHandler(ProtocolID)
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) handle(st network.Stream) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		st.Reset()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer st.Close()
	agent := st.Conn().RemotePeer()
	st.SetReadDeadline(time.Now().Add(30 * time.Second))
	m, err := ReadMessage(bufio.NewReader(st))
	if err != nil {
		st.Reset()
		return
	}
	st.SetReadDeadline(time.Time{})
	switch m.Kind {
	case Query:
		var methods []string
		if s.opts.Methods != nil {
			methods = s.opts.Methods(m.VM)
		}
		WriteMessage(st, Message{Kind: Results, VM: m.VM, Methods: methods})
	case Req:
		var mu sync.Mutex // the heartbeats and the RESP share the stream
		send := func(m Message) {
			mu.Lock()
			defer mu.Unlock()
			st.SetWriteDeadline(time.Now().Add(10 * time.Second))
			WriteMessage(st, m)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		// The agent sends nothing after REQ: its stream ending means it is gone, and the
		// migration is to be reverted, not finished behind its back.
		go func() {
			var b [1]byte
			st.Read(b[:])
			cancel()
		}()
		var at atomic.Pointer[Message] // the step and progress the next heartbeat tells
		report := func(hb Message) {
			hb.Kind, hb.VM = Heartbeat, m.VM
			at.Store(&hb)
		}
		report(Message{Step: "admit"})
		done := make(chan struct{})
		go func() {
			t := time.NewTicker(s.opts.Heartbeat)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-t.C:
					send(*at.Load())
				}
			}
		}()
		rec, err := s.migrate(ctx, agent, m, report)
		close(done)
		if err != nil {
			s.opts.Log.Warn("migration failed", "vm", m.VM, "err", err)
			send(Message{Kind: Resp, VM: m.VM, Version: m.Version, Code: failCode(err)})
			return
		}
		send(*at.Load()) // the last figures, then the answer
		send(Message{Kind: Resp, VM: m.VM, Version: rec.State.Version, Success: true})
	default:
		WriteMessage(st, Message{Kind: Resp, VM: m.VM, Code: "unexpected"})
	}
}

// migrate carries out REQ m of agent, reporting each step and the copy's progress.
func (s *Server) migrate(ctx context.Context, agent peer.ID, m Message, report func(Message)) (vm.Record, error) {
	var adm Admission
	if s.opts.Admit != nil {
		var err error
		if adm, err = s.opts.Admit(ctx, agent, m); err != nil {
			return vm.Record{}, err
		}
	}
	report(Message{Step: "ask"})
	s.h.Peerstore().AddAddr(m.Origin.Peer, m.Origin.Addr, time.Hour)
	a, err := askOrigin(ctx, s.h, m.Origin.Peer, m.VM)
	if err != nil {
		return vm.Record{}, err
	}
	if a.State.Version != m.Version {
		return vm.Record{}, fmt.Errorf("%w: the origin holds version %d, the request says %d", errStale, a.State.Version, m.Version)
	}
	report(Message{Step: "copy"})
	var last transfer.Progress
	opts := append(slices.Clip(s.opts.Transfer), transfer.WithProgress(func(p transfer.Progress) {
		last = p
		if p.Done > 0 {
			failpoint.Here("dest:copy")
		}
		report(Message{Step: "copy", Done: uint64(p.Done), Total: uint64(p.Total), Wire: uint64(p.WireBytes)})
	}))
	if m.Method == "full" {
		opts = append(opts, transfer.WithMethod(transfer.MethodFull))
	}
	in := Incoming{VM: m.VM, Origin: m.Origin.Peer, State: a.State, Owner: a.Owner, Lease: a.Lease, Files: a.Files}
	if adm.Owner != "" {
		in.Owner, in.Lease = adm.Owner, adm.Lease
	}
	rec, res, err := Pull(ctx, s.h, s.mgr, in, opts...)
	if res != nil {
		report(Message{Step: "adopt", Done: uint64(last.Total), Total: uint64(last.Total), Wire: uint64(res.WireBytes)})
	}
	if err != nil || s.opts.Arrived == nil {
		return rec, err
	}
	failpoint.Here("dest:adopted")
	if err := s.opts.Arrived(ctx, rec); err != nil {
		// Not committed (cancelled meanwhile, or lapsed): what was adopted goes.
		if _, derr := s.mgr.Delete(context.WithoutCancel(ctx), rec.ID); derr != nil {
			err = errors.Join(err, fmt.Errorf("delete the uncommitted copy: %w", derr))
		}
		return vm.Record{}, err
	}
	failpoint.Here("dest:arrived")
	return rec, nil
}

var (
	errStale             = errors.New("stale")
	errOriginUnreachable = errors.New("the origin cannot be reached")
)

// failCode names why a migration failed, for RESP.
func failCode(err error) string {
	switch {
	case errors.Is(err, errStale):
		return "stale"
	case errors.Is(err, syscall.ENOSPC):
		return "no_space"
	case errors.Is(err, ErrNotGranted) || strings.Contains(err.Error(), ErrNotGranted.Error()):
		return "not_granted"
	case errors.Is(err, errOriginUnreachable):
		return "origin_unreachable"
	}
	if c, _, ok := vm.Code(err); ok && token.MatchString(c) {
		return c
	}
	return "failed"
}
