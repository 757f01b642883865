package market

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
)

// MachineID identifies a provider's physical machine (the report's pmseller machineid). It is
// chosen by the provider when the machine is added.
type MachineID [16]byte

// LeaseID identifies a lease, chosen by the buyer when it proposes one.
type LeaseID [16]byte

func newID16() [16]byte {
	var b [16]byte
	rand.Read(b[:]) // crypto/rand.Read never fails
	return b
}

// NewMachineID returns a random machine ID.
func NewMachineID() MachineID { return MachineID(newID16()) }

// NewLeaseID returns a random lease ID.
func NewLeaseID() LeaseID { return LeaseID(newID16()) }

// String is 32 lower-case hex digits.
func (id MachineID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports the zero ID, which no machine has.
func (id MachineID) IsZero() bool { return id == MachineID{} }

// MarshalText writes the hex form.
func (id MachineID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText parses 32 hex digits.
func (id *MachineID) UnmarshalText(b []byte) error {
	return parseID16("machine", (*[16]byte)(id), string(b))
}

// ParseMachineID parses 32 hex digits.
func ParseMachineID(s string) (MachineID, error) {
	var id MachineID
	err := id.UnmarshalText([]byte(s))
	return id, err
}

// String is 32 lower-case hex digits.
func (id LeaseID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports the zero ID, which no lease has.
func (id LeaseID) IsZero() bool { return id == LeaseID{} }

// MarshalText writes the hex form.
func (id LeaseID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText parses 32 hex digits.
func (id *LeaseID) UnmarshalText(b []byte) error {
	return parseID16("lease", (*[16]byte)(id), string(b))
}

func parseID16(what string, dst *[16]byte, s string) error {
	if len(s) != 32 {
		return fmt.Errorf("%w: %s id %q: want 32 hex digits", ErrMalformed, what, truncate(s))
	}
	if _, err := hex.Decode(dst[:], []byte(s)); err != nil {
		return fmt.Errorf("%w: %s id %q: %w", ErrMalformed, what, truncate(s), err)
	}
	return nil
}

// Resources are amounts of the three resources the marketplace sells.
type Resources struct {
	SpeedBogomips int64 `json:"speed_bogomips"` // processor speed (Linux bogomips)
	MemoryMB      int64 `json:"memory_mb"`
	StorageMB     int64 `json:"storage_mb"`
}

// Fits reports whether r fits in free.
func (r Resources) Fits(free Resources) bool {
	return r.SpeedBogomips <= free.SpeedBogomips && r.MemoryMB <= free.MemoryMB && r.StorageMB <= free.StorageMB
}

// Add returns r + o.
func (r Resources) Add(o Resources) Resources {
	return Resources{r.SpeedBogomips + o.SpeedBogomips, r.MemoryMB + o.MemoryMB, r.StorageMB + o.StorageMB}
}

// Sub returns r - o, never below zero.
func (r Resources) Sub(o Resources) Resources {
	return Resources{max(0, r.SpeedBogomips-o.SpeedBogomips), max(0, r.MemoryMB-o.MemoryMB), max(0, r.StorageMB-o.StorageMB)}
}

// Percent is pct percent of each of r's amounts, rounded down.
func (r Resources) Percent(pct int) Resources {
	of := func(v int64) int64 { return v/100*int64(pct) + v%100*int64(pct)/100 }
	return Resources{of(r.SpeedBogomips), of(r.MemoryMB), of(r.StorageMB)}
}

func (r Resources) String() string {
	return fmt.Sprintf("%d bogomips, %d MB memory, %d MB storage", r.SpeedBogomips, r.MemoryMB, r.StorageMB)
}

// Limits on what offers, machines and configurations may say. They keep arithmetic on values
// from the network far from overflow and messages small.
const (
	MaxResource      = 1 << 40 // any one resource amount
	MinPeriod        = 1       // seconds
	MaxPeriod        = 366 * 24 * 3600
	maxName          = 64
	maxMethods       = 8
	maxMethodLen     = 32
	maxImages        = 32
	maxAddrs         = 8
	maxAddrLen       = 128
	maxNetworkMbps   = 10_000_000 // 10 Pbit/s
	defaultStorageS  = 24 * 3600
	defaultRunningS  = 3600
	defaultProcessor = "x86_64"
)

// Terms are how a machine's resources are sold (report pmseller): the chunk sizes, a price per
// chunk and the billing periods. Speed and memory are charged per running period while the VM
// runs, storage per storage period while it is stored. A provider may edit its terms at any
// time; a lease freezes the terms it was made under.
type Terms struct {
	SpeedUnit    int64 `json:"speed_unit"`     // bogomips per speed chunk
	MemoryUnit   int64 `json:"memory_unit"`    // MB per memory chunk
	StorageUnit  int64 `json:"storage_unit"`   // MB per storage chunk
	SpeedPrice   Money `json:"speed_price"`    // per speed chunk per running period
	MemoryPrice  Money `json:"memory_price"`   // per memory chunk per running period
	StoragePrice Money `json:"storage_price"`  // per storage chunk per storage period
	RunningSecs  int64 `json:"running_period"` // running period, seconds
	StorageSecs  int64 `json:"storage_period"` // storage period, seconds
}

// Validate checks that the terms are in range.
func (t Terms) Validate() error {
	var p node.Problems
	for _, u := range []struct {
		name string
		v    int64
	}{{"speed_unit", t.SpeedUnit}, {"memory_unit", t.MemoryUnit}, {"storage_unit", t.StorageUnit}} {
		if u.v < 1 || u.v > MaxResource {
			p.Add(u.name, fmt.Sprintf("%d out of range 1..%d", u.v, int64(MaxResource)))
		}
	}
	for _, m := range []struct {
		name string
		v    Money
	}{{"speed_price", t.SpeedPrice}, {"memory_price", t.MemoryPrice}, {"storage_price", t.StoragePrice}} {
		if m.v < 0 || m.v > MaxPrice {
			p.Add(m.name, fmt.Sprintf("%s out of range 0..%s", m.v, MaxPrice))
		}
	}
	for _, d := range []struct {
		name string
		v    int64
	}{{"running_period", t.RunningSecs}, {"storage_period", t.StorageSecs}} {
		if d.v < MinPeriod || d.v > MaxPeriod {
			p.Add(d.name, fmt.Sprintf("%ds out of range %d..%d seconds", d.v, MinPeriod, MaxPeriod))
		}
	}
	return p.Err(ErrInvalid, "terms")
}

// Machine is a physical machine a provider sells (report §5.2.2, table pmseller). Capacity and
// processor are locked once the machine is added; terms, name, network speed and migration
// methods may be edited.
type Machine struct {
	ID          MachineID `json:"id"`
	Name        string    `json:"name"`
	Processor   string    `json:"processor"`
	Capacity    Resources `json:"capacity"`
	Terms       Terms     `json:"terms"`
	NetworkMbps int64     `json:"network_mbps"` // the report's connectspeed
	Methods     []string  `json:"methods"`      // migration methods it accepts: "blockdiff", "full"
	Added       time.Time `json:"added"`
	Updated     time.Time `json:"updated"`
}

// Validate checks a machine description.
func (m Machine) Validate() error {
	var p node.Problems
	if m.ID.IsZero() {
		p.Add("id", "is zero")
	}
	p.Put(checkText("name", m.Name, true))
	p.Put(checkText("processor", m.Processor, true))
	p.Nest("capacity", checkCapacity(m.Capacity))
	if m.NetworkMbps < 0 || m.NetworkMbps > maxNetworkMbps {
		p.Add("network_mbps", fmt.Sprintf("%d out of range 0..%d", m.NetworkMbps, maxNetworkMbps))
	}
	p.Put(checkMethods(m.Methods))
	p.Nest("terms", m.Terms.Validate())
	return p.Err(ErrInvalid, "machine")
}

func checkCapacity(c Resources) error {
	var p node.Problems
	for _, r := range []struct {
		name string
		v    int64
	}{{"speed_bogomips", c.SpeedBogomips}, {"memory_mb", c.MemoryMB}, {"storage_mb", c.StorageMB}} {
		if r.v < 1 || r.v > MaxResource {
			p.Add(r.name, fmt.Sprintf("%d out of range 1..%d", r.v, int64(MaxResource)))
		}
	}
	return p.Err(ErrInvalid, "capacity")
}

func checkMethods(ms []string) error {
	if len(ms) > maxMethods {
		return &node.FieldError{Field: "methods", Err: fmt.Errorf("%d migration methods, at most %d", len(ms), maxMethods)}
	}
	for _, m := range ms {
		if m == "" || len(m) > maxMethodLen || strings.ContainsFunc(m, notNameRune) {
			return &node.FieldError{Field: "methods", Err: fmt.Errorf("migration method %q: want a short lower-case name like blockdiff", truncate(m))}
		}
	}
	return nil
}

func notNameRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
}

// checkText checks a human-readable field from the network: bounded, printable, one line.
func checkText(name, v string, required bool) error {
	problem := func(format string, args ...any) error {
		return &node.FieldError{Field: name, Err: fmt.Errorf(format, args...)}
	}
	if required && strings.TrimSpace(v) == "" {
		return problem("is empty")
	}
	if len(v) > maxName {
		return problem("longer than %d bytes", maxName)
	}
	if strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f || r == 0xfffd }) {
		return problem("has control characters")
	}
	return nil
}

// MachineEdit changes the editable fields of a machine; nil fields stay as they are.
type MachineEdit struct {
	Name        *string   `json:"name,omitempty"`
	Terms       *Terms    `json:"terms,omitempty"`
	NetworkMbps *int64    `json:"network_mbps,omitempty"`
	Methods     *[]string `json:"methods,omitempty"`
	// Capacity and Processor are locked (report §5.2.3); setting them is an error that says so.
	Capacity  *Resources `json:"capacity,omitempty"`
	Processor *string    `json:"processor,omitempty"`
}

// apply returns m with the edit applied.
func (e MachineEdit) apply(m Machine) (Machine, error) {
	if e.Capacity != nil && *e.Capacity != m.Capacity {
		return m, &node.FieldError{Field: "capacity", Err: fmt.Errorf("%w: the capacity of a machine is locked once added; add a new machine (copy from this one) instead", ErrLocked)}
	}
	if e.Processor != nil && *e.Processor != m.Processor {
		return m, &node.FieldError{Field: "processor", Err: fmt.Errorf("%w: the processor of a machine is locked once added", ErrLocked)}
	}
	if e.Name != nil {
		m.Name = *e.Name
	}
	if e.Terms != nil {
		m.Terms = *e.Terms
	}
	if e.NetworkMbps != nil {
		m.NetworkMbps = *e.NetworkMbps
	}
	if e.Methods != nil {
		m.Methods = slices.Clone(*e.Methods)
	}
	return m, m.Validate()
}

// DefaultMethods are the migration methods a machine accepts unless told otherwise.
func DefaultMethods() []string { return []string{"blockdiff", "full"} }
