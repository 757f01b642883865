package vmmp

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/virtuoso-market/virtuoso/vm"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func testAddr(t testing.TB, p, a string) Addr {
	t.Helper()
	id, err := peer.Decode(p)
	if err != nil {
		t.Fatal(err)
	}
	return Addr{Peer: id, Addr: ma.StringCast(a)}
}

func testMessages(t testing.TB) []Message {
	id := vm.ID{0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x41, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8}
	origin := testAddr(t, "12D3KooWGzYMiWfhaXgvPpMHG8HWdQMPqjmWfdRy3MEcCEQrWx1x", "/ip4/127.0.0.1/tcp/4710")
	agent := testAddr(t, "12D3KooWRBy97UB99e3J6hiPesre1MZeuNQvfan4gBziswrRJsNK", "/ip4/127.0.0.1/udp/4711/quic-v1")
	return []Message{
		{Kind: Query, VM: id},
		{Kind: Results, VM: id, Methods: []string{"blockdiff", "full"}},
		{Kind: Results, VM: id},
		{Kind: Req, VM: id, Version: 7, Origin: origin, Agent: agent, Method: "blockdiff"},
		{Kind: Heartbeat, VM: id},
		{Kind: Heartbeat, VM: id, Step: "copy", Done: 1 << 20, Total: 1 << 30, Wire: 70000},
		{Kind: Resp, VM: id, Version: 8, Success: true},
		{Kind: Resp, VM: id, Version: 7, Code: "no_capacity"},
	}
}

// TestMessagesGolden: the text form of every kind is fixed, and reads back as itself.
func TestMessagesGolden(t *testing.T) {
	var buf bytes.Buffer
	for _, m := range testMessages(t) {
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join("testdata", "messages.golden")
	if *update {
		os.WriteFile(path, buf.Bytes(), 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("encoded messages differ from %s:\n%s", path, buf.String())
	}
	r := bufio.NewReader(bytes.NewReader(want))
	for _, m := range testMessages(t) {
		got, err := ReadMessage(r)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := got.MarshalText()
		b, _ := m.MarshalText()
		if !bytes.Equal(a, b) {
			t.Fatalf("read back %s, want %s", a, b)
		}
	}
}

// TestMalformedMessages: everything but the one form of a message is refused.
func TestMalformedMessages(t *testing.T) {
	id := "6ba7b810-9dad-41d1-80b4-00c04fd430c8"
	p := "12D3KooWGzYMiWfhaXgvPpMHG8HWdQMPqjmWfdRy3MEcCEQrWx1x"
	for _, tc := range []struct{ name, line, says string }{
		{"not vmmp", "hello", "not <VMMP"},
		{"another version", "<VMMP 2.0 QUERY " + id + " METHODS>", "speaks 1.0"},
		{"double space", "<VMMP 1.0  QUERY " + id + " METHODS>", "single spaces"},
		{"unknown kind", "<VMMP 1.0 MIGRATE " + id + ">", "unknown message"},
		{"upper-case id", "<VMMP 1.0 HEARTBEAT " + strings.ToUpper(id) + ">", "vm id"},
		{"query without METHODS", "<VMMP 1.0 QUERY " + id + ">", "fields"},
		{"results count off", "<VMMP 1.0 RESULTS " + id + " 2 full>", "fields"},
		{"results too many", "<VMMP 1.0 RESULTS " + id + " 99>", "count"},
		{"method not a token", "<VMMP 1.0 RESULTS " + id + " 1 Full>", "method"},
		{"leading zero", "<VMMP 1.0 RESP " + id + " 07 SUCCESS>", "decimal"},
		{"heartbeat half progress", "<VMMP 1.0 HEARTBEAT " + id + " copy 1 2>", "want 0 or 4"},
		{"heartbeat step not a token", "<VMMP 1.0 HEARTBEAT " + id + " Copy 1 2 3>", "step"},
		{"heartbeat negative", "<VMMP 1.0 HEARTBEAT " + id + " copy -1 2 3>", "decimal"},
		{"outcome", "<VMMP 1.0 RESP " + id + " 7 MAYBE>", "SUCCESS or FAIL"},
		{"success with a code", "<VMMP 1.0 RESP " + id + " 7 SUCCESS oops>", "error code"},
		{"req bad peer", "<VMMP 1.0 REQ " + id + " 7 nobody /ip4/127.0.0.1/tcp/1 " + p + " /ip4/127.0.0.1/tcp/2 full>", "peer id"},
		{"req bad address", "<VMMP 1.0 REQ " + id + " 7 " + p + " 127.0.0.1:1 " + p + " /ip4/127.0.0.1/tcp/2 full>", "address"},
		{"req p2p in address", "<VMMP 1.0 REQ " + id + " 7 " + p + " /ip4/127.0.0.1/tcp/1/p2p/" + p + " " + p + " /ip4/127.0.0.1/tcp/2 full>", "/p2p/"},
		{"oversized", "<VMMP 1.0 HEARTBEAT " + id + strings.Repeat(" x", MaxMessageBytes) + ">", "cap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.line))
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Parse(%q) = %v, want ErrMalformed saying %q", tc.line, err, tc.says)
			}
		})
	}
	// A line longer than the cap is refused before it is all read.
	long := bufio.NewReaderSize(strings.NewReader(strings.Repeat("x", 10*MaxMessageBytes)+"\n"), 64)
	if _, err := ReadMessage(long); !errors.Is(err, ErrMalformed) {
		t.Fatalf("an endless line: %v", err)
	}
	if _, err := ReadMessage(bufio.NewReader(strings.NewReader("<VMMP 1.0 HEARTBEAT " + id + ">"))); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a message without its newline: %v", err)
	}
}

// FuzzParse: Parse never panics, and what it accepts encodes back to the same bytes.
func FuzzParse(f *testing.F) {
	for _, m := range testMessages(f) {
		b, err := m.MarshalText()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		again, err := m.MarshalText()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("%q parsed but encodes as %q (%v)", b, again, err)
		}
	})
}
