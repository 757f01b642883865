package market

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp"
)

// MigrateID carries the steps of a migration between the buyer's node (the agent) and the
// providers: begin and finish at the origin, cancel at the destination. The copy itself is
// VMMP (vmmp.ProtocolID) between the agent and the destination, which pulls the files.
const MigrateID protocol.ID = "/virtuoso/migrate/1.0.0"

// Migration steps.
const (
	migrateBegin  = "begin"
	migrateFinish = "finish"
	migrateCancel = "cancel"
)

// migrateRequest is one step: begin (To is the destination), finish (Moved says whether the
// VM arrived), cancel.
type migrateRequest struct {
	VM    vm.ID   `json:"vm"`
	Op    string  `json:"op"`
	To    peer.ID `json:"to,omitempty"`
	Moved bool    `json:"moved,omitempty"`
}

type migrateResponse struct {
	State vm.State   `json:"state"`
	Error *WireError `json:"error,omitempty"`
}

// Migrated: a buyer's VM moved to another provider under a new lease (the ledger's migration
// entry). Status is the VM's status at the destination.
type Migrated struct {
	VM     vm.ID       `json:"vm"`
	From   LeaseID     `json:"from"`
	Lease  SignedLease `json:"-"`
	Status vm.Status   `json:"status"`
	Time   time.Time   `json:"time"`
}

func (p *Provider) handleMigrate(ctx context.Context, st network.Stream, frame []byte, _ *bufio.Reader) error {
	var req migrateRequest
	var resp migrateResponse
	err := DecodeStrict(frame, &req)
	if err == nil {
		resp, err = p.migrateStep(ctx, st.Conn().RemotePeer(), req)
	}
	if err != nil {
		p.log.Info("migration step refused", "from", st.Conn().RemotePeer(), "op", req.Op, "err", err)
		resp.Error = toWire(err)
	}
	return WriteJSON(st, resp)
}

func (p *Provider) migrateStep(ctx context.Context, from peer.ID, req migrateRequest) (migrateResponse, error) {
	id := req.VM
	if req.Op == migrateCancel {
		if _, err := p.Incoming(id, from); err != nil {
			return migrateResponse{}, err
		}
		return migrateResponse{}, p.CancelIncoming(id)
	}
	if _, err := p.ownedLease(id, from); err != nil {
		return migrateResponse{}, err
	}
	if p.opts.Grants == nil {
		return migrateResponse{}, fmt.Errorf("%w: this provider does not let VMs migrate away", vm.ErrUnsupported)
	}
	switch req.Op {
	case migrateBegin:
		if req.To.Validate() != nil || req.To == p.n.ID() || req.To == from {
			return migrateResponse{}, fmt.Errorf("%w: a migration needs another provider as its destination", ErrInvalid)
		}
		rec, err := p.vms.Get(id)
		if err != nil {
			return migrateResponse{}, err
		}
		if rec.State.Status == vm.StatusStarted {
			// A running VM is suspended first; the destination resumes it.
			p.dropConsole(id)
			if rec, err = p.vms.Do(ctx, id, vm.ActionSuspend); err != nil {
				return migrateResponse{State: rec.State}, err
			}
		}
		if rec, err = p.vms.BeginMigration(ctx, id); err != nil {
			return migrateResponse{State: rec.State}, err
		}
		files, err := p.vms.Driver().Files(ctx, id)
		if err == nil {
			err = p.opts.Grants.Grant(rec, req.To, files, IncomingTTL)
		}
		if err != nil {
			rec, _ = p.vms.FinishMigration(context.WithoutCancel(ctx), id, false)
			return migrateResponse{State: rec.State}, err
		}
		p.log.Info("vm migrating away", "vm", id, "to", req.To)
		return migrateResponse{State: rec.State}, nil
	case migrateFinish:
		p.opts.Grants.Revoke(id)
		rec, err := p.vms.FinishMigration(ctx, id, req.Moved)
		if err != nil {
			return migrateResponse{State: rec.State}, err
		}
		if req.Moved {
			if err := p.EndLease(id, "migrated away"); err != nil {
				return migrateResponse{State: rec.State}, err
			}
		}
		return migrateResponse{State: rec.State}, nil
	}
	return migrateResponse{}, fmt.Errorf("%w: migration step %q", ErrMalformed, req.Op)
}

