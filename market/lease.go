package market

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/vm"
)

// Lease is the agreement under which a provider stores a buyer's VM (report §6.3.1): it
// freezes the configuration, the terms and the resulting prices, so that a later edit of the
// machine's prices changes nothing for this VM. The buyer proposes and signs it; the provider
// checks it against its current offer and countersigns. The ledger charges by it.
type Lease struct {
	ID       LeaseID       `json:"id"`
	VM       vm.ID         `json:"vm"`
	Buyer    peer.ID       `json:"buyer"`
	Provider peer.ID       `json:"provider"`
	Machine  MachineID     `json:"machine"`
	Config   Configuration `json:"config"`
	Terms    Terms         `json:"terms"`
	Quote    Quote         `json:"quote"`
	Created  time.Time     `json:"created"`
}

// Validate checks the lease's consistency: IDs set, configuration and terms in range, and the
// quote exactly what the terms say for the configuration.
func (l Lease) Validate() error {
	var bad []string
	if l.ID.IsZero() {
		bad = append(bad, "lease id is zero")
	}
	if l.VM.IsZero() {
		bad = append(bad, "vm id is zero")
	}
	if l.Machine.IsZero() {
		bad = append(bad, "machine id is zero")
	}
	if l.Buyer.Validate() != nil || l.Provider.Validate() != nil {
		bad = append(bad, "buyer or provider is not a peer id")
	} else if l.Buyer == l.Provider {
		bad = append(bad, "buyer and provider are the same node")
	}
	if l.Created.IsZero() {
		bad = append(bad, "created time missing")
	}
	if err := l.Config.Validate(); err != nil {
		bad = append(bad, err.Error())
	}
	if q, err := l.Terms.Quote(l.Config.Resources()); err != nil {
		bad = append(bad, err.Error())
	} else if q != l.Quote {
		bad = append(bad, "quote does not match the terms")
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: lease: %s", ErrInvalid, strings.Join(bad, "; "))
	}
	return nil
}

// SignedLease is a lease with its encoded body and the two signatures. A proposal carries
// only the buyer's.
type SignedLease struct {
	Lease
	Body        []byte
	BuyerSig    []byte
	ProviderSig []byte
}

// Complete reports whether both parties signed.
func (s SignedLease) Complete() bool { return len(s.BuyerSig) > 0 && len(s.ProviderSig) > 0 }

// Encode writes the lease envelope: body, buyer signature, provider signature (empty in a
// proposal).
func (s SignedLease) Encode() []byte {
	return EncodeEnvelope(leaseMagic, s.Body, s.BuyerSig, s.ProviderSig)
}

// ProposeLease encodes l and signs it as its buyer with key.
func ProposeLease(l Lease, key crypto.PrivKey) (SignedLease, error) {
	l.Created = l.Created.UTC()
	body, sig, err := signBody("lease", &l, key, l.Buyer, leaseDomain)
	if err != nil {
		return SignedLease{}, err
	}
	return SignedLease{Lease: l, Body: body, BuyerSig: sig}, nil
}

// Countersign adds the provider's signature with key.
func (s SignedLease) Countersign(key crypto.PrivKey) (SignedLease, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return SignedLease{}, err
	}
	if id != s.Provider {
		return SignedLease{}, fmt.Errorf("countersign lease: key of %s, provider %s", id, s.Provider)
	}
	sig, err := key.Sign(append([]byte(leaseDomain), s.Body...))
	if err != nil {
		return SignedLease{}, fmt.Errorf("countersign lease: %w", err)
	}
	s.ProviderSig = sig
	return s, nil
}

// DecodeLease decodes a lease envelope and verifies the signatures it carries: the buyer's
// always, the provider's when present.
func DecodeLease(raw []byte) (SignedLease, error) {
	var l Lease
	f, err := openBody("lease", raw, leaseMagic, MaxLeaseBytes, &l, maxSigBytes, maxSigBytes)
	if err != nil {
		return SignedLease{}, err
	}
	if err := verify(l.Buyer, leaseDomain, f[0], f[1]); err != nil {
		return SignedLease{}, fmt.Errorf("lease %s, buyer: %w", l.ID, err)
	}
	if len(f[2]) > 0 {
		if err := verify(l.Provider, leaseDomain, f[0], f[2]); err != nil {
			return SignedLease{}, fmt.Errorf("lease %s, provider: %w", l.ID, err)
		}
	}
	return SignedLease{Lease: l, Body: slices.Clone(f[0]), BuyerSig: slices.Clone(f[1]), ProviderSig: slices.Clone(f[2])}, nil
}
