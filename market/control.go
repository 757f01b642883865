package market

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// The control protocol, /virtuoso/vm/1.0.0 (report §6.3.2–6.3.4): the buyer asks the provider
// of its VM for an action, or for the VM's status; the provider executes it only for the
// lease's buyer and only if the VM's status allows it (vm.Manager checks, report §6.1.7).

// ControlActions are the actions a buyer asks of its VM's provider, in the vm package's
// vocabulary (on the wire, their report names).
func ControlActions() []vm.Action {
	return []vm.Action{vm.ActionStart, vm.ActionStop, vm.ActionSuspend, vm.ActionResume, vm.ActionView, vm.ActionDelete}
}

// buyerActionsIn lists what the buyer is offered in status st: the control actions legal in
// it, and migrate if it may move — a started VM too, which Migrate suspends first.
func buyerActionsIn(st vm.Status) []vm.Action {
	out := []vm.Action{}
	for _, a := range vm.Actions(st) {
		if a == vm.ActionMigrate || slices.Contains(ControlActions(), a) {
			out = append(out, a)
		}
	}
	if st == vm.StatusStarted {
		out = append(out, vm.ActionMigrate)
	}
	return out
}

// controlRequest asks the provider to act on a VM; without an action it asks for the VM's
// status (and the lease). Fresh, with resume, boots the VM from its disk because the saved
// memory state is unusable.
type controlRequest struct {
	VM     vm.ID     `json:"vm"`
	Action vm.Action `json:"action,omitzero"`
	Fresh  bool      `json:"fresh,omitempty"`
}

// controlResponse is the VM's state after the action (with the provider's health warning
// about its guest, if any); for a status query also the lease, for console the session's
// one-time password.
type controlResponse struct {
	State    vm.State   `json:"state"`
	Health   string     `json:"health,omitempty"`
	Lease    []byte     `json:"lease,omitempty"`
	Password string     `json:"password,omitempty"`
	Error    *WireError `json:"error,omitempty"`
}

// maxHealth caps a health warning read from a provider.
const maxHealth = 512

func decodeControlRequest(b []byte) (controlRequest, error) {
	var r controlRequest
	if err := DecodeStrict(b, &r); err != nil {
		return r, err
	}
	if r.VM.IsZero() {
		return r, fmt.Errorf("%w: vm id is zero", ErrMalformed)
	}
	if r.Fresh && r.Action != vm.ActionResume {
		return r, fmt.Errorf("%w: fresh is for resume only", ErrMalformed)
	}
	return r, nil
}

func decodeControlResponse(b []byte) (controlResponse, error) {
	var r controlResponse
	if err := DecodeStrict(b, &r); err != nil {
		return r, err
	}
	return r, r.check()
}

// check is what request verifies of a decoded answer.
func (r *controlResponse) check() error {
	if len(r.Password) > 64 || len(r.Health) > maxHealth {
		return fmt.Errorf("%w: console password or health too long", ErrMalformed)
	}
	return nil
}

// Status asks the provider of the buyer's VM id for its status.
func (b *Buyer) Status(ctx context.Context, id vm.ID) (VM, error) {
	v, _, err := b.control(ctx, controlRequest{VM: id})
	return v, err
}

// Control asks the provider of the buyer's VM id to perform action a (one of ControlActions;
// the console through Console). The provider checks ownership and status.
func (b *Buyer) Control(ctx context.Context, id vm.ID, a vm.Action) (VM, error) {
	if a == vm.ActionView {
		s, err := b.Console(ctx, id)
		return s.VM, err
	}
	v, _, err := b.control(ctx, controlRequest{VM: id, Action: a})
	return v, err
}

// ResumeFresh resumes the buyer's suspended VM id from its disk, for when its saved memory
// state is unusable (vm.ErrStateUnusable): what was in its memory is lost.
func (b *Buyer) ResumeFresh(ctx context.Context, id vm.ID) (VM, error) {
	v, _, err := b.control(ctx, controlRequest{VM: id, Action: vm.ActionResume, Fresh: true})
	return v, err
}

