package ledger

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// actor is a node that writes entries: its key and the last entry it signed.
type actor struct {
	t    testing.TB
	key  crypto.PrivKey
	id   peer.ID
	last *Signed
}

func newActor(t testing.TB) *actor {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := peer.IDFromPrivateKey(key)
	return &actor{t: t, key: key, id: id}
}

// sign makes the actor's next entry.
func (a *actor) sign(at time.Time, typ Type, b Body) []byte {
	a.t.Helper()
	e, err := NewEntry(a.id, a.last, at, typ, b)
	if err != nil {
		a.t.Fatal(err)
	}
	s, err := Sign(e, a.key)
	if err != nil {
		a.t.Fatal(err)
	}
	a.last = &s
	return s.Raw
}

// terms: a tiny VM's running period (10 s) costs 5000 micro-units, its storage period
// (60 s) 5000.
func terms() market.Terms {
	return market.Terms{SpeedUnit: 500, MemoryUnit: 256, StorageUnit: 1024,
		SpeedPrice: 2_000, MemoryPrice: 1_000, StoragePrice: 5_000, RunningSecs: 10, StorageSecs: 60}
}

const runPrice, storePrice market.Money = 5_000, 5_000

// lease is a countersigned lease of a tiny VM from buyer b on provider p, created at t.
func lease(tb testing.TB, b, p *actor, at time.Time, tm market.Terms) market.SignedLease {
	tb.Helper()
	l := market.Lease{ID: market.NewLeaseID(), VM: vm.NewID(), Buyer: b.id, Provider: p.id, Machine: market.MachineID{7},
		Config: market.StandardConfigs()[0], Terms: tm, Created: at}
	var err error
	if l.Quote, err = tm.Quote(l.Config.Resources()); err != nil {
		tb.Fatal(err)
	}
	prop, err := market.ProposeLease(l, b.key)
	if err != nil {
		tb.Fatal(err)
	}
	full, err := prop.Countersign(p.key)
	if err != nil {
		tb.Fatal(err)
	}
	return full
}

// ledgerUnderTest is a State in a temp badger with its raft index counter.
type ledgerUnderTest struct {
	t     testing.TB
	st    *State
	sp    *node.Space
	index uint64
}

func newLedger(t testing.TB) *ledgerUnderTest {
	s, err := node.OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	sp := s.Space("ledger/state/")
	return &ledgerUnderTest{t: t, st: NewState(sp), sp: sp}
}

// apply applies raws as the next raft log index and checks money is conserved.
func (l *ledgerUnderTest) apply(raws ...[]byte) []Result {
	l.t.Helper()
	l.index++
	rs, err := l.st.Apply(l.index, raws)
	if err != nil {
		l.t.Fatal(err)
	}
	l.conserved()
	return rs
}

// must applies one entry and fails unless its outcome is want.
func (l *ledgerUnderTest) must(want string, raw []byte) Result {
	l.t.Helper()
	r := l.apply(raw)[0]
	if r.Outcome != want {
		l.t.Fatalf("entry %d of %s: %s (%s), want %s", r.Seq, market.Short(r.Author), r.Outcome, r.Message, want)
	}
	return r
}

// conserved checks that the balances sum to the money deposited.
func (l *ledgerUnderTest) conserved() {
	l.t.Helper()
	m, err := l.st.Meta()
	if err != nil {
		l.t.Fatal(err)
	}
	var sum market.Money
	err = l.sp.View(func(tx *node.Txn) error {
		return tx.Scan("acct/", "acct/~", false, func(_ string, v []byte) error {
			var a Account
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			sum += a.Balance
			return nil
		})
	})
	if err != nil {
		l.t.Fatal(err)
	}
	if sum != m.Supply {
		l.t.Fatalf("balances sum to %s, deposits to %s: money was made or lost", sum, m.Supply)
	}
}

func (l *ledgerUnderTest) balance(a *actor) market.Money {
	l.t.Helper()
	acct, err := l.st.Account(a.id)
	if err != nil {
		l.t.Fatal(err)
	}
	return acct.Balance
}

