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
// VM arrived), cancel (of the incoming Lease).
type migrateRequest struct {
	VM    vm.ID   `json:"vm"`
	Op    string  `json:"op"`
	To    peer.ID `json:"to,omitempty"`
	Moved bool    `json:"moved,omitempty"`
	Lease LeaseID `json:"lease,omitzero"`
	// Void, on a cancel: the migration is void even if the VM arrived under Lease (the origin
	// never sent it); the destination deletes what it holds.
	Void bool `json:"void,omitempty"`
}

// migrateResponse is the VM's state after the step; to a cancel, Arrived says that the VM is
// here under that lease already (the migration committed) and nothing was cancelled.
type migrateResponse struct {
	State   vm.State   `json:"state"`
	Arrived bool       `json:"arrived,omitempty"`
	Error   *WireError `json:"error,omitempty"`
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
	switch req.Op {
	case migrateCancel:
		return p.cancelIncoming(ctx, from, req)
	case migrateFinish:
		return p.finishMigration(ctx, from, req)
	case migrateBegin:
	default:
		return migrateResponse{}, fmt.Errorf("%w: migration step %q", ErrMalformed, req.Op)
	}
	if _, err := p.ownedLease(id, from); err != nil {
		return migrateResponse{}, err
	}
	if p.opts.Grants == nil {
		return migrateResponse{}, fmt.Errorf("%w: this provider does not let VMs migrate away", vm.ErrUnsupported)
	}
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
	now := p.now()
	err = p.updateLease(id, func(l *LeaseRecord) { l.MigratingTo, l.MigratingSince, l.Fetched = req.To, now, time.Time{} })
	if err == nil {
		err = p.grant(ctx, rec, req.To, IncomingTTL)
	}
	if err != nil {
		rec, _ = p.vms.FinishMigration(context.WithoutCancel(ctx), id, false)
		return migrateResponse{State: rec.State}, err
	}
	p.log.Info("vm migrating away", "vm", id, "to", req.To)
	return migrateResponse{State: rec.State}, nil
}

// grant lets to read the files of the VM of rec for ttl.
func (p *Provider) grant(ctx context.Context, rec vm.Record, to peer.ID, ttl time.Duration) error {
	files, err := p.vms.Driver().Files(ctx, rec.ID)
	if err != nil {
		return err
	}
	return p.opts.Grants.Grant(rec, to, files, ttl)
}

// updateLease changes the record of VM id's lease.
func (p *Provider) updateLease(id vm.ID, change func(*LeaseRecord)) error {
	return p.space.Update(func(tx *node.Txn) error {
		l, err := node.GetJSON[LeaseRecord](tx, leaseKey(id))
		if err != nil {
			return err
		}
		change(&l)
		return node.PutJSON(tx, leaseKey(id), l)
	})
}

// finishMigration ends a migration away from here, as its buyer says: moved (the origin
// keeps the files as a cache and the lease ends) or not (the VM is back in its prior status).
// It is idempotent: a buyer that was not sure its word arrived says it again.
func (p *Provider) finishMigration(ctx context.Context, from peer.ID, req migrateRequest) (migrateResponse, error) {
	id := req.VM
	l, err := node.GetJSON[LeaseRecord](p.space, leaseKey(id))
	if errors.Is(err, node.ErrNotFound) || err == nil && l.Buyer != from {
		return migrateResponse{}, fmt.Errorf("%w: you have no vm %s here", ErrNotFound, id)
	}
	if err != nil {
		return migrateResponse{}, err
	}
	rec, err := p.vms.Get(id)
	if err != nil {
		return migrateResponse{}, err
	}
	if rec.State.Status != vm.StatusMigrating {
		if req.Moved && !rec.Cached {
			return migrateResponse{State: rec.State}, fmt.Errorf("%w: vm %s is %s here, not migrating", vm.ErrIllegalAction, id, rec.State.Status)
		}
		return migrateResponse{State: rec.State}, nil // said before
	}
	if req.Moved && l.Fetched.IsZero() {
		// The transfer server records the fetch as the destination's last word arrives: the
		// buyer's may overtake it by a moment.
		for range 10 {
			time.Sleep(200 * time.Millisecond)
			if l, err = node.GetJSON[LeaseRecord](p.space, leaseKey(id)); err != nil || !l.Fetched.IsZero() {
				break
			}
		}
	}
	if req.Moved && l.Fetched.IsZero() {
		// The buyer's node says the VM moved, but this provider never sent it: a destination
		// that answered SUCCESS without the files. The VM stays.
		return migrateResponse{State: rec.State}, fmt.Errorf("%w: the destination %s never fetched the files of vm %s from here, so it cannot hold it", ErrNotFetched, Short(l.MigratingTo), id)
	}
	if p.opts.Grants != nil {
		p.opts.Grants.Revoke(id)
	}
	if rec, err = p.vms.FinishMigration(ctx, id, req.Moved); err != nil {
		return migrateResponse{State: rec.State}, err
	}
	if req.Moved {
		// The capacity stays held until the ledger settled the migration (settleMoves).
		if err := p.updateLease(id, func(l *LeaseRecord) { l.MovedAt = p.now() }); err != nil {
			return migrateResponse{State: rec.State}, err
		}
		p.log.Info("vm migrated away; its files stay as a cache", "vm", id, "to", l.MigratingTo)
		p.settleMoves(ctx)
		return migrateResponse{State: rec.State}, nil
	}
	if err := p.updateLease(id, func(l *LeaseRecord) { l.MigratingTo, l.MigratingSince = "", time.Time{} }); err != nil {
		return migrateResponse{State: rec.State}, err
	}
	p.log.Info("migration reverted: the vm stays", "vm", id, "status", rec.State.Status.String())
	return migrateResponse{State: rec.State}, nil
}

