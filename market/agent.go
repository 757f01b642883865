package market

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/failpoint"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp"
)

// The steps of a migration as its agent (the buyer's node) takes them, in order. Before each,
// the agent records the migration, so that a node that stops at any point finishes or reverts
// it when it starts again.
const (
	// StepLease: the destination is asked to hold capacity under the new lease.
	StepLease = "lease"
	// StepBegin: the origin is asked to suspend the VM if it runs and mark it migrating.
	StepBegin = "begin"
	// StepCopy: the destination pulls the files (VMMP REQ, HEARTBEAT … RESP). Its own steps
	// (admit, ask, copy, adopt) are the migration's DestStep.
	StepCopy = "copy"
	// StepFinish: the destination answered SUCCESS; the origin, which knows whether it sent
	// the files, is told the VM moved and keeps its files as a cache.
	StepFinish = "finish"
	// StepCommit: the ledger is told the lease moved, and the buyer's record follows the VM.
	StepCommit = "commit"
	// StepResume: a VM that ran before runs again at the destination.
	StepResume = "resume"
	// StepRevert: the migration failed before the destination committed; the destination's
	// hold is released and the VM returns to its prior status at the origin.
	StepRevert = "revert"
	// StepDone and StepReverted end a migration.
	StepDone     = "done"
	StepReverted = "reverted"
)

// Migration is a migration as its agent records it: what moves where, the step it is at, and
// the copy's progress.
type Migration struct {
	VM            vm.ID     `json:"vm"`
	Step          string    `json:"step"`
	From          LeaseID   `json:"from"`
	Origin        peer.ID   `json:"origin"`
	OriginMachine MachineID `json:"origin_machine"`
	OriginAddrs   []string  `json:"origin_addrs,omitempty"`
	To            peer.ID   `json:"to"`
	ToAddrs       []string  `json:"to_addrs,omitempty"`
	Machine       MachineID `json:"machine"`
	Method        string    `json:"method"`
	// Proposal is the new lease as the buyer signed it; Lease the destination's countersigned
	// one, once it holds capacity.
	Proposal []byte `json:"proposal"`
	Lease    []byte `json:"lease,omitempty"`
	// Prior is the VM's status before the migration; Version its version at the origin once
	// migrating, Arrived its version at the destination.
	Prior   vm.Status `json:"prior"`
	Version uint64    `json:"version,omitempty"`
	Arrived uint64    `json:"arrived,omitempty"`
	// DestStep, Done, Total and Wire are the destination's last heartbeat: its step, image
	// bytes settled of the total, bytes on the wire.
	DestStep string    `json:"dest_step,omitempty"`
	Done     int64     `json:"done"`
	Total    int64     `json:"total"`
	Wire     int64     `json:"wire"`
	Started  time.Time `json:"started"`
	Updated  time.Time `json:"updated"`
	// Error is why it reverted; Waiting what holds it up now (a provider it must tell that
	// cannot be reached), if anything.
	Error   string `json:"error,omitempty"`
	Waiting string `json:"waiting,omitempty"`
	// Refuted: the origin never sent the files to the destination that answered SUCCESS.
	Refuted bool `json:"refuted,omitempty"`
}

// Rate is the copy's image bytes per second so far.
func (m Migration) Rate() float64 {
	if d := m.Updated.Sub(m.Started).Seconds(); d > 0 {
		return float64(m.Done) / d
	}
	return 0
}

// Ended reports whether the migration is over.
func (m Migration) Ended() bool { return m.Step == StepDone || m.Step == StepReverted }

// MigrationStep: a migration the buyer's node runs took a step (or, in the copy, the
// destination did).
type MigrationStep struct {
	Migration Migration `json:"migration"`
	Time      time.Time `json:"time"`
}

