package market

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// The lease records of both sides: the provider's LeaseRecord (under market/provider/lease/<vm
// id>), from which it decides whom it serves and what capacity is held, and the buyer's record
// of each of its VMs (under market/buyer/lease/<vm id>).

// Lease states, on both sides.
const (
	// LeaseStatePending: on the provider, capacity reserved and the VM being created, not yet
	// countersigned; on the buyer, the store got no clear answer and the node asks the
	// provider again until it answers with the lease (then active) or without it (then the
	// record goes).
	LeaseStatePending = "pending"
	LeaseStateActive  = "active"
	LeaseStateEnded   = "ended"
)

// LeaseRecord is the provider's record of a lease.
type LeaseRecord struct {
	Raw     []byte    `json:"raw"` // the lease envelope: countersigned once active
	Lease   LeaseID   `json:"lease"`
	State   string    `json:"state"`
	Machine MachineID `json:"machine"`
	VM      vm.ID     `json:"vm"`
	Buyer   peer.ID   `json:"buyer"`
	Need    Resources `json:"need"`
	Created time.Time `json:"created"`
	Ended   time.Time `json:"ended,omitzero"`
	Reason  string    `json:"reason,omitempty"`
	// MigratingTo and MigratingSince: on the origin, the destination the VM's files are
	// granted to, and since when (a restarted provider grants them again until they lapse).
	MigratingTo    peer.ID   `json:"migrating_to,omitempty"`
	MigratingSince time.Time `json:"migrating_since,omitzero"`
	// Fetched: the destination fetched every file of the VM to its end (this provider sent
	// them); only then may the buyer say that the VM moved. MovedAt: it did; the lease ends
	// once the ledger settled the migration.
	Fetched time.Time `json:"fetched,omitzero"`
	MovedAt time.Time `json:"moved_at,omitzero"`
}

// Holds reports whether the lease holds capacity on its machine.
func (l LeaseRecord) Holds() bool {
	return l.State == LeaseStatePending || l.State == LeaseStateActive || l.State == LeaseStateIncoming
}

// Signed decodes and verifies the lease envelope.
func (l LeaseRecord) Signed() (SignedLease, error) { return DecodeLease(l.Raw) }

func leaseKey(id vm.ID) string { return "lease/" + id.String() }

func listLeases(list func(func(string, []byte) error) error) ([]LeaseRecord, error) {
	var out []LeaseRecord
	err := list(func(key string, val []byte) error {
		if !strings.HasPrefix(key, "lease/") {
			return nil
		}
		var l LeaseRecord
		if err := json.Unmarshal(val, &l); err != nil {
			return fmt.Errorf("lease record %s: %w", key, err)
		}
		out = append(out, l)
		return nil
	})
	return out, err
}

// Leases lists the provider's lease records, ended ones included.
func (p *Provider) Leases() ([]LeaseRecord, error) { return listLeases(p.space.List) }

// Lease returns the provider's record of the lease of VM id.
func (p *Provider) Lease(id vm.ID) (LeaseRecord, error) {
	l, err := node.GetJSON[LeaseRecord](p.space, leaseKey(id))
	if errors.Is(err, node.ErrNotFound) {
		return l, fmt.Errorf("%w: no lease of vm %s here", ErrNotFound, id)
	}
	return l, err
}

// ProviderLease is a lease as the provider's API shows it.
type ProviderLease struct {
	Lease  Lease     `json:"lease"`
	State  string    `json:"state"` // pending, active, ended
	VM     vm.State  `json:"vm_state"`
	Ended  time.Time `json:"ended,omitzero"`
	Reason string    `json:"reason,omitempty"`
}

// ProviderLeases lists the leases of this provider's VMs, oldest first.
func (p *Provider) ProviderLeases() ([]ProviderLease, error) {
	ls, err := p.Leases()
	if err != nil {
		return nil, err
	}
	out := make([]ProviderLease, 0, len(ls))
	for _, l := range ls {
		sl, err := l.Signed()
		if err != nil {
			p.log.Warn("lease record does not verify", "vm", l.VM, "err", err)
			continue
		}
		pl := ProviderLease{Lease: sl.Lease, State: l.State, Ended: l.Ended, Reason: l.Reason}
		if rec, err := p.vms.Get(l.VM); err == nil {
			pl.VM = rec.State
		} else if st, ok := p.fetchingState(l.VM); ok {
			pl.VM = st
		}
		out = append(out, pl)
	}
	slices.SortFunc(out, func(a, b ProviderLease) int { return a.Lease.Created.Compare(b.Lease.Created) })
	return out, nil
}

