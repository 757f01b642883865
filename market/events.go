package market

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/vm"
)

// Events the market publishes on the node's event stream (node.Events), besides the
// vm.StatusChanged of a provider's VMs. The ledger, the web UI and notices subscribe.

// LeaseCreated: a lease is countersigned. The provider publishes it when it countersigns,
// the buyer when it receives the countersigned lease (or learns of it after a store that got
// no clear answer). Lease carries both parties' signatures.
type LeaseCreated struct {
	Lease SignedLease `json:"-"`
	Time  time.Time   `json:"time"`
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

// VMChanged: the buyer's record of one of its VMs changed (stored, an action's answer, a
// status refreshed from the provider, a notice that its lease ended).
type VMChanged struct {
	VM   VM        `json:"vm"`
	Time time.Time `json:"time"`
}
