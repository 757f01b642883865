package ledger

import (
	"bufio"
	"bytes"
	"encoding/binary"
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

// FuzzDecodeCheckpoint: never panics; what it accepts verifies and re-encodes to a checkpoint
// with the same fields.
func FuzzDecodeCheckpoint(f *testing.F) {
	c := newActor(f)
	raw, err := SignCheckpoint(Checkpoint{Coordinator: c.id, Node: c.id, Height: 3, Signed: at(0)}, c.key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add([]byte("VC\x01\x00\x00"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cp, err := DecodeCheckpoint(raw)
		if err != nil {
			return
		}
		if cp.Validate() != nil || len(raw) > 2*maxCheckpointBytes {
			t.Fatalf("accepted an invalid checkpoint %+v", cp)
		}
	})
}

// FuzzDecodeCommand: never panics, caps entries, and what it accepts encodes back to itself.
func FuzzDecodeCommand(f *testing.F) {
	f.Add(encodeCommand([][]byte{[]byte("a"), nil, []byte("bcd")}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		raws, err := decodeCommand(b)
		if err != nil {
			return
		}
		if len(raws) > maxCommandEntries || !bytes.Equal(encodeCommand(raws), b) {
			t.Fatalf("command of %d entries does not round-trip", len(raws))
		}
	})
}

// FuzzDecodeLeaseState: never panics, and what it accepts encodes back to itself.
func FuzzDecodeLeaseState(f *testing.F) {
	a, b := newActor(f), newActor(f)
	l := lease(f, a, b, at(0), terms())
	f.Add(encodeLeaseState(LeaseState{ID: l.ID, VM: l.VM, Buyer: a.id, Provider: b.id, Quote: l.Quote, Created: at(0), StorageDue: at(60)}))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, raw []byte) {
		ls, err := decodeLeaseState(raw)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeLeaseState(ls), raw) {
			t.Fatal("a lease record does not round-trip")
		}
	})
}

// FuzzMirrorRequest: the mirror's frame reader never panics and caps what it reads.
func FuzzMirrorRequest(f *testing.F) {
	var buf bytes.Buffer
	writeFrame(&buf, mirrorRequest{Push: [][]byte{[]byte("x")}, View: true})
	f.Add(buf.Bytes())
	f.Add([]byte{0x05, '{', '"', 'a', '"', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		var req mirrorRequest
		if err := readFrame(bufio.NewReader(bytes.NewReader(b)), 4096, &req); err == nil && len(b) > 4096+binary.MaxVarintLen64 {
			t.Fatalf("read a frame over its cap")
		}
	})
}