// LogRecord is the event's entry in the node's event log.
func (e MigrationStep) LogRecord() node.EventRecord {
	m := e.Migration
	step := m.Step
	if m.Step == StepCopy && m.DestStep != "" {
		step += "/" + m.DestStep
	}
	msg := fmt.Sprintf("migration of vm %s from %s to %s: %s", short(m.VM), Short(m.Origin), Short(m.To), step)
	if m.Error != "" {
		msg += ": " + m.Error
	}
	if m.Waiting != "" {
		msg += "; " + m.Waiting
	}
	return node.EventRecord{Time: e.Time, Kind: node.KindMigrationStep, VM: m.VM.String(), Lease: m.From.String(), Peer: m.To.String(),
		Message: msg, Data: node.RecordData(m)}
}

// recentMigrations is how long an ended migration stays in Migrations.
const recentMigrations = 10 * time.Minute

// Migrations lists the buyer's migrations under way and those that ended in the last minutes,
// newest first.
func (b *Buyer) Migrations() ([]Migration, error) {
	var out []Migration
	err := b.migrations.List(func(_ string, val []byte) error {
		var m Migration
		if err := DecodeStrict(val, &m); err != nil {
			return err
		}
		out = append(out, b.live(m))
		return nil
	})
	b.mu.Lock()
	for _, m := range b.ended {
		out = append(out, m)
	}
	b.mu.Unlock()
	slices.SortFunc(out, func(a, c Migration) int { return c.Started.Compare(a.Started) })
	return out, err
}

// MigrationOf is the migration of VM id under way or ended lately.
func (b *Buyer) MigrationOf(id vm.ID) (Migration, error) {
	m, err := node.GetJSON[Migration](b.migrations, id.String())
	if err == nil {
		return b.live(m), nil
	}
	if !errors.Is(err, node.ErrNotFound) {
		return Migration{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if m, ok := b.ended[id]; ok {
		return m, nil
	}
	return Migration{}, fmt.Errorf("%w: no migration of vm %s lately", ErrNotFound, id)
}

// live is m with the progress of the copy under way, which is kept in memory only.
func (b *Buyer) live(m Migration) Migration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p, ok := b.moving[m.VM]; ok && p.Step == m.Step {
		return p
	}
	return m
}

// record stores m at its step and publishes the step.
func (b *Buyer) record(m *Migration) error {
	m.Updated = b.now()
	var err error
	if m.Ended() {
		err = b.migrations.Delete(m.VM.String())
		b.mu.Lock()
		b.ended[m.VM] = *m
		for id, e := range b.ended {
			if b.now().Sub(e.Updated) > recentMigrations {
				delete(b.ended, id)
			}
		}
		b.mu.Unlock()
	} else {
		err = node.PutJSON(b.migrations, m.VM.String(), *m)
	}
	b.mu.Lock()
	if _, ok := b.moving[m.VM]; ok {
		b.moving[m.VM] = *m
	}
	b.mu.Unlock()
	b.n.Events().Publish(MigrationStep{Migration: *m, Time: m.Updated})
	return err
}

// claim marks the migration of id as driven by this goroutine; false if another drives it.
func (b *Buyer) claim(m Migration) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.moving[m.VM]; ok {
		return false
	}
	b.moving[m.VM] = m
	return true
}

func (b *Buyer) release(id vm.ID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.moving, id)
}

