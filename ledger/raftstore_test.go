package ledger

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftbench "github.com/hashicorp/raft/bench"
	"github.com/virtuoso-market/virtuoso/node"
)

// openRaftStore opens a RaftStore in a badger database in dir, closed at the end of the test.
func openRaftStore(t testing.TB, dir string) (*RaftStore, *node.Store) {
	t.Helper()
	db, err := node.OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return NewRaftStore(db.Space("ledger/raft/")), db
}

// raftLogs are entries lo to hi of term 1 whose data names their index.
func raftLogs(lo, hi uint64) []*raft.Log {
	var logs []*raft.Log
	for i := lo; i <= hi; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Data: fmt.Appendf(nil, "command %d", i)})
	}
	return logs
}

func checkRaftIndexes(t testing.TB, s *RaftStore, first, last uint64) {
	t.Helper()
	if got, err := s.FirstIndex(); err != nil || got != first {
		t.Errorf("FirstIndex = %d, %v; want %d", got, err, first)
	}
	if got, err := s.LastIndex(); err != nil || got != last {
		t.Errorf("LastIndex = %d, %v; want %d", got, err, last)
	}
}

func sameRaftLog(a, b *raft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type &&
		bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Extensions, b.Extensions) && a.AppendedAt.Equal(b.AppendedAt)
}

func TestRaftStoreLogs(t *testing.T) {
	dir := t.TempDir()
	s, db := openRaftStore(t, dir)
	checkRaftIndexes(t, s, 0, 0)
	var got raft.Log
	if err := s.GetLog(1, &got); err != raft.ErrLogNotFound {
		t.Fatalf("GetLog on an empty store = %v, want raft.ErrLogNotFound itself", err)
	}
	// Stable values sort apart from the log: they change neither index.
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	checkRaftIndexes(t, s, 0, 0)

	// Indexes whose hex digits would sort wrongly as text without padding.
	at := time.Date(2026, 3, 1, 12, 30, 0, 123456789, time.UTC)
	want := []*raft.Log{
		{Index: 9, Term: 1, Type: raft.LogConfiguration, Data: []byte("config")},
		{Index: 10, Term: 1, Type: raft.LogNoop},
		{Index: 16, Term: 2, Type: raft.LogCommand, Data: []byte("a"), Extensions: []byte("ext"), AppendedAt: at},
		{Index: 255, Term: 2, Data: []byte("b")},
		{Index: 256, Term: 3, Data: []byte("c")},
		{Index: 1 << 40, Term: 3, Data: []byte("d")},
	}
	if err := s.StoreLogs(want); err != nil {
		t.Fatal(err)
	}
	checkRaftIndexes(t, s, 9, 1<<40)
	for _, w := range want {
		if err := s.GetLog(w.Index, &got); err != nil || !sameRaftLog(&got, w) {
			t.Errorf("GetLog(%d) = %+v, %v; want %+v", w.Index, got, err, w)
		}
	}
	if err := s.GetLog(11, &got); err != raft.ErrLogNotFound {
		t.Errorf("GetLog(11) between entries = %v, want raft.ErrLogNotFound", err)
	}

	// The oldest go (raft compacting after a snapshot), then the newest (a new leader's
	// conflicting entries).
	if err := s.DeleteRange(9, 16); err != nil {
		t.Fatal(err)
	}
	checkRaftIndexes(t, s, 255, 1<<40)
	if err := s.DeleteRange(256, 1<<40); err != nil {
		t.Fatal(err)
	}
	checkRaftIndexes(t, s, 255, 255)
	if err := s.StoreLog(&raft.Log{Index: 256, Term: 4, Data: []byte("e")}); err != nil {
		t.Fatal(err)
	}

	// All of it survives closing and reopening the database.
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s, _ = openRaftStore(t, dir)
	checkRaftIndexes(t, s, 255, 256)
	if err := s.GetLog(256, &got); err != nil || got.Term != 4 || string(got.Data) != "e" {
		t.Errorf("GetLog(256) after reopening = %+v, %v", got, err)
	}
	if term, err := s.GetUint64([]byte("CurrentTerm")); err != nil || term != 7 {
		t.Errorf("CurrentTerm after reopening = %d, %v; want 7", term, err)
	}
	if err := s.DeleteRange(0, 1<<64-1); err != nil {
		t.Fatal(err)
	}
	checkRaftIndexes(t, s, 0, 0)
}

