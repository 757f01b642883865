package qemu

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Heads of real QEMU 7.2 migration streams of the test guest: saved with x-ignore-shared (the
// configuration section lists the capability, then the RAM section begins), and without it.
var (
	headIgnoreShared = mustHex("5145564d00000003070000000d70632d6934343066782d372e32051a636f6e66696775726174696f6e2f6361706162696c697469657300000001000000010f782d69676e6f72652d73686172656401000000020372616d000000000000000400")
	headEarlier      = mustHex("5145564d00000003070000000d70632d6934343066782d372e3201000000020372616d000000000000000400000000110920040670632e72616d000000001000000015303030303a30303a30322e302f7667612e7672616d0000000001000000")
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestParseStateHead(t *testing.T) {
	tests := []struct {
		name      string
		head      []byte
		ramInFile bool
		fail      bool
	}{
		{"x-ignore-shared", headIgnoreShared, true, false},
		{"earlier format", headEarlier, false, false},
		{"header only", headEarlier[:8], false, false},
		{"empty", nil, false, true},
		{"three bytes", []byte("QEV"), false, true},
		{"not qemu", []byte("not a migration stream"), false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStateHead(tt.head)
			if (err != nil) != tt.fail || got != tt.ramInFile {
				t.Fatalf("parseStateHead = %v, %v; want %v, failure %v", got, err, tt.ramInFile, tt.fail)
			}
		})
	}
}

func FuzzParseStateHead(f *testing.F) {
	f.Add(headIgnoreShared)
	f.Add(headEarlier)
	f.Fuzz(func(t *testing.T, b []byte) {
		inFile, err := parseStateHead(b)
		if err == nil && !bytes.HasPrefix(b, []byte(stateMagic)) {
			t.Fatalf("accepted a head without the magic: %q", b)
		}
		if inFile && !bytes.Contains(b, ignoreSharedMark) {
			t.Fatalf("ram in file without the capability: %q", b)
		}
	})
}

// TestPunchZeroPages checks that zero pages (written or not) become holes and that the
// content is unchanged.
func TestPunchZeroPages(t *testing.T) {
	const page = 4096
	// Per page: 'd' data, 'z' zeros written, 'h' never written.
	layout := "ddzzzhhdzdhhhzzzzzzzzzzzzzzzzzzzdzhzdd" + "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh" + "zzzz"
	path := filepath.Join(t.TempDir(), "memory.ram")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	data := 0
	for i, c := range layout {
		p := make([]byte, page)
		switch c {
		case 'd':
			p[i%page] = byte(i + 1)
			data++
			fallthrough
		case 'z':
			if _, err := f.WriteAt(p, int64(i)*page); err != nil {
				t.Fatal(err)
			}
		}
		want = append(want, p...)
	}
	if err := f.Truncate(int64(len(layout)) * page); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := punchZeroPages(path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("punching changed the content")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if used := fi.Sys().(*syscall.Stat_t).Blocks * 512; used != int64(data)*page {
		t.Fatalf("file takes %d bytes, want %d (its %d data pages)", used, data*page, data)
	}
}
