package vm

import (
	"errors"
	"net/http"
)

// Sentinel errors. Drivers and the Manager wrap them with context; callers test with errors.Is.
var (
	// ErrNotFound: no VM with that ID is known here.
	ErrNotFound = errors.New("vm not found")
	// ErrExists: a VM with that ID already exists.
	ErrExists = errors.New("vm already exists")
	// ErrIllegalAction: the VM's status does not allow the action (see IllegalActionError).
	ErrIllegalAction = errors.New("action not allowed in this status")
	// ErrUnknownAction: the name is not an action (see UnknownActionError).
	ErrUnknownAction = errors.New("unknown action")
	// ErrUnknownStatus: the name is not a status.
	ErrUnknownStatus = errors.New("unknown status")
	// ErrInvalidConfig: the configuration is malformed (zero sizes, bad ID, bad MAC...).
	ErrInvalidConfig = errors.New("invalid vm configuration")
	// ErrTooLarge: the configuration asks for more than this machine has.
	ErrTooLarge = errors.New("configuration larger than the machine")
	// ErrConsoleBusy: every console (VNC display) slot is in use; try again after one closes.
	ErrConsoleBusy = errors.New("no console slot free")
	// ErrHypervisor: the hypervisor failed or answered something unexpected, or is not
	// installed.
	ErrHypervisor = errors.New("hypervisor error")
	// ErrMissingFile: a file the VM is made of (its disk, kernel, initramfs or saved memory
	// state) is not where it belongs on this provider; the message names it. The operation
	// changed nothing: put the file back and retry.
	ErrMissingFile = errors.New("vm file missing")
	// ErrStateUnusable: a suspended VM's saved memory state is missing or cannot be loaded.
	// The VM stays suspended and nothing is deleted: put an intact state file back and resume
	// again, or resume it fresh (Manager.ResumeFresh), which boots it from its disk and loses
	// what was in its memory.
	ErrStateUnusable = errors.New("saved memory state unusable")
	// ErrSuspendRefused: the guest or hypervisor refused to suspend (for example while the guest
	// OS is still loading) on every attempt; the VM is left running.
	ErrSuspendRefused = errors.New("suspend refused")
	// ErrNotRunning: the operation needs a running VM (console, suspend) and it is not.
	ErrNotRunning = errors.New("vm not running")
	// ErrRunning: the operation needs a VM that is not running (delete, file export).
	ErrRunning = errors.New("vm is running")
	// ErrUnsupported: the driver does not implement an optional capability.
	ErrUnsupported = errors.New("not supported by this hypervisor driver")
	// ErrInvalidID: text that is neither 32 hex digits nor a UUID.
	ErrInvalidID = errors.New("invalid vm id")
	// ErrInvalidMAC: text that is not a MAC address.
	ErrInvalidMAC = errors.New("invalid mac address")
)

// codes name the sentinel errors for programs: the local API's error bodies and the market's
// wire errors carry them, so a CLI, a web page or a remote node can branch on the code and
// tell the user the remedy. A code, once given, never changes meaning.
var codes = []struct {
	code   string
	err    error
	status int // the local API's HTTP status
}{
	{"vm_not_found", ErrNotFound, http.StatusNotFound},
	{"vm_exists", ErrExists, http.StatusConflict},
	{"illegal_action", ErrIllegalAction, http.StatusConflict},
	{"unknown_action", ErrUnknownAction, http.StatusBadRequest},
	{"unknown_status", ErrUnknownStatus, http.StatusBadRequest},
	{"vm_invalid", ErrInvalidConfig, http.StatusBadRequest},
	{"too_large", ErrTooLarge, http.StatusBadRequest},
	{"console_busy", ErrConsoleBusy, http.StatusConflict},
	// Before missing_file: a lost state file is both, and the remedy is the state's.
	{"state_unusable", ErrStateUnusable, http.StatusConflict},
	{"missing_file", ErrMissingFile, http.StatusConflict},
	{"suspend_refused", ErrSuspendRefused, http.StatusConflict},
	{"not_running", ErrNotRunning, http.StatusConflict},
	{"running", ErrRunning, http.StatusConflict},
	{"unsupported", ErrUnsupported, http.StatusBadRequest},
	{"invalid_id", ErrInvalidID, http.StatusBadRequest},
	{"invalid_mac", ErrInvalidMAC, http.StatusBadRequest},
	{"hypervisor", ErrHypervisor, http.StatusInternalServerError},
}

// Code returns the code of the first of this package's sentinels that err matches, and the
// local API's HTTP status for it; ok is false when err matches none.
func Code(err error) (code string, status int, ok bool) {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code, c.status, true
		}
	}
	return "", 0, false
}

// CodeError returns the sentinel a code stands for, or nil.
func CodeError(code string) error {
	for _, c := range codes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}