func (l *ledgerUnderTest) leaseState(id market.LeaseID) LeaseState {
	l.t.Helper()
	ls, err := l.st.Lease(id)
	if err != nil {
		l.t.Fatal(err)
	}
	return ls
}

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func at(secs int) time.Time { return t0.Add(time.Duration(secs) * time.Second) }

// world is a ledger with a coordinator, a buyer with a deposit and a provider.
type world struct {
	*ledgerUnderTest
	coord, buyer, prov *actor
}

func newWorld(t *testing.T, deposit market.Money) *world {
	w := &world{ledgerUnderTest: newLedger(t), coord: newActor(t), buyer: newActor(t), prov: newActor(t)}
	w.must(Applied, w.coord.sign(at(-100), TypeCoordinator, &CoordinatorBody{Peer: w.coord.id}))
	if deposit > 0 {
		w.must(Applied, w.coord.sign(at(-100), TypeDeposit, &DepositBody{To: w.buyer.id, Amount: deposit}))
	}
	return w
}

func (w *world) tick(secs int) {
	w.t.Helper()
	w.must(Applied, w.coord.sign(at(secs), TypeTick, &TickBody{}))
}

func (w *world) status(l market.SignedLease, secs int, s vm.Status, version uint64) {
	w.t.Helper()
	w.must(Applied, w.prov.sign(at(secs), TypeStatus, &StatusBody{VM: l.VM, Lease: l.ID, Status: s, Version: version}))
}

// charged checks what the lease has cost so far and that the provider earned what the buyer
// spent.
func (w *world) charged(l market.SignedLease, storage, running market.Money) {
	w.t.Helper()
	ls := w.leaseState(l.ID)
	if ls.Storage != storage || ls.Running != running {
		w.t.Fatalf("lease charged storage %s, running %s; want %s, %s", ls.Storage, ls.Running, storage, running)
	}
	b, err := w.st.Account(w.buyer.id)
	if err != nil {
		w.t.Fatal(err)
	}
	p, err := w.st.Account(w.prov.id)
	if err != nil {
		w.t.Fatal(err)
	}
	if b.Spent != p.Earned || b.Spent != storage+running {
		w.t.Fatalf("buyer spent %s, provider earned %s, lease charges %s", b.Spent, p.Earned, storage+running)
	}
}

