package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
)

// PortRange is an inclusive range of TCP ports.
type PortRange struct {
	First, Last int
}

// Config configures a Driver. Zero fields take the defaults of DefaultConfig.
type Config struct {
	// Dir holds the VMs (Dir/vms/<id>), staging directories and the accelerator probe cache.
	Dir string
	// ImageDirs lists the directories whose files a vm.Config may name as BaseImage or boot
	// kernel/initrd. Paths elsewhere are refused: configurations come from the network.
	ImageDirs []string

	QEMU    string // qemu-system-x86_64
	QEMUImg string // qemu-img
	QEMUNBD string // qemu-nbd (reads change-tracking bitmaps)
	Zstd    string // zstd

	// NoChangeTracking runs raw disks without their dirty bitmaps (see Checkpoint): every
	// transfer of a VM that ran then scans its disk.
	NoChangeTracking bool

	Accel   string // AccelAuto, AccelKVM or AccelTCG
	CPU     string // -cpu model; empty for QEMU's default (portable between providers)
	Machine string // -machine type, "pc"
	// DiskFormat is "raw" (sparse; best for block-diff transfer) or "qcow2".
	DiskFormat string

	// VNCPorts is the range of console ports (each ≥ 5900: QEMU takes a display number). A
	// running VM holds one; a VM started while none is free runs without a console.
	VNCPorts PortRange
	// MaxConsoles limits open console sessions (report: vm_ports); OpenConsole beyond it fails
	// with vm.ErrConsoleBusy.
	MaxConsoles int
	// ConsoleWindow is how long a console password admits new connections after OpenConsole.
	ConsoleWindow time.Duration

	// Detach makes VMs outlive the driver's process (own session, no parent-death signal), so
	// that a restarted node re-attaches to them; this is what a provider node wants. Without
	// it, QEMU is killed when the process that started it dies and Close stops every VM this
	// driver started: what tests want.
	Detach bool

	StartTimeout time.Duration // for QEMU to come up with its monitor
	StopTimeout  time.Duration // for the guest to power off before QEMU is told to quit
	// SuspendAttempts and SuspendInterval: how often, and how far apart, a refused suspend is
	// tried again before Suspend gives up (report §6.2.3: 100 attempts).
	SuspendAttempts int
	SuspendInterval time.Duration
	// ProbeKernel is the Linux kernel the KVM probe boots (Accel auto): the guests' own kernel
	// is best. DefaultConfig finds one (FindProbeKernel); when empty the probe falls back to a
	// boot sector, which some hosts pass while real guests hang under their KVM.
	ProbeKernel string
	// ProbeTimeout bounds the KVM probe: a kernel under a working KVM boots to its root-mount
	// panic in a second or two (under TCG it takes about ten).
	ProbeTimeout time.Duration

	// Host, when non-zero, is the capacity Create checks configurations against instead of
	// the measured machine.
	Host vm.Host

	Logger *slog.Logger
}

// DefaultConfig returns the defaults for a driver keeping its VMs in dir.
func DefaultConfig(dir string) Config {
	return Config{
		Dir:             dir,
		QEMU:            "qemu-system-x86_64",
		QEMUImg:         "qemu-img",
		QEMUNBD:         "qemu-nbd",
		Zstd:            "zstd",
		Accel:           AccelAuto,
		Machine:         "pc",
		DiskFormat:      "raw",
		VNCPorts:        PortRange{First: 5910, Last: 5999},
		MaxConsoles:     8,
		ConsoleWindow:   2 * time.Minute,
		StartTimeout:    60 * time.Second,
		StopTimeout:     30 * time.Second,
		SuspendAttempts: 100,
		SuspendInterval: time.Second,
		ProbeKernel:     FindProbeKernel(),
		ProbeTimeout:    8 * time.Second,
	}
}

func (c *Config) fill() {
	def := DefaultConfig(c.Dir)
	set := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	setD := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&c.QEMU, def.QEMU)
	set(&c.QEMUImg, def.QEMUImg)
	set(&c.QEMUNBD, def.QEMUNBD)
	set(&c.Zstd, def.Zstd)
	set(&c.Accel, def.Accel)
	set(&c.Machine, def.Machine)
	set(&c.DiskFormat, def.DiskFormat)
	if c.VNCPorts == (PortRange{}) {
		c.VNCPorts = def.VNCPorts
	}
	if c.MaxConsoles <= 0 {
		c.MaxConsoles = def.MaxConsoles
	}
	if c.SuspendAttempts <= 0 {
		c.SuspendAttempts = def.SuspendAttempts
	}
	setD(&c.ConsoleWindow, def.ConsoleWindow)
	setD(&c.StartTimeout, def.StartTimeout)
	setD(&c.StopTimeout, def.StopTimeout)
	setD(&c.SuspendInterval, def.SuspendInterval)
	setD(&c.ProbeTimeout, def.ProbeTimeout)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports configuration mistakes an operator can fix.
