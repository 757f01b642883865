package ledger

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/hashicorp/raft"

	"github.com/virtuoso-market/virtuoso/node"
)

// A command is one raft log entry of the coordinators: a batch of raw ledger entries,
// encoded as a count and then each entry's length and bytes (uvarints).
func encodeCommand(raws [][]byte) []byte {
	n := binary.MaxVarintLen64
	for _, r := range raws {
		n += binary.MaxVarintLen64 + len(r)
	}
	b := binary.AppendUvarint(make([]byte, 0, n), uint64(len(raws)))
	for _, r := range raws {
		b = binary.AppendUvarint(b, uint64(len(r)))
		b = append(b, r...)
	}
	return b
}

// maxCommandEntries caps the entries of one command.
const maxCommandEntries = 4096

func decodeCommand(b []byte) ([][]byte, error) {
	count, k := binary.Uvarint(b)
	if k <= 0 || k != minimal(count) || count > maxCommandEntries {
		return nil, fmt.Errorf("%w: command of %d entries", ErrMalformed, count)
	}
	b = b[k:]
	out := make([][]byte, 0, count)
	for range count {
		n, k := binary.Uvarint(b)
		if k <= 0 || k != minimal(n) || n > MaxEntryBytes || n > uint64(len(b)-k) {
			return nil, fmt.Errorf("%w: command entry of %d bytes", ErrMalformed, n)
		}
		out = append(out, b[k:k+int(n)])
		b = b[k+int(n):]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the command", ErrMalformed, len(b))
	}
	return out, nil
}

// minimal is the length of n's shortest uvarint: longer forms are refused, so that one command
// has one encoding.
func minimal(n uint64) int { return len(binary.AppendUvarint(nil, n)) }

// applied is what the state machine returns for a command: each entry's result, or the
// error that stopped it (the store's, not the entries').
type applied struct {
	results []Result
	err     error
}

// fsm is the State as raft's state machine.
type fsm struct{ st *State }

// Apply applies one committed command; a malformed one (which a leader never proposes)
// applies nothing.
func (f *fsm) Apply(l *raft.Log) any {
	raws, err := decodeCommand(l.Data)
	if err != nil {
		raws = nil
	}
	rs, err := f.st.Apply(l.Index, raws)
	return applied{rs, err}
}

// Snapshot takes a read transaction now; Persist streams it, so a snapshot never holds the
// state in memory.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	tx, done := f.st.sp.Snapshot()
	return &snapshot{tx: tx, done: done}, nil
}

// Restore replaces the state with a snapshot's.
func (f *fsm) Restore(r io.ReadCloser) error {
	defer r.Close()
	sp := f.st.sp
	// Remove what is there, a bounded batch per transaction.
	for {
		var keys []string
		if err := sp.View(func(tx *node.Txn) error {
			return tx.Scan("", "", false, func(k string, _ []byte) error {
				if keys = append(keys, k); len(keys) == 1000 {
					return node.ErrStop
				}
				return nil
			})
		}); err != nil {
			return err
		}
		if len(keys) == 0 {
			break
		}
		if err := sp.Update(func(tx *node.Txn) error {
			for _, k := range keys {
				if err := tx.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	br := bufio.NewReader(r)
	for done := false; !done; {
		err := sp.Update(func(tx *node.Txn) error {
			for range 1000 {
				k, err := readChunk(br, 1<<10)
				if errors.Is(err, io.EOF) {
					done = true
					return nil
				}
				if err != nil {
					return err
				}
				v, err := readChunk(br, node.MaxValueSize)
				if err != nil {
					return err
				}
				if err := tx.Put(string(k), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("restore the ledger from a snapshot: %w", err)
		}
	}
	return nil
}

func readChunk(r *bufio.Reader, limit int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > uint64(limit) {
		return nil, fmt.Errorf("%w: snapshot record of %d bytes", ErrMalformed, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, io.ErrUnexpectedEOF
	}
	return b, nil
}

// snapshot streams the state as key and value pairs, each as uvarint length and bytes.
type snapshot struct {
	tx   *node.Txn
	done func()
}

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriter(sink)
	err := s.tx.Scan("", "", false, func(k string, v []byte) error {
		for _, b := range [][]byte{[]byte(k), v} {
			if _, err := w.Write(binary.AppendUvarint(nil, uint64(len(b)))); err != nil {
				return err
			}
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("snapshot the ledger: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() { s.done() }
