package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	badger "github.com/dgraph-io/badger/v4"
)

// ErrNotFound is returned by Get when a key holds no value.
var ErrNotFound = errors.New("not found")

// ErrHomeLocked means another node already holds this home's database.
var ErrHomeLocked = errors.New("home is in use by another running node")

// MaxValueSize caps a stored value; values are small records, never VM images.
const MaxValueSize = 4 << 20

// Store is the node's one database (badger, under the home directory). Packages never open
// their own: each takes a Space, a key prefix of its own, and keeps its records there.
type Store struct {
	db *badger.DB
	// writeMu serialises read-write transactions: records are small and writes rare, and
	// with one writer at a time badger never reports a conflict to retry.
	writeMu sync.Mutex
}

// OpenStore opens (creating if needed) the badger database in dir. A second open of the same
// dir, by this or another process, fails with ErrHomeLocked.
func OpenStore(dir string, log *slog.Logger) (*Store, error) {
	opts := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{log}).
		WithLoggingLevel(badger.WARNING).
		// Records are small; modest tables keep an idle node's memory low.
		WithMemTableSize(8 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20)
	db, err := badger.Open(opts)
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") ||
			strings.Contains(err.Error(), "resource temporarily unavailable") {
			return nil, fmt.Errorf("open store %s: %w", dir, ErrHomeLocked)
		}
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	return &Store{db: db}, nil
}

// Close flushes and closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// Space returns the key space under prefix; by convention "package/what/", e.g. "vm/inventory/".
func (s *Store) Space(prefix string) *Space {
	return &Space{store: s, prefix: prefix}
}

// Space is one package's part of the Store. Keys passed to it are relative to its prefix.
type Space struct {
	store  *Store
	prefix string
}

// Get returns the value at key, or ErrNotFound.
func (sp *Space) Get(key string) ([]byte, error) {
	var out []byte
	err := sp.store.db.View(func(txn *badger.Txn) error {
		var err error
		out, err = (&Txn{txn: txn, prefix: sp.prefix}).Get(key)
		return err
	})
	return out, err
}

// Put stores val at key.
func (sp *Space) Put(key string, val []byte) error {
	return sp.Update(func(tx *Txn) error { return tx.Put(key, val) })
}

// Delete removes key; deleting a missing key is not an error.
func (sp *Space) Delete(key string) error {
	return sp.Update(func(tx *Txn) error { return tx.Delete(key) })
}

// List calls fn for every key of the space in key order, stopping at the first error.
func (sp *Space) List(fn func(key string, val []byte) error) error {
	return sp.store.db.View(func(txn *badger.Txn) error {
		return (&Txn{txn: txn, prefix: sp.prefix}).List(fn)
	})
}

// Update runs fn in one read-write transaction: all of its changes land, or none do.
func (sp *Space) Update(fn func(tx *Txn) error) error {
	sp.store.writeMu.Lock()
	defer sp.store.writeMu.Unlock()
	return sp.store.db.Update(func(txn *badger.Txn) error {
		return fn(&Txn{txn: txn, prefix: sp.prefix})
	})
}

// Txn is a transaction over one Space.
type Txn struct {
	txn    *badger.Txn
	prefix string
}

