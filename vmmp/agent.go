package vmmp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/vm"
)

// ErrMissedHeartbeat: the destination went silent for longer than the agent waits; the
// migration is to be reverted (report §7.2.1).
var ErrMissedHeartbeat = errors.New("the destination missed its heartbeat")

// ErrFailed: the destination answered RESP FAIL.
var ErrFailed = errors.New("the destination could not take the vm")

// QueryMethods asks destination dest which methods it can take VM id with (QUERY, RESULTS).
func QueryMethods(ctx context.Context, h host.Host, dest peer.ID, id vm.ID) ([]string, error) {
	st, err := h.NewStream(ctx, dest, ProtocolID)
	if err != nil {
		return nil, fmt.Errorf("reach the destination %s: %w", dest, err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(30 * time.Second))
	if err := WriteMessage(st, Message{Kind: Query, VM: id}); err != nil {
		st.Reset()
		return nil, err
	}
	m, err := ReadMessage(bufio.NewReader(st))
	if err != nil {
		st.Reset()
		return nil, fmt.Errorf("the destination's RESULTS: %w", err)
	}
	if m.Kind != Results || m.VM != id {
		return nil, fmt.Errorf("%w: %s for vm %s in answer to QUERY", ErrMalformed, m.Kind, m.VM)
	}
	return m.Methods, nil
}

// Request sends req (a REQ) to destination dest and waits for its RESP, each HEARTBEAT
// restarting a wait of at most window (progress, if set, is called at each). A silence longer
// than window is ErrMissedHeartbeat; a FAIL is ErrFailed with its code. It returns the RESP.
func Request(ctx context.Context, h host.Host, dest peer.ID, req Message, window time.Duration, progress func(Message)) (Message, error) {
	if req.Kind != Req {
		return Message{}, fmt.Errorf("request: a %s is not a REQ", req.Kind)
	}
	st, err := h.NewStream(ctx, dest, ProtocolID)
	if err != nil {
		return Message{}, fmt.Errorf("reach the destination %s: %w", dest, err)
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Reset() })
	defer stop()
	st.SetWriteDeadline(time.Now().Add(window))
	if err := WriteMessage(st, req); err != nil {
		st.Reset()
		return Message{}, err
	}
	r := bufio.NewReader(st)
	for {
		st.SetReadDeadline(time.Now().Add(window))
		m, err := ReadMessage(r)
		if err != nil {
			st.Reset()
			if ctx.Err() != nil {
				return Message{}, ctx.Err()
			}
			return Message{}, fmt.Errorf("%w (%v without a word): %w", ErrMissedHeartbeat, window, err)
		}
		if m.VM != req.VM {
			return Message{}, fmt.Errorf("%w: a message about vm %s during the migration of %s", ErrMalformed, m.VM, req.VM)
		}
		switch m.Kind {
		case Heartbeat:
			if progress != nil {
				progress(m)
			}
		case Resp:
			if !m.Success {
				return m, fmt.Errorf("%w: %s", ErrFailed, m.Code)
			}
			return m, nil
		default:
			return Message{}, fmt.Errorf("%w: %s during a migration", ErrMalformed, m.Kind)
		}
	}
}