// Migrate moves VM id to the machine of req, atomically: the destination takes a new lease at
// its current terms (capacity held, no VM yet), the origin suspends the VM if it runs and marks
// it migrating, the destination pulls and adopts it (VMMP REQ, heartbeats, RESP) and, on
// SUCCESS, the ledger moves the lease, the origin keeps its files as a cache, and the VM runs
// again at the destination if it ran before. A failure before the destination commits reverts:
// the VM is at the origin in its previous status under its old lease, and the destination's
// capacity is released. Each step is recorded before it is taken: a node that stops in the
// middle finishes or reverts the migration when it starts again (resumeMigrations).
func (b *Buyer) Migrate(ctx context.Context, id vm.ID, req MigrateRequest) (VM, error) {
	bl, err := node.GetJSON[buyerLease](b.space, leaseKey(id))
	if errors.Is(err, node.ErrNotFound) {
		return VM{}, fmt.Errorf("%w: you have no vm %s (see `virtuoso vm ls`)", ErrNotFound, id)
	}
	if err != nil {
		return VM{}, err
	}
	if bl.State != LeaseStateActive {
		return VM{}, fmt.Errorf("%w: the lease of vm %s is %s", ErrNotFound, id, bl.State)
	}
	if m, err := node.GetJSON[Migration](b.migrations, id.String()); err == nil {
		return VM{}, fmt.Errorf("%w: vm %s is migrating to %s (step %s); see `virtuoso migrate --status %s`", ErrMigrating, id, Short(m.To), m.Step, id)
	}
	old, err := DecodeLease(bl.Raw)
	if err != nil {
		return VM{}, err
	}
	offer, err := b.findOffer(req.Provider, req.Machine)
	if err != nil {
		return VM{}, err
	}
	if offer.Provider == old.Provider || offer.Provider == b.n.ID() {
		return VM{}, fmt.Errorf("%w: the vm is stored there already, or that is this node", ErrInvalid)
	}
	method := req.Method
	if method == "" {
		method = "blockdiff"
	}
	q, err := offer.Terms.Quote(old.Config.Resources())
	if err != nil {
		return VM{}, err
	}
	proposal, err := ProposeLease(Lease{ID: NewLeaseID(), VM: id, Buyer: b.n.ID(), Provider: offer.Provider, Machine: offer.Machine,
		Config: old.Config, Terms: offer.Terms, Quote: q, Created: b.now().Truncate(time.Millisecond)}, b.n.PrivKey())
	if err != nil {
		return VM{}, err
	}
	m := Migration{VM: id, Step: StepLease, From: old.ID, Origin: old.Provider, OriginMachine: old.Machine, OriginAddrs: bl.Addrs, To: offer.Provider,
		ToAddrs: offer.Addrs, Machine: offer.Machine, Method: method, Proposal: proposal.Encode(), Prior: bl.VM.Status, Started: b.now()}
	if !b.claim(m) {
		return VM{}, fmt.Errorf("%w: vm %s is migrating already", ErrMigrating, id)
	}
	defer b.release(id)
	if err := b.record(&m); err != nil {
		return VM{}, err
	}
	if req.Progress != nil {
		req.Progress(m)
	}
	err = b.drive(ctx, &m, req.Progress, false)
	v, verr := b.viewOf(id)
	if err == nil {
		err = verr
	}
	return v, err
}

// viewOf is the buyer's record of VM id.
func (b *Buyer) viewOf(id vm.ID) (VM, error) {
	bl, err := node.GetJSON[buyerLease](b.space, leaseKey(id))
	if err != nil {
		return VM{}, err
	}
	return bl.view()
}