// Get returns the value at key, or ErrNotFound.
func (tx *Txn) Get(key string) ([]byte, error) {
	item, err := tx.txn.Get([]byte(tx.prefix + key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("%s%s: %w", tx.prefix, key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s%s: %w", tx.prefix, key, err)
	}
	return item.ValueCopy(nil)
}

// Put stores val at key.
func (tx *Txn) Put(key string, val []byte) error {
	if len(val) > MaxValueSize {
		return fmt.Errorf("put %s%s: value of %d bytes exceeds the %d-byte cap", tx.prefix, key, len(val), MaxValueSize)
	}
	if err := tx.txn.Set([]byte(tx.prefix+key), val); err != nil {
		return fmt.Errorf("put %s%s: %w", tx.prefix, key, err)
	}
	return nil
}

// Delete removes key.
func (tx *Txn) Delete(key string) error {
	if err := tx.txn.Delete([]byte(tx.prefix + key)); err != nil {
		return fmt.Errorf("delete %s%s: %w", tx.prefix, key, err)
	}
	return nil
}

// List calls fn for every key of the space in key order.
func (tx *Txn) List(fn func(key string, val []byte) error) error {
	opts := badger.DefaultIteratorOptions
	opts.Prefix = []byte(tx.prefix)
	it := tx.txn.NewIterator(opts)
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		val, err := item.ValueCopy(nil)
		if err != nil {
			return fmt.Errorf("list %s: %w", tx.prefix, err)
		}
		if err := fn(strings.TrimPrefix(string(item.Key()), tx.prefix), val); err != nil {
			return err
		}
	}
	return nil
}

// ErrStop, returned by a Scan callback, ends the scan early without an error.
var ErrStop = errors.New("stop the scan")

// Scan calls fn for the keys k of the space with from <= k < to in key order (to "" is the
// end of the space), or in reverse order when reverse is set, until fn returns an error;
// ErrStop ends the scan and Scan returns nil.
func (tx *Txn) Scan(from, to string, reverse bool, fn func(key string, val []byte) error) error {
	opts := badger.DefaultIteratorOptions
	opts.Prefix, opts.Reverse = []byte(tx.prefix), reverse
	it := tx.txn.NewIterator(opts)
	defer it.Close()
	lo, hi := tx.prefix+from, tx.prefix+to
	if reverse {
		if to == "" {
			it.Seek(append([]byte(tx.prefix), 0xff, 0xff, 0xff, 0xff))
		} else {
			it.Seek([]byte(hi))
			if it.Valid() && string(it.Item().Key()) == hi {
				it.Next()
			}
		}
	} else {
		it.Seek([]byte(lo))
	}
	for ; it.Valid(); it.Next() {
		item := it.Item()
		k := string(item.Key())
		if !reverse && to != "" && k >= hi || reverse && k < lo {
			break
		}
		val, err := item.ValueCopy(nil)
		if err != nil {
			return fmt.Errorf("scan %s: %w", tx.prefix, err)
		}
		if err := fn(k[len(tx.prefix):], val); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

// View runs fn in one read-only transaction: it sees one consistent state.
func (sp *Space) View(fn func(tx *Txn) error) error {
	return sp.store.db.View(func(txn *badger.Txn) error {
		return fn(&Txn{txn: txn, prefix: sp.prefix})
	})
}

// Snapshot opens a read-only transaction that sees the space as it is now, however long it
// is read and whatever is written meanwhile (a raft snapshot streams the ledger from one);
// call the function returned when done.
func (sp *Space) Snapshot() (*Txn, func()) {
	txn := sp.store.db.NewTransaction(false)
	return &Txn{txn: txn, prefix: sp.prefix}, txn.Discard
}

// GetJSON decodes the JSON value at key into a T.
func GetJSON[T any](sp interface{ Get(string) ([]byte, error) }, key string) (T, error) {
	var v T
	raw, err := sp.Get(key)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("decode %s: %w", key, err)
	}
	return v, nil
}

// PutJSON stores v as JSON at key.
func PutJSON(sp interface{ Put(string, []byte) error }, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return sp.Put(key, raw)
}

// badgerLogger routes badger's messages to slog at their own levels; it keeps badger's
// chatty INFO lines at debug.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(f string, a ...any) { l.emit(slog.LevelError, f, a) }
func (l badgerLogger) Warningf(f string, a ...any) {
	l.emit(slog.LevelWarn, f, a)
}
func (l badgerLogger) Infof(f string, a ...any)  { l.emit(slog.LevelDebug, f, a) }
func (l badgerLogger) Debugf(f string, a ...any) { l.emit(slog.LevelDebug-4, f, a) }

func (l badgerLogger) emit(level slog.Level, f string, a []any) {
	if l.log == nil {
		return
	}
	l.log.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(f, a...)), "component", "badger")
}
