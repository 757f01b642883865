package ledger

import (
	"bytes"
	"testing"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/vm"
)

// FuzzDecodeEntry: Decode never panics, and what it accepts is within the cap, verifies, and
// hashes to its Hash.
func FuzzDecodeEntry(f *testing.F) {
	a, b := newActor(f), newActor(f)
	l := lease(f, a, b, at(0), terms())
	for _, raw := range [][]byte{
		a.sign(at(0), TypeLease, &LeaseBody{Lease: l.Encode()}),
		b.sign(at(1), TypeStatus, &StatusBody{VM: l.VM, Lease: l.ID, Status: vm.StatusStarted, Version: 2}),
		a.sign(at(2), TypeTransfer, &TransferBody{To: b.id, Amount: market.Unit}),
		b.sign(at(3), TypeTick, &TickBody{}),
		[]byte("VE\x01\x02{}\x00"),
	} {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		s, err := Decode(raw)
		if err != nil {
			return
		}
		if len(raw) > MaxEntryBytes || !bytes.Equal(s.Raw, raw) || s.Hash != HashOf(raw) {
			t.Fatalf("accepted %d bytes, hash %s", len(raw), s.Hash)
		}
		if _, err := s.Decoded(); err != nil {
			t.Fatalf("accepted an entry whose body does not decode: %v", err)
		}
	})
}
