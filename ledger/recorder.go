package ledger

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Recorder turns what the node's services publish into entries of its own log: leases it
// signed or received countersigned, the status changes of the VMs it provides, and its
// machines added, edited and removed.
type Recorder struct {
	own *Log
	log *slog.Logger
	sub *node.Subscription
	wg  sync.WaitGroup
}

// NewRecorder records into own.
func NewRecorder(own *Log, log *slog.Logger) *Recorder { return &Recorder{own: own, log: log} }

// Start subscribes to n's events.
func (r *Recorder) Start(_ context.Context, n *node.Node) error {
	if r.log == nil {
		r.log = n.Logger()
	}
	r.sub = n.Events().Subscribe(0)
	r.wg.Go(func() { r.loop(n) })
	return nil
}

// Close stops recording.
func (r *Recorder) Close() error {
	if r.sub != nil {
		r.sub.Close()
		r.wg.Wait()
	}
	return nil
}

func (r *Recorder) loop(n *node.Node) {
	for {
		ev, err := r.sub.Wait(context.Background())
		if err != nil {
			if !errors.Is(err, node.ErrSubscriptionClosed) {
				r.log.Error("the ledger stopped recording the node's events", "err", err)
			}
			return
		}
		var typ Type
		var body Body
		var at time.Time
		switch ev := ev.(type) {
		case market.LeaseCreated:
			typ, body, at = TypeLease, &LeaseBody{Lease: ev.Lease.Encode()}, ev.Time
		case vm.StatusChanged:
			var lease market.LeaseID
			if ev.Lease == "" || lease.UnmarshalText([]byte(ev.Lease)) != nil {
				continue // not a VM this node sells under a lease
			}
			typ, body, at = TypeStatus, &StatusBody{VM: ev.VM, Lease: lease, Status: ev.State.Status, Version: ev.State.Version, Cause: ev.Cause.String()}, ev.Time
		case market.Migrated:
			typ, body, at = TypeMigration, &MigrationBody{VM: ev.VM, From: ev.From, Lease: ev.Lease.Encode(), Status: ev.Status}, ev.Time
		case market.MachineChanged:
			terms := ev.Machine.Terms
			typ, body, at = TypeMachine, &MachineBody{Machine: ev.Machine.ID, Change: string(ev.Change), Name: ev.Machine.Name, Terms: &terms}, ev.Time
		default:
			continue
		}
		if _, err := r.own.Append(at, typ, body); err != nil {
			r.log.Warn("record in the ledger", "type", typ, "err", err)
		}
	}
}
