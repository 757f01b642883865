package market

import (
	"errors"
	"net/http"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Sentinel errors. Errors that come back from another node over a stream are *RemoteError
// values that still match these with errors.Is.
var (
	// ErrMalformed: bytes that do not decode (bad framing, bad JSON, over a size cap).
	ErrMalformed = errors.New("malformed message")
	// ErrUnknownVersion: an envelope of a format version this node does not read (a newer
	// node's); not the sender's fault.
	ErrUnknownVersion = errors.New("unknown format version")
	// ErrInvalid: a well-formed value out of range or inconsistent.
	ErrInvalid = errors.New("invalid value")
	// ErrForged: a signature does not verify, or a message claims another author.
	ErrForged = errors.New("bad signature")
	// ErrExpired: an offer past its expiry, or a message too far from the current time.
	ErrExpired = errors.New("expired")
	// ErrStale: a store request quotes terms the provider no longer offers.
	ErrStale = errors.New("the provider's terms changed")
	// ErrNoCapacity: the machine has not enough free capacity for the configuration.
	ErrNoCapacity = errors.New("not enough free capacity")
	// ErrNotOwner: the requester is not the buyer of the VM's lease.
	ErrNotOwner = errors.New("not the owner of this vm")
	// ErrNotFound: no such machine, offer, configuration, lease or VM.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: the other node did not answer (gone, unreachable, or timed out).
	ErrUnavailable = errors.New("peer unavailable")
	// ErrNotProvider: this node does not sell machines (start it with --provider).
	ErrNotProvider = errors.New("this node is not a provider")
	// ErrNoHypervisor: the provider has no hypervisor driver to create VMs with.
	ErrNoHypervisor = errors.New("provider has no hypervisor")
	// ErrMachineInUse: the machine still stores VMs; remove it with force to evict them.
	ErrMachineInUse = errors.New("machine still stores vms")
	// ErrLocked: the field cannot change once the machine is added.
	ErrLocked = errors.New("field is locked")
	// ErrImageMissing: the provider does not hold the OS image of a preconfigured configuration.
	ErrImageMissing = errors.New("os image not held by the provider")
	// ErrExists: the name or ID is already taken.
	ErrExists = errors.New("already exists")
	// ErrBuyerLimit: the buyer holds as much on this provider as it admits one buyer to hold
	// until payments settle.
	ErrBuyerLimit = errors.New("buyer's limit on this provider reached")
	// ErrLowBalance: the buyer's settled balance does not pay the lease's first storage period.
	ErrLowBalance = errors.New("balance too low")
	// ErrPending: the provider is still creating the VM of this lease; ask again later.
	ErrPending = errors.New("store still in progress")
	// ErrMigrating: a migration of the VM is under way; no other action is legal until it ends.
	ErrMigrating = errors.New("migration under way")
	// ErrReverted: a migration failed and was undone: the VM is where it was, as it was.
	ErrReverted = errors.New("migration reverted")
	// ErrNotFetched: the origin never sent the VM to the destination that claims to hold it.
	ErrNotFetched = errors.New("the destination did not fetch the vm")
	// ErrInternal: the other node failed for a reason of its own.
	ErrInternal = errors.New("internal error")
)

// codes name this package's sentinels on the wire and in the local API's error bodies, with
// the API's HTTP status for each. The vm package's sentinels travel under its own codes
// (vm.Code). A code, once given, never changes meaning.
var codes = []struct {
	code   string
	err    error
	status int
}{
	{"malformed", ErrMalformed, http.StatusBadRequest},
	{"unknown_version", ErrUnknownVersion, http.StatusBadRequest},
	{"invalid", ErrInvalid, http.StatusBadRequest},
	{"forged", ErrForged, http.StatusBadRequest},
	{"expired", ErrExpired, http.StatusBadRequest},
	{"stale", ErrStale, http.StatusConflict},
	{"no_capacity", ErrNoCapacity, http.StatusConflict},
	{"not_owner", ErrNotOwner, http.StatusForbidden},
	{"not_found", ErrNotFound, http.StatusNotFound},
	{"unavailable", ErrUnavailable, http.StatusBadGateway},
	{"not_provider", ErrNotProvider, http.StatusForbidden},
	{"no_hypervisor", ErrNoHypervisor, http.StatusInternalServerError},
	{"machine_in_use", ErrMachineInUse, http.StatusConflict},
	{"locked", ErrLocked, http.StatusConflict},
	{"image_missing", ErrImageMissing, http.StatusConflict},
	{"exists", ErrExists, http.StatusConflict},
	{"pending", ErrPending, http.StatusConflict},
	{"buyer_limit", ErrBuyerLimit, http.StatusConflict},
	{"low_balance", ErrLowBalance, http.StatusPaymentRequired},
	{"migrating", ErrMigrating, http.StatusConflict},
	{"reverted", ErrReverted, http.StatusConflict},
	{"not_fetched", ErrNotFetched, http.StatusConflict},
	{"internal", ErrInternal, http.StatusInternalServerError},
}

// code returns err's code and HTTP status: this package's sentinel it matches, else the vm
// package's, else "internal".
func code(err error) (string, int) {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code, c.status
		}
	}
	if c, status, ok := vm.Code(err); ok {
		return c, status
	}
	return "internal", http.StatusInternalServerError
}

// WireError is an error as it travels in a response.
type WireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// maxErrorMessage caps an error message read from a peer.
const maxErrorMessage = 1024

// toWire turns an error into its wire form.
func toWire(err error) *WireError {
	if err == nil {
		return nil
	}
	code, _ := code(err)
	msg := err.Error()
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage]
	}
	return &WireError{Code: code, Message: msg}
}

// err turns a wire error back into an error that matches its sentinel.
func (w *WireError) err() error {
	if w == nil {
		return nil
	}
	return &RemoteError{Code: w.Code, Message: truncateN(w.Message, maxErrorMessage)}
}

// RemoteError is an error another node answered with. errors.Is matches the sentinel of its
// code (ErrStale, ErrNotOwner, vm.ErrIllegalAction...).
type RemoteError struct {
	Code    string
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

// Is matches the sentinel the code stands for; an unknown code (from a newer node) is
// ErrInternal.
func (e *RemoteError) Is(target error) bool {
	for _, c := range codes {
		if c.code == e.Code {
			return c.err == target
		}
	}
	if sentinel := vm.CodeError(e.Code); sentinel != nil {
		return sentinel == target
	}
	return target == ErrInternal
}

func truncateN(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// httpError marks err with the local API's status and code.
func httpError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := errors.AsType[*node.HTTPError](err); ok {
		return err // already marked (a malformed request body)
	}
	code, status := code(err)
	return node.WithCode(status, code, err)
}
