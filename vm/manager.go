package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
)

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	Driver    Driver     // required
	Inventory *Inventory // required
	Logger    *slog.Logger
	// Events, if set, receives a StatusChanged after every change of a VM's status and after
	// a VM is deleted (Status StatusDeleted), so that the ledger, the web UI and the buyer's
	// notices learn of it. Publish is called while the VM is locked: it must not block (the
	// node's event stream queues).
	Events Publisher
	// StallAfter is how long a started VM's guest may show no sign of running (see
	// ProgressReporter) before its record's Health says so; 60 s if zero.
	StallAfter time.Duration
	// CacheMB bounds the disk the cached copies of VMs that moved away take (DefaultCacheMB if
	// zero; none are kept if negative); beyond it, and when a new VM needs the room, they are
	// evicted oldest first.
	CacheMB int64
}

// Publisher takes events; *node.Events is one.
type Publisher interface {
	Publish(event any)
}

// StatusChanged is the event of a VM whose status changed on this provider.
type StatusChanged struct {
	VM    ID     `json:"vm"`
	Owner string `json:"owner,omitempty"` // the buyer's peer ID
	Lease string `json:"lease,omitempty"`
	State State  `json:"state"` // the new status and version
	// Cause is the action that changed it ("startmachine"; "stopmachine" also for a VM found
	// powered off).
	Cause Action    `json:"cause"`
	Time  time.Time `json:"time"`
}

// LogRecord is the change's entry in the node's event log ("vm 3f2a1b2c started (version 4)").
func (e StatusChanged) LogRecord() node.EventRecord {
	return node.EventRecord{Time: e.Time, Kind: node.KindVMStatus, VM: e.VM.String(), Lease: e.Lease, Peer: e.Owner,
		Message: fmt.Sprintf("vm %s %s (version %d)", e.VM.String()[:8], e.State.Status, e.State.Version),
		Data:    node.RecordData(e)}
}

// DefaultStallAfter is ManagerConfig.StallAfter's default: a Linux guest prints on its console
// or starts a device driver within seconds under KVM and within a minute under TCG.
const DefaultStallAfter = 60 * time.Second

// Manager is the provider's control of its VMs: it checks every action against the VM's
// status (the statusrelations table), has the driver carry it out, and records the new status
// and version in the inventory. The node's local API and the CLI call it; so do the market (on
// store) and the migration server. Actions on one VM are serialised; different VMs proceed in
// parallel.
type Manager struct {
	drv    Driver
	inv    *Inventory
	log    *slog.Logger
	events Publisher
	stall  time.Duration
	// cacheBytes bounds the cached copies.
	cacheBytes int64

	mu    sync.Mutex
	locks map[ID]*sync.Mutex
}

// NewManager returns a Manager over cfg.Driver and cfg.Inventory.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if cfg.Driver == nil || cfg.Inventory == nil {
		return nil, errors.New("vm manager: driver and inventory are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StallAfter <= 0 {
		cfg.StallAfter = DefaultStallAfter
	}
	if cfg.CacheMB == 0 {
		cfg.CacheMB = DefaultCacheMB
	}
	return &Manager{drv: cfg.Driver, inv: cfg.Inventory, log: cfg.Logger, events: cfg.Events, stall: cfg.StallAfter,
		cacheBytes: max(cfg.CacheMB, 0) << 20, locks: make(map[ID]*sync.Mutex)}, nil
}

// Driver returns the driver, for callers that need an optional capability (Importer...).
func (m *Manager) Driver() Driver { return m.drv }

func (m *Manager) lock(id ID) func() {
	m.mu.Lock()
	l, ok := m.locks[id]
	if !ok {
		l = new(sync.Mutex)
		m.locks[id] = l
	}
	m.mu.Unlock()
	l.Lock()
	return l.Unlock
}

// Get returns the record of VM id.
func (m *Manager) Get(id ID) (Record, error) { return m.inv.Get(id) }

// List returns the records of the VMs this provider runs, oldest first; cached copies of VMs
// that moved away are left out.
func (m *Manager) List() []Record {
	all := m.inv.List()
	out := all[:0]
	for _, r := range all {
		if !r.Cached {
			out = append(out, r)
		}
	}
	return out
}

