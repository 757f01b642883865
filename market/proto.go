package market

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Topic and stream protocols of the marketplace.
const (
	// OffersTopic is the gossipsub topic offers are published on.
	OffersTopic = "/virtuoso/offers/1"
	// OffersQueryID asks a node directly for the offers it holds (a joining node's catch-up:
	// gossip is lossy right after peers join).
	OffersQueryID protocol.ID = "/virtuoso/offers-query/1.0.0"
	// StoreID carries a store request (a lease proposal) to a provider.
	StoreID protocol.ID = "/virtuoso/store/1.0.0"
	// ControlID carries VM control requests from a buyer to the provider of its VM.
	ControlID protocol.ID = "/virtuoso/vm/1.0.0"
	// ConsoleID is a byte tunnel from a buyer's node to the provider's VNC server of a VM.
	ConsoleID protocol.ID = "/virtuoso/console/1.0.0"
	// NoticeID carries a provider's notice to a buyer that its lease ended (machine removed).
	NoticeID protocol.ID = "/virtuoso/notice/1.0.0"
)

// serviceName is the resource-manager service of every market stream.
const serviceName = "virtuoso.market"

// Protocols are the resource limits of the market's stream protocols, for node.Options.
func Protocols() []node.ProtocolLimit {
	return []node.ProtocolLimit{
		{Protocol: OffersQueryID, Streams: 64, StreamsPerPeer: 2, Memory: 16 << 20},
		{Protocol: StoreID, Streams: 32, StreamsPerPeer: 4, Memory: 8 << 20},
		{Protocol: ControlID, Streams: 64, StreamsPerPeer: 8, Memory: 8 << 20},
		{Protocol: ConsoleID, Streams: 32, StreamsPerPeer: 8, Memory: 32 << 20},
		{Protocol: NoticeID, Streams: 32, StreamsPerPeer: 4, Memory: 4 << 20},
	}
}

// queryRequest asks for at most Max offers.
type queryRequest struct {
	Max int `json:"max"`
}

// MaxQueryOffers caps the offers of one query answer.
const MaxQueryOffers = 4096

// storeRequest carries the buyer-signed lease proposal.
type storeRequest struct {
	Lease []byte `json:"lease"`
}

// storeResponse carries the countersigned lease and the new VM's state, or an error.
type storeResponse struct {
	Lease []byte     `json:"lease,omitempty"`
	State vm.State   `json:"state"`
	Error *WireError `json:"error,omitempty"`
}

// Control actions a buyer may ask of a provider.
const (
	ActStart   = "start"
	ActStop    = "stop"
	ActSuspend = "suspend"
	ActResume  = "resume"
	ActConsole = "console"
	ActStatus  = "status"
	ActDelete  = "delete"
)

// ControlActions lists the control actions.
func ControlActions() []string {
	return []string{ActStart, ActStop, ActSuspend, ActResume, ActConsole, ActStatus, ActDelete}
}

// controlRequest asks the provider to act on a VM.
type controlRequest struct {
	VM     vm.ID  `json:"vm"`
	Action string `json:"action"`
}

// controlResponse is the VM's state after the action; for status also the lease, for console
// the session's one-time password.
type controlResponse struct {
	State    vm.State   `json:"state"`
	Lease    []byte     `json:"lease,omitempty"`
	Password string     `json:"password,omitempty"`
	Error    *WireError `json:"error,omitempty"`
}

// consoleRequest opens the console tunnel of a VM; the answer is a consoleResponse, then the
// stream carries the VNC bytes both ways.
type consoleRequest struct {
	VM vm.ID `json:"vm"`
}

type consoleResponse struct {
	Error *WireError `json:"error,omitempty"`
}

// notice tells a buyer its lease ended.
type notice struct {
	Lease  LeaseID `json:"lease"`
	VM     vm.ID   `json:"vm"`
	Reason string  `json:"reason"`
}

// errorReply is the answer to a request that could not be read: it decodes as any of the
// response types above, all of which carry the error under "error".
type errorReply struct {
	Error *WireError `json:"error"`
}

// replyMalformed answers a malformed request with an error and lets the stream close; other
// read errors (the peer went away) are returned, and the stream is reset.
func replyMalformed(w io.Writer, err error) error {
	if errors.Is(err, ErrMalformed) {
		return writeJSON(w, errorReply{Error: toWire(err)})
	}
	return err
}

