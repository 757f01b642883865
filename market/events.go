package market

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Events the market publishes on the node's event stream (node.Events), besides the
// vm.StatusChanged of a provider's VMs. The ledger, the web UI and notices subscribe; each is
// node.Loggable, and the node's event log records it.

// LeaseCreated: a lease is countersigned. The provider publishes it when it countersigns,
// the buyer when it receives the countersigned lease (or learns of it after a store that got
// no clear answer). Lease carries both parties' signatures.
type LeaseCreated struct {
	Lease SignedLease `json:"-"`
	Time  time.Time   `json:"time"`
}

// LogRecord is the event's entry in the node's event log.
func (e LeaseCreated) LogRecord() node.EventRecord {
	l := e.Lease.Lease
	return node.EventRecord{Time: e.Time, Kind: node.KindLeaseCreated, VM: l.VM.String(), Lease: l.ID.String(), Peer: l.Buyer.String(),
		Message: fmt.Sprintf("lease %s created: vm %s, buyer %s, provider %s, machine %s",
			short(l.ID), short(l.VM), Short(l.Buyer), Short(l.Provider), short(l.Machine)),
		Data: node.RecordData(l)}
}

// LeaseEnded: a lease ended (the VM was deleted by its owner, or evicted with its machine).
type LeaseEnded struct {
	Lease    LeaseID   `json:"lease"`
	VM       vm.ID     `json:"vm"`
	Buyer    peer.ID   `json:"buyer"`
	Provider peer.ID   `json:"provider"`
	Reason   string    `json:"reason"`
	Time     time.Time `json:"time"`
}

// LogRecord is the event's entry in the node's event log.
func (e LeaseEnded) LogRecord() node.EventRecord {
	return node.EventRecord{Time: e.Time, Kind: node.KindLeaseEnded, VM: e.VM.String(), Lease: e.Lease.String(), Peer: e.Buyer.String(),
		Message: fmt.Sprintf("lease %s of vm %s ended: %s", short(e.Lease), short(e.VM), e.Reason),
		Data:    node.RecordData(e)}
}

// MachineChange is what happened to a provider's machine.
type MachineChange string

// Machine changes.
const (
	MachineAdded   MachineChange = "added"
	MachineEdited  MachineChange = "edited"
	MachineRemoved MachineChange = "removed"
)

// MachineChanged: a provider added, edited or removed one of its machines.
type MachineChanged struct {
	Machine Machine       `json:"machine"`
	Change  MachineChange `json:"change"`
	Time    time.Time     `json:"time"`
}

// LogRecord is the event's entry in the node's event log, of kind "machine." and the change.
func (e MachineChanged) LogRecord() node.EventRecord {
	m := e.Machine
	msg := fmt.Sprintf("machine %s %q %s", short(m.ID), m.Name, e.Change)
	if e.Change == MachineAdded {
		msg += ": " + m.Capacity.String()
	}
	return node.EventRecord{Time: e.Time, Kind: "machine." + string(e.Change), Message: msg, Data: node.RecordData(e)}
}

// VMChanged: the buyer's record of one of its VMs changed (stored, an action's answer, a
// status refreshed from the provider that differs from the one known, a notice that its lease
// ended).
type VMChanged struct {
	VM   VM        `json:"vm"`
	Time time.Time `json:"time"`
}

// LogRecord is the event's entry in the node's event log.
func (e VMChanged) LogRecord() node.EventRecord {
	v := e.VM
	msg := fmt.Sprintf("vm %s %s (version %d), lease %s, on %s", short(v.ID), v.State.Status, v.State.Version, v.LeaseState, Short(v.Provider))
	if v.Note != "" {
		msg += ": " + v.Note
	}
	if v.Health != "" {
		msg += "; warning: " + v.Health
	}
	return node.EventRecord{Time: e.Time, Kind: node.KindVMChanged, VM: v.ID.String(), Lease: v.Lease.String(), Peer: v.Provider.String(),
		Message: msg, Data: node.RecordData(v)}
}

// short is the first 8 hex digits of an ID, as the CLI shows IDs in tables and messages.
func short(id fmt.Stringer) string { return id.String()[:8] }
