package vm

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestParseID(t *testing.T) {
	const uuid = "0123abcd-4567-89ef-0123-456789abcdef"
	tests := []struct {
		name, in string
		want     string
		err      error
	}{
		{"uuid", uuid, uuid, nil},
		{"upper uuid", "0123ABCD-4567-89EF-0123-456789ABCDEF", uuid, nil},
		{"hex", "0123abcd456789ef0123456789abcdef", uuid, nil},
		{"short", "0123abcd", "", ErrInvalidID},
		{"misplaced dash", "0123abcd4-567-89ef-0123-456789abcdef", "", ErrInvalidID},
		{"not hex", "0123abcd-4567-89ef-0123-456789abcdeg", "", ErrInvalidID},
		{"empty", "", "", ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := ParseID(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err == nil && id.String() != tt.want {
				t.Fatalf("ID = %s, want %s", id, tt.want)
			}
		})
	}
}

func TestNewIDUnique(t *testing.T) {
	seen := map[ID]bool{}
	for range 1000 {
		id := NewID()
		if seen[id] || id.IsZero() {
			t.Fatalf("duplicate or zero id %s", id)
		}
		seen[id] = true
		if id[6]>>4 != 4 {
			t.Fatalf("id %s is not a version 4 uuid", id)
		}
	}
}

func TestMAC(t *testing.T) {
	id := NewID()
	m := MACFor(id)
	if m != MACFor(id) {
		t.Fatal("MACFor is not deterministic")
	}
	if !m.LocallyAdministered() {
		t.Fatalf("MAC %s is not unicast locally administered", m)
	}
	back, err := ParseMAC(m.String())
	if err != nil || back != m {
		t.Fatalf("ParseMAC(%s) = %s, %v", m, back, err)
	}
	if MACFor(NewID()) == m {
		t.Fatal("two ids gave the same MAC")
	}
	for _, bad := range []string{"", "52:54:00:12:34", "52:54:00:12:34:5g", "52-54-00-12-34-5", "5254:00:12:34:56:"} {
		if _, err := ParseMAC(bad); !errors.Is(err, ErrInvalidMAC) {
			t.Fatalf("ParseMAC(%q) err = %v", bad, err)
		}
	}
}

func TestConfigJSON(t *testing.T) {
	id := NewID()
	cfg := Config{ID: id, MemoryMB: 256, DiskMB: 64, MAC: MACFor(id), Processor: "x86_64"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var back Config
	if err := json.Unmarshal(b, &back); err != nil || back.ID != id || back.MAC != cfg.MAC {
		t.Fatalf("round trip %s -> %+v, %v", b, back, err)
	}
	bad := []Config{
		{},
		{ID: id, MemoryMB: 256, DiskMB: 64},
		{ID: id, MemoryMB: 0, DiskMB: 64, MAC: MACFor(id)},
		{ID: id, MemoryMB: 256, DiskMB: -1, MAC: MACFor(id)},
		{ID: id, MemoryMB: 256, DiskMB: 64, MAC: MAC{1, 2, 3, 4, 5, 6}},
		{ID: id, MemoryMB: 256, DiskMB: 64, MAC: MACFor(id), Boot: &KernelBoot{}},
	}
	for i, c := range bad {
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("case %d: Validate = %v, want ErrInvalidConfig", i, err)
		}
	}
}

func FuzzParseID(f *testing.F) {
	f.Add("0123abcd-4567-89ef-0123-456789abcdef")
	f.Add("0123abcd456789ef0123456789abcdef")
	f.Add("------------------------------------")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidID) {
				t.Fatalf("error %v is not ErrInvalidID", err)
			}
			return
		}
		if back, err := ParseID(id.String()); err != nil || back != id {
			t.Fatalf("round trip %q -> %s -> %s, %v", s, id, back, err)
		}
	})
}

func FuzzParseMAC(f *testing.F) {
	f.Add("52:54:00:12:34:56")
	f.Add("52-54-00-12-34-56")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseMAC(s)
		if err != nil {
			return
		}
		if back, err := ParseMAC(m.String()); err != nil || back != m {
			t.Fatalf("round trip %q -> %s -> %s, %v", s, m, back, err)
		}
	})
}