// TestBilling is the report's billing rules as a table of entries and what they cost.
func TestBilling(t *testing.T) {
	t.Run("storage at the start of every period, whatever the status", func(t *testing.T) {
		w := newWorld(t, 100*market.Unit)
		l := lease(t, w.buyer, w.prov, at(0), terms())
		w.must(Applied, w.buyer.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()}))
		w.charged(l, storePrice, 0) // the first period at once
		w.must(Applied, w.prov.sign(at(1), TypeLease, &LeaseBody{Lease: l.Encode()}))
		w.charged(l, storePrice, 0) // the other party's copy is a no-op
		w.tick(59)
		w.charged(l, storePrice, 0)
		w.tick(60)
		w.charged(l, 2*storePrice, 0)
		w.tick(185) // periods at 120 and 180: a late tick charges each period once
		w.charged(l, 4*storePrice, 0)
	})
	t.Run("running at the start of every period while it runs; stop and start again", func(t *testing.T) {
		w := newWorld(t, 100*market.Unit)
		l := lease(t, w.buyer, w.prov, at(0), terms())
		w.must(Applied, w.buyer.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()}))
		w.status(l, 5, vm.StatusStarted, 2)
		w.charged(l, storePrice, runPrice)
		w.tick(14)
		w.charged(l, storePrice, runPrice)
		w.tick(15)
		w.charged(l, storePrice, 2*runPrice)
		w.status(l, 27, vm.StatusStopped, 3) // the period that began at 25 is paid: never rounded up again
		w.charged(l, storePrice, 3*runPrice)
		w.tick(59)
		w.charged(l, storePrice, 3*runPrice) // stopped: no running charge
		w.status(l, 59, vm.StatusStarted, 4)
		w.charged(l, storePrice, 4*runPrice)
		w.tick(70) // storage at 60, running at 69
		w.charged(l, 2*storePrice, 5*runPrice)
	})
	t.Run("suspend accrues no running charge", func(t *testing.T) {
		w := newWorld(t, 100*market.Unit)
		l := lease(t, w.buyer, w.prov, at(0), terms())
		w.must(Applied, w.buyer.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()}))
		w.status(l, 0, vm.StatusStarted, 2)
		w.status(l, 3, vm.StatusSuspended, 3)
		w.tick(50)
		w.charged(l, storePrice, runPrice)
		w.status(l, 51, vm.StatusStarted, 4)
		w.tick(61)
		w.charged(l, 2*storePrice, 3*runPrice)
	})
	t.Run("a price edit after the lease does not change it", func(t *testing.T) {
		w := newWorld(t, 100*market.Unit)
		l := lease(t, w.buyer, w.prov, at(0), terms())
		w.must(Applied, w.buyer.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()}))
		dear := terms()
		dear.StoragePrice, dear.SpeedPrice = 50_000, 20_000
		w.must(Applied, w.prov.sign(at(1), TypeMachine, &MachineBody{Machine: l.Machine, Change: MachineEdited, Terms: &dear}))
		w.status(l, 2, vm.StatusStarted, 2)
		w.tick(61)
		w.charged(l, 2*storePrice, 6*runPrice) // running at 2, 12, ..., 52
		// A new lease on the edited machine pays the new prices.
		l2 := lease(t, w.buyer, w.prov, at(62), dear)
		w.must(Applied, w.prov.sign(at(62), TypeLease, &LeaseBody{Lease: l2.Encode()}))
		if got := w.leaseState(l2.ID).Storage; got != 50_000 {
			t.Fatalf("the new lease's first storage period cost %s, want 0.05", got)
		}
	})
	t.Run("low balance: warned, stopped, storage still charged, top up and start", func(t *testing.T) {
		w := newWorld(t, storePrice+2*runPrice)
		l := lease(t, w.buyer, w.prov, at(0), terms())
		w.must(Applied, w.buyer.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()}))
		w.status(l, 0, vm.StatusStarted, 2)
		v, err := w.st.View(w.buyer.id, 1)
		if err != nil {
			t.Fatal(err)
		}
		if !v.Low {
			t.Fatalf("a buyer who can pay one more running period is not warned: %+v", v)
		}
		w.tick(10)
		w.charged(l, storePrice, 2*runPrice)
		w.tick(20) // cannot pay the third period: not charged, the VM must stop
		w.charged(l, storePrice, 2*runPrice)
		ls := w.leaseState(l.ID)
		if !ls.Unpaid || !ls.RunningDue.IsZero() {
			t.Fatalf("an unpaid running period left the lease %+v", ls)
		}
		if v, _ := w.st.View(w.prov.id, 1); len(v.Stop) != 1 || v.Stop[0] != l.ID {
			t.Fatalf("the provider is not told to stop the unpaid lease: %+v", v.Stop)
		}
		w.status(l, 21, vm.StatusStopped, 3)
		w.tick(60) // storage is charged still, below zero
		w.charged(l, 2*storePrice, 2*runPrice)
		if b := w.balance(w.buyer); b != -storePrice {
			t.Fatalf("buyer balance %s, want -%s", b, storePrice)
		}
		w.must(Applied, w.coord.sign(at(61), TypeDeposit, &DepositBody{To: w.buyer.id, Amount: market.Unit}))
		w.status(l, 62, vm.StatusStarted, 4)
		w.charged(l, 2*storePrice, 3*runPrice)
		if w.leaseState(l.ID).Unpaid {
			t.Fatal("a lease started again after a top-up is still unpaid")
		}
	})
	t.Run("a storage period across a change of coordinator", func(t *testing.T) {
		w := newWorld(t, 100*market.Unit)
		l := lease(t, w.buyer, w.prov, at(0), terms())
		w.must(Applied, w.buyer.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()}))
		next := newActor(t)
		w.must(Applied, w.coord.sign(at(1), TypeCoordinator, &CoordinatorBody{Peer: next.id}))
		w.tick(50)
		// The new coordinator ticks past the period's start, twice: it is charged once.
		w.must(Applied, next.sign(at(61), TypeTick, &TickBody{}))
		w.must(Applied, next.sign(at(62), TypeTick, &TickBody{}))
		w.charged(l, 2*storePrice, 0)
		w.must(Void, w.coord.sign(at(55), TypeTick, &TickBody{})) // not after the last tick
		w.charged(l, 2*storePrice, 0)
	})
	t.Run("a start back-dated before the last tick is billed from the tick", func(t *testing.T) {
		w := newWorld(t, 100*market.Unit)
		l := lease(t, w.buyer, w.prov, at(0), terms())
		w.must(Applied, w.buyer.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()}))
		w.tick(1000)
		// Dated 15 minutes before the tick: the running periods start 2 minutes before it.
		w.status(l, 100, vm.StatusStarted, 2)
		w.tick(1001)
		// Storage: periods at 0, 60, ..., 960 (17); running: 880, 890, ..., 1000 (13).
		w.charged(l, 17*storePrice, 13*runPrice)
	})
	t.Run("deletion ends the lease; migration hands billing over", func(t *testing.T) {
		w := newWorld(t, 100*market.Unit)
		l := lease(t, w.buyer, w.prov, at(0), terms())
		w.must(Applied, w.buyer.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()}))
		w.status(l, 0, vm.StatusStarted, 2)
		dest := newActor(t)
		nl := lease(t, w.buyer, dest, at(30), terms())
		nl.Lease.VM = l.VM
		nl = resign(t, nl.Lease, w.buyer, dest)
		w.must(Applied, w.buyer.sign(at(30), TypeMigration, &MigrationBody{VM: l.VM, From: l.ID, Lease: nl.Encode(), Status: vm.StatusStarted}))
		old, moved := w.leaseState(l.ID), w.leaseState(nl.ID)
		if old.Storage != storePrice || old.Running != 4*runPrice { // running at 0, 10, 20, 30
			t.Fatalf("the old lease was charged %s storage, %s running", old.Storage, old.Running)
		}
		if old.Active() || old.Next != nl.ID || moved.Storage != storePrice || moved.Running != runPrice {
			t.Fatalf("after the migration: old %+v, new %+v", old, moved)
		}
		w.tick(200)
		if w.leaseState(l.ID).Storage != storePrice {
			t.Fatal("the old lease is charged storage after the migration")
		}
		w.must(Void, w.prov.sign(at(201), TypeStatus, &StatusBody{VM: l.VM, Lease: l.ID, Status: vm.StatusStopped, Version: 9}))
	})
}

