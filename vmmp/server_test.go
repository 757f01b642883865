package vmmp

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

func addrOf(h host.Host) Addr { return Addr{Peer: h.ID(), Addr: h.Addrs()[0]} }

// TestMigrationProtocol: the agent QUERYs the destination, sends REQ, hears heartbeats while
// the destination asks the origin for the VM, pulls and adopts it, and gets RESP SUCCESS at
// the next version; a stale version, a VM the origin did not grant, and a destination gone
// silent fail the way the agent can act on.
func TestMigrationProtocol(t *testing.T) {
	g := qemutest.BuildGuest(t)
	origin, dest := newProvider(t, g), newProvider(t, g)
	agent := testHost(t)
	origin.grants.ServeOrigin(origin.h)
	var admitted atomic.Int32
	srv := NewServer(dest.h, dest.mgr, ServerOptions{
		Methods: func(vm.ID) []string { return []string{"blockdiff", "full"} },
		Admit: func(context.Context, peer.ID, Message) (Admission, error) {
			admitted.Add(1)
			return Admission{Owner: "buyer", Lease: "lease-2"}, nil
		},
		Heartbeat: 50 * time.Millisecond,
	})
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range [][2]host.Host{{agent, dest.h}, {dest.h, origin.h}} {
		if err := c[0].Connect(ctx, peer.AddrInfo{ID: c[1].ID(), Addrs: c[1].Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	stored := func() (vm.Record, vm.Files) {
		t.Helper()
		id := vm.NewID()
		if _, err := origin.mgr.Create(ctx, vm.CreateRequest{Config: g.Config(id, 128, 64), Owner: "buyer"}); err != nil {
			t.Fatal(err)
		}
		rec, err := origin.mgr.BeginMigration(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		files, err := origin.mgr.Driver().Files(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return rec, files
	}
	req := func(rec vm.Record, version uint64) Message {
		return Message{Kind: Req, VM: rec.ID, Version: version, Origin: addrOf(origin.h), Agent: addrOf(agent), Method: "blockdiff"}
	}

	rec, files := stored()
	methods, err := QueryMethods(ctx, agent, dest.h.ID(), rec.ID)
	if err != nil || !slices.Equal(methods, []string{"blockdiff", "full"}) {
		t.Fatalf("QUERY: %v, %v", methods, err)
	}
	if err := origin.grants.Grant(rec, dest.h.ID(), files, time.Minute); err != nil {
		t.Fatal(err)
	}
	beats := 0
	resp, err := Request(ctx, agent, dest.h.ID(), req(rec, rec.State.Version), 5*time.Second, func(Message) { beats++ })
	if err != nil || !resp.Success || resp.Version != rec.State.Version+1 {
		t.Fatalf("REQ: %+v, %v", resp, err)
	}
	got, err := dest.mgr.Get(rec.ID)
	if err != nil || got.State.Status != vm.StatusStored || got.State.Version != resp.Version || got.Owner != "buyer" || got.Lease != "lease-2" {
		t.Fatalf("at the destination after RESP: %+v, %v", got, err)
	}
	t.Logf("RESP after %d heartbeats", beats)

	// A REQ for a version the origin does not hold: FAIL stale, nothing adopted.
	rec2, files2 := stored()
	origin.grants.Grant(rec2, dest.h.ID(), files2, time.Minute)
	if resp, err := Request(ctx, agent, dest.h.ID(), req(rec2, rec2.State.Version+5), 5*time.Second, nil); !errors.Is(err, ErrFailed) || resp.Code != "stale" {
		t.Fatalf("a stale REQ: %+v, %v", resp, err)
	}
	// A VM the origin did not grant this destination: FAIL, nothing adopted.
	origin.grants.Revoke(rec2.ID)
	if _, err := Request(ctx, agent, dest.h.ID(), req(rec2, rec2.State.Version), 5*time.Second, nil); !errors.Is(err, ErrFailed) {
		t.Fatalf("a REQ the origin did not grant: %v", err)
	}
	if _, err := dest.mgr.Get(rec2.ID); !errors.Is(err, vm.ErrNotFound) {
		t.Fatalf("a failed migration left a vm at the destination: %v", err)
	}

	// A destination that goes silent: the agent gives up after its window.
	silent := newProvider(t, g)
	hold := make(chan struct{})
	defer close(hold)
	srv2 := NewServer(silent.h, silent.mgr, ServerOptions{
		Admit: func(ctx context.Context, _ peer.ID, _ Message) (Admission, error) {
			<-hold
			return Admission{}, errors.New("too late")
		},
		Heartbeat: time.Hour,
	})
	defer func() { go srv2.Close() }()
	if err := agent.Connect(ctx, peer.AddrInfo{ID: silent.h.ID(), Addrs: silent.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = Request(ctx, agent, silent.h.ID(), req(rec2, rec2.State.Version), 500*time.Millisecond, nil)
	if !errors.Is(err, ErrMissedHeartbeat) || !strings.Contains(err.Error(), "500ms") {
		t.Fatalf("a silent destination: %v", err)
	}
	t.Logf("missed heartbeat noticed after %v", time.Since(start).Round(time.Millisecond))
}
