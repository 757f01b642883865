package vm_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// provider is one provider's VM stack: a badger store, the inventory in it, a QEMU driver and
// the Manager over them.
type provider struct {
	store   *node.Store
	storeAt string
	drvCfg  qemu.Config
	drv     *qemu.Driver
	inv     *vm.Inventory
	mgr     *vm.Manager
	changes *node.Subscription // the vm.StatusChanged events the manager published
	stall   time.Duration      // ManagerConfig.StallAfter
	cacheMB int64              // ManagerConfig.CacheMB
}

func newProvider(t *testing.T, g qemutest.Guest) *provider {
	p := &provider{storeAt: t.TempDir(), drvCfg: qemutest.DriverConfig(t, g)}
	p.open(t)
	return p
}

// open (re)opens the store, inventory, driver and manager, as a node does when it starts.
func (p *provider) open(t *testing.T) {
	t.Helper()
	st, err := node.OpenStore(p.storeAt, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	p.store = st
	p.inv, err = vm.OpenInventory(st.Space("vm/inventory/"))
	if err != nil {
		t.Fatal(err)
	}
	p.drv = qemutest.NewDriver(t, p.drvCfg)
	events := node.NewEvents()
	p.changes = events.Subscribe(0)
	t.Cleanup(p.changes.Close)
	p.mgr, err = vm.NewManager(vm.ManagerConfig{Driver: p.drv, Inventory: p.inv, Logger: p.drvCfg.Logger, Events: events, StallAfter: p.stall, CacheMB: p.cacheMB})
	if err != nil {
		t.Fatal(err)
	}
}

// seen takes the status changes published so far, as "status/version" (with causes:
// "cause:status/version"); each must be of vm id and dated.
func (p *provider) seen(t *testing.T, id vm.ID, causes bool) []string {
	t.Helper()
	var out []string
	for ev, ok := p.changes.Next(); ok; ev, ok = p.changes.Next() {
		c := ev.(vm.StatusChanged)
		if c.VM != id || c.Time.IsZero() {
			t.Fatalf("event %+v: not of vm %s, or no time", c, id)
		}
		s := c.State.Status.String() + "/" + strconv.Itoa(int(c.State.Version))
		if causes {
			s = c.Cause.String() + ":" + s
		}
		out = append(out, s)
	}
	return out
}

func wantState(t *testing.T, rec vm.Record, status vm.Status, version uint64) {
	t.Helper()
	if rec.State.Status != status || rec.State.Version != version {
		t.Fatalf("vm %s is %s v%d, want %s v%d", rec.ID, rec.State.Status, rec.State.Version, status, version)
	}
}

// TestManagerLifecycle runs a real guest through the Manager: every status change is checked
// against the table, versions increment, failures keep the status, the inventory survives a
// restart, and a suspended VM migrates to another provider and runs on there.
func TestManagerLifecycle(t *testing.T) {
	g := qemutest.BuildGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	a := newProvider(t, g)

	id := vm.NewID()
	rec, err := a.mgr.Create(ctx, vm.CreateRequest{Config: g.Config(id, 128, 64), Owner: "buyer-peer", Lease: "lease-1", Version: 4})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	wantState(t, rec, vm.StatusStored, 5)
	if _, err := a.mgr.Create(ctx, vm.CreateRequest{Config: g.Config(id, 128, 64)}); !errors.Is(err, vm.ErrExists) {
		t.Fatalf("second create: err = %v, want ErrExists", err)
	}

	// Actions the table refuses never reach the driver.
	for _, act := range []vm.Action{vm.ActionStop, vm.ActionSuspend, vm.ActionResume, vm.ActionView} {
		_, err := a.mgr.Do(ctx, id, act)
		var ie *vm.IllegalActionError
		if !errors.As(err, &ie) || ie.Status != vm.StatusStored || ie.Action != act {
			t.Fatalf("%s on a stored vm: err = %v, want IllegalActionError", act, err)
		}
	}

	// A start that fails keeps the status and the version.
	kernel := filepath.Join(a.drv.Dir(id), "vmlinuz")
	if err := os.Rename(kernel, kernel+".away"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.mgr.Start(ctx, id); err == nil {
		t.Fatal("start without a kernel succeeded")
	}
	if rec, _ = a.mgr.Get(id); rec.State != (vm.State{Status: vm.StatusStored, Version: 5}) {
		t.Fatalf("failed start changed the state to %+v", rec.State)
	}
	os.Rename(kernel+".away", kernel)

	if rec, err = a.mgr.Do(ctx, id, vm.ActionStart); err != nil {
		t.Fatalf("start: %v", err)
	}
	wantState(t, rec, vm.StatusStarted, 6)
	qemutest.WaitSerial(t, ctx, a.drv, id, "boot", func(out string) bool { return qemutest.LastTick(out) >= 2 })

	rec, con, err := a.mgr.Console(ctx, id)
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	wantState(t, rec, vm.StatusStarted, 6) // viewing changes nothing
	if rec.ConsolePort == 0 || !strings.HasSuffix(con.Addr, ":"+strconv.Itoa(rec.ConsolePort)) {
		t.Fatalf("record console port %d, console %s", rec.ConsolePort, con.Addr)
	}
	if _, err := qemutest.VNCSession(ctx, con.Addr, con.Password); err != nil {
		t.Fatalf("vnc: %v", err)
	}

	t.Log("restart: a new store handle, driver and manager find the running vm")
	a.store.Close()
	a.open(t)
	changed, err := a.mgr.Reconcile(ctx)
	if err != nil || len(changed) != 0 {
		t.Fatalf("reconcile = %v, %v; want no change", changed, err)
	}
	if rec, err = a.mgr.Get(id); err != nil || rec.Owner != "buyer-peer" || rec.Lease != "lease-1" {
		t.Fatalf("record after restart: %+v, %v", rec, err)
	}
	wantState(t, rec, vm.StatusStarted, 6)
	if rec.ConsolePort != 0 {
		t.Fatalf("console port %d survived the restart", rec.ConsolePort)
	}

	if rec, err = a.mgr.Suspend(ctx, id); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	wantState(t, rec, vm.StatusSuspended, 7)
	atSuspend := qemutest.LastTick(qemutest.Serial(t, a.drv, id))

	t.Log("migrate the suspended vm to provider b")
	b := newProvider(t, g)
	if rec, err = a.mgr.BeginMigration(ctx, id); err != nil {
		t.Fatalf("begin migration: %v", err)
	}
	if rec.State != (vm.State{Status: vm.StatusMigrating, Version: 8, Prior: vm.StatusSuspended}) {
		t.Fatalf("migrating state %+v", rec.State)
	}
	if _, err := a.mgr.Resume(ctx, id); !errors.Is(err, vm.ErrIllegalAction) {
		t.Fatalf("resume while migrating: err = %v, want ErrIllegalAction", err)
	}
	files, err := a.drv.Files(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	staging, err := b.drv.StagingDir(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files.Names {
		copyFile(t, filepath.Join(files.Dir, name), filepath.Join(staging, name))
	}
	brec, err := b.mgr.Adopt(ctx, vm.AdoptRequest{ID: id, Dir: staging, State: rec.State, Origin: "provider-a", Owner: rec.Owner, Lease: rec.Lease})
	if err != nil {
		t.Fatalf("adopt: %v", err)
	}
	wantState(t, brec, vm.StatusSuspended, 9)
	if brec.Origin != "provider-a" || brec.Config.MemoryMB != 128 {
		t.Fatalf("adopted record %+v", brec)
	}
	if rec, err = a.mgr.FinishMigration(ctx, id, true); err != nil {
		t.Fatalf("finish migration: %v", err)
	}
	wantState(t, rec, vm.StatusSuspended, 9)
	if !rec.Cached || len(a.mgr.List()) != 0 {
		t.Fatalf("origin still offers the moved vm: %+v, list %v", rec, a.mgr.List())
	}
	if brec, err = b.mgr.Resume(ctx, id); err != nil {
		t.Fatalf("resume on b: %v", err)
	}
	wantState(t, brec, vm.StatusStarted, 10)
	out := qemutest.WaitSerial(t, ctx, b.drv, id, "ticks on b", func(out string) bool {
		return qemutest.LastTick(out) > atSuspend+1
	})
	if strings.Contains(out, qemutest.Banner) {
		t.Fatal("the vm rebooted on b instead of continuing")
	}

	t.Log("the guest powers itself off; reconcile records it stopped")
	if err := b.drv.Stop(ctx, id); err != nil { // behind the manager's back
		t.Fatal(err)
	}
	changed, err = b.mgr.Reconcile(ctx)
	if err != nil || len(changed) != 1 {
		t.Fatalf("reconcile = %v, %v; want one change", changed, err)
	}
	wantState(t, changed[0], vm.StatusStopped, 11)

	if _, err := b.mgr.Do(ctx, id, vm.ActionDelete); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := b.mgr.Get(id); !errors.Is(err, vm.ErrNotFound) {
		t.Fatalf("get after delete: err = %v, want ErrNotFound", err)
	}
	if _, err := a.mgr.Delete(ctx, id); err != nil {
		t.Fatalf("drop the cached copy on a: %v", err)
	}
	if _, err := os.Stat(a.drv.Dir(id)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cached copy's files remain: %v", err)
	}

	// b's observers saw each status change in order.
	if got, want := strings.Join(b.seen(t, id, true), " "), "migrationdone:suspended/9 resumemachine:started/10 stopmachine:stopped/11 deletemachine:deleted/12"; got != want {
		t.Fatalf("changes seen on b: %s, want %s", got, want)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestManagerHealth causes a VM whose guest makes no progress (a bare VM: its empty disk has
// nothing to boot) and checks that its record says so once StallAfter has passed, while the
// test guest beside it is healthy; stopping clears the verdict.
func TestManagerHealth(t *testing.T) {
	g := qemutest.BuildGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := &provider{storeAt: t.TempDir(), drvCfg: qemutest.DriverConfig(t, g), stall: 15 * time.Second}
	p.open(t)

	guest, bare := vm.NewID(), vm.NewID()
	for _, cfg := range []vm.Config{
		g.Config(guest, 128, 64),
		{ID: bare, Name: "bare", MemoryMB: 64, DiskMB: 16, MAC: vm.MACFor(bare)},
	} {
		if _, err := p.mgr.Create(ctx, vm.CreateRequest{Config: cfg, Owner: "buyer-peer"}); err != nil {
			t.Fatalf("create: %v", err)
		}
		if _, err := p.mgr.Start(ctx, cfg.ID); err != nil {
			t.Fatalf("start: %v", err)
		}
	}
	started := time.Now()
	if rec, err := p.mgr.CheckHealth(ctx, bare); err != nil || rec.Health != "" {
		t.Fatalf("health right after start = %q, %v; want none yet", rec.Health, err)
	}
	qemutest.WaitSerial(t, ctx, p.drv, guest, "boot", func(out string) bool { return strings.Contains(out, qemutest.Banner) })
	time.Sleep(time.Until(started.Add(p.stall + time.Second)))

	changed, err := p.mgr.CheckPower(ctx)
	if err != nil || len(changed) != 0 {
		t.Fatalf("check power = %v, %v; want no status change", changed, err)
	}
	rec, err := p.mgr.Get(bare)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bare vm health: %q", rec.Health)
	if want := "no console output and no sign of an operating system within 15s of start: the guest may not be running (accelerator tcg)"; rec.Health != want {
		t.Fatalf("bare vm health = %q, want %q", rec.Health, want)
	}
	wantState(t, rec, vm.StatusStarted, 2)
	if rec, err := p.mgr.Get(guest); err != nil || rec.Health != "" {
		t.Fatalf("test guest health = %q, %v; want healthy", rec.Health, err)
	}

	rec, err = p.mgr.Stop(ctx, bare)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Health != "" {
		t.Fatalf("stopped vm health = %q, want none", rec.Health)
	}
}