func (c Config) Validate() error {
	var bad []string
	if c.Dir == "" {
		bad = append(bad, "dir is empty")
	}
	if c.VNCPorts.First < 5900 || c.VNCPorts.Last < c.VNCPorts.First || c.VNCPorts.Last > 65535 {
		bad = append(bad, fmt.Sprintf("vnc ports %d-%d: want 5900 ≤ first ≤ last ≤ 65535", c.VNCPorts.First, c.VNCPorts.Last))
	}
	if c.DiskFormat != "raw" && c.DiskFormat != "qcow2" {
		bad = append(bad, fmt.Sprintf("disk format %q: want raw or qcow2", c.DiskFormat))
	}
	switch c.Accel {
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		bad = append(bad, fmt.Sprintf("accel %q: want auto, kvm or tcg", c.Accel))
	}
	if len(bad) > 0 {
		return fmt.Errorf("qemu driver config: %s", strings.Join(bad, "; "))
	}
	return nil
}

// Driver runs VMs as QEMU processes. It implements vm.Driver, vm.StateDiscarder,
// vm.Reattacher, vm.Importer, vm.HostDescriber and vm.ProgressReporter. Methods are safe for concurrent use; operations on one VM are serialised.
type Driver struct {
	cfg Config
	log *slog.Logger

	accelMu   sync.Mutex
	accel     string // resolved accelerator, "" until the first start
	waiters   sync.WaitGroup
	closed    atomic.Bool
	testHooks hooks

	mu       sync.Mutex // guards the fields below
	vms      map[vm.ID]*machine
	creating map[vm.ID]bool
	ports    map[int]vm.ID // VNC ports held by running VMs
	consoles map[vm.ID]bool
}

// hooks let tests in this package inject failures into real operations.
type hooks struct {
	// compressor, if set, gives the command that reads the migration stream on a suspend
	// attempt (1-based), instead of zstd.
	compressor func(attempt int) []string
	// anonymousRAM starts QEMU with its memory not backed by a file, as drivers did before
	// memory.ram: its suspends save the RAM in the stream (the earlier format).
	anonymousRAM bool
}

// machine is the driver's handle on one VM.
type machine struct {
	id  vm.ID
	dir string

	op       sync.Mutex // held for the whole of an operation on this VM
	observed atomic.Uint32

	// guarded by op
	proc *proc
	rt   runtimeState
}

func (m *machine) setObserved(p vm.PowerState) { m.observed.Store(uint32(p)) }

// runtimeState is state.json: what a restarted driver needs to find a running VM again.
type runtimeState struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"` // /proc/<pid>/stat starttime, against pid reuse
	VNCPort   int    `json:"vnc_port,omitempty"`
	Accel     string `json:"accel"`
	Console   bool   `json:"console,omitempty"`
	// Launched and SerialStart: when QEMU was started and how long serial.log was then, so that
	// Progress sees what the guest printed since.
	Launched    time.Time `json:"launched"`
	SerialStart int64     `json:"serial_start"`
	// RAM is the file in the VM's directory that backs the guest's memory: memory.ram, or a
	// temporary name while a state of the earlier format is being loaded. Empty for a QEMU
	// whose memory is not in a file (started by an earlier driver): its suspend saves the RAM
	// in the stream.
	RAM string `json:"ram,omitempty"`
}

// File names inside a VM's directory.
const (
	defFile       = "vm.json"
	stateFile     = "state.json"
	memoryFile    = "memory.zst"      // the migration stream of a suspend, zstd
	ramFile       = "memory.ram"      // the guest's RAM, page N at offset N*4096
	ramLoadFile   = "memory.ram.load" // the RAM while a stream of the earlier format loads
	usedStateFile = "memory.zst.used" // the stream of a resume, while the guest starts running
	qmpSock       = "qmp.sock"
	serialLog     = "serial.log"
	qemuLog       = "qemu.log"
	kernelFile    = "vmlinuz"
	initrdFile    = "initrd"
	maxDefBytes   = 64 << 10
)

// New returns a driver for the VMs under cfg.Dir, re-attaching to those still running from an
// earlier driver (see Config.Detach). It checks that the QEMU tools exist (ErrNotInstalled);
// the accelerator is probed on the first start.
func New(cfg Config) (*Driver, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for _, bin := range []string{cfg.QEMU, cfg.QEMUImg, cfg.QEMUNBD, cfg.Zstd} {
		if err := checkTool(bin); err != nil {
			return nil, fmt.Errorf("qemu driver: %w", err)
		}
	}
	for _, sub := range []string{"vms", "staging"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("qemu driver: %w", err)
		}
	}
	d := &Driver{
		cfg:      cfg,
		log:      cfg.Logger,
		vms:      make(map[vm.ID]*machine),
		creating: make(map[vm.ID]bool),
		ports:    make(map[int]vm.ID),
		consoles: make(map[vm.ID]bool),
	}
	if err := d.scan(); err != nil {
		return nil, err
	}
	return d, nil
}

// Name implements vm.Driver.
func (d *Driver) Name() string { return "qemu" }