// Decoders of each message, used by the handlers and the fuzz targets.

func decodeQueryRequest(b []byte) (queryRequest, error) {
	var r queryRequest
	if err := decodeStrict(b, &r); err != nil {
		return r, err
	}
	if r.Max < 0 {
		return r, fmt.Errorf("%w: negative max", ErrMalformed)
	}
	return r, nil
}

func decodeStoreRequest(b []byte) (SignedLease, error) {
	var r storeRequest
	if err := decodeStrict(b, &r); err != nil {
		return SignedLease{}, err
	}
	return DecodeLease(r.Lease)
}

func decodeStoreResponse(b []byte) (storeResponse, error) {
	var r storeResponse
	if err := decodeStrict(b, &r); err != nil {
		return r, err
	}
	return r, nil
}

func decodeControlRequest(b []byte) (controlRequest, error) {
	var r controlRequest
	if err := decodeStrict(b, &r); err != nil {
		return r, err
	}
	if r.VM.IsZero() {
		return r, fmt.Errorf("%w: vm id is zero", ErrMalformed)
	}
	for _, a := range ControlActions() {
		if a == r.Action {
			return r, nil
		}
	}
	return r, fmt.Errorf("%w: unknown action %q", ErrMalformed, truncate(r.Action))
}

func decodeControlResponse(b []byte) (controlResponse, error) {
	var r controlResponse
	if err := decodeStrict(b, &r); err != nil {
		return r, err
	}
	if len(r.Password) > 64 {
		return r, fmt.Errorf("%w: console password too long", ErrMalformed)
	}
	return r, nil
}

func decodeConsoleRequest(b []byte) (consoleRequest, error) {
	var r consoleRequest
	if err := decodeStrict(b, &r); err != nil {
		return r, err
	}
	if r.VM.IsZero() {
		return r, fmt.Errorf("%w: vm id is zero", ErrMalformed)
	}
	return r, nil
}

func decodeNotice(b []byte) (notice, error) {
	var n notice
	if err := decodeStrict(b, &n); err != nil {
		return n, err
	}
	if n.VM.IsZero() || len(n.Reason) > maxErrorMessage {
		return n, fmt.Errorf("%w: notice", ErrMalformed)
	}
	return n, nil
}

// serve registers a stream handler that sets the resource scope, reserves memory and a
// deadline, and resets the stream when the handler fails.
func (s *Service) serve(id protocol.ID, memory int, timeout time.Duration, handle func(ctx context.Context, st network.Stream, r *bufio.Reader) error) {
	s.n.Host().SetStreamHandler(id, func(st network.Stream) {
		if err := st.Scope().SetService(serviceName); err != nil {
			st.Reset()
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
			ctx, cancel = context.WithTimeout(s.ctx, timeout)
			st.SetDeadline(time.Now().Add(timeout))
		} else {
			// a tunnel: only the handshake has a deadline; pipe clears it
			ctx, cancel = context.WithCancel(s.ctx)
			st.SetDeadline(time.Now().Add(30 * time.Second))
		}
		defer cancel()
		if err := handle(ctx, st, bufio.NewReader(st)); err != nil {
			s.log.Debug("stream failed", "protocol", id, "peer", st.Conn().RemotePeer(), "err", err)
			st.Reset()
			return
		}
		st.Close()
	})
}

// request opens a stream to p, writes req and reads one JSON answer into resp.
func (s *Service) request(ctx context.Context, p peerAddr, id protocol.ID, timeout time.Duration, req, resp any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := s.open(ctx, p, id)
	if err != nil {
		return err
	}
	st.SetDeadline(time.Now().Add(timeout))
	if err := writeJSON(st, req); err != nil {
		st.Reset()
		return fmt.Errorf("%w: send to %s: %v", ErrUnavailable, p.id.ShortString(), err)
	}
	st.CloseWrite()
	if err := readJSON(bufio.NewReader(st), resp); err != nil {
		st.Reset()
		if errors.Is(err, ErrMalformed) {
			return fmt.Errorf("answer of %s: %w", p.id.ShortString(), err)
		}
		return fmt.Errorf("%w: %s did not answer: %v", ErrUnavailable, p.id.ShortString(), err)
	}
	st.Close()
	return nil
}