// unchecked signs an entry of a as Sign would, without checking it first: what a buggy or
// hostile node may send. It does not become a's last entry.
func unchecked(t *testing.T, a *actor, typ Type, b Body) []byte {
	t.Helper()
	e, err := NewEntry(a.id, a.last, at(1), typ, b)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(e)
	sig, _ := a.key.Sign(append([]byte(entryDomain), body...))
	return market.EncodeEnvelope(entryMagic, body, sig)
}

// resign signs l again by its buyer and provider (after a test edited it).
func resign(t *testing.T, l market.Lease, b, p *actor) market.SignedLease {
	t.Helper()
	prop, err := market.ProposeLease(l, b.key)
	if err != nil {
		t.Fatal(err)
	}
	full, err := prop.Countersign(p.key)
	if err != nil {
		t.Fatal(err)
	}
	return full
}

// TestBadEntries: forged, reordered, replayed, one-party, unauthorised and oversized entries
// are refused or void with a clear message, nothing is applied twice, and the sender's earlier
// entries stay.
func TestBadEntries(t *testing.T) {
	w := newWorld(t, 100*market.Unit)
	stranger := newActor(t)
	l := lease(t, w.buyer, w.prov, at(0), terms())
	first := w.buyer.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()})
	w.must(Applied, first)
	before := w.balance(w.buyer)

	// The buyer's entries 2 and 3, held back; a copy of 2 with one bit flipped.
	forged := w.buyer.sign(at(1), TypeTransfer, &TransferBody{To: stranger.id, Amount: market.Unit})
	third := w.buyer.sign(at(2), TypeTransfer, &TransferBody{To: stranger.id, Amount: market.Unit})
	bad := append([]byte(nil), forged...)
	bad[len(bad)-10] ^= 1
	onlyBuyer, _ := market.ProposeLease(lease(t, w.buyer, w.prov, at(0), terms()).Lease, w.buyer.key)
	for _, tc := range []struct {
		name, outcome, says string
		raw                 []byte
	}{
		{"forged", Refused, "bad signature", bad},
		{"out of order", Refused, "out of order", third},
		{"replayed", Duplicate, "", first},
		{"lease signed by its buyer only", Refused, "signed by its buyer only", unchecked(t, w.buyer, TypeLease, &LeaseBody{Lease: onlyBuyer.Encode()})},
		{"status from a node not the provider", Void, "not its provider", stranger.sign(at(2), TypeStatus, &StatusBody{VM: l.VM, Lease: l.ID, Status: vm.StatusStarted, Version: 5})},
		{"deposit from a non-coordinator", Void, "not a coordinator", stranger.sign(at(3), TypeDeposit, &DepositBody{To: stranger.id, Amount: market.Unit})},
		{"tick from a non-coordinator", Void, "not a coordinator", stranger.sign(at(4), TypeTick, &TickBody{})},
		{"transfer beyond the balance", Void, "the balance is", stranger.sign(at(5), TypeTransfer, &TransferBody{To: w.buyer.id, Amount: market.Unit})},
		{"not an entry", Refused, "malformed", []byte("VE\x01hello")},
		{"oversized", Refused, "cap", append([]byte("VE\x01"), make([]byte, MaxEntryBytes)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := w.apply(tc.raw)[0]
			if r.Outcome != tc.outcome || !strings.Contains(r.Message, tc.says) {
				t.Fatalf("%s (%q), want %s saying %q", r.Outcome, r.Message, tc.outcome, tc.says)
			}
		})
	}
	if b := w.balance(w.buyer); b != before {
		t.Fatalf("the buyer's balance moved from %s to %s", before, b)
	}
	if ls := w.leaseState(l.ID); ls.Storage != storePrice {
		t.Fatalf("the lease was charged %s after its entry was replayed", ls.Storage)
	}
	// The forged entry's honest original is still the buyer's entry 2.
	w.must(Applied, forged)
	w.must(Applied, third)
	if b := w.balance(stranger); b != 2*market.Unit {
		t.Fatalf("stranger received %s, want 2", b)
	}
	// A replay of a whole raft index changes nothing.
	if rs, err := w.st.Apply(w.index, [][]byte{first}); err != nil || rs != nil {
		t.Fatalf("replayed index: %v, %v", rs, err)
	}
}

