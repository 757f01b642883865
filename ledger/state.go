package ledger

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/zeebo/blake3"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// State is the settlement state machine: the coordinators' replicated ledger of accounts,
// leases and charges, kept in a badger Space. It reads no clock: every charge follows from
// the entries it applies, in order, so every replica that applies the same log holds the same
// balances and the same state hash.
//
// Billing (report §5.1, §6.1.9): a lease's storage is charged at the start of every storage
// period from the moment its lease is entered, whatever the VM's status, until the VM is
// deleted or migrated away; running time is charged at the start of every running period while
// the VM runs, from the status change that started it. A stopped slice is never charged again
// and never rounded up. The lease's frozen quote applies, never the machine's later prices.
// The provider is credited exactly what the buyer is debited; only deposits create money.
//
// Low balance: a running period the buyer cannot pay is not charged; the lease is marked
// unpaid and its provider is told to stop the VM (never to delete it); storage keeps being
// charged, and may take the balance below zero. After a top-up the VM may be started again.
//
// Apply is not safe for concurrent use; the readers are.
type State struct {
	sp *node.Space
	// accounts, while a tick's sweep charges a chunk of leases, holds the accounts it
	// changed, written once at the chunk's end.
	accounts map[peer.ID]*Account
}

// NewState returns the state kept in sp.
func NewState(sp *node.Space) *State { return &State{sp: sp} }

// Meta is the state's summary: what it applied and the hash chained over it.
type Meta struct {
	// Applied is the last raft log index applied; replays of earlier ones are skipped.
	Applied uint64 `json:"applied"`
	// Height is how many entries the state has taken (applied or void).
	Height uint64 `json:"height"`
	// Hash chains every entry taken, with its outcome: equal hashes, equal states.
	Hash Hash `json:"hash"`
	// Tick is the time of the latest tick: charges due up to it are made.
	Tick time.Time `json:"tick"`
	// Supply is all money deposited; the balances always sum to it.
	Supply market.Money `json:"supply"`
}

// Account is one peer's money.
type Account struct {
	Peer      peer.ID      `json:"peer"`
	Balance   market.Money `json:"balance"`
	Deposited market.Money `json:"deposited"`
	Spent     market.Money `json:"spent"`  // debited for storage and running
	Earned    market.Money `json:"earned"` // credited as a provider
	Sent      market.Money `json:"sent"`   // transferred to others
	Received  market.Money `json:"received"`
}

// LeaseState is a lease as the ledger bills it.
type LeaseState struct {
	ID       market.LeaseID   `json:"id"`
	VM       vm.ID            `json:"vm"`
	Buyer    peer.ID          `json:"buyer"`
	Provider peer.ID          `json:"provider"`
	Machine  market.MachineID `json:"machine"`
	Quote    market.Quote     `json:"quote"`
	Created  time.Time        `json:"created"`
	Status   vm.Status        `json:"status"`
	Version  uint64           `json:"version"`
	// StorageDue is when the next storage period starts; zero once the lease ended.
	StorageDue time.Time `json:"storage_due,omitzero"`
	// RunningDue is when the next running period starts; zero while the VM does not run.
	RunningDue time.Time    `json:"running_due,omitzero"`
	Storage    market.Money `json:"storage_charged"`
	Running    market.Money `json:"running_charged"`
	// Unpaid: a running period could not be paid; the provider must stop the VM.
	Unpaid bool      `json:"unpaid,omitempty"`
	Ended  time.Time `json:"ended,omitzero"`
	// Next is the lease the VM moved to by a migration, if any.
	Next market.LeaseID `json:"next,omitzero"`
}

// Active reports a lease that has not ended.
func (l LeaseState) Active() bool { return l.Ended.IsZero() }

// head is an author's place in the ledger.
type head struct {
	Seq         uint64 `json:"seq"`
	Hash        Hash   `json:"hash"`
	Equivocated bool   `json:"equivocated,omitempty"`
}

// Proof is an equivocation: two different entries an author signed with one sequence number
// (or an entry whose previous hash is not the author's entry before it).
type Proof struct {
	Author peer.ID `json:"author"`
	Seq    uint64  `json:"seq"`
	A      []byte  `json:"a"`
	B      []byte  `json:"b"`
}

// Outcomes of an entry.
const (
	Applied   = "applied"   // taken, with its effect
	Duplicate = "duplicate" // taken before: nothing happened again
	Void      = "void"      // taken into its author's log, without effect (Message says why)
	Refused   = "refused"   // not taken: the author must not build on it
)