// CreateRequest asks a provider to store a VM.
type CreateRequest struct {
	Config Config `json:"config"`
	Owner  string `json:"owner,omitempty"`
	Lease  string `json:"lease,omitempty"`
	// Version is the registered VM's version; the stored VM has Version+1.
	Version uint64 `json:"version"`
}

// Create stores a new VM (report §6.3.1): the driver creates and registers it, and the record
// goes from registered to stored. On failure nothing is kept.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (Record, error) {
	id := req.Config.ID
	if err := req.Config.Validate(); err != nil {
		return Record{}, err
	}
	m.trimCache(ctx, req.Config.DiskMB, id)
	defer m.lock(id)()
	if _, err := m.inv.Get(id); err == nil {
		return Record{}, fmt.Errorf("create vm %s: %w", id, ErrExists)
	}
	st, err := State{Status: StatusRegistered, Version: req.Version}.Apply(ActionStore)
	if err != nil {
		return Record{}, err
	}
	if err := m.drv.Create(ctx, req.Config); err != nil {
		return Record{}, err
	}
	if err := m.drv.Register(ctx, id); err != nil {
		m.drv.Delete(context.WithoutCancel(ctx), id)
		return Record{}, err
	}
	rec, err := m.inv.Put(Record{ID: id, Config: req.Config, State: st, Driver: m.drv.Name(), Owner: req.Owner, Lease: req.Lease})
	if err != nil {
		m.drv.Delete(context.WithoutCancel(ctx), id)
		return Record{}, err
	}
	m.log.Info("vm stored", "vm", id, "version", st.Version)
	m.changed(rec, ActionStore)
	return rec, nil
}

// Do performs a user action on VM id, for the API and the CLI: startmachine, stopmachine,
// suspendmachine, resumemachine, viewmachine (use Console for the session details),
// deletemachine, migrationstatus. Other actions belong to the market or the migration and
// are refused with ErrIllegalAction.
func (m *Manager) Do(ctx context.Context, id ID, a Action) (Record, error) {
	switch a {
	case ActionStart:
		return m.Start(ctx, id)
	case ActionStop:
		return m.Stop(ctx, id)
	case ActionSuspend:
		return m.Suspend(ctx, id)
	case ActionResume:
		return m.Resume(ctx, id)
	case ActionView:
		rec, _, err := m.Console(ctx, id)
		return rec, err
	case ActionDelete:
		return m.Delete(ctx, id)
	case ActionMigrationStatus:
		return m.check(id, a)
	}
	if !a.Valid() {
		return Record{}, &UnknownActionError{Name: a.String()}
	}
	rec, err := m.inv.Get(id)
	if err != nil {
		return Record{}, err
	}
	return rec, fmt.Errorf("%w: %s is not done through the vm manager", ErrIllegalAction, a)
}

// check returns the record if action a is legal in its status.
func (m *Manager) check(id ID, a Action) (Record, error) {
	rec, err := m.inv.Get(id)
	if err != nil {
		return Record{}, err
	}
	if !Allowed(rec.State.Status, a) {
		return rec, fmt.Errorf("vm %s: %w", id, &IllegalActionError{Status: rec.State.Status, Action: a})
	}
	return rec, nil
}

// transition runs op if action a is legal for VM id and, when op succeeds, records the new
// state. When op fails the status stays what it was (report §6.3.4: a failure reverts).
func (m *Manager) transition(ctx context.Context, id ID, a Action, op func(context.Context) error) (Record, error) {
	defer m.lock(id)()
	rec, err := m.inv.Get(id)
	if err != nil {
		return Record{}, err
	}
	next, err := rec.State.Apply(a)
	if err != nil {
		return rec, fmt.Errorf("vm %s: %w", id, err)
	}
	if op != nil {
		if err := op(ctx); err != nil {
			return m.failed(ctx, rec, err)
		}
	}
	upd := rec
	if a == ActionStop || a == ActionSuspend {
		upd.ConsolePort = 0
	}
	upd.State, upd.Health = next, "" // what was observed of the guest no longer holds
	if upd, err = m.inv.Put(upd); err != nil {
		return rec, err
	}
	m.log.Info("vm status", "vm", id, "action", a.String(), "status", next.Status.String(), "version", next.Version)
	m.changed(upd, a)
	return upd, nil
}

