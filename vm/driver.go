package vm

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Config is what a VM is created from: the configuration a buyer chose, as the marketplace sends
// it to the provider (report §6.2.3: create_from_config). The ID and MAC are issued by the
// marketplace, never by the hypervisor.
type Config struct {
	ID            ID     `json:"id"`
	Name          string `json:"name,omitempty"`      // human-readable configname
	SpeedBogomips int64  `json:"speed_bogomips"`      // processor speed sold, in bogomips
	MemoryMB      int64  `json:"memory_mb"`           // guest memory
	DiskMB        int64  `json:"disk_mb"`             // size of the VM's disk
	Processor     string `json:"processor,omitempty"` // architecture, "x86_64" if empty
	OS            string `json:"os,omitempty"`        // operating system of a preconfigured image
	// BaseImage is, for a preconfigured VM, the path on this provider of the disk image the VM's
	// disk starts as (raw or qcow2). Empty for a bare VM with a blank disk.
	BaseImage string `json:"base_image,omitempty"`
	// Boot, when set, boots a kernel directly instead of from the disk. Drivers that cannot do
	// this fail Create with ErrUnsupported.
	Boot *KernelBoot `json:"boot,omitempty"`
	MAC  MAC         `json:"mac"`
}

// KernelBoot boots a Linux kernel and initramfs directly. The driver copies both into the VM's
// files, so the VM stays self-contained when it migrates.
type KernelBoot struct {
	Kernel  string `json:"kernel"`           // path of the kernel image on this provider
	Initrd  string `json:"initrd,omitempty"` // path of the initramfs
	Cmdline string `json:"cmdline,omitempty"`
}

// Limits that keep a configuration from untrusted peers sane before a driver sees it.
const (
	MaxMemoryMB = 1 << 22 // 4 TiB
	MaxDiskMB   = 1 << 26 // 64 TiB
	maxText     = 256
)

// Validate checks a configuration for malformed values; whether it fits the machine is the
// driver's and the Manager's business (ErrTooLarge).
func (c Config) Validate() error {
	var bad []string
	if c.ID.IsZero() {
		bad = append(bad, "id is zero")
	}
	if c.MAC.IsZero() {
		bad = append(bad, "mac is not issued")
	} else if c.MAC[0]&0x01 != 0 {
		bad = append(bad, "mac is multicast")
	}
	if c.MemoryMB <= 0 || c.MemoryMB > MaxMemoryMB {
		bad = append(bad, fmt.Sprintf("memory_mb %d out of range 1..%d", c.MemoryMB, MaxMemoryMB))
	}
	if c.DiskMB <= 0 || c.DiskMB > MaxDiskMB {
		bad = append(bad, fmt.Sprintf("disk_mb %d out of range 1..%d", c.DiskMB, MaxDiskMB))
	}
	if c.SpeedBogomips < 0 {
		bad = append(bad, "speed_bogomips is negative")
	}
	for name, v := range map[string]string{"name": c.Name, "processor": c.Processor, "os": c.OS, "base_image": c.BaseImage} {
		if len(v) > maxText {
			bad = append(bad, name+" too long")
		}
	}
	if c.Boot != nil && c.Boot.Kernel == "" {
		bad = append(bad, "boot without a kernel")
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(bad, "; "))
	}
	return nil
}

// PowerState is what the hypervisor observes a VM doing, as opposed to the Status the
// marketplace agreed on. The Manager compares the two after a restart.
type PowerState uint8

// Observed power states.
const (
	PowerUnknown   PowerState = iota
	PowerOff                  // not running, no saved memory state
	PowerRunning              // running
	PowerPaused               // process alive but vCPUs stopped (mid-suspend or mid-resume)
	PowerSuspended            // not running, memory state saved
)

func (p PowerState) String() string {
	switch p {
	case PowerOff:
		return "off"
	case PowerRunning:
		return "running"
	case PowerPaused:
		return "paused"
	case PowerSuspended:
		return "suspended"
	}
	return "unknown"
}

// MarshalText writes the state's name.
func (p PowerState) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// Console is where a buyer's VNC client connects to see a running VM (report §6.2.4).
type Console struct {
	Addr     string `json:"addr"`     // host:port of the RFB (VNC) server, on loopback
	Password string `json:"password"` // one-time password for this session (VNC uses 8 bytes)
}

// Files are the files that make up a VM on this provider: what a migration copies.
type Files struct {
	Dir   string   `json:"dir"`   // directory holding every file of the VM
	Names []string `json:"names"` // file names relative to Dir, disks first
}

