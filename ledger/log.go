package ledger

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
)

// Log is a node's own ledger log: the entries it signed, numbered from 1 and chained by hash,
// kept in badger, with how far the coordinator accepted them and the checkpoints it signed.
// It is safe for concurrent use.
type Log struct {
	sp   *node.Space
	key  crypto.PrivKey
	self peer.ID
	// Appended is signalled (without blocking) after every Append, for the pusher.
	Appended chan struct{}

	mu    sync.Mutex
	last  *Signed
	acked uint64
}

func logEntryKey(seq uint64) string { return fmt.Sprintf("e/%020d", seq) }

const ackedKey = "acked"

// OpenLog opens the log kept in sp, signing with key.
func OpenLog(sp *node.Space, key crypto.PrivKey) (*Log, error) {
	self, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, err
	}
	l := &Log{sp: sp, key: key, self: self, Appended: make(chan struct{}, 1)}
	err = sp.View(func(tx *node.Txn) error {
		if err := tx.Scan("e/", "e/~", true, func(_ string, v []byte) error {
			s, err := Decode(v)
			if err != nil {
				return fmt.Errorf("the node's own ledger log: %w", err)
			}
			l.last = &s
			return node.ErrStop
		}); err != nil {
			return err
		}
		b, err := tx.Get(ackedKey)
		if errors.Is(err, node.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		l.acked, err = strconv.ParseUint(string(b), 10, 64)
		return err
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Self is the log's author.
func (l *Log) Self() peer.ID { return l.self }

// Append signs the next entry, of type t with body b at now, and stores it.
func (l *Log) Append(now time.Time, t Type, b Body) (Signed, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, err := NewEntry(l.self, l.last, now, t, b)
	if err != nil {
		return Signed{}, err
	}
	s, err := Sign(e, l.key)
	if err != nil {
		return Signed{}, err
	}
	if err := l.sp.Put(logEntryKey(s.Seq), s.Raw); err != nil {
		return Signed{}, fmt.Errorf("append to the ledger log: %w", err)
	}
	l.last = &s
	select {
	case l.Appended <- struct{}{}:
	default:
	}
	return s, nil
}

// AppendAll signs the next entries, of type t with the bodies bs at now, and stores them in
// one transaction: the pusher hears of them once.
func (l *Log) AppendAll(now time.Time, t Type, bs []Body) ([]Signed, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	last := l.last
	out := make([]Signed, 0, len(bs))
	for _, b := range bs {
		e, err := NewEntry(l.self, last, now, t, b)
		if err != nil {
			return nil, err
		}
		s, err := Sign(e, l.key)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
		last = &out[len(out)-1]
	}
	for i := 0; i < len(out); i += 256 {
		err := l.sp.Update(func(tx *node.Txn) error {
			for _, s := range out[i:min(len(out), i+256)] {
				if err := tx.Put(logEntryKey(s.Seq), s.Raw); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("append to the ledger log: %w", err)
		}
	}
	if len(out) > 0 {
		l.last = last
	}
	select {
	case l.Appended <- struct{}{}:
	default:
	}
	return out, nil
}

// Last is the sequence number of the last entry (0 for an empty log).
func (l *Log) Last() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		return 0
	}
	return l.last.Seq
}

// Acked is the last sequence number the coordinator took.
func (l *Log) Acked() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked
}

// Ack records that the coordinator took the entries up to seq.
func (l *Log) Ack(seq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if seq <= l.acked {
		return nil
	}
	if err := l.sp.Put(ackedKey, []byte(strconv.FormatUint(seq, 10))); err != nil {
		return err
	}
	l.acked = seq
	return nil
}

// Stored is one entry of the node's own log as stored: its sequence number and exact bytes
// (the node signed them; they are not checked again when read).
type Stored struct {
	Seq uint64
	Raw []byte
}

// Range returns up to max entries from seq on.
func (l *Log) Range(from uint64, max int) ([]Stored, error) {
	var out []Stored
	err := l.sp.View(func(tx *node.Txn) error {
		return tx.Scan(logEntryKey(from), "e/~", false, func(k string, v []byte) error {
			seq, err := strconv.ParseUint(k[len("e/"):], 10, 64)
			if err != nil {
				return fmt.Errorf("the node's own ledger log: key %q: %w", k, err)
			}
			if out = append(out, Stored{Seq: seq, Raw: v}); len(out) == max {
				return node.ErrStop
			}
			return nil
		})
	})
	return out, err
}
