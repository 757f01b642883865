package ledger

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
	"github.com/virtuoso-market/virtuoso/node"
)

// ErrRaftLogTooLarge is returned when a raft log entry would not fit in one stored value
// (node.MaxValueSize). Raft's leader steps down when it cannot store an entry, so the
// coordinator must refuse such a command before it applies it.
var ErrRaftLogTooLarge = errors.New("raft log entry is larger than the store takes: apply a smaller command")

// The keys of a RaftStore's space: "log/" and the index as 16 hex digits, so that key order
// is index order, and "stable/" and raft's own key for its stable values.
const (
	raftLogPrefix    = "log/"
	raftLogEnd       = "log0" // '0' follows '/': the first key after every log key
	raftStablePrefix = "stable/"
)

// raftDeleteBatch is the most log entries DeleteRange removes in one transaction; badger
// bounds the size of a transaction.
const raftDeleteBatch = 4096

// The stored form of one raft log entry, version 1, integers big-endian:
//
//	1 byte    version (1)
//	8 bytes   index
//	8 bytes   term
//	1 byte    type (raft.LogType)
//	8 bytes   appended at: seconds since 1970 (signed; raft's zero time is -62135596800)
//	4 bytes   appended at: nanoseconds (below 1e9)
//	uvarint   length of the data, then the data
//	uvarint   length of the extensions, then the extensions
//
// Bytes after the extensions are ignored: a later version may append optional fields there.
const (
	raftLogVersion = 1
	raftLogFixed   = 1 + 8 + 8 + 1 + 8 + 4
)

// RaftStore keeps a coordinator's raft log and raft's stable values (the current term, the
// last vote) in a space of the node's database, so that a restarted coordinator resumes
// where it stopped. It is raft's raft.LogStore and raft.StableStore.
type RaftStore struct {
	sp *node.Space
}

var (
	_ raft.LogStore    = (*RaftStore)(nil)
	_ raft.StableStore = (*RaftStore)(nil)
)

// NewRaftStore keeps raft's state in sp, which nothing else may use.
func NewRaftStore(sp *node.Space) *RaftStore {
	return &RaftStore{sp: sp}
}

// FirstIndex is the index of the oldest stored log entry, 0 when there is none.
func (s *RaftStore) FirstIndex() (uint64, error) {
	i, err := s.edge(false)
	if err != nil {
		return 0, fmt.Errorf("first raft log index: %w", err)
	}
	return i, nil
}

// LastIndex is the index of the newest stored log entry, 0 when there is none.
func (s *RaftStore) LastIndex() (uint64, error) {
	i, err := s.edge(true)
	if err != nil {
		return 0, fmt.Errorf("last raft log index: %w", err)
	}
	return i, nil
}

// edge is the first index of the log, or the last one when last is set; 0 when it is empty.
func (s *RaftStore) edge(last bool) (uint64, error) {
	var index uint64
	err := s.sp.View(func(tx *node.Txn) error {
		return tx.Scan(raftLogPrefix, raftLogEnd, last, func(key string, _ []byte) error {
			var err error
			if index, err = parseRaftLogKey(key); err != nil {
				return err
			}
			return node.ErrStop
		})
	})
	return index, err
}

// GetLog reads the entry at index into log; it returns raft.ErrLogNotFound itself, not
// wrapped, when there is none, as raft compares the error to it.
func (s *RaftStore) GetLog(index uint64, log *raft.Log) error {
	val, err := s.sp.Get(raftLogKey(index))
	if errors.Is(err, node.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return fmt.Errorf("read raft log %d: %w", index, err)
	}
	if err := decodeRaftLog(val, log); err != nil {
		return fmt.Errorf("read raft log %d: %w", index, err)
	}
	if log.Index != index {
		return fmt.Errorf("read raft log %d: the stored entry says it is %d: the raft store is corrupt", index, log.Index)
	}
	return nil
}

// StoreLog stores one entry.
func (s *RaftStore) StoreLog(log *raft.Log) error {
	return s.StoreLogs([]*raft.Log{log})
}

