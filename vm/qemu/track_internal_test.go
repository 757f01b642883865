package qemu

import (
	"strings"
	"testing"
)

func TestParseDirtyMap(t *testing.T) {
	const size = 4 << 20
	ok := `[{ "start": 0, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true, "offset": 0},
{ "start": 1048576, "length": 65536, "depth": 0, "present": false, "zero": false, "data": false},
{ "start": 1114112, "length": 65536, "depth": 0, "present": false, "zero": false, "data": false},
{ "start": 1179648, "length": 3014656, "depth": 0, "present": true, "zero": false, "data": true, "offset": 1179648}]`
	got, err := parseDirtyMap(strings.NewReader(ok), size)
	if err != nil || len(got) != 1 || got[0].Off != 1<<20 || got[0].Len != 128<<10 {
		t.Fatalf("parse: %v, %v; want one merged extent of 128 KiB at 1 MiB", got, err)
	}
	for name, bad := range map[string]string{
		"a gap":         `[{"start": 0, "length": 65536, "data": true}, {"start": 131072, "length": 4063232, "data": true}]`,
		"short":         `[{"start": 0, "length": 65536, "data": true}]`,
		"no data field": `[{"start": 0, "length": 4194304}]`,
		"overlap":       `[{"start": 0, "length": 65536, "data": true}, {"start": 0, "length": 4194304, "data": true}]`,
		"not a list":    `{"start": 0}`,
		"cut":           `[{"start": 0, "length": 4194304, "data": true}`,
	} {
		if r, err := parseDirtyMap(strings.NewReader(bad), size); err == nil {
			t.Errorf("%s: parsed as %v, want an error", name, r)
		}
	}
}

// FuzzParseDirtyMap: whatever qemu-img prints, the parse fails or gives sorted, disjoint,
// non-empty extents inside the disk.
func FuzzParseDirtyMap(f *testing.F) {
	f.Add(`[{"start": 0, "length": 65536, "data": false}, {"start": 65536, "length": 65536, "data": true}]`, int64(131072))
	f.Add(`[]`, int64(0))
	f.Add(`[{"start": 0, "length": -1, "data": false}]`, int64(1))
	f.Fuzz(func(t *testing.T, in string, size int64) {
		r, err := parseDirtyMap(strings.NewReader(in), size)
		if err != nil {
			return
		}
		var end int64
		for _, e := range r {
			if e.Len <= 0 || e.Off < end || e.Off+e.Len > size {
				t.Fatalf("extents %v for a disk of %d", r, size)
			}
			end = e.Off + e.Len
		}
	})
}
