package ledger

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// TestCheckpointEvidence: a node keeps the newest checkpoint, and two that cannot both be
// true as evidence; forged ones and others' are refused.
func TestCheckpointEvidence(t *testing.T) {
	s, err := node.OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cps := NewCheckpoints(s.Space("ledger/checkpoints/"))
	coord, self, other := newActor(t), newActor(t), newActor(t)
	sign := func(c Checkpoint) []byte {
		t.Helper()
		c.Coordinator, c.Signed = coord.id, at(0)
		if c.Node == "" {
			c.Node = self.id
		}
		raw, err := SignCheckpoint(c, coord.key)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	good := []Checkpoint{
		{Height: 10, Hash: Hash{1}, Seq: 3, Head: Hash{7}, Balance: market.Unit},
		{Height: 12, Hash: Hash{2}, Seq: 4, Head: Hash{8}},
	}
	for _, c := range good {
		if _, err := cps.Keep(self.id, sign(c)); err != nil {
			t.Fatal(err)
		}
	}
	if latest, ok, _ := cps.Latest(); !ok || latest.Height != 12 {
		t.Fatalf("latest %+v", latest)
	}
	for _, tc := range []struct {
		name string
		c    Checkpoint
		why  string
	}{
		{"two hashes at one height", Checkpoint{Height: 12, Hash: Hash{3}, Seq: 4, Head: Hash{8}}, "two state hashes at height 12"},
		{"a later height that forgets entries", Checkpoint{Height: 20, Hash: Hash{4}, Seq: 2, Head: Hash{9}}, "only up to 2"},
	} {
		before, _ := cps.Evidence()
		if _, err := cps.Keep(self.id, sign(tc.c)); err != nil {
			t.Fatal(err)
		}
		after, _ := cps.Evidence()
		if len(after) != len(before)+1 || !strings.Contains(after[len(after)-1].Why, tc.why) {
			t.Fatalf("%s: evidence %+v", tc.name, after)
		}
		for _, raw := range [][]byte{after[len(after)-1].A, after[len(after)-1].B} {
			if _, err := DecodeCheckpoint(raw); err != nil {
				t.Fatalf("%s: kept evidence does not verify: %v", tc.name, err)
			}
		}
	}
	forged := sign(Checkpoint{Height: 30})
	forged[len(forged)-1] ^= 1
	if _, err := cps.Keep(self.id, forged); err == nil {
		t.Fatal("a forged checkpoint was kept")
	}
	if _, err := cps.Keep(self.id, sign(Checkpoint{Height: 31, Node: other.id})); err == nil {
		t.Fatal("another node's checkpoint was kept")
	}
}

// TestSnapshotRestore: a raft snapshot of the state, through raft's file snapshot store,
// restores to the same state hash and balances in a fresh replica.
func TestSnapshotRestore(t *testing.T) {
	w := newWorld(t, 100*market.Unit)
	l := lease(t, w.buyer, w.prov, at(0), terms())
	w.must(Applied, w.buyer.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()}))
	w.status(l, 1, vm.StatusStarted, 2)
	w.tick(70)
	snaps, err := raft.NewFileSnapshotStore(t.TempDir(), 1, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	f := &fsm{st: w.st}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink, err := snaps.Create(raft.SnapshotVersionMax, w.index, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	metas, err := snaps.List()
	if err != nil || len(metas) != 1 {
		t.Fatalf("snapshots %v, %v", metas, err)
	}
	_, rc, err := snaps.Open(metas[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	fresh := newLedger(t)
	// Something there already is replaced, not merged.
	fresh.apply(newActor(t).sign(at(0), TypeMachine, &MachineBody{Machine: market.MachineID{9}, Change: MachineAdded}))
	if err := (&fsm{st: fresh.st}).Restore(rc); err != nil {
		t.Fatal(err)
	}
	a, _ := w.st.Meta()
	b, _ := fresh.st.Meta()
	if a != b {
		t.Fatalf("restored meta %+v, want %+v", b, a)
	}
	for _, p := range []*actor{w.buyer, w.prov} {
		x, _ := w.st.Account(p.id)
		y, _ := fresh.st.Account(p.id)
		if x != y {
			t.Fatalf("restored account %+v, want %+v", y, x)
		}
	}
	fresh.conserved()
	// A snapshot cut short is refused, not half restored silently.
	var buf bytes.Buffer
	buf.Write([]byte{5, 'a'})
	if err := (&fsm{st: fresh.st}).Restore(io.NopCloser(&buf)); err == nil {
		t.Fatal("a truncated snapshot restored")
	}
}