func TestRaftStoreStable(t *testing.T) {
	s, _ := openRaftStore(t, t.TempDir())
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || v != nil {
		t.Errorf("Get of a missing key = %q, %v; want nil, nil", v, err)
	}
	if v, err := s.GetUint64([]byte("LastVoteTerm")); err != nil || v != 0 {
		t.Errorf("GetUint64 of a missing key = %d, %v; want 0, nil", v, err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("12D3KooWcand")); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "12D3KooWcand" {
		t.Errorf("Get = %q, %v", v, err)
	}
	if err := s.SetUint64([]byte("LastVoteTerm"), 1<<63+5); err != nil {
		t.Fatal(err)
	}
	if v, err := s.GetUint64([]byte("LastVoteTerm")); err != nil || v != 1<<63+5 {
		t.Errorf("GetUint64 = %d, %v", v, err)
	}
	if _, err := s.GetUint64([]byte("LastVoteCand")); err == nil {
		t.Error("GetUint64 of a value that is not 8 bytes: no error")
	}
}

func TestRaftStoreBounds(t *testing.T) {
	s, _ := openRaftStore(t, t.TempDir())

	// One entry too large for a stored value refuses the whole batch.
	batch := append(raftLogs(1, 3), &raft.Log{Index: 4, Data: make([]byte, node.MaxValueSize)})
	if err := s.StoreLogs(batch); !errors.Is(err, ErrRaftLogTooLarge) {
		t.Fatalf("StoreLogs with an oversized entry = %v, want ErrRaftLogTooLarge", err)
	}
	checkRaftIndexes(t, s, 0, 0)

	// A batch larger than one badger transaction takes still lands whole.
	const big = 32
	var logs []*raft.Log
	for i := range uint64(big) {
		logs = append(logs, &raft.Log{Index: i + 1, Data: bytes.Repeat([]byte{byte(i)}, 512<<10)})
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatalf("StoreLogs of %d entries of 512 KiB: %v", big, err)
	}
	checkRaftIndexes(t, s, 1, big)
	var got raft.Log
	if err := s.GetLog(big, &got); err != nil || !sameRaftLog(&got, logs[big-1]) {
		t.Errorf("GetLog(%d) = %d bytes, %v", big, len(got.Data), err)
	}

	// So does a deletion of more entries than one transaction deletes.
	const last = 2*raftDeleteBatch + 20
	if err := s.StoreLogs(raftLogs(big+1, last)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, raftDeleteBatch+10); err != nil {
		t.Fatal(err)
	}
	checkRaftIndexes(t, s, raftDeleteBatch+11, last)
	if err := s.DeleteRange(raftDeleteBatch+12, last); err != nil {
		t.Fatal(err)
	}
	checkRaftIndexes(t, s, raftDeleteBatch+11, raftDeleteBatch+11)
}

// TestRaftLogEncoding pins the stored form: entries written by this version must read the
// same in every later one.
func TestRaftLogEncoding(t *testing.T) {
	tests := []struct {
		name string
		log  raft.Log
		hex  string
	}{{
		name: "empty",
		log:  raft.Log{},
		hex:  "01" + "0000000000000000" + "0000000000000000" + "00" + "fffffff1886e0900" + "00000000" + "00" + "00",
	}, {
		name: "command",
		log: raft.Log{Index: 258, Term: 3, Type: raft.LogCommand, Data: []byte("hi"), Extensions: []byte{0xee},
			AppendedAt: time.Unix(1767225600, 5).UTC()},
		hex: "01" + "0000000000000102" + "0000000000000003" + "00" + "000000006955b900" + "00000005" + "02" + "6869" + "01" + "ee",
	}, {
		name: "configuration",
		log:  raft.Log{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: bytes.Repeat([]byte{'x'}, 200)},
		hex: "01" + "0000000000000001" + "0000000000000001" + "05" + "fffffff1886e0900" + "00000000" + "c801" +
			hex.EncodeToString(bytes.Repeat([]byte{'x'}, 200)) + "00",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := encodeRaftLog(&tt.log)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(b); got != tt.hex {
				t.Errorf("encoded\n %s\nwant\n %s", got, tt.hex)
			}
			var got raft.Log
			if err := decodeRaftLog(b, &got); err != nil || !sameRaftLog(&got, &tt.log) {
				t.Errorf("decoded %+v, %v; want %+v", got, err, tt.log)
			}
			// Fields a later version appends are ignored.
			if err := decodeRaftLog(append(b, 1, 2, 3), &got); err != nil || !sameRaftLog(&got, &tt.log) {
				t.Errorf("with trailing bytes: decoded %+v, %v", got, err)
			}
		})
	}
}

