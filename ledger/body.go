package ledger

import (
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Body is the typed body of an entry. validate checks what the entry alone can tell; what
// depends on the ledger (who owns a lease, a balance) is the state machine's.
type Body interface {
	validate(e Entry) error
}

// LeaseBody carries a countersigned lease envelope, so that both parties' signatures travel
// with it. Either party may enter it; the second is a no-op.
type LeaseBody struct {
	Lease []byte `json:"lease"`

	decoded *market.SignedLease
}

func (b *LeaseBody) validate(e Entry) error {
	l, err := b.Decode()
	if err != nil {
		return err
	}
	if e.Author != l.Buyer && e.Author != l.Provider {
		return fmt.Errorf("lease %s entered by %s, neither its buyer nor its provider", l.ID, market.Short(e.Author))
	}
	return nil
}

// Decode verifies the lease envelope: both signatures, and the lease's own consistency; the
// body keeps what it decoded.
func (b *LeaseBody) Decode() (market.SignedLease, error) {
	if b.decoded != nil {
		return *b.decoded, nil
	}
	l, err := market.DecodeLease(b.Lease)
	if err != nil {
		return market.SignedLease{}, fmt.Errorf("lease: %w", err)
	}
	if !l.Complete() {
		return market.SignedLease{}, fmt.Errorf("lease %s is signed by its buyer only", l.ID)
	}
	b.decoded = &l
	return l, nil
}

// StatusBody is a VM's status change with its new version, entered by the VM's provider.
type StatusBody struct {
	VM      vm.ID          `json:"vm"`
	Lease   market.LeaseID `json:"lease"`
	Status  vm.Status      `json:"status"`
	Version uint64         `json:"version"`
	Cause   string         `json:"cause,omitempty"`
}

func (b *StatusBody) validate(Entry) error {
	switch {
	case b.VM.IsZero() || b.Lease.IsZero():
		return errors.New("vm or lease id is zero")
	case !b.Status.Valid():
		return fmt.Errorf("status %d is not a status", b.Status)
	case b.Version == 0:
		return errors.New("version 0")
	case len(b.Cause) > 200:
		return errors.New("cause over 200 bytes")
	}
	return nil
}

// Machine changes.
const (
	MachineAdded   = "added"
	MachineEdited  = "edited"
	MachineRemoved = "removed"
)

// MachineBody records a provider's machine added, edited (its terms) or removed.
type MachineBody struct {
	Machine market.MachineID `json:"machine"`
	Change  string           `json:"change"`
	Name    string           `json:"name,omitempty"`
	Terms   *market.Terms    `json:"terms,omitempty"`
}

func (b *MachineBody) validate(Entry) error {
	switch {
	case b.Machine.IsZero():
		return errors.New("machine id is zero")
	case b.Change != MachineAdded && b.Change != MachineEdited && b.Change != MachineRemoved:
		return fmt.Errorf("change %q: use added, edited or removed", b.Change)
	case len(b.Name) > 100:
		return errors.New("name over 100 bytes")
	case b.Terms != nil:
		return b.Terms.Validate()
	}
	return nil
}

// MigrationBody records a committed migration: the VM leaves lease From and continues under
// the new countersigned Lease (same VM, same buyer), in Status. The buyer or the destination
// enters it.
type MigrationBody struct {
	VM     vm.ID          `json:"vm"`
	From   market.LeaseID `json:"from"`
	Lease  []byte         `json:"lease"`
	Status vm.Status      `json:"status"`

	lease LeaseBody
}

// NewLease returns the verified new lease.
func (b *MigrationBody) NewLease() (market.SignedLease, error) {
	if b.lease.Lease == nil {
		b.lease.Lease = b.Lease
	}
	return b.lease.Decode()
}

func (b *MigrationBody) validate(e Entry) error {
	l, err := b.NewLease()
	if err != nil {
		return err
	}
	switch {
	case l.VM != b.VM:
		return fmt.Errorf("the new lease is of vm %s, not %s", l.VM, b.VM)
	case b.From.IsZero() || b.From == l.ID:
		return errors.New("the old lease is zero or the new one")
	case !b.Status.Valid():
		return fmt.Errorf("status %d is not a status", b.Status)
	case e.Author != l.Buyer && e.Author != l.Provider:
		return fmt.Errorf("migration entered by %s, neither the buyer nor the destination", market.Short(e.Author))
	}
	return nil
}

// MaxAmount caps one deposit or transfer: a billion units.
const MaxAmount = 1_000_000_000 * market.Unit

// DepositBody creates Amount in account To; only a coordinator enters it.
type DepositBody struct {
	To     peer.ID      `json:"to"`
	Amount market.Money `json:"amount"`
	Memo   string       `json:"memo,omitempty"`
}

func (b *DepositBody) validate(Entry) error { return checkPayment(b.To, b.Amount, b.Memo) }

// TransferBody moves Amount from the author's account to To.
type TransferBody struct {
	To     peer.ID      `json:"to"`
	Amount market.Money `json:"amount"`
	Memo   string       `json:"memo,omitempty"`
}

func (b *TransferBody) validate(e Entry) error {
	if b.To == e.Author {
		return errors.New("transfer to oneself")
	}
	return checkPayment(b.To, b.Amount, b.Memo)
}

func checkPayment(to peer.ID, amount market.Money, memo string) error {
	switch {
	case to.Validate() != nil:
		return errors.New("recipient is not a peer id")
	case amount <= 0 || amount > MaxAmount:
		return fmt.Errorf("amount %s out of range: more than 0, at most %s", amount, MaxAmount)
	case len(memo) > 200:
		return errors.New("memo over 200 bytes")
	}
	return nil
}

// TickBody is a coordinator's clock; the tick's time is its entry's.
type TickBody struct{}

func (*TickBody) validate(Entry) error { return nil }

// CoordinatorBody adds Peer to the coordinators, or removes it.
type CoordinatorBody struct {
	Peer   peer.ID `json:"peer"`
	Remove bool    `json:"remove,omitempty"`
}

func (b *CoordinatorBody) validate(Entry) error {
	if b.Peer.Validate() != nil {
		return errors.New("peer is not a peer id")
	}
	return nil
}