// drive takes migration m from its recorded step to its end. recovering says that the node
// restarted since the step was recorded: a copy then is not asked for again but decided (the
// destination either committed or can be told to let go). It returns nil once the VM moved,
// and why otherwise; a migration that could not be decided stays recorded for a later try.
func (b *Buyer) drive(ctx context.Context, m *Migration, progress func(Migration), recovering bool) error {
	origin, dest := peerAddr{m.Origin, m.OriginAddrs}, peerAddr{m.To, m.ToAddrs}
	step := func(ctx context.Context, r migrateRequest) (migrateResponse, error) {
		var resp migrateResponse
		err := b.request(ctx, origin, MigrateID, b.opts.ControlTimeout, r, &resp)
		if err == nil && resp.Error != nil {
			err = resp.Error.err()
		}
		return resp, err
	}
	var cause error
	next := func(s string) error {
		m.Step, m.Waiting = s, ""
		if cause != nil && (s == StepRevert || s == StepReverted) {
			m.Error = cause.Error()
		}
		err := b.record(m)
		failpoint.Here("agent:" + s)
		if progress != nil {
			progress(*m)
		}
		return err
	}
	for {
		switch m.Step {
		case StepLease:
			// 1. The destination holds capacity under the new lease.
			if recovering {
				cause = errors.New("the node stopped before the destination confirmed the new lease")
				if err := next(StepRevert); err != nil {
					return err
				}
				continue
			}
			var sresp storeResponse
			err := b.request(ctx, dest, StoreID, b.opts.StoreTimeout, storeRequest{Lease: m.Proposal, Incoming: true}, &sresp)
			if err == nil && sresp.Error != nil {
				err = fmt.Errorf("provider %s refused the new lease: %w", Short(dest.id), sresp.Error.err())
			}
			if err == nil {
				var full SignedLease
				full, err = DecodeLease(sresp.Lease)
				if err == nil && (!full.Complete() || string(full.Body) != string(proposalBody(m.Proposal))) {
					err = fmt.Errorf("%w: the destination answered with another lease", ErrForged)
				}
				m.Lease = sresp.Lease
			}
			if err != nil {
				cause = fmt.Errorf("migrate to %s: %w", Short(dest.id), err)
				m.Lease = nil
				if err := next(StepRevert); err != nil {
					return err
				}
				continue
			}
			if err := next(StepBegin); err != nil {
				return err
			}
		case StepBegin:
			// 2. The origin marks the VM migrating (suspending it if it runs) and grants the files.
			if recovering {
				cause = errors.New("the node stopped before the origin confirmed the migration")
				if err := next(StepRevert); err != nil {
					return err
				}
				continue
			}
			resp, err := step(ctx, migrateRequest{VM: m.VM, Op: migrateBegin, To: dest.id})
			if err != nil {
				cause = fmt.Errorf("begin the migration at %s: %w", Short(origin.id), err)
				if err := next(StepRevert); err != nil {
					return err
				}
				continue
			}
			m.Version = resp.State.Version
			b.setVM(m.VM, resp.State, "migrating to "+Short(dest.id))
			if err := next(StepCopy); err != nil {
				return err
			}
		case StepCopy:
			// 3. The destination pulls and adopts it.
			if recovering {
				if err := b.decide(ctx, m, next); err != nil {
					return err
				}
				continue
			}
			resp, err := b.copyVia(ctx, m, progress)
			if err != nil {
				// The destination may have committed all the same (its RESP lost): decide
				// asks it to let go, which it does only if it did not.
				cause = err
				if err := b.decide(ctx, m, next); err != nil {
					return fmt.Errorf("%w; %w", cause, err)
				}
				continue
			}
			m.Arrived = resp.Version
			if err := next(StepFinish); err != nil {
				return err
			}
		case StepFinish:
			// Past the destination's commit the move is only told, never undone: a caller
			// that stops waiting does not stop it.
			ctx = context.WithoutCancel(ctx)
			// 4. The origin, which knows whether it sent the files to their end, lets go and
			// keeps them as a cache; a destination that answered SUCCESS without them is
			// found out here.
			_, err := step(ctx, migrateRequest{VM: m.VM, Op: migrateFinish, Moved: true})
			if errors.Is(err, ErrNotFetched) {
				cause, m.Refuted = err, true
				if err := next(StepRevert); err != nil {
					return err
				}
				continue
			}
			if err != nil {
				m.Waiting = fmt.Sprintf("the origin %s has not confirmed the move yet (asked again every %v): %v", Short(origin.id), b.opts.Housekeeping, err)
				b.record(m)
				return fmt.Errorf("vm %s arrived at %s; the move completes once the origin %s confirms it (asked again every %v): %w",
					m.VM, Short(dest.id), Short(origin.id), b.opts.Housekeeping, err)
			}
			if err := next(StepCommit); err != nil {
				return err
			}
		case StepCommit:
			// 5. The ledger moves the lease (billing switches here) and the buyer's record
			// follows the VM.
			full, err := DecodeLease(m.Lease)
			if err != nil {
				return err
			}
			moved := m.Prior
			if moved == vm.StatusStarted {
				moved = vm.StatusSuspended
			}
			b.n.Events().Publish(Migrated{VM: m.VM, From: m.From, Lease: full, Status: moved, Time: b.now()})
			bl, err := node.GetJSON[buyerLease](b.space, leaseKey(m.VM))
			if err != nil {
				return err
			}
			bl.Raw, bl.Addrs, bl.VM, bl.Note, bl.Updated = full.Encode(), m.ToAddrs, vm.State{Status: moved, Version: m.Arrived}, "", b.now()
			if err := b.put(bl); err != nil {
				return err
			}
			s := StepDone
			if m.Prior == vm.StatusStarted {
				s = StepResume
			}
			if err := next(s); err != nil {
				return err
			}
			b.log.Info("vm migrated", "vm", m.VM, "from", origin.id, "to", dest.id, "version", m.Arrived)
		case StepResume:
			if _, err := b.Control(ctx, m.VM, vm.ActionResume); err != nil {
				m.Error = fmt.Sprintf("it arrived suspended and did not resume: %v", err)
				next(StepDone)
				return fmt.Errorf("vm %s moved to %s but %s", m.VM, Short(dest.id), m.Error)
			}
			if err := next(StepDone); err != nil {
				return err
			}
		case StepRevert:
			// The destination let go (or never held it): the origin takes the VM back.
			arrived, err := b.revert(ctx, m, step)
			if err != nil {
				m.Waiting = fmt.Sprintf("not reverted yet (tried again every %v): %v", b.opts.Housekeeping, err)
				b.record(m)
				return fmt.Errorf("migration of vm %s is not reverted yet (the node tries again every %v): %w", m.VM, b.opts.Housekeeping, err)
			}
			if arrived {
				if err := next(StepFinish); err != nil {
					return err
				}
				continue
			}
			if err := next(StepReverted); err != nil {
				return err
			}
		case StepReverted:
			return fmt.Errorf("%w: migration of vm %s reverted (it is at %s as before): %s", ErrReverted, m.VM, Short(origin.id), m.Error)
		case StepDone:
			return nil
		default:
			return fmt.Errorf("migration of vm %s: unknown step %q", m.VM, m.Step)
		}
	}
}