// StoreLogs stores entries in one transaction, or, when badger finds that too big, in
// consecutive transactions of earlier entries first, so that the log a crash leaves is never
// missing an entry before one it holds. An entry ErrRaftLogTooLarge stores none of them.
func (s *RaftStore) StoreLogs(logs []*raft.Log) error {
	vals := make([][]byte, len(logs))
	for i, l := range logs {
		val, err := encodeRaftLog(l)
		if err != nil {
			return fmt.Errorf("store raft log %d: %w", l.Index, err)
		}
		vals[i] = val
	}
	return s.put(logs, vals)
}

func (s *RaftStore) put(logs []*raft.Log, vals [][]byte) error {
	err := s.sp.Update(func(tx *node.Txn) error {
		for i, l := range logs {
			if err := tx.Put(raftLogKey(l.Index), vals[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, badger.ErrTxnTooBig) && len(logs) > 1 {
		half := len(logs) / 2
		if err := s.put(logs[:half], vals[:half]); err != nil {
			return err
		}
		return s.put(logs[half:], vals[half:])
	}
	if err != nil {
		return fmt.Errorf("store raft logs %d to %d: %w", logs[0].Index, logs[len(logs)-1].Index, err)
	}
	return nil
}

// DeleteRange deletes the entries from index lo to index hi, both included, in transactions
// of at most raftDeleteBatch entries. Raft deletes either the oldest entries (compacting
// after a snapshot) or the newest (those a new leader overrides): a range that reaches the
// last entry goes newest first, any other oldest first, so that a crash between
// transactions leaves no gap.
func (s *RaftStore) DeleteRange(lo, hi uint64) error {
	if lo > hi {
		return nil
	}
	// The tail of the log is the cheap end to find: the head is where the tombstones of
	// compacted entries gather until badger drops them.
	last, err := s.LastIndex()
	if err != nil {
		return fmt.Errorf("delete raft logs %d to %d: %w", lo, hi, err)
	}
	newestFirst := hi >= last
	to := raftLogEnd
	if hi < math.MaxUint64 {
		to = raftLogKey(hi + 1)
	}
	for {
		deleted := 0
		err := s.sp.Update(func(tx *node.Txn) error {
			var keys []string
			err := tx.Scan(raftLogKey(lo), to, newestFirst, func(key string, _ []byte) error {
				keys = append(keys, key)
				if len(keys) == raftDeleteBatch {
					return node.ErrStop
				}
				return nil
			})
			if err != nil {
				return err
			}
			for _, k := range keys {
				if err := tx.Delete(k); err != nil {
					return err
				}
			}
			deleted = len(keys)
			return nil
		})
		if err != nil {
			return fmt.Errorf("delete raft logs %d to %d: %w", lo, hi, err)
		}
		if deleted < raftDeleteBatch {
			return nil
		}
	}
}

// Set stores raft's stable value at key.
func (s *RaftStore) Set(key, val []byte) error {
	if err := s.sp.Put(raftStablePrefix+string(key), val); err != nil {
		return fmt.Errorf("store raft %s: %w", key, err)
	}
	return nil
}

// Get returns raft's stable value at key, or nil when there is none.
func (s *RaftStore) Get(key []byte) ([]byte, error) {
	val, err := s.sp.Get(raftStablePrefix + string(key))
	if errors.Is(err, node.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read raft %s: %w", key, err)
	}
	return val, nil
}

// SetUint64 stores raft's stable number at key.
func (s *RaftStore) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns raft's stable number at key, or 0 when there is none.
func (s *RaftStore) GetUint64(key []byte) (uint64, error) {
	val, err := s.Get(key)
	if err != nil || val == nil {
		return 0, err
	}
	if len(val) != 8 {
		return 0, fmt.Errorf("read raft %s: %d bytes where a number takes 8: the raft store is corrupt", key, len(val))
	}
	return binary.BigEndian.Uint64(val), nil
}

// raftLogKey is the key of the entry at index.
func raftLogKey(index uint64) string {
	return fmt.Sprintf("%s%016x", raftLogPrefix, index)
}

func parseRaftLogKey(key string) (uint64, error) {
	hex := key[len(raftLogPrefix):]
	i, err := strconv.ParseUint(hex, 16, 64)
	if err != nil || len(hex) != 16 {
		return 0, fmt.Errorf("raft log key %q is not %s and 16 hex digits: the raft store is corrupt", key, raftLogPrefix)
	}
	return i, nil
}

// encodeRaftLog is log's stored form; ErrRaftLogTooLarge when that exceeds node.MaxValueSize.
func encodeRaftLog(log *raft.Log) ([]byte, error) {
	tooLarge := func(size int) error {
		return fmt.Errorf("%d bytes of data and %d of extensions make %d stored, over the %d-byte cap: %w",
			len(log.Data), len(log.Extensions), size, node.MaxValueSize, ErrRaftLogTooLarge)
	}
	size := raftLogFixed + len(log.Data) + len(log.Extensions)
	if size > node.MaxValueSize {
		return nil, tooLarge(size)
	}
	b := make([]byte, 0, size+2*binary.MaxVarintLen64)
	b = append(b, raftLogVersion)
	b = binary.BigEndian.AppendUint64(b, log.Index)
	b = binary.BigEndian.AppendUint64(b, log.Term)
	b = append(b, byte(log.Type))
	b = binary.BigEndian.AppendUint64(b, uint64(log.AppendedAt.Unix()))
	b = binary.BigEndian.AppendUint32(b, uint32(log.AppendedAt.Nanosecond()))
	b = binary.AppendUvarint(b, uint64(len(log.Data)))
	b = append(b, log.Data...)
	b = binary.AppendUvarint(b, uint64(len(log.Extensions)))
	b = append(b, log.Extensions...)
	if len(b) > node.MaxValueSize {
		return nil, tooLarge(len(b))
	}
	return b, nil
}

// errRaftLogMalformed marks a stored raft log entry that does not decode.
var errRaftLogMalformed = errors.New("malformed raft log entry: the raft store is corrupt")

// decodeRaftLog reads a stored entry into log; its data and extensions alias b.
func decodeRaftLog(b []byte, log *raft.Log) error {
	if len(b) > node.MaxValueSize {
		return fmt.Errorf("%d bytes, over the %d-byte cap: %w", len(b), node.MaxValueSize, errRaftLogMalformed)
	}
	if len(b) < raftLogFixed {
		return fmt.Errorf("%d bytes, shorter than the %d of its fixed fields: %w", len(b), raftLogFixed, errRaftLogMalformed)
	}
	if b[0] != raftLogVersion {
		return fmt.Errorf("version %d, this node reads %d: %w", b[0], raftLogVersion, errRaftLogMalformed)
	}
	nsec := binary.BigEndian.Uint32(b[26:])
	if nsec >= 1e9 {
		return fmt.Errorf("%d nanoseconds in its time: %w", nsec, errRaftLogMalformed)
	}
	rest := b[raftLogFixed:]
	data, rest, err := readRaftBytes(rest, "data")
	if err != nil {
		return err
	}
	ext, _, err := readRaftBytes(rest, "extensions")
	if err != nil {
		return err
	}
	*log = raft.Log{
		Index:      binary.BigEndian.Uint64(b[1:]),
		Term:       binary.BigEndian.Uint64(b[9:]),
		Type:       raft.LogType(b[17]),
		Data:       data,
		Extensions: ext,
		AppendedAt: time.Unix(int64(binary.BigEndian.Uint64(b[18:])), int64(nsec)).UTC(),
	}
	return nil
}

// readRaftBytes reads a uvarint length and that many bytes (nil for none) from b.
func readRaftBytes(b []byte, what string) (field, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, fmt.Errorf("its %s length does not fit the entry: %w", what, errRaftLogMalformed)
	}
	b = b[k:]
	if n == 0 {
		return nil, b, nil
	}
	return b[:n:n], b[n:], nil
}