// Driver is the hypervisor contract every backend implements (report §6.2.3 vm_control.pm, kept
// small on purpose so that another VMM can be added: report §7.1.1). All methods are safe for
// concurrent use on different VMs; the Manager serialises calls for one VM.
//
// Errors wrap the package's sentinels: ErrNotFound for an unknown ID, ErrTooLarge when the
// configuration does not fit, ErrConsoleBusy when no console slot is free, ErrSuspendRefused
// when suspending failed on every attempt (the VM is left running), ErrMissingFile when a file
// of the VM is gone, ErrStateUnusable when Resume cannot use the saved memory state,
// ErrNotRunning when an operation needs a running VM and it has powered off (by itself, or
// because the hypervisor process died), ErrHypervisor for anything the hypervisor did wrong
// or a hypervisor that is not installed. A failed operation leaves the VM as it was.
type Driver interface {
	// Name identifies the backend ("qemu", "vsphere").
	Name() string
	// Create builds the VM's files from cfg: all or nothing; a failure leaves nothing behind.
	Create(ctx context.Context, cfg Config) error
	// Register makes a VM whose files are in place known to the hypervisor: after Create, and at
	// a migration destination after its files were imported. Registering twice is harmless.
	Register(ctx context.Context, id ID) error
	// Start powers the VM on from off.
	Start(ctx context.Context, id ID) error
	// Stop powers the VM off, answering any question the hypervisor asks on the way; it asks
	// the guest first and forces it off when the guest does not comply in time.
	Stop(ctx context.Context, id ID) error
	// Suspend saves the VM's memory state next to its disk and ends its process. It retries if
	// the hypervisor refuses and finally fails with ErrSuspendRefused, leaving the VM running.
	Suspend(ctx context.Context, id ID) error
	// Resume runs a suspended VM from its saved state. A missing or damaged state fails with
	// ErrStateUnusable and is kept as it is.
	Resume(ctx context.Context, id ID) error
	// Power reports the observed power state. A VM whose hypervisor process died is PowerOff
	// (or PowerSuspended if it has a saved state), not an error.
	Power(ctx context.Context, id ID) (PowerState, error)
	// OpenConsole opens (or re-opens with a new password) the VM's console session.
	OpenConsole(ctx context.Context, id ID) (Console, error)
	// CloseConsole ends the VM's console session and frees its slot; closing a VM that has no
	// session is not an error.
	CloseConsole(ctx context.Context, id ID) error
	// Files lists the VM's files; a migration copies them while the VM is not running.
	Files(ctx context.Context, id ID) (Files, error)
	// Delete removes a VM that is not running, with all its files.
	Delete(ctx context.Context, id ID) error
}

// Reattacher is implemented by drivers whose VMs outlive the node process: after a restart the
// node calls Reattach for every VM of its inventory to take control of it again.
type Reattacher interface {
	Reattach(ctx context.Context, id ID) (PowerState, error)
}

// StateDiscarder is implemented by drivers that can drop a suspended VM's saved memory state,
// leaving the VM powered off with its disk as it was: the way out when that state is lost or
// damaged (see Manager.ResumeFresh). Discarding a VM that has no saved state does nothing; a
// running VM is refused with ErrRunning.
type StateDiscarder interface {
	DiscardState(ctx context.Context, id ID) error
}

// Importer is implemented by drivers that can take in a VM whose files were copied from another
// provider (a migration destination).
type Importer interface {
	// StagingDir returns a new empty directory on the same file system as the driver's VMs,
	// into which a migration copies the files of VM id. If this provider still holds an older
	// copy of the VM, the caller may copy it there first to transfer only what differs.
	StagingDir(ctx context.Context, id ID) (string, error)
	// Import atomically adopts the staged files in dir as VM id (replacing an older copy that
	// is not running) and returns the VM's configuration read from them. Register follows.
	Import(ctx context.Context, id ID, dir string) (Config, error)
}

// Host describes what the machine behind a driver can give to VMs.
type Host struct {
	SpeedBogomips int64 `json:"speed_bogomips"`
	MemoryMB      int64 `json:"memory_mb"`
	DiskMB        int64 `json:"disk_mb"`
	CPUs          int   `json:"cpus"`
}

// HostDescriber is implemented by drivers that can measure their machine; a provider uses it to
// fill in the capacity it offers.
type HostDescriber interface {
	DescribeHost(ctx context.Context) (Host, error)
}

// Progress is what a driver saw of a running VM's guest since the VM was last started or
// resumed: whether its operating system shows signs of running. A hypervisor process can run,
// and burn a core, while its guest is stuck: under an accelerator that cannot run it, or with a
// disk that has nothing to boot.
type Progress struct {
	Since time.Time // when the VM was last started or resumed
	// Sign names what showed the guest running ("console output", "virtio-blk driver ready");
	// empty while nothing has.
	Sign  string
	Accel string // how the guest's CPU is run ("kvm", "tcg"), when the driver knows
}

// ProgressReporter is implemented by drivers that can tell whether a running VM's guest makes
// progress. Progress of a VM that is not running fails with ErrNotRunning.
type ProgressReporter interface {
	Progress(ctx context.Context, id ID) (Progress, error)
}