// cancelIncoming releases, at the destination, what its buyer agreed for a VM to arrive:
// unless the VM arrived under that lease already (the migration committed), which it answers.
func (p *Provider) cancelIncoming(ctx context.Context, from peer.ID, req migrateRequest) (migrateResponse, error) {
	l, err := node.GetJSON[LeaseRecord](p.space, leaseKey(req.VM))
	switch {
	case errors.Is(err, node.ErrNotFound) || err == nil && l.Buyer != from:
		return migrateResponse{}, nil // nothing held for this buyer
	case err != nil:
		return migrateResponse{}, err
	case l.State == LeaseStateActive && l.Lease == req.Lease && req.Void:
		p.log.Warn("a migration here is void: the origin never sent the vm; it is deleted", "vm", req.VM)
		if _, err := p.vms.Delete(ctx, req.VM); err != nil && !errors.Is(err, vm.ErrNotFound) {
			return migrateResponse{}, err
		}
		return migrateResponse{}, p.EndLease(req.VM, "migration void")
	case l.State == LeaseStateActive && l.Lease == req.Lease:
		rec, err := p.vms.Get(req.VM)
		return migrateResponse{State: rec.State, Arrived: true}, err
	case l.State == LeaseStateIncoming && (req.Lease.IsZero() || l.Lease == req.Lease):
		return migrateResponse{}, p.CancelIncoming(ctx, req.VM)
	}
	return migrateResponse{}, nil
}

// Fetched records that the destination to fetched every file of the migrating VM id from
// here (the transfer server's word, after it sent them to their end).
func (p *Provider) Fetched(id vm.ID, to peer.ID) {
	err := p.updateLease(id, func(l *LeaseRecord) {
		if l.MigratingTo == to {
			l.Fetched = p.now()
		}
	})
	if err != nil {
		p.log.Warn("record a fetched migration", "vm", id, "err", err)
	}
}

// settleEvery is how often a provider asks the ledger whether the migrations away settled.
const settleEvery = 5 * time.Second

// settleMoves ends the leases of the VMs that migrated away once the ledger settled their
// migration (Settled), at once without a ledger: until then their capacity stays held, so
// that a migration the ledger refuses finds the VM's place still here.
func (p *Provider) settleMoves(ctx context.Context) {
	leases, err := p.Leases()
	if err != nil {
		p.log.Warn("settle moves", "err", err)
		return
	}
	for _, l := range leases {
		if l.State != LeaseStateActive || l.MovedAt.IsZero() {
			continue
		}
		if p.opts.Settled != nil {
			ok, err := p.opts.Settled(ctx, l.Lease)
			if err != nil {
				p.log.Debug("ask the ledger whether a migration settled", "vm", l.VM, "err", err)
			}
			if !ok {
				continue
			}
		}
		if err := p.EndLease(l.VM, "migrated away"); err != nil {
			p.log.Warn("end the lease of a vm that migrated away", "vm", l.VM, "err", err)
		}
	}
}

// restoreMigrations grants again, after a restart, the files of the VMs migrating away to
// their destinations (grants are kept in memory), and reverts the migrations whose grant
// lapsed: no destination can take the VM then (its incoming lease lapsed before), and the
// buyer's node never said how it ended.
func (p *Provider) restoreMigrations(ctx context.Context, leases []LeaseRecord) {
	if p.vms == nil {
		return
	}
	for _, l := range leases {
		if l.State != LeaseStateActive || l.MigratingSince.IsZero() {
			continue
		}
		rec, err := p.vms.Get(l.VM)
		if err != nil || rec.State.Status != vm.StatusMigrating {
			continue
		}
		left := IncomingTTL + 2*MaxClockSkew - p.now().Sub(l.MigratingSince)
		if left > 0 {
			if p.opts.Grants != nil && !p.opts.Grants.Granted(l.VM) {
				if err := p.grant(ctx, rec, l.MigratingTo, left); err != nil {
					p.log.Warn("grant the files of a migrating vm again", "vm", l.VM, "err", err)
				}
			}
			continue
		}
		if !l.Fetched.IsZero() {
			// The destination has the files and may have committed: only the buyer can say
			// how it ended. The VM stays migrating here until it does.
			continue
		}
		p.log.Warn("a migration away was never finished by its buyer: the vm stays here", "vm", l.VM, "to", l.MigratingTo, "since", l.MigratingSince)
		if _, err := p.finishMigration(ctx, l.Buyer, migrateRequest{VM: l.VM, Op: migrateFinish}); err != nil {
			p.log.Warn("revert a lapsed migration", "vm", l.VM, "err", err)
		}
	}
}

// MigrateRequest asks the buyer's node to move one of its VMs to a provider's machine.
type MigrateRequest struct {
	Provider string    `json:"provider,omitempty"`
	Machine  MachineID `json:"machine"`
	// Method is the transfer method: "blockdiff" (the default) or "full".
	Method string `json:"method,omitempty"`
	// Progress, if set, is told of each step and of the copy's progress; it must not block.
	Progress func(Migration) `json:"-"`
}

// MigrateWindow is how long the agent waits for a heartbeat of the destination before it
// reverts the migration.
const MigrateWindow = 30 * time.Second

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