// Result is what became of one entry.
type Result struct {
	Author  peer.ID `json:"author,omitempty"`
	Seq     uint64  `json:"seq,omitempty"`
	Outcome string  `json:"outcome"`
	Message string  `json:"message,omitempty"`
}

// Keys of the state's space.
const (
	metaKey = "meta"
)

// Peer IDs in keys are hex of their bytes: base58 (their text form) costs more than the
// rest of applying an entry.
func pk(p peer.ID) string { return hex.EncodeToString([]byte(p)) }

func headKey(p peer.ID) string              { return "head/" + pk(p) }
func entryKey(p peer.ID, seq uint64) string { return fmt.Sprintf("entry/%s/%020d", pk(p), seq) }
func noteKey(p peer.ID, seq uint64) string  { return fmt.Sprintf("note/%s/%020d", pk(p), seq) }
func accountKey(p peer.ID) string           { return "acct/" + pk(p) }
func leaseKey(id market.LeaseID) string     { return "lease/" + id.String() }
func vmKey(id vm.ID) string                 { return "vm/" + id.String() }
func coordKey(p peer.ID) string             { return "coord/" + pk(p) }
func proofKey(p peer.ID) string             { return "proof/" + pk(p) }
func partyKey(p peer.ID, id market.LeaseID) string {
	return "party/" + pk(p) + "/" + id.String()
}
func lineKey(p peer.ID, height uint64) string { return fmt.Sprintf("line/%s/%020d", pk(p), height) }

// Due keys order charges by time: due/<unix nanoseconds>/<lease>/<s|r>.
func dueKey(t time.Time, id market.LeaseID, kind byte) string {
	return fmt.Sprintf("due/%020d/%s/%c", t.UnixNano(), id, kind)
}

const (
	dueStorage = 's'
	dueRunning = 'r'
)

// Line is a statement line that is no lease charge: a deposit or a transfer.
type Line struct {
	Height uint64       `json:"height"`
	Time   time.Time    `json:"time"`
	Type   Type         `json:"type"`
	Peer   peer.ID      `json:"peer"` // the other party (the coordinator for a deposit)
	Amount market.Money `json:"amount"`
	Memo   string       `json:"memo,omitempty"`
}

// Meta returns the state's summary.
func (s *State) Meta() (Meta, error) {
	var m Meta
	err := s.sp.View(func(tx *node.Txn) error {
		var err error
		m, err = getMeta(tx)
		return err
	})
	return m, err
}

func getMeta(tx *node.Txn) (Meta, error) {
	m, err := node.GetJSON[Meta](tx, metaKey)
	if errors.Is(err, node.ErrNotFound) {
		return Meta{}, nil
	}
	return m, err
}

// Account returns p's account (zero if it never had one).
func (s *State) Account(p peer.ID) (Account, error) {
	var a Account
	err := s.sp.View(func(tx *node.Txn) error {
		var err error
		a, err = account(tx, p)
		return err
	})
	return a, err
}

func account(tx *node.Txn, p peer.ID) (Account, error) {
	a, err := node.GetJSON[Account](tx, accountKey(p))
	if errors.Is(err, node.ErrNotFound) {
		return Account{Peer: p}, nil
	}
	return a, err
}

// Lease returns the ledger's state of a lease.
func (s *State) Lease(id market.LeaseID) (LeaseState, error) {
	var l LeaseState
	err := s.sp.View(func(tx *node.Txn) error {
		var err error
		l, err = getLease(tx, id)
		return err
	})
	return l, err
}

// Leases returns the leases p is the buyer or the provider of, active first.
func (s *State) Leases(p peer.ID) ([]LeaseState, error) {
	var out []LeaseState
	err := s.sp.View(func(tx *node.Txn) error {
		prefix := "party/" + pk(p) + "/"
		return tx.Scan(prefix, prefix+"~", false, func(k string, _ []byte) error {
			var id market.LeaseID
			if err := id.UnmarshalText([]byte(k[len(prefix):])); err != nil {
				return err
			}
			l, err := getLease(tx, id)
			if err != nil {
				return err
			}
			out = append(out, l)
			return nil
		})
	})
	sortLeases(out)
	return out, err
}