// failed handles the failure err of an operation on rec (lock held). The status stays what it
// was, except for a started VM that the driver found not running: its guest powered off or its
// hypervisor process died. That VM is recorded stopped (one version), so that it is no longer
// billed as running and can be started again.
func (m *Manager) failed(ctx context.Context, rec Record, err error) (Record, error) {
	if rec.State.Status != StatusStarted || !errors.Is(err, ErrNotRunning) {
		return rec, err
	}
	if p, perr := m.drv.Power(ctx, rec.ID); perr != nil || p != PowerOff {
		return rec, err
	}
	stopped, rerr := m.recordOff(rec)
	if rerr != nil {
		return rec, errors.Join(err, rerr)
	}
	return stopped, fmt.Errorf("%w; it had powered off or its hypervisor process had ended, and is now recorded stopped", err)
}

// recordOff records a started VM that was found powered off as stopped (lock held).
func (m *Manager) recordOff(rec Record) (Record, error) {
	next, err := rec.State.Apply(ActionStop)
	if err != nil {
		return rec, fmt.Errorf("vm %s: %w", rec.ID, err)
	}
	upd := rec
	upd.State, upd.ConsolePort, upd.Health = next, 0, ""
	if upd, err = m.inv.Put(upd); err != nil {
		return rec, err
	}
	m.log.Warn("started vm found powered off; recorded stopped", "vm", rec.ID, "version", next.Version)
	m.changed(upd, ActionStop)
	return upd, nil
}

// changed publishes rec's new state, caused by action a (lock held).
func (m *Manager) changed(rec Record, a Action) {
	if m.events != nil {
		m.events.Publish(StatusChanged{VM: rec.ID, Owner: rec.Owner, Lease: rec.Lease, State: rec.State, Cause: a, Time: time.Now().UTC()})
	}
}

// Start starts a stored or stopped VM.
func (m *Manager) Start(ctx context.Context, id ID) (Record, error) {
	return m.transition(ctx, id, ActionStart, func(ctx context.Context) error { return m.drv.Start(ctx, id) })
}

// Stop stops a started VM (also what a low balance does: it stops, it never destroys).
func (m *Manager) Stop(ctx context.Context, id ID) (Record, error) {
	return m.transition(ctx, id, ActionStop, func(ctx context.Context) error {
		m.drv.CloseConsole(ctx, id)
		return m.drv.Stop(ctx, id)
	})
}

// Suspend suspends a started VM. If the hypervisor keeps refusing, the VM stays started and
// the error wraps ErrSuspendRefused.
func (m *Manager) Suspend(ctx context.Context, id ID) (Record, error) {
	return m.transition(ctx, id, ActionSuspend, func(ctx context.Context) error {
		m.drv.CloseConsole(ctx, id)
		return m.drv.Suspend(ctx, id)
	})
}

// Resume resumes a suspended VM. If its saved memory state is missing or damaged the error
// wraps ErrStateUnusable and the VM stays suspended with the state file as it was: put an
// intact copy back and resume again, or use ResumeFresh.
func (m *Manager) Resume(ctx context.Context, id ID) (Record, error) {
	return m.transition(ctx, id, ActionResume, func(ctx context.Context) error { return m.drv.Resume(ctx, id) })
}

// ResumeFresh resumes a suspended VM without its saved memory state, for when Resume fails
// with ErrStateUnusable: the driver discards the state (StateDiscarder) and starts the VM, which
// boots from its disk as after a power failure; what was in its memory is lost. It is the
// resumemachine action (suspended to started, one version), taken with the user's explicit
// consent to lose the memory, so the statusrelations table needs no relation from suspended to
// stopped. If the start fails after the state was discarded, the VM stays suspended and
// ResumeFresh can be retried. Drivers without StateDiscarder refuse with ErrUnsupported.
func (m *Manager) ResumeFresh(ctx context.Context, id ID) (Record, error) {
	return m.transition(ctx, id, ActionResume, func(ctx context.Context) error {
		sd, ok := m.drv.(StateDiscarder)
		if !ok {
			return fmt.Errorf("resume vm %s fresh: discarding the saved state: %w", id, ErrUnsupported)
		}
		if err := sd.DiscardState(ctx, id); err != nil {
			return err
		}
		return m.drv.Start(ctx, id)
	})
}