// proposalBody is the signed body of an encoded lease proposal.
func proposalBody(raw []byte) []byte {
	sl, err := DecodeLease(raw)
	if err != nil {
		return nil
	}
	return sl.Body
}

// copyVia is the copy: VMMP REQ to the destination, its heartbeats shown as progress, its RESP.
func (b *Buyer) copyVia(ctx context.Context, m *Migration, progress func(Migration)) (vmmp.Message, error) {
	// The origin's addresses of its live offer: it may listen elsewhere since the VM was
	// stored there (a restart on another port).
	addrs := m.OriginAddrs
	if so, ok := b.book.offers.Get(m.Origin, m.OriginMachine, b.now()); ok && len(so.Addrs) > 0 {
		addrs = so.Addrs
	}
	oaddr, err := firstAddr(addrs)
	if err != nil {
		return vmmp.Message{}, err
	}
	aaddrs := b.n.Host().Addrs()
	if len(aaddrs) == 0 {
		return vmmp.Message{}, errors.New("this node listens nowhere")
	}
	if err := b.connect(ctx, peerAddr{m.To, m.ToAddrs}); err != nil {
		return vmmp.Message{}, err
	}
	req := vmmp.Message{Kind: vmmp.Req, VM: m.VM, Version: m.Version, Origin: vmmp.Addr{Peer: m.Origin, Addr: oaddr},
		Agent: vmmp.Addr{Peer: b.n.ID(), Addr: aaddrs[0]}, Method: m.Method}
	return vmmp.Request(ctx, b.n.Host(), m.To, req, MigrateWindow, func(hb vmmp.Message) {
		if hb.Step == "" {
			return
		}
		stepped := hb.Step != m.DestStep
		m.DestStep, m.Done, m.Total, m.Wire, m.Updated = hb.Step, int64(hb.Done), int64(hb.Total), int64(hb.Wire), b.now()
		b.mu.Lock()
		b.moving[m.VM] = *m
		b.mu.Unlock()
		if stepped {
			b.n.Events().Publish(MigrationStep{Migration: *m, Time: m.Updated})
		}
		if progress != nil {
			progress(*m)
		}
	})
}