// Lines returns p's newest max deposits and transfers (all when max ≤ 0), oldest first.
func (s *State) Lines(p peer.ID, max int) ([]Line, error) {
	var out []Line
	err := s.sp.View(func(tx *node.Txn) error {
		prefix := "line/" + pk(p) + "/"
		return tx.Scan(prefix, prefix+"~", true, func(_ string, v []byte) error {
			var l Line
			if err := json.Unmarshal(v, &l); err != nil {
				return err
			}
			if out = append(out, l); len(out) == max {
				return node.ErrStop
			}
			return nil
		})
	})
	slices.Reverse(out)
	return out, err
}

// Head returns the sequence number and hash of p's last entry the state took, and whether p
// equivocated.
func (s *State) Head(p peer.ID) (seq uint64, hash Hash, equivocated bool, err error) {
	err = s.sp.View(func(tx *node.Txn) error {
		h, err := node.GetJSON[head](tx, headKey(p))
		if errors.Is(err, node.ErrNotFound) {
			return nil
		}
		seq, hash, equivocated = h.Seq, h.Hash, h.Equivocated
		return err
	})
	return
}

// Note returns what became of p's entry seq, if the state took it.
func (s *State) Note(p peer.ID, seq uint64) (Result, bool, error) {
	var r Result
	var ok bool
	err := s.sp.View(func(tx *node.Txn) error {
		h, err := node.GetJSON[head](tx, headKey(p))
		if errors.Is(err, node.ErrNotFound) || err == nil && h.Seq < seq {
			return nil
		}
		if err != nil {
			return err
		}
		ok = true
		r, err = node.GetJSON[Result](tx, noteKey(p, seq))
		if errors.Is(err, node.ErrNotFound) {
			r, err = Result{Author: p, Seq: seq, Outcome: Applied}, nil
		}
		return err
	})
	return r, ok, err
}

// Proofs returns every equivocation the state holds.
func (s *State) Proofs() ([]Proof, error) {
	var out []Proof
	err := s.sp.View(func(tx *node.Txn) error {
		return tx.Scan("proof/", "proof/~", false, func(_ string, v []byte) error {
			var p Proof
			if err := json.Unmarshal(v, &p); err != nil {
				return err
			}
			out = append(out, p)
			return nil
		})
	})
	return out, err
}

// Coordinators returns the peers that may deposit and tick.
func (s *State) Coordinators() ([]peer.ID, error) {
	var out []peer.ID
	err := s.sp.View(func(tx *node.Txn) error {
		return tx.Scan("coord/", "coord/~", false, func(k string, _ []byte) error {
			b, err := hex.DecodeString(k[len("coord/"):])
			if err != nil {
				return fmt.Errorf("ledger state %s: %w", k, err)
			}
			out = append(out, peer.ID(b))
			return nil
		})
	})
	return out, err
}

// verified is an entry decoded and checked on its own, or why not.
type verified struct {
	s   Signed
	err error
}

// verifyAll decodes raws in parallel: signatures are the cost of applying.
func verifyAll(raws [][]byte) []verified {
	out := make([]verified, len(raws))
	workers := min(runtime.GOMAXPROCS(0), (len(raws)+63)/64)
	if workers <= 1 {
		for i, raw := range raws {
			out[i].s, out[i].err = Decode(raw)
		}
		return out
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(raws); i += workers {
				out[i].s, out[i].err = Decode(raws[i])
			}
		})
	}
	wg.Wait()
	return out
}

// Transactions stay well inside badger's batch limit (15% of the node store's 8 MiB
// memtable): a tick charges at most sweepChunk leases in one, and a run of entries takes at
// most runEntries entries or runBytes of them.
const (
	sweepChunk = 400
	runEntries = 256
	runBytes   = 256 << 10
)

