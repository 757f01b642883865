package ledger

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/zeebo/blake3"

	"github.com/virtuoso-market/virtuoso/market"
)

// Wire constants of entries.
const (
	// MaxEntryBytes caps one encoded entry: a lease body carries a whole countersigned lease
	// envelope (market.MaxLeaseBytes) in base64.
	MaxEntryBytes = 32 << 10
	maxEntryBody  = 28 << 10
	maxSigBytes   = 128
	entryDomain   = "virtuoso/ledger-entry/1\n"
)

var entryMagic = [3]byte{'V', 'E', 1}

// Errors of entries and of the state machine, matched with errors.Is.
var (
	// ErrMalformed: bytes that are not an entry, or an entry out of range.
	ErrMalformed = errors.New("malformed ledger entry")
	// ErrForged: a signature does not verify.
	ErrForged = errors.New("bad signature")
	// ErrOrder: an entry's sequence number or previous hash does not continue its author's log.
	ErrOrder = errors.New("out of order")
	// ErrEquivocated: the author signed two different entries with one sequence number; its
	// later entries are refused.
	ErrEquivocated = errors.New("author equivocated")
)

// Hash is the BLAKE3 hash of an entry's exact bytes.
type Hash [32]byte

// HashOf returns the hash of raw bytes.
func HashOf(raw []byte) Hash { return Hash(blake3.Sum256(raw)) }

// IsZero reports the zero hash, the previous hash of an author's first entry.
func (h Hash) IsZero() bool { return h == Hash{} }

// String is 64 lower-case hex digits.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// MarshalText writes the hex form.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText reads the hex form.
func (h *Hash) UnmarshalText(b []byte) error {
	if len(b) != 2*len(h) {
		return fmt.Errorf("%w: hash of %d hex digits, want %d", ErrMalformed, len(b), 2*len(h))
	}
	_, err := hex.Decode(h[:], b)
	if err != nil {
		return fmt.Errorf("%w: hash: %w", ErrMalformed, err)
	}
	return nil
}

// Type names what an entry records.
type Type string

// Entry types.
const (
	// TypeLease records a countersigned lease; either party may enter it.
	TypeLease Type = "lease"
	// TypeStatus records a VM's status change with its version, entered by its provider.
	TypeStatus Type = "status"
	// TypeMachine records a provider's machine added, edited or removed.
	TypeMachine Type = "machine"
	// TypeMigration records a committed migration: the VM moves to a new lease.
	TypeMigration Type = "migration"
	// TypeDeposit creates money in an account; only a coordinator enters it.
	TypeDeposit Type = "deposit"
	// TypeTransfer moves money from the author's account to another.
	TypeTransfer Type = "transfer"
	// TypeTick is a coordinator's clock: charges fall due up to its time.
	TypeTick Type = "tick"
	// TypeCoordinator adds a coordinator to, or removes one from, those who may deposit and
	// tick; the first one of an empty ledger is its genesis.
	TypeCoordinator Type = "coordinator"
)

// Types lists every entry type.
func Types() []Type {
	return []Type{TypeLease, TypeStatus, TypeMachine, TypeMigration, TypeDeposit, TypeTransfer, TypeTick, TypeCoordinator}
}

// Entry is one record of a node's log: signed by its author, chained to the author's previous
// entry by hash, numbered one after it.
type Entry struct {
	Author peer.ID         `json:"author"`
	Seq    uint64          `json:"seq"`
	Prev   Hash            `json:"prev"`
	Time   time.Time       `json:"time"`
	Type   Type            `json:"type"`
	Body   json.RawMessage `json:"body"`
}

// Validate checks the entry's fields and its body for its type.
func (e Entry) Validate() error {
	_, err := e.check()
	return err
}

// check validates the entry and returns its decoded body.
func (e Entry) check() (Body, error) {
	switch {
	case e.Author.Validate() != nil:
		return nil, fmt.Errorf("%w: author is not a peer id", ErrMalformed)
	case e.Seq == 0:
		return nil, fmt.Errorf("%w: sequence 0 (an author's first entry is 1)", ErrMalformed)
	case (e.Seq == 1) != e.Prev.IsZero():
		return nil, fmt.Errorf("%w: entry %d: the previous hash is zero exactly for the first entry", ErrMalformed, e.Seq)
	case e.Time.IsZero() || e.Time.Year() < 2000 || e.Time.Year() > 9999:
		return nil, fmt.Errorf("%w: time %v out of range", ErrMalformed, e.Time)
	case !slices.Contains(Types(), e.Type):
		return nil, fmt.Errorf("%w: unknown entry type %q", ErrMalformed, e.Type)
	}
	return e.Decoded()
}

