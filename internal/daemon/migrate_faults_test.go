package daemon_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp"
)

// TestMigrationFaults: a destination out of disk, a partition between the providers, and a
// destination that answers SUCCESS without fetching the VM. Each time the migration reverts:
// the VM is at the origin only, as it was, under its old lease, the destination holds
// nothing of it; once the fault is gone the next move succeeds.
func TestMigrationFaults(t *testing.T) {
	provider := func(cfg *node.Config) { cfg.Roles.Provider, cfg.Provider.Accel = true, "tcg" }
	a := startNode(t, provider, daemon.Options{})
	b := startNode(t, provider, daemon.Options{})
	buyer := startNode(t, nil, daemon.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	machines := map[*daemon.Node]market.Machine{}
	for i, p := range []*daemon.Node{a, b} {
		if err := buyer.Host().Connect(ctx, peer.AddrInfo{ID: p.ID(), Addrs: p.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
		m, err := p.Provider.AddMachine(ctx, market.DemoMachine(i))
		if err != nil {
			t.Fatal(err)
		}
		machines[p] = m
		testwait.Eventually(t, 20*time.Second, func() error {
			if _, ok := buyer.Book.Get(p.ID(), m.ID); !ok {
				return errors.New("the offer did not reach the buyer")
			}
			return nil
		})
	}
	v, err := buyer.Buyer.Store(ctx, market.StoreRequest{ConfigName: "tiny", Provider: a.ID().String(), Machine: machines[a].ID})
	if err != nil {
		t.Fatal(err)
	}
	// Data on the disk, so that the copy has bytes to write.
	files, err := a.VMs.Manager().Driver().Files(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8<<20)
	rand.Read(data)
	disk, err := os.OpenFile(filepath.Join(files.Dir, files.Names[0]), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	disk.Close()

	migrate := func(to *daemon.Node) (market.VM, error) {
		return buyer.Buyer.Migrate(ctx, v.ID, market.MigrateRequest{Provider: to.ID().String(), Machine: machines[to].ID})
	}
	// at checks that the VM is at p only, stored, under the buyer's lease there.
	at := func(p, other *daemon.Node) market.VM {
		t.Helper()
		got, err := buyer.Buyer.Status(ctx, v.ID)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := p.VMs.Manager().Get(v.ID)
		if got.Provider != p.ID() || err != nil || rec.Cached || rec.State != got.State || rec.Lease != got.Lease.String() {
			t.Fatalf("the buyer's vm %+v at %s; at %s: %+v, %v", got.State, market.Short(got.Provider), market.Short(p.ID()), rec, err)
		}
		if rec, err := other.VMs.Manager().Get(v.ID); err == nil && !rec.Cached {
			t.Fatalf("the vm is live at %s too: %+v", market.Short(other.ID()), rec)
		}
		testwait.Eventually(t, 20*time.Second, func() error {
			if l, err := other.Provider.Lease(v.ID); err == nil && l.Holds() {
				return errors.New(market.Short(other.ID()) + " still holds capacity for the vm: " + l.State)
			}
			return nil
		})
		if m, err := buyer.Buyer.MigrationOf(v.ID); err == nil && !m.Ended() {
			t.Fatalf("the migration is at step %s", m.Step)
		}
		return got
	}
	before := at(a, b)

	// 1. The destination's disk is full: its copy fails, the move reverts.
	staging := b.Home().Path("vms", "staging")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", staging).CombinedOutput(); err != nil {
		t.Fatalf("a full disk for the destination (needs root): mount tmpfs: %v: %s", err, out)
	}
	unmounted := false
	unmount := func() {
		if !unmounted {
			unmounted = true
			if out, err := exec.Command("umount", staging).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", staging, err, out)
			}
		}
	}
	t.Cleanup(unmount)
	if _, err := migrate(b); !errors.Is(err, market.ErrReverted) || !strings.Contains(err.Error(), "no_space") {
		t.Fatalf("a move to a destination out of disk: %v, want reverted for want of space", err)
	}
	if got := at(a, b); got.Lease != before.Lease {
		t.Fatalf("the lease after the revert is %s, was %s", got.Lease, before.Lease)
	}
	if m, _ := buyer.Buyer.MigrationOf(v.ID); m.Step != market.StepReverted || m.Error == "" {
		t.Fatalf("the reverted migration: %+v", m)
	}
	if left, _ := os.ReadDir(staging); len(left) != 0 {
		t.Fatalf("the full disk keeps %d staged entries", len(left))
	}
	unmount()

	// 2. The providers cannot reach each other: the destination cannot fetch, the move
	// reverts; healed, it succeeds.
	a.Refuse(b.ID(), time.Now().Add(time.Hour))
	b.Refuse(a.ID(), time.Now().Add(time.Hour))
	if _, err := migrate(b); !errors.Is(err, market.ErrReverted) || !strings.Contains(err.Error(), "origin_unreachable") {
		t.Fatalf("a move across a partition: %v, want reverted, the origin unreachable", err)
	}
	at(a, b)
	a.Refuse(b.ID(), time.Now())
	b.Refuse(a.ID(), time.Now())
	if _, err := migrate(b); err != nil {
		t.Fatalf("the move once the disk has room and the partition healed: %v", err)
	}
	at(b, a)
	if _, err := migrate(a); err != nil {
		t.Fatal(err)
	}
	back := at(a, b)

	// 3. A destination that answers SUCCESS at once, without fetching anything: the origin
	// knows it never sent the files, the move is void and reverts.
	b.Host().SetStreamHandler(vmmp.ProtocolID, func(st network.Stream) {
		defer st.Close()
		req, err := vmmp.ReadMessage(bufio.NewReader(st))
		if err != nil {
			st.Reset()
			return
		}
		vmmp.WriteMessage(st, vmmp.Message{Kind: vmmp.Resp, VM: req.VM, Version: req.Version + 1, Success: true})
	})
	_, err = migrate(b)
	if !errors.Is(err, market.ErrReverted) || !strings.Contains(err.Error(), "never fetched") {
		t.Fatalf("a move to a destination that lies: %v, want reverted, never fetched", err)
	}
	if got := at(a, b); got.Lease != back.Lease || got.State.Status != vm.StatusStored {
		t.Fatalf("after the lie: %+v under lease %s, was %s", got.State, got.Lease, back.Lease)
	}
}