// Apply takes the entries of raft log index (their raw bytes, in order) and returns what
// became of each. An index at or below the last applied is a replay and changes nothing.
// Entries are checked on their own (size, fields, signature), then against the ledger: their
// author's sequence and previous hash, and what their type may do.
func (s *State) Apply(index uint64, raws [][]byte) ([]Result, error) {
	m, err := s.Meta()
	if err != nil {
		return nil, err
	}
	if index != 0 && index <= m.Applied {
		return nil, nil
	}
	vs := verifyAll(raws)
	results := make([]Result, len(raws))
	// Entries apply in runs sharing one transaction; a tick's sweep takes transactions of
	// its own (bounded by sweepChunk) and the run after it starts afresh. A crash between
	// them is safe: the index is recorded with the last, a replay applies the batch again,
	// entries taken are duplicates and leases charged are no longer due.
	i := 0
	for i < len(vs) || i == 0 {
		err := s.sp.Update(func(tx *node.Txn) error {
			m, err := getMeta(tx)
			if err != nil {
				return err
			}
			size := 0
			for start := i; i < len(vs); i++ {
				if vs[i].err == nil && vs[i].s.Type == TypeTick || i-start == runEntries || size > runBytes {
					break
				}
				size += len(raws[i])
				if results[i], err = s.take(tx, &m, vs[i]); err != nil {
					return err
				}
			}
			if i == len(vs) {
				m.Applied = max(m.Applied, index)
			}
			return node.PutJSON(tx, metaKey, m)
		})
		if err != nil {
			return nil, err
		}
		if i == len(vs) {
			break
		}
		if vs[i].err != nil || vs[i].s.Type != TypeTick {
			continue // the run was full: the next takes a transaction of its own
		}
		r, err := s.tick(vs[i].s, index, i == len(vs)-1)
		if err != nil {
			return nil, err
		}
		results[i] = r
		if i++; i == len(vs) {
			break
		}
	}
	return results, nil
}

// take checks v against its author's log and applies its effect.
func (s *State) take(tx *node.Txn, m *Meta, v verified) (Result, error) {
	return s.takeWith(tx, m, v, func() error { return s.effect(tx, m, v.s) })
}

// takeWith takes v with the given effect: an entry that continues its author's log is
// recorded, applied when effect succeeds and void when it fails with a rule error (effects
// check their rules before they write); any other error is the store's and fatal.
func (s *State) takeWith(tx *node.Txn, m *Meta, v verified, effect func() error) (Result, error) {
	if v.err != nil {
		return Result{Outcome: Refused, Message: v.err.Error()}, nil
	}
	e := v.s
	r := Result{Author: e.Author, Seq: e.Seq}
	h, err := node.GetJSON[head](tx, headKey(e.Author))
	if err != nil && !errors.Is(err, node.ErrNotFound) {
		return r, err
	}
	switch {
	case h.Equivocated:
		return refuse(r, fmt.Errorf("%w: %s's entries are refused", ErrEquivocated, market.Short(e.Author))), nil
	case e.Seq <= h.Seq:
		old, err := tx.Get(entryKey(e.Author, e.Seq))
		if err != nil {
			return r, err
		}
		if HashOf(old) == e.Hash {
			r.Outcome = Duplicate
			return r, nil
		}
		return s.equivocate(tx, m, r, e, old)
	case e.Seq > h.Seq+1:
		return refuse(r, fmt.Errorf("%w: entry %d of %s, the ledger holds up to %d", ErrOrder, e.Seq, market.Short(e.Author), h.Seq)), nil
	case e.Prev != h.Hash:
		old, err := tx.Get(entryKey(e.Author, h.Seq))
		if err != nil {
			return r, err
		}
		return s.equivocate(tx, m, r, e, old)
	}
	r.Outcome = Applied
	if err := effect(); err != nil {
		if _, ok := errors.AsType[ruleError](err); !ok {
			return r, err
		}
		r.Outcome, r.Message = Void, err.Error()
		if err := node.PutJSON(tx, noteKey(e.Author, e.Seq), r); err != nil {
			return r, err
		}
	}
	if err := tx.Put(entryKey(e.Author, e.Seq), e.Raw); err != nil {
		return r, err
	}
	if err := node.PutJSON(tx, headKey(e.Author), head{Seq: e.Seq, Hash: e.Hash}); err != nil {
		return r, err
	}
	chain(m, e.Hash, r.Outcome)
	return r, nil
}

// ruleError is an entry that breaks a rule of the ledger: it is void, not fatal.
type ruleError struct{ error }

func rulef(format string, a ...any) error { return ruleError{fmt.Errorf(format, a...)} }

func refuse(r Result, err error) Result {
	r.Outcome, r.Message = Refused, err.Error()
	return r
}

// chain advances the state hash over an entry taken.
func chain(m *Meta, h Hash, outcome string) {
	d := blake3.New()
	d.Write(m.Hash[:])
	d.Write(h[:])
	d.Write([]byte(outcome))
	copy(m.Hash[:], d.Sum(nil))
	m.Height++
}