// EndLease marks the lease of VM id ended, freeing its capacity, and publishes LeaseEnded.
func (p *Provider) EndLease(id vm.ID, reason string) error {
	var ended LeaseRecord
	err := p.space.Update(func(tx *node.Txn) error {
		l, err := node.GetJSON[LeaseRecord](tx, leaseKey(id))
		if err != nil {
			return err
		}
		l.State, l.Ended, l.Reason = LeaseStateEnded, p.now(), reason
		ended = l
		return node.PutJSON(tx, leaseKey(id), l)
	})
	if err != nil {
		return fmt.Errorf("end lease of vm %s: %w", id, err)
	}
	if sl, err := ended.Signed(); err == nil {
		p.n.Events().Publish(LeaseEnded{Lease: sl.ID, VM: id, Buyer: sl.Buyer, Provider: sl.Provider, Reason: reason, Time: ended.Ended})
	}
	p.changed()
	return nil
}

// recoverPending undoes reservations a crash left half-done: their VM is deleted and the
// capacity freed. The buyer never received a countersigned lease for them.
func (p *Provider) recoverPending(ctx context.Context) error {
	leases, err := p.Leases()
	if err != nil {
		return fmt.Errorf("market: %w", err)
	}
	for _, l := range leases {
		if l.State != LeaseStatePending {
			continue
		}
		if _, err := p.vms.Get(l.VM); err == nil {
			if _, err := p.vms.Delete(ctx, l.VM); err != nil {
				return fmt.Errorf("market: undo half-stored vm %s: %w", l.VM, err)
			}
		}
		if err := p.space.Delete(leaseKey(l.VM)); err != nil {
			return fmt.Errorf("market: undo half-stored vm %s: %w", l.VM, err)
		}
		p.log.Warn("undid a store interrupted by a restart", "vm", l.VM)
	}
	return nil
}

// ownedLease returns the active lease of VM id if from is its buyer. A VM of another buyer is
// answered as one that is not here, word for word, so that a stranger learns nothing of which
// VM IDs exist.
func (p *Provider) ownedLease(id vm.ID, from peer.ID) (LeaseRecord, error) {
	l, err := node.GetJSON[LeaseRecord](p.space, leaseKey(id))
	switch {
	case errors.Is(err, node.ErrNotFound) || err == nil && (l.State == LeaseStateEnded || l.Buyer != from):
		return l, fmt.Errorf("%w: you have no vm %s here", ErrNotFound, id)
	case err != nil:
		return l, err
	case l.State == LeaseStatePending || l.State == LeaseStateIncoming:
		return l, fmt.Errorf("%w: vm %s", ErrPending, id)
	}
	return l, nil
}

// buyerLease is the buyer's record of a lease.
type buyerLease struct {
	Raw     []byte    `json:"raw"`
	State   string    `json:"state"`
	VM      vm.State  `json:"vm_state"`
	Health  string    `json:"health,omitempty"` // the provider's word on the guest, when not well
	Note    string    `json:"note,omitempty"`
	Addrs   []string  `json:"addrs,omitempty"` // the provider's addresses from its offer
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Tried   time.Time `json:"tried,omitzero"` // last recovery attempt of a pending lease
}

// VM is one of the buyer's VMs, wherever it is stored.
type VM struct {
	ID         vm.ID         `json:"id"`
	Lease      LeaseID       `json:"lease"`
	Provider   peer.ID       `json:"provider"`
	Machine    MachineID     `json:"machine"`
	Config     Configuration `json:"config"`
	Terms      Terms         `json:"terms"`
	Quote      Quote         `json:"quote"`
	LeaseState string        `json:"lease_state"`
	State      vm.State      `json:"state"`
	// Health is the provider's warning about the guest when it is not well (a started VM
	// whose guest shows no sign of running); empty when all is well.
	Health string `json:"health,omitempty"`
	// Actions are what the buyer can ask of the VM in its status.
	Actions []vm.Action `json:"actions"`
	Note    string      `json:"note,omitempty"`
	Created time.Time   `json:"created"`
	Updated time.Time   `json:"updated"`
}

