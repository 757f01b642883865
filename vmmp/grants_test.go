package vmmp

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

func testHost(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// TestGrants: the origin's transfer server gives the granted destination exactly the granted
// VM's files, and nothing to anyone else, to it after the grant is revoked or expired, or for
// a file outside the grant.
func TestGrants(t *testing.T) {
	origin, dest, stranger := testHost(t), testHost(t), testHost(t)
	g := NewGrants()
	srv, err := transfer.NewServer(origin, g.Authorize)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, h := range []host.Host{dest, stranger} {
		if err := h.Connect(ctx, peer.AddrInfo{ID: origin.ID(), Addrs: origin.Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	for name, body := range map[string]string{"disk.img": strings.Repeat("d", 1<<20), "state.zst": "memory", "secret": "not the vm's"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	id := vm.NewID()
	files := vm.Files{Dir: dir, Names: []string{"disk.img", "state.zst"}}
	fetch := func(h host.Host, id vm.ID, names ...string) error {
		_, err := transfer.Fetch(ctx, h, origin.ID(), transfer.Request{VM: id.String(), Files: names}, t.TempDir())
		return err
	}
	if err := fetch(dest, id, "disk.img"); err == nil {
		t.Fatal("a fetch before any grant succeeded")
	}
	if err := g.Grant(vm.Record{ID: id}, dest.ID(), files, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := fetch(dest, id, "disk.img", "state.zst"); err != nil {
		t.Fatalf("the granted destination: %v", err)
	}
	for _, tc := range []struct {
		name  string
		h     host.Host
		id    vm.ID
		files []string
	}{
		{"a stranger", stranger, id, []string{"disk.img"}},
		{"another vm", dest, vm.NewID(), []string{"disk.img"}},
		{"a file outside the grant", dest, id, []string{"secret"}},
	} {
		if err := fetch(tc.h, tc.id, tc.files...); err == nil || !strings.Contains(err.Error(), "no migration of this vm") {
			t.Fatalf("%s: %v, want a refusal", tc.name, err)
		}
	}
	g.Revoke(id)
	if err := fetch(dest, id, "disk.img"); err == nil {
		t.Fatal("a fetch after the grant was revoked succeeded")
	}
	now := time.Now()
	g.now = func() time.Time { return now }
	if err := g.Grant(vm.Record{ID: id}, dest.ID(), files, time.Second); err != nil {
		t.Fatal(err)
	}
	g.now = func() time.Time { return now.Add(2 * time.Second) }
	if _, err := g.Authorize(ctx, dest.ID(), transfer.Request{VM: id.String(), Files: []string{"disk.img"}}); !errors.Is(err, ErrNotGranted) {
		t.Fatalf("an expired grant: %v", err)
	}
}

// TestAskOriginOnANewConnection: a question the origin's connection swallows (as the
// connection of an origin that restarted does, until the transport gives up on it) is asked
// again on a new connection, and answered there; one the origin refuses is not asked again.
func TestAskOriginOnANewConnection(t *testing.T) {
	defer func(d time.Duration) { askTimeout = d }(askTimeout)
	askTimeout = time.Second
	origin, dest := testHost(t), testHost(t)
	g := NewGrants()
	id := vm.NewID()
	if err := g.Grant(vm.Record{ID: id, State: vm.State{Version: 7}}, dest.ID(), vm.Files{Dir: t.TempDir(), Names: []string{"disk.img"}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	// The first connection stands in for a dead one: what is asked on it goes unanswered.
	var mu sync.Mutex
	var dead network.Conn
	var asked []string
	origin.SetStreamHandler(OriginID, func(st network.Stream) {
		mu.Lock()
		if dead == nil {
			dead = st.Conn()
		}
		swallow := dead == st.Conn()
		asked = append(asked, st.Conn().ID())
		mu.Unlock()
		if swallow {
			io.Copy(io.Discard, st) // until the asker gives up on it
			return
		}
		g.answerOrigin(st)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := dest.Connect(ctx, peer.AddrInfo{ID: origin.ID(), Addrs: origin.Addrs()}); err != nil {
		t.Fatal(err)
	}
	a, err := askOrigin(ctx, dest, origin.ID(), id)
	if err != nil || a.State.Version != 7 || len(a.Files) != 1 {
		t.Fatalf("askOrigin: %+v, %v; want version 7 and its file", a, err)
	}
	mu.Lock()
	if len(asked) != 2 || asked[0] == asked[1] {
		t.Fatalf("asked on connections %v, want twice, on two", asked)
	}
	asked = nil
	mu.Unlock()
	if _, err := askOrigin(ctx, dest, origin.ID(), vm.NewID()); err == nil || errors.Is(err, errOriginUnreachable) || !strings.Contains(err.Error(), ErrNotGranted.Error()) {
		t.Fatalf("asked for a vm not granted: %v, want the origin's refusal", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 1 {
		t.Fatalf("a refusal was asked %d times, want once", len(asked))
	}
}