// equivocate keeps the proof that e's author signed e and old for one place in its log and
// refuses its later entries.
func (s *State) equivocate(tx *node.Txn, m *Meta, r Result, e Signed, old []byte) (Result, error) {
	p := Proof{Author: e.Author, Seq: e.Seq, A: old, B: e.Raw}
	if err := node.PutJSON(tx, proofKey(e.Author), p); err != nil {
		return r, err
	}
	h, err := node.GetJSON[head](tx, headKey(e.Author))
	if err != nil {
		return r, err
	}
	h.Equivocated = true
	if err := node.PutJSON(tx, headKey(e.Author), h); err != nil {
		return r, err
	}
	chain(m, e.Hash, "equivocation")
	return refuse(r, fmt.Errorf("%w: two entries %d of %s", ErrEquivocated, e.Seq, market.Short(e.Author))), nil
}

// effect applies an entry's meaning; an error leaves the entry void, with nothing changed.
// Each case checks everything before it writes.
func (s *State) effect(tx *node.Txn, m *Meta, e Signed) error {
	b, err := e.Decoded() // the Signed's: decoded once
	if err != nil {
		return ruleError{err}
	}
	switch b := b.(type) {
	case *TickBody:
		return nil // a tick's charges are its sweep's
	case *LeaseBody:
		l, _ := b.Decode()
		return s.openLease(tx, l.Lease, e.Time)
	case *StatusBody:
		return s.status(tx, m, e, b)
	case *MachineBody:
		return nil // recorded in the provider's log; leases carry their own terms
	case *MigrationBody:
		return s.migrate(tx, e, b)
	case *DepositBody:
		if err := s.coordinator(tx, e.Author); err != nil {
			return err
		}
		supply, err := addMoney(m.Supply, b.Amount)
		if err != nil {
			return ruleError{err}
		}
		a, err := account(tx, b.To)
		if err != nil {
			return err
		}
		a.Balance += b.Amount
		a.Deposited += b.Amount
		m.Supply = supply
		if err := node.PutJSON(tx, lineKey(b.To, m.Height), Line{Height: m.Height, Time: e.Time, Type: TypeDeposit, Peer: e.Author, Amount: b.Amount, Memo: b.Memo}); err != nil {
			return err
		}
		return node.PutJSON(tx, accountKey(b.To), a)
	case *TransferBody:
		from, err := account(tx, e.Author)
		if err != nil {
			return err
		}
		if from.Balance < b.Amount {
			return rulef("transfer of %s: the balance is %s", b.Amount, from.Balance)
		}
		to, err := account(tx, b.To)
		if err != nil {
			return err
		}
		from.Balance -= b.Amount
		from.Sent += b.Amount
		to.Balance += b.Amount
		to.Received += b.Amount
		for _, l := range []struct {
			p    peer.ID
			line Line
		}{
			{e.Author, Line{Height: m.Height, Time: e.Time, Type: TypeTransfer, Peer: b.To, Amount: -b.Amount, Memo: b.Memo}},
			{b.To, Line{Height: m.Height, Time: e.Time, Type: TypeTransfer, Peer: e.Author, Amount: b.Amount, Memo: b.Memo}},
		} {
			if err := node.PutJSON(tx, lineKey(l.p, m.Height), l.line); err != nil {
				return err
			}
		}
		if err := node.PutJSON(tx, accountKey(e.Author), from); err != nil {
			return err
		}
		return node.PutJSON(tx, accountKey(b.To), to)
	case *CoordinatorBody:
		n := 0
		if err := tx.Scan("coord/", "coord/~", false, func(string, []byte) error { n++; return nil }); err != nil {
			return err
		}
		if n > 0 {
			if err := s.coordinator(tx, e.Author); err != nil {
				return err
			}
		} else if b.Remove || b.Peer != e.Author {
			return rulef("the first coordinator entry of a ledger adds its author")
		}
		if b.Remove {
			if n == 1 {
				return rulef("the last coordinator cannot be removed")
			}
			return tx.Delete(coordKey(b.Peer))
		}
		return tx.Put(coordKey(b.Peer), nil)
	}
	return rulef("entry type %s has no effect here", e.Type)
}

func (s *State) coordinator(tx *node.Txn, p peer.ID) error {
	if _, err := tx.Get(coordKey(p)); err != nil {
		if errors.Is(err, node.ErrNotFound) {
			return rulef("%s is not a coordinator", market.Short(p))
		}
		return err
	}
	return nil
}

