package vm

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// ID identifies a VM across the whole marketplace and every provider it moves to. The
// marketplace issues it (the report's uuid), not the hypervisor.
type ID [16]byte

// NewID returns a random ID in the form of a version 4 UUID.
func NewID() ID {
	var id ID
	rand.Read(id[:]) // crypto/rand.Read never fails
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	return id
}

// IsZero reports whether id is the zero ID, which no VM has.
func (id ID) IsZero() bool { return id == ID{} }

// String returns the UUID form, 8-4-4-4-12 lower-case hex digits.
func (id ID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], id[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], id[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], id[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], id[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], id[10:16])
	return string(b[:])
}

// ParseID accepts the UUID form (with dashes) or 32 hex digits, in either case.
func ParseID(text string) (ID, error) {
	var id ID
	s := text
	if len(s) == 36 {
		if s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
			return id, fmt.Errorf("%w: %q", ErrInvalidID, truncate(text))
		}
		s = s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	}
	if len(s) != 32 {
		return id, fmt.Errorf("%w: %q: want 32 hex digits or a UUID", ErrInvalidID, truncate(text))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return ID{}, fmt.Errorf("%w: %q: %w", ErrInvalidID, truncate(text), err)
	}
	return id, nil
}

// MarshalText writes the UUID form.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText parses as ParseID does.
func (id *ID) UnmarshalText(text []byte) error {
	v, err := ParseID(string(text))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// MAC is a VM's Ethernet address. The marketplace issues it with the ID (report §6.2.3) so that a
// VM keeps its address when it migrates.
type MAC [6]byte

// MACFor derives the MAC address the marketplace issues to VM id: a unicast, locally
// administered address taken from a hash of the ID, so every node derives the same one.
func MACFor(id ID) MAC {
	sum := sha256.Sum256(append([]byte("virtuoso mac\x00"), id[:]...))
	var m MAC
	copy(m[:], sum[:6])
	m[0] = m[0]&^0x01 | 0x02 // clear multicast, set locally administered
	return m
}

// IsZero reports whether m is 00:00:00:00:00:00, meaning "not issued".
func (m MAC) IsZero() bool { return m == MAC{} }

// LocallyAdministered reports whether m is a unicast, locally administered address, the only
// kind the marketplace issues.
func (m MAC) LocallyAdministered() bool { return m[0]&0x03 == 0x02 }

// String returns colon-separated lower-case hex ("52:54:00:12:34:56").
func (m MAC) String() string {
	const digits = "0123456789abcdef"
	b := make([]byte, 0, 17)
	for i, x := range m {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, digits[x>>4], digits[x&0x0f])
	}
	return string(b)
}

// ParseMAC parses six colon- or dash-separated hex octets.
func ParseMAC(text string) (MAC, error) {
	var m MAC
	if len(text) != 17 {
		return m, fmt.Errorf("%w: %q", ErrInvalidMAC, truncate(text))
	}
	s := strings.NewReplacer(":", "", "-", "").Replace(text)
	for i := 2; i < 17; i += 3 {
		if text[i] != ':' && text[i] != '-' {
			return m, fmt.Errorf("%w: %q", ErrInvalidMAC, text)
		}
	}
	if len(s) != 12 {
		return m, fmt.Errorf("%w: %q", ErrInvalidMAC, text)
	}
	if _, err := hex.Decode(m[:], []byte(s)); err != nil {
		return MAC{}, fmt.Errorf("%w: %q: %w", ErrInvalidMAC, text, err)
	}
	return m, nil
}

// MarshalText writes the colon form.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText parses as ParseMAC does.
func (m *MAC) UnmarshalText(text []byte) error {
	v, err := ParseMAC(string(text))
	if err != nil {
		return err
	}
	*m = v
	return nil
}
