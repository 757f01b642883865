package vm

import "errors"

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
