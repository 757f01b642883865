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
	// ErrPending: the provider is still creating the VM of this lease; ask again later.
	ErrPending = errors.New("store still in progress")
	// ErrInternal: the other node failed for a reason of its own.
	ErrInternal = errors.New("internal error")
)

// Error codes on the wire, one per sentinel.
var codes = []struct {
	code string
	err  error
}{
	{"malformed", ErrMalformed},
	{"invalid", ErrInvalid},
	{"forged", ErrForged},
	{"expired", ErrExpired},
	{"stale", ErrStale},
	{"no_capacity", ErrNoCapacity},
	{"not_owner", ErrNotOwner},
	{"not_found", ErrNotFound},
	{"unavailable", ErrUnavailable},
	{"not_provider", ErrNotProvider},
	{"no_hypervisor", ErrNoHypervisor},
	{"machine_in_use", ErrMachineInUse},
	{"locked", ErrLocked},
	{"image_missing", ErrImageMissing},
	{"exists", ErrExists},
	{"pending", ErrPending},
	{"illegal_action", vm.ErrIllegalAction},
	{"vm_not_found", vm.ErrNotFound},
	{"vm_invalid", vm.ErrInvalidConfig},
	{"too_large", vm.ErrTooLarge},
	{"console_busy", vm.ErrConsoleBusy},
	{"suspend_refused", vm.ErrSuspendRefused},
	{"not_running", vm.ErrNotRunning},
	{"hypervisor", vm.ErrHypervisor},
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
	code := "internal"
	for _, c := range codes {
		if errors.Is(err, c.err) {
			code = c.code
			break
		}
	}
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

// Is matches the sentinel the code stands for.
func (e *RemoteError) Is(target error) bool {
	for _, c := range codes {
		if c.code == e.Code {
			return c.err == target
		}
	}
	return target == ErrInternal
}

func truncateN(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// httpStatus marks err with the HTTP status the local API answers it with.
func httpStatus(err error) error {
	if err == nil {
		return nil
	}
	status := http.StatusBadRequest
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, vm.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrNotOwner), errors.Is(err, ErrNotProvider):
		status = http.StatusForbidden
	case errors.Is(err, ErrStale), errors.Is(err, ErrNoCapacity), errors.Is(err, ErrMachineInUse),
		errors.Is(err, ErrLocked), errors.Is(err, ErrExists), errors.Is(err, vm.ErrIllegalAction),
		errors.Is(err, vm.ErrConsoleBusy):
		status = http.StatusConflict
	case errors.Is(err, ErrUnavailable):
		status = http.StatusBadGateway
	case errors.Is(err, ErrNoHypervisor), errors.Is(err, ErrInternal), errors.Is(err, vm.ErrHypervisor):
		status = http.StatusInternalServerError
	}
	return node.WithStatus(status, err)
}
