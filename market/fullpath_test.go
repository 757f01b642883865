package market

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// TestFullPath is what a buyer does, on real nodes with a real QEMU VM: browse the catalog,
// pick the preconfigured image a provider advertises, search, store, start, open the console
// through the tunnel and complete a VNC handshake, stop.
func TestFullPath(t *testing.T) {
	g := qemutest.BuildGuest(t)
	nodes := marketCluster(t, 2, func(i int) *spec {
		if i == 0 {
			return seller(&g)
		}
		return fast()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	provider, buyer := nodes[0], nodes[1]
	m, err := provider.prov.AddMachine(ctx, testSpec("qemu-host", Resources{SpeedBogomips: 4000, MemoryMB: 1024, StorageMB: 4096}))
	if err != nil {
		t.Fatal(err)
	}
	waitOffer(t, nodes, provider.ID(), m.ID, 1, 30*time.Second)

	// configs: the provider's image shows up as a preconfigured configuration.
	cfgs, err := buyer.book.Configs()
	if err != nil {
		t.Fatal(err)
	}
	var pre *ConfigView
	for i, c := range cfgs {
		if c.Preconfigured && c.Name == "busybox" {
			pre = &cfgs[i]
		}
	}
	if pre == nil {
		t.Fatalf("no preconfigured busybox configuration in the catalog: %+v", cfgs)
	}

	// search: the one provider, priced exactly.
	matches, err := buyer.book.Search(SearchQuery{ConfigName: "busybox", Edit: ConfigEdit{DiskMB: 64}})
	if err != nil || len(matches) != 1 || matches[0].Machine != m.ID {
		t.Fatalf("search: %+v, %v", matches, err)
	}
	want, _ := m.Terms.Quote(Resources{pre.SpeedBogomips, pre.MemoryMB, 64})
	if matches[0].Quote != want {
		t.Fatalf("search quote %+v, want %+v", matches[0].Quote, want)
	}

	// store at the terms the search showed.
	v, err := buyer.buyer.Store(ctx, StoreRequest{ConfigName: "busybox", Edit: ConfigEdit{DiskMB: 64},
		Provider: matches[0].Provider.String(), Machine: m.ID, Terms: &matches[0].Terms})
	if err != nil {
		t.Fatal(err)
	}
	if v.State != (vm.State{Status: vm.StatusStored, Version: 1}) || v.Quote != want {
		t.Fatalf("stored: %+v", v)
	}

	// start: the guest boots on the provider.
	if v, err = buyer.buyer.Control(ctx, v.ID, vm.ActionStart); err != nil {
		t.Fatal(err)
	}
	if v.State != (vm.State{Status: vm.StatusStarted, Version: 2}) {
		t.Fatalf("started: %+v", v.State)
	}
	qemutest.WaitSerial(t, ctx, provider.drv, v.ID, "boot", func(out string) bool { return strings.Contains(out, qemutest.Banner) })

	// console: a VNC handshake through the buyer's loopback port and the libp2p tunnel.
	sess, err := buyer.buyer.Console(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sess.Addr, "127.0.0.1:") || sess.Password == "" {
		t.Fatalf("console session %+v", sess)
	}
	vctx, vcancel := context.WithTimeout(ctx, 30*time.Second)
	res, err := qemutest.VNCSession(vctx, sess.Addr, sess.Password)
	vcancel()
	if err != nil {
		t.Fatalf("vnc through the tunnel: %v", err)
	}
	if res.Width == 0 || res.Height == 0 || res.UpdateBytes == 0 {
		t.Fatalf("vnc session saw nothing: %+v", res)
	}
	vctx, vcancel = context.WithTimeout(ctx, 30*time.Second)
	_, err = qemutest.VNCSession(vctx, sess.Addr, "wrong-pw")
	vcancel()
	if err == nil {
		t.Fatal("the provider's VNC server took a wrong password through the tunnel")
	}

	// stop: the VM is stopped on the provider and the tunnel closes.
	if v, err = buyer.buyer.Control(ctx, v.ID, vm.ActionStop); err != nil {
		t.Fatal(err)
	}
	if v.State != (vm.State{Status: vm.StatusStopped, Version: 3}) {
		t.Fatalf("stopped: %+v", v.State)
	}
	if p, _ := provider.drv.Power(ctx, v.ID); p != vm.PowerOff {
		t.Fatalf("hypervisor says %v after stop", p)
	}
	if rec, _ := provider.mgr.Get(v.ID); rec.State != v.State || rec.Owner != nodes[1].ID().String() {
		t.Fatalf("provider's record %+v disagrees with the buyer's %+v", rec, v.State)
	}
	vctx, vcancel = context.WithTimeout(ctx, 5*time.Second)
	_, err = qemutest.VNCSession(vctx, sess.Addr, sess.Password)
	vcancel()
	if err == nil {
		t.Fatal("console tunnel still open after stop")
	}
}