// MigrateRequest asks the buyer's node to move one of its VMs to a provider's machine.
type MigrateRequest struct {
	Provider string    `json:"provider,omitempty"`
	Machine  MachineID `json:"machine"`
	// Method is the transfer method: "blockdiff" (the default) or "full".
	Method string `json:"method,omitempty"`
}

// MigrateWindow is how long the agent waits for a heartbeat of the destination before it
// reverts the migration.
const MigrateWindow = 30 * time.Second

// Migrate moves VM id to the machine of req, atomically: the destination takes a new lease at
// its current terms (capacity held, no VM yet), the origin suspends the VM if it runs and marks
// it migrating, the destination pulls and adopts it (VMMP REQ, heartbeats, RESP) and, on
// SUCCESS, the origin keeps its files as a cache and ends the old lease, and the VM runs again
// at the destination if it ran before. Any failure reverts: the VM is at the origin in its
// previous status under its old lease, and the destination's capacity is released.
func (b *Buyer) Migrate(ctx context.Context, id vm.ID, req MigrateRequest) (VM, error) {
	bl, err := node.GetJSON[buyerLease](b.space, leaseKey(id))
	if errors.Is(err, node.ErrNotFound) {
		return VM{}, fmt.Errorf("%w: you have no vm %s (see `virtuoso vm ls`)", ErrNotFound, id)
	}
	if err != nil {
		return VM{}, err
	}
	if bl.State != LeaseStateActive {
		return VM{}, fmt.Errorf("%w: the lease of vm %s is %s", ErrNotFound, id, bl.State)
	}
	old, err := DecodeLease(bl.Raw)
	if err != nil {
		return VM{}, err
	}
	offer, err := b.findOffer(req.Provider, req.Machine)
	if err != nil {
		return VM{}, err
	}
	if offer.Provider == old.Provider || offer.Provider == b.n.ID() {
		return VM{}, fmt.Errorf("%w: the vm is stored there already, or that is this node", ErrInvalid)
	}
	method := req.Method
	if method == "" {
		method = "blockdiff"
	}
	q, err := offer.Terms.Quote(old.Config.Resources())
	if err != nil {
		return VM{}, err
	}
	proposal, err := ProposeLease(Lease{ID: NewLeaseID(), VM: id, Buyer: b.n.ID(), Provider: offer.Provider, Machine: offer.Machine,
		Config: old.Config, Terms: offer.Terms, Quote: q, Created: b.now().Truncate(time.Millisecond)}, b.n.PrivKey())
	if err != nil {
		return VM{}, err
	}
	origin, dest := peerAddr{old.Provider, bl.Addrs}, peerAddr{offer.Provider, offer.Addrs}
	prior := bl.VM.Status

	// 1. The destination holds capacity under the new lease.
	var sresp storeResponse
	if err := b.request(ctx, dest, StoreID, b.opts.StoreTimeout, storeRequest{Lease: proposal.Encode(), Incoming: true}, &sresp); err != nil {
		return VM{}, fmt.Errorf("migrate to %s: %w", Short(dest.id), err)
	}
	if sresp.Error != nil {
		return VM{}, fmt.Errorf("provider %s refused the new lease: %w", Short(dest.id), sresp.Error.err())
	}
	full, err := DecodeLease(sresp.Lease)
	if err == nil && (!full.Complete() || string(full.Body) != string(proposal.Body)) {
		err = fmt.Errorf("%w: the destination answered with another lease", ErrForged)
	}
	cancelDest := func() {
		var r migrateResponse
		if err := b.request(context.WithoutCancel(ctx), dest, MigrateID, b.opts.ControlTimeout, migrateRequest{VM: id, Op: migrateCancel}, &r); err != nil {
			b.log.Warn("release the destination's capacity", "vm", id, "err", err)
		}
	}
	if err != nil {
		cancelDest()
		return VM{}, err
	}
	// 2. The origin marks the VM migrating (suspending it if it runs) and grants the files.
	step := func(ctx context.Context, r migrateRequest) (vm.State, error) {
		var resp migrateResponse
		err := b.request(ctx, origin, MigrateID, b.opts.ControlTimeout, r, &resp)
		if err == nil && resp.Error != nil {
			err = resp.Error.err()
		}
		return resp.State, err
	}
	begun, err := step(ctx, migrateRequest{VM: id, Op: migrateBegin, To: dest.id})
	if err != nil {
		cancelDest()
		return VM{}, fmt.Errorf("begin the migration at %s: %w", Short(origin.id), err)
	}
	revert := func(cause error) (VM, error) {
		st, err := step(context.WithoutCancel(ctx), migrateRequest{VM: id, Op: migrateFinish, Moved: false})
		cancelDest()
		if err == nil && prior == vm.StatusStarted {
			_, _, rerr := b.control(context.WithoutCancel(ctx), controlRequest{VM: id, Action: vm.ActionResume})
			err = rerr
		} else if err == nil {
			bl.VM = st
			b.put(bl)
		}
		if err != nil {
			cause = errors.Join(cause, fmt.Errorf("revert at the origin: %w", err))
		}
		v, _ := b.Status(context.WithoutCancel(ctx), id)
		return v, fmt.Errorf("migration of vm %s reverted (it is at %s as before): %w", id, Short(origin.id), cause)
	}
	// 3. The destination pulls and adopts it.
	oaddr, err := firstAddr(bl.Addrs)
	if err != nil {
		return revert(err)
	}
	aaddrs := b.n.Host().Addrs()
	if len(aaddrs) == 0 {
		return revert(errors.New("this node listens nowhere"))
	}
	resp, err := vmmp.Request(ctx, b.n.Host(), dest.id, vmmp.Message{Kind: vmmp.Req, VM: id, Version: begun.Version,
		Origin: vmmp.Addr{Peer: origin.id, Addr: oaddr}, Agent: vmmp.Addr{Peer: b.n.ID(), Addr: aaddrs[0]}, Method: method}, MigrateWindow, nil)
	if err != nil {
		return revert(err)
	}
	// 4. Committed at the destination: the ledger moves the lease, the origin lets go.
	moved := prior
	if prior == vm.StatusStarted {
		moved = vm.StatusSuspended
	}
	b.n.Events().Publish(Migrated{VM: id, From: old.ID, Lease: full, Status: moved, Time: b.now()})
	if _, err := step(ctx, migrateRequest{VM: id, Op: migrateFinish, Moved: true}); err != nil {
		b.log.Warn("the origin did not take note of the move (its copy stays until it does)", "vm", id, "err", err)
	}
	bl.Raw, bl.Addrs, bl.VM, bl.Note, bl.Updated = full.Encode(), offer.Addrs, vm.State{Status: moved, Version: resp.Version}, "", b.now()
	if err := b.put(bl); err != nil {
		return VM{}, err
	}
	b.log.Info("vm migrated", "vm", id, "from", origin.id, "to", dest.id, "version", resp.Version)
	if prior == vm.StatusStarted {
		return b.Control(ctx, id, vm.ActionResume)
	}
	return bl.view()
}

// firstAddr is the first address of addrs as a multiaddr without /p2p/.
func firstAddr(addrs []string) (ma.Multiaddr, error) {
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		if t, _ := ma.SplitLast(a); t != nil {
			if _, err := a.ValueForProtocol(ma.P_P2P); err == nil {
				a = t
			}
		}
		return a, nil
	}
	return nil, errors.New("no address of the origin is known")
}