// openLease starts billing a countersigned lease at t: its first storage period is charged
// at once. A lease entered before (by its other party) is a no-op.
func (s *State) openLease(tx *node.Txn, l market.Lease, t time.Time) error {
	if _, err := tx.Get(leaseKey(l.ID)); err == nil {
		return nil
	} else if !errors.Is(err, node.ErrNotFound) {
		return err
	}
	if id, err := tx.Get(vmKey(l.VM)); err == nil {
		return rulef("vm %s is already under lease %s", l.VM, id)
	}
	start := l.Created
	if t.Before(start) {
		start = t
	}
	ls := LeaseState{ID: l.ID, VM: l.VM, Buyer: l.Buyer, Provider: l.Provider, Machine: l.Machine,
		Quote: l.Quote, Created: l.Created, Status: vm.StatusStored, Version: 0}
	ls.StorageDue = start
	if err := s.catchUp(tx, &ls, t); err != nil {
		return err
	}
	for _, p := range []peer.ID{l.Buyer, l.Provider} {
		if err := tx.Put(partyKey(p, l.ID), nil); err != nil {
			return err
		}
	}
	if err := tx.Put(vmKey(l.VM), []byte(l.ID.String())); err != nil {
		return err
	}
	return s.putLease(tx, ls, LeaseState{})
}

// status applies a provider's status change of a VM. A start is billed from its entry's time,
// but never from earlier than the clock skew before the last tick: a provider cannot back-date
// a start into periods it would be paid for.
func (s *State) status(tx *node.Txn, m *Meta, e Signed, b *StatusBody) error {
	ls, err := getLease(tx, b.Lease)
	if errors.Is(err, node.ErrNotFound) {
		return rulef("lease %s is not in the ledger", b.Lease)
	}
	if err != nil {
		return err
	}
	switch {
	case ls.Provider != e.Author:
		return rulef("status of vm %s entered by %s, not its provider", b.VM, market.Short(e.Author))
	case ls.VM != b.VM:
		return rulef("lease %s is of vm %s, not %s", ls.ID, ls.VM, b.VM)
	case !ls.Active():
		return rulef("lease %s ended", ls.ID)
	case b.Version <= ls.Version:
		return rulef("version %d of vm %s: the ledger holds version %d", b.Version, b.VM, ls.Version)
	case e.Time.Before(ls.Created.Add(-market.MaxClockSkew)):
		return rulef("status dated before its lease")
	}
	old := ls
	if err := s.catchUp(tx, &ls, e.Time); err != nil {
		return err
	}
	ls.Status, ls.Version = b.Status, b.Version
	switch {
	case b.Status == vm.StatusStarted && ls.RunningDue.IsZero():
		ls.RunningDue = e.Time
		if floor := m.Tick.Add(-market.MaxClockSkew); ls.RunningDue.Before(floor) {
			ls.RunningDue = floor
		}
		if err := s.catchUp(tx, &ls, e.Time); err != nil {
			return err
		}
	case b.Status != vm.StatusStarted:
		ls.RunningDue, ls.Unpaid = time.Time{}, false
	}
	if b.Status == vm.StatusDeleted {
		ls.StorageDue, ls.Ended = time.Time{}, e.Time
		if err := tx.Delete(vmKey(ls.VM)); err != nil {
			return err
		}
	}
	return s.putLease(tx, ls, old)
}

// migrate moves a VM from its lease to the new one at the entry's time: the old lease is
// charged up to then and ends, the new one starts (its first storage period charged by the
// destination at once, and a running period if the VM runs).
func (s *State) migrate(tx *node.Txn, e Signed, b *MigrationBody) error {
	nl, err := b.NewLease()
	if err != nil {
		return ruleError{err}
	}
	ls, err := getLease(tx, b.From)
	if errors.Is(err, node.ErrNotFound) {
		return rulef("lease %s is not in the ledger", b.From)
	}
	if err != nil {
		return err
	}
	switch {
	case !ls.Active():
		return rulef("lease %s ended", ls.ID)
	case ls.VM != b.VM || nl.Buyer != ls.Buyer:
		return rulef("lease %s is not of vm %s and its buyer", ls.ID, b.VM)
	}
	if _, err := tx.Get(leaseKey(nl.ID)); err == nil {
		return rulef("lease %s is already in the ledger", nl.ID)
	}
	old := ls
	if err := s.catchUp(tx, &ls, e.Time); err != nil {
		return err
	}
	ls.StorageDue, ls.RunningDue, ls.Ended, ls.Next = time.Time{}, time.Time{}, e.Time, nl.ID
	if err := s.putLease(tx, ls, old); err != nil {
		return err
	}
	if err := tx.Delete(vmKey(ls.VM)); err != nil {
		return err
	}
	if err := s.openLease(tx, nl.Lease, e.Time); err != nil {
		return err
	}
	moved, err := getLease(tx, nl.ID)
	if err != nil {
		return err
	}
	before := moved
	moved.Status, moved.Version = b.Status, ls.Version
	if b.Status == vm.StatusStarted {
		moved.RunningDue = e.Time
		if err := s.catchUp(tx, &moved, e.Time); err != nil {
			return err
		}
	}
	return s.putLease(tx, moved, before)
}