// decide settles a copy whose answer is not known: it asks the destination to release the VM,
// which it does only if it did not commit. Committed, the migration goes on; released, it
// reverts. A destination that cannot be reached leaves it undecided: the VM stays migrating at
// the origin, which cannot be told to take it back while it may be at the destination.
func (b *Buyer) decide(ctx context.Context, m *Migration, next func(string) error) error {
	arrived, version, err := b.cancelAt(ctx, m, false)
	if err != nil {
		m.Waiting = fmt.Sprintf("undecided: the destination %s cannot be asked whether it holds the vm (asked again every %v): %v", Short(m.To), b.opts.Housekeeping, err)
		b.record(m)
		return fmt.Errorf("migration of vm %s is undecided (the node asks the destination again every %v): %w", m.VM, b.opts.Housekeeping, err)
	}
	if arrived {
		m.Arrived = version
		return next(StepFinish)
	}
	if m.Error == "" {
		m.Error = "the node stopped during the copy"
	}
	return next(StepRevert)
}

// cancelAt asks the destination to release the VM of m: it does unless the VM arrived there
// under m's lease (committed), which it then answers with the VM's version there.
//
// With void (the origin refuted the destination's SUCCESS), the destination is to delete the
// VM even if it says it arrived.
func (b *Buyer) cancelAt(ctx context.Context, m *Migration, void bool) (arrived bool, version uint64, err error) {
	var r migrateResponse
	err = b.request(ctx, peerAddr{m.To, m.ToAddrs}, MigrateID, b.opts.ControlTimeout,
		migrateRequest{VM: m.VM, Op: migrateCancel, Lease: leaseIDOf(m.Proposal), Void: void}, &r)
	if err == nil && r.Error != nil {
		err = r.Error.err()
	}
	return r.Arrived, r.State.Version, err
}

// leaseIDOf is the ID of an encoded lease.
func leaseIDOf(raw []byte) LeaseID {
	sl, err := DecodeLease(raw)
	if err != nil {
		return LeaseID{}
	}
	return sl.ID
}

// revert releases the destination's hold and returns the VM to its prior status at the
// origin. It reports a destination that turns out to hold the VM (committed) as arrived.
func (b *Buyer) revert(ctx context.Context, m *Migration, step func(context.Context, migrateRequest) (migrateResponse, error)) (arrived bool, err error) {
	arrived, version, err := b.cancelAt(ctx, m, m.Refuted)
	switch {
	case arrived && m.Refuted:
		return false, fmt.Errorf("the destination %s kept a vm it never fetched", Short(m.To))
	case arrived:
		m.Arrived = version
		return true, nil
	case err != nil && m.Version != 0:
		// The origin let the destination read the files: it may have the VM, and only it
		// can say. Until it does, the VM stays migrating at the origin.
		return false, fmt.Errorf("the destination %s cannot be asked whether it holds the vm: %w", Short(m.To), err)
	case err != nil:
		// No copy was asked for; the destination's hold lapses after IncomingTTL.
		b.log.Warn("release the destination's capacity", "vm", m.VM, "err", err)
	}
	resp, err := step(ctx, migrateRequest{VM: m.VM, Op: migrateFinish, Moved: false})
	if err != nil {
		return false, fmt.Errorf("revert at the origin: %w", err)
	}
	b.setVM(m.VM, resp.State, "")
	if m.Prior == vm.StatusStarted && resp.State.Status == vm.StatusSuspended {
		if _, err := b.Control(ctx, m.VM, vm.ActionResume); err != nil {
			return false, fmt.Errorf("resume at the origin: %w", err)
		}
	}
	return false, nil
}