func TestDecodeRaftLogRefuses(t *testing.T) {
	good, err := encodeRaftLog(&raft.Log{Index: 1, Data: []byte("abc")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", good[:raftLogFixed-1]},
		{"version 2", append([]byte{2}, good[1:]...)},
		{"nanoseconds out of range", append(append(append([]byte{}, good[:26]...), 0x3b, 0x9a, 0xca, 0x00), good[30:]...)},
		{"data cut short", good[:len(good)-2]},
		{"no extensions length", good[:len(good)-1]},
		{"data length past the end", append(append([]byte{}, good[:raftLogFixed]...), 0xff, 0xff, 0xff, 0xff, 0x0f)},
		{"over the cap", append(good, make([]byte, node.MaxValueSize)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got raft.Log
			if err := decodeRaftLog(tt.b, &got); !errors.Is(err, errRaftLogMalformed) {
				t.Errorf("decodeRaftLog = %v, want errRaftLogMalformed", err)
			}
		})
	}
}

// FuzzDecodeLog checks that no stored bytes crash the decoder, that it takes nothing over
// the cap, and that what it reads encodes back to what reads the same.
func FuzzDecodeLog(f *testing.F) {
	for _, l := range []raft.Log{{}, {Index: 1 << 60, Term: 9, Type: raft.LogBarrier, Data: []byte("x"), Extensions: []byte("y"),
		AppendedAt: time.Unix(1767225600, 999999999)}} {
		b, err := encodeRaftLog(&l)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var log raft.Log
		if err := decodeRaftLog(b, &log); err != nil {
			return
		}
		if len(b) > node.MaxValueSize {
			t.Fatalf("decoded %d bytes, over the cap", len(b))
		}
		again, err := encodeRaftLog(&log)
		if err != nil {
			t.Fatalf("encode what was decoded: %v", err)
		}
		var log2 raft.Log
		if err := decodeRaftLog(again, &log2); err != nil || !sameRaftLog(&log, &log2) {
			t.Fatalf("decode(encode(%+v)) = %+v, %v", log, log2, err)
		}
	})
}

// raftBackend is a store raft runs on.
type raftBackend interface {
	raft.LogStore
	raft.StableStore
}

// BenchmarkRaftStore runs raft's own store benchmarks on the badger store beside raft's
// in-memory one, the floor any store is measured against.
func BenchmarkRaftStore(b *testing.B) {
	stores := []struct {
		name string
		open func(*testing.B) raftBackend
	}{
		{"badger", func(b *testing.B) raftBackend { s, _ := openRaftStore(b, b.TempDir()); return s }},
		{"inmem", func(*testing.B) raftBackend { return raft.NewInmemStore() }},
	}
	benches := []struct {
		name string
		run  func(*testing.B, raftBackend)
	}{
		{"FirstIndex", func(b *testing.B, s raftBackend) { raftbench.FirstIndex(b, s) }},
		{"LastIndex", func(b *testing.B, s raftBackend) { raftbench.LastIndex(b, s) }},
		{"GetLog", func(b *testing.B, s raftBackend) { raftbench.GetLog(b, s) }},
		{"StoreLog", func(b *testing.B, s raftBackend) { raftbench.StoreLog(b, s) }},
		{"StoreLogs", func(b *testing.B, s raftBackend) { raftbench.StoreLogs(b, s) }},
		{"DeleteRange", func(b *testing.B, s raftBackend) { raftbench.DeleteRange(b, s) }},
		{"Set", func(b *testing.B, s raftBackend) { raftbench.Set(b, s) }},
		{"Get", func(b *testing.B, s raftBackend) { raftbench.Get(b, s) }},
		{"SetUint64", func(b *testing.B, s raftBackend) { raftbench.SetUint64(b, s) }},
		{"GetUint64", func(b *testing.B, s raftBackend) { raftbench.GetUint64(b, s) }},
	}
	for _, bench := range benches {
		for _, st := range stores {
			b.Run(bench.name+"/"+st.name, func(b *testing.B) { bench.run(b, st.open(b)) })
		}
	}
}