// TestEquivocation: two different entries with one (author, sequence) are kept as proof and
// the author's later entries are refused.
func TestEquivocation(t *testing.T) {
	w := newWorld(t, 0)
	x := newActor(t)
	w.must(Applied, x.sign(at(0), TypeMachine, &MachineBody{Machine: market.MachineID{1}, Change: MachineAdded}))
	fork := *x
	a := x.sign(at(1), TypeMachine, &MachineBody{Machine: market.MachineID{2}, Change: MachineAdded})
	b := fork.sign(at(1), TypeMachine, &MachineBody{Machine: market.MachineID{3}, Change: MachineAdded})
	w.must(Applied, a)
	r := w.must(Refused, b)
	if !strings.Contains(r.Message, "two entries 2") {
		t.Fatalf("equivocation refused saying %q", r.Message)
	}
	proofs, err := w.st.Proofs()
	if err != nil || len(proofs) != 1 || proofs[0].Author != x.id || proofs[0].Seq != 2 {
		t.Fatalf("proofs %+v, %v", proofs, err)
	}
	for _, raw := range [][]byte{proofs[0].A, proofs[0].B} {
		if s, err := Decode(raw); err != nil || s.Author != x.id || s.Seq != 2 {
			t.Fatalf("a proof entry does not verify as the author's entry 2: %v", err)
		}
	}
	r = w.must(Refused, x.sign(at(2), TypeMachine, &MachineBody{Machine: market.MachineID{4}, Change: MachineAdded}))
	if !strings.Contains(r.Message, "equivocated") {
		t.Fatalf("a later entry of the equivocator: %q", r.Message)
	}
	if _, _, eq, _ := w.st.Head(x.id); !eq {
		t.Fatal("the author's head does not say it equivocated")
	}
}