// Console opens a console session on a started VM (viewmachine). As in the report (§6.1.8),
// an existing session is closed first, so only the newest password works.
func (m *Manager) Console(ctx context.Context, id ID) (Record, Console, error) {
	defer m.lock(id)()
	rec, err := m.check(id, ActionView)
	if err != nil {
		return rec, Console{}, err
	}
	if err := m.drv.CloseConsole(ctx, id); err != nil {
		return rec, Console{}, err
	}
	con, err := m.drv.OpenConsole(ctx, id)
	if err != nil {
		rec, err = m.failed(ctx, rec, err)
		return rec, Console{}, err
	}
	if _, port, err := net.SplitHostPort(con.Addr); err == nil {
		rec.ConsolePort, _ = strconv.Atoi(port)
		if rec, err = m.inv.Put(rec); err != nil {
			return rec, Console{}, err
		}
	}
	return rec, con, nil
}

// CloseConsole ends the console session of VM id, if any.
func (m *Manager) CloseConsole(ctx context.Context, id ID) error {
	defer m.lock(id)()
	rec, err := m.inv.Get(id)
	if err != nil {
		return err
	}
	if err := m.drv.CloseConsole(ctx, id); err != nil {
		return err
	}
	if rec.ConsolePort != 0 {
		rec.ConsolePort = 0
		_, err = m.inv.Put(rec)
	}
	return err
}

// Delete removes a VM that is not running, with its files (deletemachine).
func (m *Manager) Delete(ctx context.Context, id ID) (Record, error) {
	defer m.lock(id)()
	rec, err := m.inv.Get(id)
	if err != nil {
		return Record{}, err
	}
	var next State
	if rec.Cached {
		next = State{Status: StatusDeleted, Version: rec.State.Version}
	} else if next, err = rec.State.Apply(ActionDelete); err != nil {
		return rec, fmt.Errorf("vm %s: %w", id, err)
	}
	if err := m.drv.Delete(ctx, id); err != nil && !errors.Is(err, ErrNotFound) {
		return rec, err
	}
	if err := m.inv.Delete(id); err != nil {
		return rec, err
	}
	m.mu.Lock()
	delete(m.locks, id)
	m.mu.Unlock()
	rec.State = next
	m.log.Info("vm deleted", "vm", id)
	if !rec.Cached {
		m.changed(rec, ActionDelete)
	}
	return rec, nil
}

// BeginMigration marks VM id as migrating away (migrate). It must not be running; its files
// stay as they are until FinishMigration.
func (m *Manager) BeginMigration(ctx context.Context, id ID) (Record, error) {
	return m.transition(ctx, id, ActionMigrate, nil)
}

// FinishMigration ends a migration on the origin. If the VM moved (moved is true), the origin
// keeps its files as a cached copy and stops offering the VM; otherwise the VM returns to the
// status it had before (migrationfailed). Either way the version increments once.
func (m *Manager) FinishMigration(ctx context.Context, id ID, moved bool) (Record, error) {
	if !moved {
		return m.transition(ctx, id, ActionMigrationFailed, nil)
	}
	rec, err := m.finishMoved(id)
	if err == nil {
		m.trimCache(ctx, 0, ID{})
	}
	return rec, err
}

// finishMoved keeps the files of VM id, which moved away, as a cached copy.
func (m *Manager) finishMoved(id ID) (Record, error) {
	defer m.lock(id)()
	rec, err := m.inv.Get(id)
	if err != nil {
		return Record{}, err
	}
	next, err := rec.State.Apply(ActionMigrationDone)
	if err != nil {
		return rec, fmt.Errorf("vm %s: %w", id, err)
	}
	rec.State, rec.Cached, rec.ConsolePort = next, true, 0
	if rec, err = m.inv.Put(rec); err != nil {
		return rec, err
	}
	m.log.Info("vm moved away; files kept as a cache", "vm", id, "version", next.Version)
	m.changed(rec, ActionMigrationDone)
	return rec, nil
}