// catchUp charges every period of ls that started at or before t.
func (s *State) catchUp(tx *node.Txn, ls *LeaseState, t time.Time) error {
	if !ls.StorageDue.IsZero() && !ls.StorageDue.After(t) {
		n, next := periods(ls.StorageDue, ls.Quote.StorageSecs, t)
		if err := s.charge(tx, ls, dueStorage, ls.Quote.StoragePrice, n); err != nil {
			return err
		}
		ls.StorageDue = next
	}
	if !ls.RunningDue.IsZero() && !ls.RunningDue.After(t) {
		n, next := periods(ls.RunningDue, ls.Quote.RunningSecs, t)
		buyer, err := s.account(tx, ls.Buyer)
		if err != nil {
			return err
		}
		// Periods the balance covers are charged; from the first it does not, the VM is
		// to be stopped.
		if ls.Quote.RunningPrice > 0 {
			n = min(n, max(0, int64(buyer.Balance/ls.Quote.RunningPrice)))
		}
		full, _ := periods(ls.RunningDue, ls.Quote.RunningSecs, t)
		if err := s.charge(tx, ls, dueRunning, ls.Quote.RunningPrice, n); err != nil {
			return err
		}
		if n < full {
			ls.RunningDue, ls.Unpaid = time.Time{}, true
		} else {
			ls.RunningDue = next
		}
	}
	return nil
}

// periods counts the periods of secs seconds starting at due, due+secs, ... that start at or
// before t, and returns the start of the next one.
func periods(due time.Time, secs int64, t time.Time) (int64, time.Time) {
	period := time.Duration(secs) * time.Second
	n := int64(t.Sub(due)/period) + 1
	return n, due.Add(time.Duration(n) * period)
}

// charge moves n periods at price from the lease's buyer to its provider.
func (s *State) charge(tx *node.Txn, ls *LeaseState, kind byte, price market.Money, n int64) error {
	if n <= 0 || price == 0 {
		return nil
	}
	n = min(n, int64(math.MaxInt64/4/price)) // absurd prices and spans saturate, never wrap
	amount := price * market.Money(n)
	buyer, err := s.account(tx, ls.Buyer)
	if err != nil {
		return err
	}
	provider, err := s.account(tx, ls.Provider)
	if err != nil {
		return err
	}
	buyer.Balance -= amount
	buyer.Spent += amount
	provider.Balance += amount
	provider.Earned += amount
	if kind == dueStorage {
		ls.Storage += amount
	} else {
		ls.Running += amount
	}
	if err := s.putAccount(tx, buyer); err != nil {
		return err
	}
	return s.putAccount(tx, provider)
}

// account reads p's account, through the sweep's cache when there is one.
func (s *State) account(tx *node.Txn, p peer.ID) (Account, error) {
	if a, ok := s.accounts[p]; ok {
		return *a, nil
	}
	return account(tx, p)
}

// putAccount writes a, or keeps it in the sweep's cache until the chunk ends.
func (s *State) putAccount(tx *node.Txn, a Account) error {
	if s.accounts != nil {
		s.accounts[a.Peer] = &a
		return nil
	}
	return node.PutJSON(tx, accountKey(a.Peer), a)
}

