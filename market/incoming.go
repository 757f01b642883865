package market

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// LeaseStateIncoming: on a migration's destination, capacity reserved and the lease
// countersigned for a VM that is yet to arrive; it becomes active when the VM is adopted and
// goes when the migration fails, is cancelled or does not come within IncomingTTL.
const LeaseStateIncoming = "incoming"

// IncomingTTL is how long a destination holds capacity for a VM that does not arrive.
const IncomingTTL = time.Hour

// acceptIncoming takes the lease of a VM that is to migrate here: the same checks and
// reservation as a store, then the countersignature; no VM is created.
func (p *Provider) acceptIncoming(ctx context.Context, from peer.ID, sl SignedLease) (SignedLease, error) {
	if _, err := p.reserve(ctx, from, sl, LeaseStatePending); err != nil {
		return sl, err
	}
	key := leaseKey(sl.VM)
	full, err := sl.Countersign(p.n.PrivKey())
	if err == nil {
		err = p.space.Update(func(tx *node.Txn) error {
			l, err := node.GetJSON[LeaseRecord](tx, key)
			if err != nil || l.State != LeaseStatePending {
				return fmt.Errorf("%w: machine %s was removed meanwhile", ErrNotFound, sl.Machine)
			}
			l.Raw, l.State = full.Encode(), LeaseStateIncoming
			return node.PutJSON(tx, key, l)
		})
	}
	if err != nil {
		p.space.Delete(key)
		return sl, err
	}
	p.log.Info("lease of an incoming vm", "vm", sl.VM, "lease", sl.ID, "machine", sl.Machine, "buyer", sl.Buyer)
	p.changed()
	return full, nil
}

// Incoming returns the lease record of VM id if buyer agreed with this provider to migrate it
// here; the destination's migration server admits a REQ only then. A VM of another buyer is
// answered as one that is not expected, so a stranger learns nothing.
func (p *Provider) Incoming(id vm.ID, buyer peer.ID) (LeaseRecord, error) {
	l, err := node.GetJSON[LeaseRecord](p.space, leaseKey(id))
	if errors.Is(err, node.ErrNotFound) || err == nil && (l.State != LeaseStateIncoming || l.Buyer != buyer || p.now().Sub(l.Created) > IncomingTTL) {
		return LeaseRecord{}, fmt.Errorf("%w: no migration of vm %s here was agreed", ErrNotFound, id)
	}
	return l, err
}

// Arrived makes the incoming lease of VM id active: the migration adopted the VM here. It is
// the migration's commit: it happens at most once, never after CancelIncoming and never after
// the lease lapsed. (The lease enters the ledger with the migration, which the buyer records:
// not as a new lease.)
func (p *Provider) Arrived(id vm.ID, lease string) error {
	err := p.space.Update(func(tx *node.Txn) error {
		l, err := node.GetJSON[LeaseRecord](tx, leaseKey(id))
		if err != nil || l.State != LeaseStateIncoming || l.Lease.String() != lease {
			return fmt.Errorf("%w: no incoming lease %s of vm %s", ErrNotFound, lease, id)
		}
		if p.now().Sub(l.Created) > IncomingTTL {
			return fmt.Errorf("%w: the incoming lease of vm %s lapsed", ErrExpired, id)
		}
		l.State = LeaseStateActive
		return node.PutJSON(tx, leaseKey(id), l)
	})
	if err == nil {
		p.changed()
	}
	return err
}

// CancelIncoming releases the capacity held for VM id, which will not arrive, and deletes
// what a migration that did not commit adopted of it (a destination that stopped between
// adopting the VM and Arrived).
func (p *Provider) CancelIncoming(ctx context.Context, id vm.ID) error {
	var lease LeaseID
	err := p.space.Update(func(tx *node.Txn) error {
		l, err := node.GetJSON[LeaseRecord](tx, leaseKey(id))
		if errors.Is(err, node.ErrNotFound) || err == nil && l.State != LeaseStateIncoming {
			return nil
		}
		if err != nil {
			return err
		}
		lease = l.Lease
		return tx.Delete(leaseKey(id))
	})
	if err != nil {
		return err
	}
	p.changed()
	if p.vms == nil {
		return nil
	}
	if rec, err := p.vms.Get(id); err == nil && !rec.Cached && rec.Lease == lease.String() {
		p.log.Info("an adopted vm whose migration did not commit is deleted", "vm", id)
		if _, err := p.vms.Delete(ctx, id); err != nil {
			return fmt.Errorf("delete the uncommitted copy of vm %s: %w", id, err)
		}
	}
	return nil
}