// setVM records the status of VM id the origin answered, and a note.
func (b *Buyer) setVM(id vm.ID, st vm.State, note string) {
	bl, err := node.GetJSON[buyerLease](b.space, leaseKey(id))
	if err != nil || st.Status == 0 {
		return
	}
	bl.VM, bl.Note, bl.Updated = st, note, b.now()
	b.put(bl)
}

// resumeMigrations finishes or reverts the migrations recorded and not driven now: those of
// a node that stopped in the middle, and those undecided earlier.
func (b *Buyer) resumeMigrations(ctx context.Context) {
	var todo []Migration
	err := b.migrations.List(func(_ string, val []byte) error {
		var m Migration
		if DecodeStrict(val, &m) == nil {
			todo = append(todo, m)
		}
		return nil
	})
	if err != nil {
		b.log.Warn("list migrations", "err", err)
	}
	for _, m := range todo {
		if !b.claim(m) {
			continue
		}
		// Listed before it was claimed: a Migrate may have taken it further meanwhile.
		if cur, err := node.GetJSON[Migration](b.migrations, m.VM.String()); err != nil || !cur.Updated.Equal(m.Updated) || cur.Step != m.Step {
			b.release(m.VM)
			continue
		}
		b.log.Info("taking up a migration", "vm", m.VM, "step", m.Step)
		if err := b.drive(ctx, &m, nil, true); err != nil {
			b.log.Warn("migration", "vm", m.VM, "err", err)
		}
		b.release(m.VM)
	}
}

// Destinations is what a buyer may move VM id to: the machines that can host it now, with
// their migration methods and what the profile would cost there (the new lease's prices),
// cheapest first, and what it costs where it is.
type Destinations struct {
	VM      vm.ID   `json:"vm"`
	Current Match   `json:"current"`
	Usage   Usage   `json:"usage"`
	Matches []Match `json:"matches"`
}

// Destinations searches the offer book for the machines VM id can move to, costed for u
// (DefaultUsage if zero).
func (b *Buyer) Destinations(id vm.ID, u Usage) (Destinations, error) {
	bl, err := node.GetJSON[buyerLease](b.space, leaseKey(id))
	if errors.Is(err, node.ErrNotFound) {
		return Destinations{}, fmt.Errorf("%w: you have no vm %s (see `virtuoso vm ls`)", ErrNotFound, id)
	}
	if err != nil {
		return Destinations{}, err
	}
	sl, err := DecodeLease(bl.Raw)
	if err != nil {
		return Destinations{}, err
	}
	if u == (Usage{}) {
		u = DefaultUsage()
	}
	cost, err := sl.Quote.Cost(u)
	if err != nil {
		return Destinations{}, err
	}
	d := Destinations{VM: id, Usage: u, Current: Match{Provider: sl.Provider, Machine: sl.Machine, Terms: sl.Terms, Quote: sl.Quote, Cost: cost}}
	matches, err := b.book.Search(SearchQuery{SearchRequest: SearchRequest{Config: sl.Config, Usage: u}})
	if err != nil {
		return Destinations{}, err
	}
	d.Matches = slices.DeleteFunc(matches, func(m Match) bool { return m.Provider == sl.Provider })
	if so, ok := b.book.offers.Get(sl.Provider, sl.Machine, b.now()); ok {
		d.Current.Name, d.Current.Methods = so.Name, so.Methods
	}
	return d, nil
}