// putLease stores ls and moves its due keys from where old had them.
func (s *State) putLease(tx *node.Txn, ls, old LeaseState) error {
	for _, d := range []struct {
		kind     byte
		was, now time.Time
	}{{dueStorage, old.StorageDue, ls.StorageDue}, {dueRunning, old.RunningDue, ls.RunningDue}} {
		if d.was.Equal(d.now) && !old.ID.IsZero() {
			continue
		}
		if !d.was.IsZero() {
			if err := tx.Delete(dueKey(d.was, ls.ID, d.kind)); err != nil {
				return err
			}
		}
		if !d.now.IsZero() {
			if err := tx.Put(dueKey(d.now, ls.ID, d.kind), nil); err != nil {
				return err
			}
		}
	}
	return tx.Put(leaseKey(ls.ID), encodeLeaseState(ls))
}

// tick applies a tick entry: a coordinator's time, monotonic, up to which every period due is
// charged, a bounded number of leases per transaction. last says the tick ends its batch.
func (s *State) tick(e Signed, index uint64, last bool) (Result, error) {
	var r Result
	var at time.Time
	err := s.sp.Update(func(tx *node.Txn) error {
		m, err := getMeta(tx)
		if err != nil {
			return err
		}
		// Order and authorship as any entry, and a tick's own rules, before any charge.
		h, err := node.GetJSON[head](tx, headKey(e.Author))
		if err != nil && !errors.Is(err, node.ErrNotFound) {
			return err
		}
		var rule error
		switch {
		case e.Seq != h.Seq+1 || e.Prev != h.Hash || h.Equivocated:
			// a duplicate, an equivocation or out of order: as any entry
		case s.coordinator(tx, e.Author) != nil:
			rule = s.coordinator(tx, e.Author)
		case !e.Time.After(m.Tick):
			rule = rulef("tick at %v is not after the last tick at %v", e.Time, m.Tick)
		default:
			at = e.Time
			return nil
		}
		if r, err = s.takeWith(tx, &m, verified{s: e}, func() error { return rule }); err != nil {
			return err
		}
		if last {
			m.Applied = max(m.Applied, index)
		}
		return node.PutJSON(tx, metaKey, m)
	})
	if err != nil || at.IsZero() {
		return r, err
	}
	// The scan resumes after the last key charged: charged leases move their due keys past
	// the tick, and the deleted keys left behind would be walked again by every chunk.
	cursor := "due/"
	for done := false; !done; {
		err := s.sp.Update(func(tx *node.Txn) error {
			var due []string
			if err := tx.Scan(cursor, fmt.Sprintf("due/%020d~", at.UnixNano()), false, func(k string, _ []byte) error {
				due = append(due, k)
				if len(due) == sweepChunk {
					return node.ErrStop
				}
				return nil
			}); err != nil {
				return err
			}
			done = len(due) < sweepChunk
			if len(due) > 0 {
				cursor = due[len(due)-1] + "\x00"
			}
			s.accounts = map[peer.ID]*Account{}
			defer func() { s.accounts = nil }()
			seen := map[string]bool{}
			for _, k := range due {
				id := k[len("due/00000000000000000000/"):][:32]
				if seen[id] {
					continue
				}
				seen[id] = true
				var lid market.LeaseID
				if err := lid.UnmarshalText([]byte(id)); err != nil {
					return err
				}
				ls, err := getLease(tx, lid)
				if err != nil {
					return err
				}
				old := ls
				if err := s.catchUp(tx, &ls, at); err != nil {
					return err
				}
				if err := s.putLease(tx, ls, old); err != nil {
					return err
				}
			}
			for _, a := range s.accounts {
				if err := node.PutJSON(tx, accountKey(a.Peer), *a); err != nil {
					return err
				}
			}
			s.accounts = nil
			if !done {
				return nil
			}
			m, err := getMeta(tx)
			if err != nil {
				return err
			}
			m.Tick = at
			if r, err = s.take(tx, &m, verified{s: e}); err != nil {
				return err
			}
			if last {
				m.Applied = max(m.Applied, index)
			}
			return node.PutJSON(tx, metaKey, m)
		})
		if err != nil {
			return r, err
		}
	}
	return r, nil
}

// addMoney adds two non-negative amounts, failing on overflow.
func addMoney(a, b market.Money) (market.Money, error) {
	if b > math.MaxInt64-a {
		return 0, fmt.Errorf("%w: %s + %s", market.ErrOverflow, a, b)
	}
	return a + b, nil
}

// sortLeases orders leases active first, then oldest first.
func sortLeases(ls []LeaseState) {
	slices.SortFunc(ls, func(a, b LeaseState) int {
		if a.Active() != b.Active() {
			if a.Active() {
				return -1
			}
			return 1
		}
		return a.Created.Compare(b.Created)
	})
}