// AdoptRequest describes a VM whose files a migration placed in a staging directory
// (Importer.StagingDir) and verified.
type AdoptRequest struct {
	ID  ID
	Dir string // staging directory holding the VM's files
	// State is the VM's state at the origin while migrating (Status StatusMigrating with
	// Prior set); the adopted VM gets the prior status at Version+1 (migrationdone).
	State  State
	Origin string // the origin provider's peer ID
	Owner  string
	Lease  string
}

// Adopt takes in a migrated VM on the destination: the driver imports and registers its
// files and the inventory records it in its prior status at the next version. A cached copy
// of an earlier stay is replaced.
func (m *Manager) Adopt(ctx context.Context, req AdoptRequest) (Record, error) {
	imp, ok := m.drv.(Importer)
	if !ok {
		return Record{}, fmt.Errorf("adopt vm %s: import: %w", req.ID, ErrUnsupported)
	}
	next, err := req.State.Apply(ActionMigrationDone)
	if err != nil {
		return Record{}, fmt.Errorf("adopt vm %s: %w", req.ID, err)
	}
	rec, err := m.adopt(ctx, imp, req, next)
	if err == nil {
		m.trimCache(ctx, 0, req.ID) // the copy it replaced may have been counted
	}
	return rec, err
}

func (m *Manager) adopt(ctx context.Context, imp Importer, req AdoptRequest, next State) (Record, error) {
	defer m.lock(req.ID)()
	if old, err := m.inv.Get(req.ID); err == nil && !old.Cached {
		return Record{}, fmt.Errorf("adopt vm %s: %w here", req.ID, ErrExists)
	}
	cfg, err := imp.Import(ctx, req.ID, req.Dir)
	if err != nil {
		return Record{}, err
	}
	if err := m.drv.Register(ctx, req.ID); err != nil {
		return Record{}, err
	}
	rec, err := m.inv.Put(Record{ID: req.ID, Config: cfg, State: next, Driver: m.drv.Name(), Owner: req.Owner, Lease: req.Lease, Origin: req.Origin})
	if err != nil {
		return Record{}, err
	}
	m.log.Info("vm arrived", "vm", req.ID, "status", next.Status.String(), "version", next.Version, "peer", req.Origin)
	m.changed(rec, ActionMigrationDone)
	return rec, nil
}

// Reconcile compares every VM's status with what the hypervisor observes, typically after
// the node restarted: it re-attaches to running VMs (Reattacher), records a started VM found off
// as stopped (the guest powered itself off, its hypervisor process died, or the machine
// rebooted) and closes console sessions, which do not survive a restart. It returns the records
// it changed.
func (m *Manager) Reconcile(ctx context.Context) ([]Record, error) { return m.observe(ctx, true) }

// CheckPower records every started VM that the driver finds powered off as stopped, as
// Reconcile does, but without re-attaching or touching console sessions: a node calls it
// periodically so that a VM whose guest shut down or whose hypervisor process died is not
// billed as running until its owner next acts on it. It returns the records whose status it
// changed. It also refreshes the Health of every started VM that keeps running (see
// CheckHealth); a change of Health alone is not returned.
func (m *Manager) CheckPower(ctx context.Context) ([]Record, error) { return m.observe(ctx, false) }

// CheckHealth looks at the guest of started VM id now and records what it found in the VM's
// Health, which it returns: empty when the guest shows signs of running, or is too recently
// started to tell, or when the driver cannot tell (no ProgressReporter); otherwise a sentence
// for the VM's owner, e.g. "no console output and no sign of an operating system within 60s
// of start: the guest may not be running (accelerator kvm)". A VM that is not started has an
// empty Health. CheckPower calls it for every started VM; the record then travels with Get and
// List like the rest of it.
func (m *Manager) CheckHealth(ctx context.Context, id ID) (Record, error) {
	defer m.lock(id)()
	rec, err := m.inv.Get(id)
	if err != nil {
		return rec, err
	}
	return m.checkHealth(ctx, rec)
}