func (bl buyerLease) view() (VM, error) {
	sl, err := DecodeLease(bl.Raw)
	if err != nil {
		return VM{}, err
	}
	v := VM{ID: sl.VM, Lease: sl.ID, Provider: sl.Provider, Machine: sl.Machine, Config: sl.Config, Terms: sl.Terms,
		Quote: sl.Quote, LeaseState: bl.State, State: bl.VM, Health: bl.Health, Note: bl.Note, Created: bl.Created,
		Updated: bl.Updated, Actions: []vm.Action{}}
	if bl.State == LeaseStateActive {
		v.Actions = buyerActionsIn(bl.VM.Status)
	}
	return v, nil
}

// put stores the buyer's record of a VM and publishes the change.
func (b *Buyer) put(bl buyerLease) error {
	sl, err := DecodeLease(bl.Raw)
	if err != nil {
		return err
	}
	if err := node.PutJSON(b.space, leaseKey(sl.VM), bl); err != nil {
		return err
	}
	b.publishVM(bl)
	return nil
}

// publishVM publishes a VMChanged for bl.
func (b *Buyer) publishVM(bl buyerLease) {
	if v, err := bl.view(); err == nil {
		b.n.Events().Publish(VMChanged{VM: v, Time: b.now()})
	}
}

// VMs lists the buyer's VMs. With refresh, each active one's status is asked of its provider
// first (in parallel, briefly); a provider that does not answer leaves the last known status.
func (b *Buyer) VMs(ctx context.Context, refresh bool) ([]VM, error) {
	var out []VM
	err := b.space.List(func(key string, val []byte) error {
		var bl buyerLease
		if err := json.Unmarshal(val, &bl); err != nil {
			return fmt.Errorf("lease record %s: %w", key, err)
		}
		v, err := bl.view()
		if err != nil {
			b.log.Warn("lease record does not verify", "key", key, "err", err)
			return nil
		}
		out = append(out, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if refresh {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for i := range out {
			if out[i].LeaseState != LeaseStateActive {
				continue
			}
			wg.Go(func() {
				if v, err := b.Status(ctx, out[i].ID); err == nil {
					out[i] = v
				}
			})
		}
		wg.Wait()
	}
	slices.SortFunc(out, func(a, b VM) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// FindVM resolves a VM ID or a unique prefix of one among the buyer's VMs.
func (b *Buyer) FindVM(text string) (vm.ID, error) {
	if id, err := vm.ParseID(text); err == nil {
		return id, nil
	}
	prefix := strings.ToLower(strings.ReplaceAll(text, "-", ""))
	if prefix == "" {
		return vm.ID{}, fmt.Errorf("%w: empty vm id", ErrInvalid)
	}
	var found []vm.ID
	err := b.space.List(func(key string, _ []byte) error {
		if id, err := vm.ParseID(strings.TrimPrefix(key, "lease/")); err == nil &&
			strings.HasPrefix(strings.ReplaceAll(id.String(), "-", ""), prefix) {
			found = append(found, id)
		}
		return nil
	})
	if err != nil {
		return vm.ID{}, err
	}
	switch len(found) {
	case 0:
		return vm.ID{}, fmt.Errorf("%w: no vm of yours starts with %q (see `virtuoso vm ls`)", ErrNotFound, truncate(text))
	case 1:
		return found[0], nil
	}
	return vm.ID{}, fmt.Errorf("%w: %q matches %d of your vms; give more of the id", ErrInvalid, truncate(text), len(found))
}

// compactLeases deletes the records of leases that ended more than LeaseRetention ago: they
// hold no capacity, and every store and every republish reads the records.
func (p *Provider) compactLeases() {
	leases, err := p.Leases()
	if err != nil {
		p.log.Warn("compact lease records", "err", err)
		return
	}
	p.restoreMigrations(p.ctx, leases)
	cutoff := p.now().Add(-p.opts.LeaseRetention)
	for _, l := range leases {
		if l.State == LeaseStateIncoming && p.now().Sub(l.Created) > IncomingTTL {
			p.log.Info("the vm of an incoming lease never arrived: capacity released", "vm", l.VM, "lease", l.Lease)
			if err := p.CancelIncoming(p.ctx, l.VM); err != nil {
				p.log.Warn("release an incoming lease", "vm", l.VM, "err", err)
			}
			continue
		}
		if l.State == LeaseStateEnded && l.Ended.Before(cutoff) {
			if err := p.space.Delete(leaseKey(l.VM)); err != nil {
				p.log.Warn("compact lease records", "vm", l.VM, "err", err)
			}
		}
	}
}