// Dir returns the directory of VM id (whether or not it exists).
func (d *Driver) Dir(id vm.ID) string { return filepath.Join(d.cfg.Dir, "vms", id.String()) }

// scan loads every VM directory, removes leftovers of interrupted creates and deletes, and
// re-attaches to VMs whose QEMU is still running.
func (d *Driver) scan() error {
	root := filepath.Join(d.cfg.Dir, "vms")
	entries, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("qemu driver: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			os.RemoveAll(filepath.Join(root, name)) // .create-* or .trash-*: interrupted
			continue
		}
		id, err := vm.ParseID(name)
		if err != nil || !e.IsDir() {
			continue
		}
		m := &machine{id: id, dir: filepath.Join(root, name)}
		d.loadRuntime(m)
		d.vms[id] = m
	}
	os.RemoveAll(filepath.Join(d.cfg.Dir, "staging"))
	return os.MkdirAll(filepath.Join(d.cfg.Dir, "staging"), 0o700)
}

// loadRuntime reads state.json and takes the running process back if it is still there.
// Called with d.mu held or before the driver is shared.
func (d *Driver) loadRuntime(m *machine) {
	m.setObserved(vm.PowerOff)
	if fileExists(filepath.Join(m.dir, memoryFile)) {
		m.setObserved(vm.PowerSuspended)
	}
	b, err := os.ReadFile(filepath.Join(m.dir, stateFile))
	if err != nil {
		return
	}
	var rt runtimeState
	if json.Unmarshal(b, &rt) != nil || rt.PID <= 0 {
		os.Remove(filepath.Join(m.dir, stateFile))
		return
	}
	if !processMatches(rt.PID, rt.StartTime, m.id) {
		d.log.Info("vm no longer running", "vm", m.id, "pid", rt.PID)
		os.Remove(filepath.Join(m.dir, stateFile))
		return
	}
	m.proc = &proc{pid: rt.PID, startTime: rt.StartTime}
	rt.Console = false // sessions do not survive the node; Reattach rotates the password
	m.rt = rt
	if rt.VNCPort > 0 {
		d.ports[rt.VNCPort] = m.id
	}
	m.setObserved(vm.PowerRunning)
	d.log.Info("re-attached to running vm", "vm", m.id, "pid", rt.PID)
}

// machine returns the handle of VM id, loading it from disk if another component (an import)
// put it there since the scan.
func (d *Driver) machine(id vm.ID) (*machine, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if m, ok := d.vms[id]; ok {
		return m, nil
	}
	dir := d.Dir(id)
	if !fileExists(filepath.Join(dir, defFile)) {
		return nil, fmt.Errorf("vm %s: %w", id, vm.ErrNotFound)
	}
	m := &machine{id: id, dir: dir}
	d.loadRuntime(m)
	d.vms[id] = m
	return m, nil
}

// lock finds VM id and takes its operation lock, or gives up when ctx ends.
func (d *Driver) lock(ctx context.Context, id vm.ID) (*machine, error) {
	for {
		m, err := d.machine(id)
		if err != nil {
			return nil, err
		}
		for !m.op.TryLock() {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("vm %s busy: %w", id, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
		// The VM may have been deleted or replaced (import) while we waited.
		d.mu.Lock()
		cur := d.vms[id]
		d.mu.Unlock()
		if cur == m {
			return m, nil
		}
		m.op.Unlock()
	}
}

// Close releases the driver. Without Config.Detach it stops (quits) every VM still running
// that this driver started; with it, VMs keep running for the next driver to re-attach.
func (d *Driver) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	if d.cfg.Detach {
		return nil
	}
	d.mu.Lock()
	ms := make([]*machine, 0, len(d.vms))
	for _, m := range d.vms {
		ms = append(ms, m)
	}
	d.mu.Unlock()
	var errs []error
	for _, m := range ms {
		m.op.Lock()
		if m.proc != nil && m.proc.child && m.proc.alive() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			errs = append(errs, d.terminate(ctx, m, false))
			cancel()
		}
		m.op.Unlock()
	}
	d.waiters.Wait()
	return errors.Join(errs...)
}

// accelerator resolves (once, then cached) the accelerator to run VMs with.
func (d *Driver) accelerator(ctx context.Context) (string, error) {
	d.accelMu.Lock()
	defer d.accelMu.Unlock()
	if d.accel != "" {
		return d.accel, nil
	}
	accel, note, err := resolveAccel(ctx, d.cfg)
	if err != nil {
		return "", err
	}
	d.log.Info("qemu accelerator", "accel", accel, "why", note)
	d.accel = accel
	return accel, nil
}

// Accel returns the accelerator VMs run with, probing for KVM if that was not done yet.
func (d *Driver) Accel(ctx context.Context) (string, error) { return d.accelerator(ctx) }

// saveRuntime writes state.json, or removes it when the VM is not running.
func (m *machine) saveRuntime() error {
	path := filepath.Join(m.dir, stateFile)
	if m.proc == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	b, err := json.Marshal(m.rt)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, b)
}

// writeFileAtomic replaces path with data so that a crash leaves the old or the new content.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