// checkHealth refreshes rec.Health (lock held).
func (m *Manager) checkHealth(ctx context.Context, rec Record) (Record, error) {
	health := ""
	if pr, ok := m.drv.(ProgressReporter); ok && rec.State.Status == StatusStarted && !rec.Cached {
		p, err := pr.Progress(ctx, rec.ID)
		if err != nil && !errors.Is(err, ErrNotRunning) {
			return rec, fmt.Errorf("vm %s: guest progress: %w", rec.ID, err)
		}
		if err == nil {
			health = healthOf(p, m.stall, time.Now())
		}
	}
	if health == rec.Health {
		return rec, nil
	}
	if health != "" && rec.Health == "" {
		m.log.Warn("vm guest shows no progress", "vm", rec.ID, "health", health)
	}
	rec.Health = health
	return m.inv.Put(rec)
}

// healthOf is the Health sentence for what a driver saw of a guest at now.
func healthOf(p Progress, stall time.Duration, now time.Time) string {
	if p.Sign != "" || p.Since.IsZero() || now.Sub(p.Since) < stall {
		return ""
	}
	accel := ""
	if p.Accel != "" {
		accel = " (accelerator " + p.Accel + ")"
	}
	return fmt.Sprintf("no console output and no sign of an operating system within %ds of start: the guest may not be running%s",
		int(stall.Round(time.Second)/time.Second), accel)
}

func (m *Manager) observe(ctx context.Context, restart bool) ([]Record, error) {
	var changed []Record
	var errs []error
	for _, rec := range m.List() {
		if !restart && rec.State.Status != StatusStarted {
			continue
		}
		rec, ok, err := m.observeOne(ctx, rec.ID, restart)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			changed = append(changed, rec)
		}
	}
	return changed, errors.Join(errs...)
}

// observeOne compares one VM's status with its power state under the VM's lock, so that an
// action running at the same time is never mistaken for a change behind the Manager's back.
// ok reports whether the status changed.
func (m *Manager) observeOne(ctx context.Context, id ID, restart bool) (rec Record, ok bool, err error) {
	defer m.lock(id)()
	if rec, err = m.inv.Get(id); err != nil {
		if errors.Is(err, ErrNotFound) {
			return rec, false, nil // deleted meanwhile
		}
		return rec, false, err
	}
	if rec.Cached || (!restart && rec.State.Status != StatusStarted) {
		return rec, false, nil
	}
	var p PowerState
	if ra, isRA := m.drv.(Reattacher); isRA && restart {
		p, err = ra.Reattach(ctx, id)
	} else {
		p, err = m.drv.Power(ctx, id)
	}
	if err != nil {
		return rec, false, fmt.Errorf("vm %s: %w", id, err)
	}
	switch {
	case rec.State.Status == StatusStarted && p == PowerOff:
		rec, err = m.recordOff(rec)
		return rec, err == nil, err
	case rec.State.Status == StatusSuspended && p == PowerOff && restart:
		m.log.Warn("suspended vm has no saved memory state: resuming fails until it is put back; resuming fresh boots it from its disk", "vm", id)
	case rec.State.Status == StatusStarted && p == PowerRunning:
		if rec, err = m.checkHealth(ctx, rec); err != nil {
			return rec, false, err
		}
	}
	if restart && rec.ConsolePort != 0 {
		m.drv.CloseConsole(ctx, id) // the password of the previous process must stop working
		rec.ConsolePort = 0
		if rec, err = m.inv.Put(rec); err != nil {
			return rec, false, err
		}
	}
	return rec, false, nil
}

// DescribeHost measures what the host can give (HostDescriber); drivers that cannot measure
// it answer ErrUnsupported.
func (m *Manager) DescribeHost(ctx context.Context) (Host, error) {
	hd, ok := m.drv.(HostDescriber)
	if !ok {
		return Host{}, fmt.Errorf("the %s driver cannot measure the host: %w", m.drv.Name(), ErrUnsupported)
	}
	return hd.DescribeHost(ctx)
}
