package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/daemon/daemontest"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
	"github.com/vmware/govmomi/simulator"
)

// startNode starts a whole node on loopback for the test (daemontest.Start).
func startNode(t testing.TB, edit func(*node.Config), opts daemon.Options) *daemon.Node {
	t.Helper()
	return daemontest.Start(t, edit, opts)
}

// sellingTo starts a provider node and a buyer node connected to it, and has the provider sell
// a demo machine, whose offer the buyer's book holds when it returns.
func sellingTo(t *testing.T) (seller, buyer *daemon.Node, m market.Machine) {
	t.Helper()
	seller = startNode(t, func(cfg *node.Config) {
		cfg.Roles.Provider = true
		cfg.Provider.Accel = "tcg"
	}, daemon.Options{})
	buyer = startNode(t, nil, daemon.Options{})
	ctx := context.Background()
	if err := buyer.Host().Connect(ctx, peer.AddrInfo{ID: seller.ID(), Addrs: seller.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	m, err := seller.Provider.AddMachine(ctx, market.DemoMachine(0))
	if err != nil {
		t.Fatal(err)
	}
	testwait.Eventually(t, 20*time.Second, func() error {
		if _, ok := buyer.Book.Get(seller.ID(), m.ID); !ok {
			return errors.New("the offer did not reach the buyer")
		}
		return nil
	})
	return seller, buyer, m
}

// TestProviderAPI drives a real QEMU guest through a provider node's local API, the way
// `virtuoso vm --local …` does, and checks the API's answers to bad requests.
func TestProviderAPI(t *testing.T) {
	guest := qemutest.BuildGuest(t)
	n := startNode(t, func(cfg *node.Config) {
		cfg.Roles.Provider = true
		cfg.Provider.Accel = "tcg"
		cfg.Provider.ImageDirs = []string{guest.Dir}
	}, daemon.Options{})
	prov := n.VMs
	qd := prov.Driver().(*qemu.Driver)
	// Provider VMs outlive their node on purpose: stop what a failed test left running.
	t.Cleanup(func() { prov.StopAll(context.Background()) })
	c, err := node.Dial(n.Home())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var rec vm.Record
	err = c.Post(ctx, "/v1/vms", vm.CreateVM{Name: "try", MemoryMB: 128, DiskMB: 64, SpeedBogomips: 1000,
		Image: guest.Disk, Kernel: guest.Kernel, Initrd: guest.Initrd, Cmdline: guest.Cmdline}, &rec)
	if err != nil {
		t.Fatal(err)
	}
	if rec.State.Status != vm.StatusStored {
		t.Fatalf("created VM is %s, want stored", rec.State.Status)
	}
	id := rec.ID.String()

	step := func(action string, want vm.Status) {
		t.Helper()
		var got vm.Record
		if err := c.Post(ctx, "/v1/vms/"+id+"/"+action, nil, &got); err != nil {
			t.Fatalf("%s: %v", action, err)
		}
		if got.State.Status != want || got.State.Version <= rec.State.Version {
			t.Fatalf("%s: %s v%d; want %s with a version above %d", action, got.State.Status, got.State.Version, want, rec.State.Version)
		}
		rec = got
	}
	step("start", vm.StatusStarted)

	var con vm.ConsoleAnswer
	if err := c.Post(ctx, "/v1/vms/"+id+"/console", nil, &con); err != nil {
		t.Fatal(err)
	}
	if _, err := qemutest.VNCSession(ctx, con.Console.Addr, con.Console.Password); err != nil {
		t.Fatalf("VNC session with the console the API gave: %v", err)
	}

	for _, tc := range []struct {
		name, method, path string
		status             int
		code, says         string
	}{
		{"unknown action", "POST", "/v1/vms/" + id + "/explode", 400, "unknown_action", "unknown action"},
		{"illegal for status", "POST", "/v1/vms/" + id + "/resume", 409, "illegal_action", "cannot resume: the vm is started"},
		{"malformed id", "POST", "/v1/vms/not-an-id/start", 400, "invalid_id", "id"},
		{"unknown vm", "GET", "/v1/vms/" + vm.NewID().String(), 404, "vm_not_found", "not found"},
		{"delete while running", "POST", "/v1/vms/" + id + "/rm", 409, "illegal_action", "cannot rm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Do(ctx, tc.method, tc.path, nil, nil)
			he, ok := errors.AsType[*node.HTTPError](err)
			if !ok || he.Status != tc.status || he.Code != tc.code || !strings.Contains(strings.ToLower(err.Error()), tc.says) {
				t.Fatalf("%s %s: %v; want status %d, code %s, saying %q", tc.method, tc.path, err, tc.status, tc.code, tc.says)
			}
		})
	}
	err = c.Post(ctx, "/v1/vms", map[string]any{"memory_mb": 1 << 40, "disk_mb": 64}, nil)
	if he, ok := errors.AsType[*node.HTTPError](err); !ok || he.Status != http.StatusBadRequest {
		t.Fatalf("a VM larger than the machine: %v; want 400", err)
	}

	step("suspend", vm.StatusSuspended)
	// A saved state that is gone: resume says so and changes nothing; resume-fresh boots the
	// VM from its disk.
	dir := qd.Dir(rec.ID)
	state := filepath.Join(dir, "memory.zst")
	saved, err := os.ReadFile(state)
	if err != nil {
		t.Fatalf("suspended VM has no state file: %v", err)
	}
	os.Remove(state)
	err = c.Post(ctx, "/v1/vms/"+id+"/resume", nil, nil)
	if he, ok := errors.AsType[*node.HTTPError](err); !ok || he.Status != http.StatusConflict || he.Code != "state_unusable" || !strings.Contains(err.Error(), "resume it fresh") {
		t.Fatalf("resume without its state: %v; want 409 state_unusable offering a fresh resume", err)
	}
	os.WriteFile(state, saved, 0o600)
	step("resume", vm.StatusStarted)
	step("suspend", vm.StatusSuspended)
	os.Remove(state)
	step("resume?fresh=true", vm.StatusStarted)

	// A QEMU that dies is noticed by the provider on its own: the VM is recorded stopped.
	qemutest.Kill(t, qd, rec.ID)
	testwait.Eventually(t, 30*time.Second, func() error {
		var got vm.Record
		if err := c.Get(ctx, "/v1/vms/"+id, &got); err != nil {
			return err
		}
		if got.State.Status != vm.StatusStopped || got.State.Version != rec.State.Version+1 {
			return fmt.Errorf("after its QEMU was killed the VM is still %s v%d", got.State.Status, got.State.Version)
		}
		rec = got
		return nil
	})
	step("start", vm.StatusStarted)
	step("stop", vm.StatusStopped)
	step("rm", vm.StatusDeleted)
	var list []vm.Record
	if err := c.Get(ctx, "/v1/vms", &list); err != nil || len(list) != 0 {
		t.Fatalf("after delete: %d VMs listed, %v", len(list), err)
	}
	if err := c.Get(ctx, "/v1/vms/"+id, nil); err == nil {
		t.Fatal("deleted VM still answers")
	}
}

// TestVSphereProvider: a provider whose config names a vSphere host runs its VMs there — here
// govmomi's simulator on loopback — through the same Manager and local API, and its market
// measures the host for a machine's capacity.
func TestVSphereProvider(t *testing.T) {
	model := simulator.ESX()
	model.Machine = 0
	if err := model.Create(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(model.Remove)
	server := model.Service.NewServer()
	t.Cleanup(server.Close)
	user := server.URL.User.Username()
	pw, _ := server.URL.User.Password()
	pwFile := filepath.Join(t.TempDir(), "vsphere.password")
	if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sdk := *server.URL
	sdk.User = nil
	n := startNode(t, func(cfg *node.Config) {
		cfg.Roles.Provider = true
		cfg.Provider.Driver = node.DriverVSphere
		cfg.Provider.VSphere = node.VSphereConfig{URL: sdk.String(), Username: user, PasswordFile: pwFile, Insecure: true}
	}, daemon.Options{})
	if got := n.VMs.Driver().Name(); got != "vsphere" {
		t.Fatalf("driver %q, want vsphere", got)
	}
	c, err := node.Dial(n.Home())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var rec vm.Record
	if err := c.Post(ctx, "/v1/vms", vm.CreateVM{Name: "esx", MemoryMB: 256, DiskMB: 1024, SpeedBogomips: 1000}, &rec); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		action string
		want   vm.Status
	}{{"start", vm.StatusStarted}, {"suspend", vm.StatusSuspended}, {"resume", vm.StatusStarted}, {"stop", vm.StatusStopped}} {
		var got vm.Record
		if err := c.Post(ctx, "/v1/vms/"+rec.ID.String()+"/"+step.action, nil, &got); err != nil {
			t.Fatalf("%s: %v", step.action, err)
		}
		if got.State.Status != step.want || got.Driver != "vsphere" {
			t.Fatalf("%s: %+v", step.action, got)
		}
	}
	host, err := n.Provider.HostDefaults(ctx)
	if err != nil || host.MemoryMB <= 0 {
		t.Fatalf("the vSphere host measured as %+v, %v", host, err)
	}

	// A password file that is not there is a clear error when the node is built.
	home := node.Home{Dir: t.TempDir()}
	cfg := node.DefaultConfig(node.ProfileLocal)
	cfg.Roles.Provider = true
	cfg.Provider.Driver = node.DriverVSphere
	cfg.Provider.VSphere = node.VSphereConfig{URL: sdk.String(), Username: user, PasswordFile: pwFile + ".gone", Insecure: true}
	if err := home.Init(cfg, false); err != nil {
		t.Fatal(err)
	}
	if _, err := daemon.New(home, cfg, daemon.Options{}); err == nil || !strings.Contains(err.Error(), "vsphere password") {
		t.Fatalf("a node whose vSphere password file is missing: %v", err)
	}
}