// Decoded returns the entry's body as its type's body struct (LeaseBody, StatusBody, ...),
// validated on its own; the state machine checks it against the ledger.
func (e Entry) Decoded() (Body, error) {
	var b Body
	switch e.Type {
	case TypeLease:
		b = &LeaseBody{}
	case TypeStatus:
		b = &StatusBody{}
	case TypeMachine:
		b = &MachineBody{}
	case TypeMigration:
		b = &MigrationBody{}
	case TypeDeposit:
		b = &DepositBody{}
	case TypeTransfer:
		b = &TransferBody{}
	case TypeTick:
		b = &TickBody{}
	case TypeCoordinator:
		b = &CoordinatorBody{}
	default:
		return nil, fmt.Errorf("%w: unknown entry type %q", ErrMalformed, e.Type)
	}
	// The body is a member of the entry's JSON, whose duplicate keys Decode refused already;
	// an entry made here has none.
	if err := decodeBody(e.Body, b); err != nil {
		return nil, fmt.Errorf("%w: %s body: %w", ErrMalformed, e.Type, err)
	}
	if err := b.validate(e); err != nil {
		return nil, fmt.Errorf("%w: %s body: %w", ErrMalformed, e.Type, err)
	}
	return b, nil
}

// Signed is an entry with its exact bytes and their hash.
type Signed struct {
	Entry
	Raw  []byte
	Hash Hash
	body Body // decoded and validated
}

// Decoded returns the entry's body, decoded once when the entry was.
func (s Signed) Decoded() (Body, error) {
	if s.body != nil {
		return s.body, nil
	}
	return s.Entry.Decoded()
}

// Key identifies an entry: its author and sequence number.
func (s Signed) Key() string { return fmt.Sprintf("%s/%d", s.Author, s.Seq) }

// NewEntry makes the entry of type t with body b, after prev (the author's previous entry, or
// nil for its first), at time now.
func NewEntry(author peer.ID, prev *Signed, now time.Time, t Type, b Body) (Entry, error) {
	body, err := json.Marshal(b)
	if err != nil {
		return Entry{}, fmt.Errorf("encode %s body: %w", t, err)
	}
	e := Entry{Author: author, Seq: 1, Time: now.UTC().Truncate(time.Microsecond), Type: t, Body: body}
	if prev != nil {
		e.Seq, e.Prev = prev.Seq+1, prev.Hash
	}
	return e, nil
}

// Sign encodes e and signs it with key, which must be its author's.
func Sign(e Entry, key crypto.PrivKey) (Signed, error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return Signed{}, err
	}
	if id != e.Author {
		return Signed{}, fmt.Errorf("sign entry: key of %s, author %s", id, e.Author)
	}
	b, err := e.check()
	if err != nil {
		return Signed{}, err
	}
	body, err := json.Marshal(e)
	if err != nil {
		return Signed{}, err
	}
	if len(body) > maxEntryBody {
		return Signed{}, fmt.Errorf("%w: entry of %d bytes, over the %d-byte cap", ErrMalformed, len(body), maxEntryBody)
	}
	sig, err := key.Sign(append([]byte(entryDomain), body...))
	if err != nil {
		return Signed{}, err
	}
	raw := market.EncodeEnvelope(entryMagic, body, sig)
	return Signed{Entry: e, Raw: raw, Hash: HashOf(raw), body: b}, nil
}

// peek reads an entry's fields without checking its signature: enough for a leader to refuse
// what is plainly not the pusher's or dated in the future before raft, where every replica
// checks the signature.
func peek(raw []byte) (Entry, error) {
	f, err := market.DecodeEnvelope(raw, entryMagic, MaxEntryBytes, maxEntryBody, maxSigBytes)
	if err != nil {
		return Entry{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	var e Entry
	if err := market.DecodeStrict(f[0], &e); err != nil {
		return Entry{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return e, nil
}

// Decode reads an entry from untrusted bytes: size caps, strict JSON, field and body ranges,
// and its author's signature. Whether it continues its author's log is the state machine's
// question.
func Decode(raw []byte) (Signed, error) {
	f, err := market.DecodeEnvelope(raw, entryMagic, MaxEntryBytes, maxEntryBody, maxSigBytes)
	if err != nil {
		return Signed{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	var e Entry
	if err := market.DecodeStrict(f[0], &e); err != nil {
		return Signed{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	b, err := e.check()
	if err != nil {
		return Signed{}, err
	}
	if !signedBy(e.Author, entryDomain, f[0], f[1]) {
		return Signed{}, fmt.Errorf("%w: entry %d of %s", ErrForged, e.Seq, market.Short(e.Author))
	}
	raw = slices.Clone(raw)
	return Signed{Entry: e, Raw: raw, Hash: HashOf(raw), body: b}, nil
}

// decodeBody decodes one JSON value, nothing after it.
func decodeBody(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the body")
	}
	return nil
}

// signedBy reports whether sig is id's signature over domain followed by body.
func signedBy(id peer.ID, domain string, body, sig []byte) bool {
	pub, err := id.ExtractPublicKey()
	if err != nil {
		return false
	}
	ok, err := pub.Verify(append([]byte(domain), body...), sig)
	return err == nil && ok
}