// TestMoneyIsConserved applies random sequences of entries, valid and not, and checks after
// each that the balances sum to the deposits, and that two ledgers fed the same log in other
// batches agree on the state hash.
func TestMoneyIsConserved(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rng := mrand.New(mrand.NewPCG(seed, 42))
			a, b := newLedger(t), newLedger(t)
			coord := newActor(t)
			peers := []*actor{newActor(t), newActor(t), newActor(t), newActor(t)}
			type running struct {
				l       market.SignedLease
				version uint64
				prov    *actor
			}
			var leases []*running
			now := 0
			var log [][]byte
			log = append(log, coord.sign(at(now), TypeCoordinator, &CoordinatorBody{Peer: coord.id}))
			for range 200 {
				now += rng.IntN(15)
				p := peers[rng.IntN(len(peers))]
				q := peers[rng.IntN(len(peers))]
				switch op := rng.IntN(7); {
				case op == 0:
					log = append(log, coord.sign(at(now), TypeDeposit, &DepositBody{To: p.id, Amount: market.Money(rng.IntN(40_000) + 1)}))
				case op == 1 && p != q:
					l := lease(t, p, q, at(now), terms())
					leases = append(leases, &running{l: l, version: 1, prov: q})
					log = append(log, p.sign(at(now), TypeLease, &LeaseBody{Lease: l.Encode()}))
				case op == 2 && len(leases) > 0:
					r := leases[rng.IntN(len(leases))]
					r.version++
					s := []vm.Status{vm.StatusStarted, vm.StatusStopped, vm.StatusSuspended, vm.StatusDeleted}[rng.IntN(4)]
					log = append(log, r.prov.sign(at(now), TypeStatus, &StatusBody{VM: r.l.VM, Lease: r.l.ID, Status: s, Version: r.version}))
				case op == 3 && p != q:
					log = append(log, p.sign(at(now), TypeTransfer, &TransferBody{To: q.id, Amount: market.Money(rng.IntN(20_000) + 1)}))
				case op == 4:
					log = append(log, []byte("garbage"))
				default:
					log = append(log, coord.sign(at(now), TypeTick, &TickBody{}))
				}
			}
			// Applied in random batches: a batch is one raft log index.
			for _, l := range []*ledgerUnderTest{a, b} {
				for i := 0; i < len(log); {
					n := min(len(log)-i, 1+rng.IntN(8))
					l.apply(log[i : i+n]...)
					i += n
				}
			}
			ma, _ := a.st.Meta()
			mb, _ := b.st.Meta()
			if ma.Hash != mb.Hash || ma.Height != mb.Height || ma.Supply != mb.Supply {
				t.Fatalf("two ledgers of one log disagree: %+v and %+v", ma, mb)
			}
			if ma.Supply == 0 {
				t.Fatal("no deposit was applied: the test proved nothing")
			}
		})
	}
}