func (b *Buyer) control(ctx context.Context, req controlRequest) (VM, controlResponse, error) {
	id := req.VM
	if req.Action != 0 && !slices.Contains(ControlActions(), req.Action) {
		return VM{}, controlResponse{}, fmt.Errorf("%w: %s is not an action on a stored vm", ErrInvalid, req.Action.Verb())
	}
	bl, err := node.GetJSON[buyerLease](b.space, leaseKey(id))
	if errors.Is(err, node.ErrNotFound) {
		return VM{}, controlResponse{}, fmt.Errorf("%w: you have no vm %s (see `virtuoso vm ls`)", ErrNotFound, id)
	}
	if err != nil {
		return VM{}, controlResponse{}, err
	}
	if bl.State != LeaseStateActive {
		v, _ := bl.view()
		return v, controlResponse{}, fmt.Errorf("%w: the lease of vm %s is %s %s", ErrNotFound, id, bl.State, bl.Note)
	}
	sl, err := DecodeLease(bl.Raw)
	if err != nil {
		return VM{}, controlResponse{}, err
	}
	known := bl
	var resp controlResponse
	err = b.request(ctx, peerAddr{sl.Provider, bl.Addrs}, ControlID, b.opts.ControlTimeout, req, &resp)
	if err == nil && resp.Error != nil {
		err = resp.Error.err()
	}
	switch req.Action {
	case vm.ActionStop, vm.ActionSuspend, vm.ActionDelete:
		b.closeTunnel(id)
	}
	if resp.State.Status.Valid() {
		bl.VM, bl.Health = resp.State, resp.Health
	}
	ended := err == nil && req.Action == vm.ActionDelete
	if ended {
		bl.State, bl.Note = LeaseStateEnded, "deleted"
	}
	if resp.State.Status.Valid() || err == nil {
		bl.Updated = b.now()
		var perr error
		if bl.State == known.State && bl.VM == known.VM && bl.Health == known.Health && bl.Note == known.Note {
			// What the buyer knew, now fresh: stored, but no event.
			perr = node.PutJSON(b.space, leaseKey(id), bl)
		} else {
			perr = b.put(bl)
		}
		if perr != nil {
			err = errors.Join(err, perr)
		}
	}
	if ended {
		b.n.Events().Publish(LeaseEnded{Lease: sl.ID, VM: id, Buyer: sl.Buyer, Provider: sl.Provider, Reason: "deleted by its owner", Time: bl.Updated})
	}
	v, verr := bl.view()
	if err != nil {
		what := "status"
		if req.Action != 0 {
			what = req.Action.Verb()
		}
		return v, resp, fmt.Errorf("%s on provider %s: %w", what, Short(sl.Provider), err)
	}
	return v, resp, verr
}

// handleControl executes a buyer's request on its VM.
func (p *Provider) handleControl(ctx context.Context, st network.Stream, frame []byte, _ *bufio.Reader) error {
	var resp controlResponse
	req, err := decodeControlRequest(frame)
	if err == nil {
		resp, err = p.execute(ctx, st.Conn().RemotePeer(), req)
	}
	if err != nil {
		resp = controlResponse{State: resp.State, Error: toWire(err)}
	}
	return WriteJSON(st, resp)
}

func (p *Provider) execute(ctx context.Context, from peer.ID, req controlRequest) (controlResponse, error) {
	l, err := p.ownedLease(req.VM, from)
	if err != nil {
		return controlResponse{}, err
	}
	id := req.VM
	var rec vm.Record
	resp := controlResponse{}
	switch req.Action {
	case 0:
		rec, err = p.vms.Get(id)
		resp.Lease = l.Raw
	case vm.ActionView:
		var con vm.Console
		if rec, con, err = p.vms.Console(ctx, id); err == nil {
			p.mu.Lock()
			p.consoles[id] = con.Addr
			p.mu.Unlock()
			resp.Password = con.Password
		}
	case vm.ActionStop, vm.ActionSuspend, vm.ActionDelete:
		p.dropConsole(id)
		if rec, err = p.vms.Do(ctx, id, req.Action); err == nil && req.Action == vm.ActionDelete {
			err = p.EndLease(id, "deleted by its owner")
		}
	case vm.ActionStart, vm.ActionResume:
		if req.Fresh {
			rec, err = p.vms.ResumeFresh(ctx, id)
		} else {
			rec, err = p.vms.Do(ctx, id, req.Action)
		}
	default:
		err = fmt.Errorf("%w: %s is not done over the control protocol", vm.ErrIllegalAction, req.Action.Verb())
	}
	resp.State, resp.Health = rec.State, rec.Health
	if err != nil {
		return resp, err
	}
	p.log.Info("vm control", "vm", id, "action", req.Action.Verb(), "status", rec.State.Status.String(), "peer", from)
	return resp, nil
}

func (p *Provider) dropConsole(id vm.ID) {
	p.mu.Lock()
	delete(p.consoles, id)
	p.mu.Unlock()
}
