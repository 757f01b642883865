package vm

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"
)

// KV is the key-value store the inventory keeps its records in: the node's store gives each
// package a key space (node.Space) with this shape. Get is not needed: the inventory reads
// everything once at open and writes through.
type KV interface {
	Put(key string, val []byte) error
	Delete(key string) error
	List(fn func(key string, val []byte) error) error
}

// Record is what a provider knows about one VM it holds (report §6.2.2: vm_list, vm_origin_list,
// vm_version_list, vm_port_list in one record).
type Record struct {
	ID     ID     `json:"id"`
	Config Config `json:"config"`
	State  State  `json:"state"`
	Driver string `json:"driver"` // backend holding it: "qemu", "vsphere"
	// Owner and Lease are the buyer (peer ID) and the lease the VM runs under; the node checks
	// a requester against them. Opaque to this package.
	Owner string `json:"owner,omitempty"`
	Lease string `json:"lease,omitempty"`
	// Origin is the provider (peer ID) the VM migrated from; empty if it was created here.
	Origin string `json:"origin,omitempty"`
	// ConsolePort is the port of the open console session, 0 when none is open.
	ConsolePort int `json:"console_port,omitempty"`
	// Health is empty while nothing is known to be wrong with a started VM; otherwise it tells
	// the owner, in a sentence, that the VM runs but its guest shows no sign of running (see
	// Manager.CheckHealth). Any status change clears it.
	Health string `json:"health,omitempty"`
	// Cached marks the copy an origin keeps after the VM moved away: not this provider's to
	// run, kept so that a later return transfers only what changed.
	Cached  bool      `json:"cached,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// maxRecordBytes caps a record read back from the store.
const maxRecordBytes = 64 << 10

// Inventory is the local list of VMs, persisted in the node's store under one key per VM.
// One process owns it (the Manager); it is safe for concurrent use.
type Inventory struct {
	kv   KV
	mu   sync.Mutex
	recs map[ID]Record
}

// OpenInventory loads every record from kv.
func OpenInventory(kv KV) (*Inventory, error) {
	inv := &Inventory{kv: kv, recs: make(map[ID]Record)}
	err := kv.List(func(key string, val []byte) error {
		rec, err := decodeRecord(key, val)
		if err != nil {
			return err
		}
		inv.recs[rec.ID] = rec
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open vm inventory: %w", err)
	}
	return inv, nil
}

func decodeRecord(key string, val []byte) (Record, error) {
	id, err := ParseID(key)
	if err != nil {
		return Record{}, fmt.Errorf("inventory key %q: %w", truncate(key), err)
	}
	if len(val) > maxRecordBytes {
		return Record{}, fmt.Errorf("inventory record %s: %d bytes, over the %d cap", id, len(val), maxRecordBytes)
	}
	var rec Record
	if err := json.Unmarshal(val, &rec); err != nil {
		return Record{}, fmt.Errorf("inventory record %s: %w", id, err)
	}
	if rec.ID != id {
		return Record{}, fmt.Errorf("inventory record under %s is for %s", id, rec.ID)
	}
	if !rec.State.Status.Valid() {
		return Record{}, fmt.Errorf("inventory record %s: %w: %d", id, ErrUnknownStatus, rec.State.Status)
	}
	return rec, nil
}

// Get returns the record of VM id, or ErrNotFound.
func (inv *Inventory) Get(id ID) (Record, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	rec, ok := inv.recs[id]
	if !ok {
		return Record{}, fmt.Errorf("vm %s: %w", id, ErrNotFound)
	}
	return rec, nil
}

// List returns every record, oldest first.
func (inv *Inventory) List() []Record {
	inv.mu.Lock()
	out := make([]Record, 0, len(inv.recs))
	for _, r := range inv.recs {
		out = append(out, r)
	}
	inv.mu.Unlock()
	slices.SortFunc(out, func(a, b Record) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID.String(), b.ID.String()))
	})
	return out
}

// Put stores rec (stamping Updated), replacing any earlier record of the same VM.
func (inv *Inventory) Put(rec Record) (Record, error) {
	if rec.ID.IsZero() {
		return rec, fmt.Errorf("inventory: %w", ErrInvalidID)
	}
	rec.Updated = time.Now().UTC()
	if rec.Created.IsZero() {
		rec.Created = rec.Updated
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return rec, fmt.Errorf("inventory record %s: %w", rec.ID, err)
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if err := inv.kv.Put(rec.ID.String(), b); err != nil {
		return rec, fmt.Errorf("inventory record %s: %w", rec.ID, err)
	}
	inv.recs[rec.ID] = rec
	return rec, nil
}

// Delete removes the record of VM id; removing a missing record is not an error.
func (inv *Inventory) Delete(id ID) error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if err := inv.kv.Delete(id.String()); err != nil {
		return fmt.Errorf("inventory delete %s: %w", id, err)
	}
	delete(inv.recs, id)
	return nil
}
