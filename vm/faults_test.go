package vm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// TestManagerFaults takes one real guest through the failures a provider meets: a QEMU tool
// that is gone, a missing disk, a missing or damaged saved state, and a QEMU process that is
// killed. Each failure must give a typed error that says what is wrong, leave the status,
// version and files as they were, and let the VM go on once the cause is fixed.
func TestManagerFaults(t *testing.T) {
	g := qemutest.BuildGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	p := &provider{storeAt: t.TempDir(), drvCfg: qemutest.DriverConfig(t, g)}
	// The driver runs the tools through links that the test removes and puts back.
	bin := t.TempDir()
	p.drvCfg.QEMU = linkTool(t, bin, p.drvCfg.QEMU)
	p.drvCfg.QEMUImg = linkTool(t, bin, p.drvCfg.QEMUImg)
	p.drvCfg.Zstd = linkTool(t, bin, p.drvCfg.Zstd)
	p.open(t)
	vms := filepath.Join(p.drvCfg.Dir, "vms")
	id := vm.NewID()
	dir := p.drv.Dir(id)

	t.Log("qemu-img missing at create: nothing is left behind")
	before := listDir(t, vms)
	restore := hide(t, p.drvCfg.QEMUImg)
	_, err := p.mgr.Create(ctx, vm.CreateRequest{Config: g.Config(id, 128, 64)})
	wantNotInstalled(t, err, "qemu-img", "apt-get install qemu-utils")
	if _, err := p.mgr.Get(id); !errors.Is(err, vm.ErrNotFound) {
		t.Fatalf("failed create left an inventory record: %v", err)
	}
	if after := listDir(t, vms); !slices.Equal(before, after) {
		t.Fatalf("failed create changed the vm directory: %v -> %v", before, after)
	}
	restore()
	rec, err := p.mgr.Create(ctx, vm.CreateRequest{Config: g.Config(id, 128, 64)})
	if err != nil {
		t.Fatalf("create with qemu-img back: %v", err)
	}
	wantState(t, rec, vm.StatusStored, 1)

	t.Log("qemu missing at start")
	files := snapshot(t, dir)
	restore = hide(t, p.drvCfg.QEMU)
	_, err = p.mgr.Start(ctx, id)
	wantNotInstalled(t, err, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	wantRecord(t, p.mgr, id, vm.StatusStored, 1)
	wantFiles(t, dir, files)
	restore()

	t.Log("disk missing at start")
	disk := filepath.Join(dir, "disk.raw")
	mustRename(t, disk, disk+".away")
	files = snapshot(t, dir)
	_, err = p.mgr.Start(ctx, id)
	t.Logf("error: %v", err)
	if !errors.Is(err, vm.ErrMissingFile) || !strings.Contains(err.Error(), disk) {
		t.Fatalf("start without a disk: err = %v, want ErrMissingFile naming %s", err, disk)
	}
	wantRecord(t, p.mgr, id, vm.StatusStored, 1)
	wantFiles(t, dir, files)
	mustRename(t, disk+".away", disk)

	if rec, err = p.mgr.Start(ctx, id); err != nil {
		t.Fatalf("start: %v", err)
	}
	wantState(t, rec, vm.StatusStarted, 2)
	// The guest need not finish booting for what follows; it boots to its banner at the end.

	t.Log("zstd missing at suspend: the vm keeps running")
	restore = hide(t, p.drvCfg.Zstd)
	_, err = p.mgr.Suspend(ctx, id)
	wantNotInstalled(t, err, "zstd", "apt-get install zstd")
	wantRecord(t, p.mgr, id, vm.StatusStarted, 2)
	wantPower(t, p.drv, id, vm.PowerRunning)
	if left, _ := filepath.Glob(filepath.Join(dir, "memory.zst*")); len(left) > 0 {
		t.Fatalf("failed suspend left %v", left)
	}
	restore()

	if rec, err = p.mgr.Suspend(ctx, id); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	wantState(t, rec, vm.StatusSuspended, 3)
	state := filepath.Join(dir, "memory.zst")
	intact := filepath.Join(t.TempDir(), "memory.zst")
	copyFile(t, state, intact)

	notQEMU := filepath.Join(t.TempDir(), "memory.zst")
	zstdOf(t, []byte(strings.Repeat("not a qemu migration stream\n", 4096)), notQEMU)
	// A stream with QEMU's magic and version but no valid section after them.
	notLoadable := filepath.Join(t.TempDir(), "memory.zst")
	zstdOf(t, append([]byte("QEVM\x00\x00\x00\x03"), strings.Repeat("\xfe garbage", 4096)...), notLoadable)
	emptyStream := filepath.Join(t.TempDir(), "memory.zst")
	zstdOf(t, nil, emptyStream)
	tests := []struct {
		name    string
		damage  func(t *testing.T)
		want    []error
		message string
	}{
		{"state file deleted", func(t *testing.T) { mustRemove(t, state) },
			[]error{vm.ErrStateUnusable, vm.ErrMissingFile}, state + " does not exist"},
		{"state file truncated", func(t *testing.T) { mustTruncate(t, state, fileSize(t, intact)/2) },
			[]error{vm.ErrStateUnusable}, state + " is damaged"},
		{"state file emptied", func(t *testing.T) { mustTruncate(t, state, 0) },
			[]error{vm.ErrStateUnusable}, state + " is damaged"},
		{"state decompresses to nothing", func(t *testing.T) { copyFile(t, emptyStream, state) },
			[]error{vm.ErrStateUnusable}, state + " is damaged"},
		{"state not from qemu", func(t *testing.T) { copyFile(t, notQEMU, state) },
			[]error{vm.ErrStateUnusable}, "not a qemu saved state"},
		{"state qemu cannot load", func(t *testing.T) { copyFile(t, notLoadable, state) },
			[]error{vm.ErrStateUnusable}, "qemu could not load " + state},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.damage(t)
			files := snapshot(t, dir)
			_, err := p.mgr.Resume(ctx, id)
			t.Logf("error: %v", err)
			for _, want := range tt.want {
				if !errors.Is(err, want) {
					t.Fatalf("resume: err = %v, want %v", err, want)
				}
			}
			for _, want := range []string{tt.message, "resume it fresh"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("resume error %q does not say %q", err, want)
				}
			}
			wantRecord(t, p.mgr, id, vm.StatusSuspended, 3)
			wantFiles(t, dir, files)
			if _, err := os.Stat(state); err == nil {
				wantPower(t, p.drv, id, vm.PowerSuspended) // no qemu left running
			}
		})
		copyFile(t, intact, state)
	}

	t.Log("resume with the state put back works")
	if rec, err = p.mgr.Resume(ctx, id); err != nil {
		t.Fatalf("resume with the intact state: %v", err)
	}
	wantState(t, rec, vm.StatusStarted, 4)
	wantPower(t, p.drv, id, vm.PowerRunning)
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("resumed vm kept its state file: %v", err)
	}

	t.Log("qemu killed: power is off at once, reconcile records the vm stopped once")
	qemutest.Kill(t, p.drv, id)
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	if pw, err := p.drv.Power(pctx, id); err != nil || pw != vm.PowerOff {
		t.Fatalf("power of a killed vm = %v, %v; want off", pw, err)
	}
	pcancel()
	changed, err := p.mgr.Reconcile(ctx)
	if err != nil || len(changed) != 1 {
		t.Fatalf("reconcile = %v, %v; want one change", changed, err)
	}
	wantState(t, changed[0], vm.StatusStopped, 5)
	for _, check := range []func(context.Context) ([]vm.Record, error){p.mgr.Reconcile, p.mgr.CheckPower} {
		if changed, err := check(ctx); err != nil || len(changed) != 0 {
			t.Fatalf("second check = %v, %v; want no change", changed, err)
		}
	}

	restore = hide(t, p.drvCfg.QEMU)
	_, err = p.mgr.Start(ctx, id)
	wantNotInstalled(t, err, "qemu-system-x86_64", "apt-get install qemu-system-x86")
	wantRecord(t, p.mgr, id, vm.StatusStopped, 5)
	restore()

	t.Log("the killed vm starts again; killed once more, the next action records it stopped")
	if rec, err = p.mgr.Start(ctx, id); err != nil {
		t.Fatalf("start after the kill: %v", err)
	}
	wantState(t, rec, vm.StatusStarted, 6)
	qemutest.Kill(t, p.drv, id)
	rec, err = p.mgr.Suspend(ctx, id)
	t.Logf("error: %v", err)
	if !errors.Is(err, vm.ErrNotRunning) {
		t.Fatalf("suspend of a killed vm: err = %v, want ErrNotRunning", err)
	}
	wantState(t, rec, vm.StatusStopped, 7)
	wantRecord(t, p.mgr, id, vm.StatusStopped, 7)
	if changed, err := p.mgr.Reconcile(ctx); err != nil || len(changed) != 0 {
		t.Fatalf("reconcile after the next action noticed = %v, %v; want no change", changed, err)
	}

	t.Log("killed a third time: the periodic power check records it stopped")
	if rec, err = p.mgr.Start(ctx, id); err != nil {
		t.Fatalf("start after the second kill: %v", err)
	}
	wantState(t, rec, vm.StatusStarted, 8)
	qemutest.Kill(t, p.drv, id)
	changed, err = p.mgr.CheckPower(ctx)
	if err != nil || len(changed) != 1 {
		t.Fatalf("power check = %v, %v; want one change", changed, err)
	}
	wantState(t, changed[0], vm.StatusStopped, 9)

	t.Log("state lost for good: resume fresh boots the vm from its disk")
	if rec, err = p.mgr.Start(ctx, id); err != nil {
		t.Fatalf("start after the third kill: %v", err)
	}
	wantState(t, rec, vm.StatusStarted, 10)
	if rec, err = p.mgr.Suspend(ctx, id); err != nil {
		t.Fatalf("second suspend: %v", err)
	}
	wantState(t, rec, vm.StatusSuspended, 11)
	mustRemove(t, state)
	if _, err := p.mgr.Resume(ctx, id); !errors.Is(err, vm.ErrStateUnusable) {
		t.Fatalf("resume without a state: err = %v, want ErrStateUnusable", err)
	}
	wantRecord(t, p.mgr, id, vm.StatusSuspended, 11)
	boots := strings.Count(qemutest.Serial(t, p.drv, id), qemutest.Banner)
	if rec, err = p.mgr.ResumeFresh(ctx, id); err != nil {
		t.Fatalf("resume fresh: %v", err)
	}
	wantState(t, rec, vm.StatusStarted, 12)
	// The guest boots to its banner: two kills, damaged states and a discarded one left the
	// vm whole.
	qemutest.WaitSerial(t, ctx, p.drv, id, "boot after resume fresh", func(out string) bool {
		return strings.Count(out, qemutest.Banner) > boots
	})

	seen := p.seen(t, id, false)
	want := "stored/1 started/2 suspended/3 started/4 stopped/5 started/6 stopped/7 started/8 stopped/9 started/10 suspended/11 started/12"
	if got := strings.Join(seen, " "); got != want {
		t.Fatalf("changes seen: %s, want %s", got, want)
	}
}

// linkTool makes a symbolic link in dir to the program name (looked up in PATH) and returns
// the link's path.
func linkTool(t *testing.T, dir, name string) string {
	t.Helper()
	real, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed for this test: %v (apt-get install qemu-system-x86 qemu-utils zstd)", name, err)
	}
	link := filepath.Join(dir, filepath.Base(name))
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	return link
}

// hide moves path aside and returns the function that puts it back (also run at cleanup).
func hide(t *testing.T, path string) (restore func()) {
	t.Helper()
	mustRename(t, path, path+".hidden")
	done := false
	restore = func() {
		if !done {
			done = true
			mustRename(t, path+".hidden", path)
		}
	}
	t.Cleanup(restore)
	return restore
}

func wantNotInstalled(t *testing.T, err error, tool, how string) {
	t.Helper()
	t.Logf("error: %v", err)
	if !errors.Is(err, qemu.ErrNotInstalled) || !errors.Is(err, vm.ErrHypervisor) {
		t.Fatalf("err = %v, want qemu.ErrNotInstalled and vm.ErrHypervisor", err)
	}
	for _, want := range []string{tool, how} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not say %q", err, want)
		}
	}
}

func wantRecord(t *testing.T, mgr *vm.Manager, id vm.ID, status vm.Status, version uint64) {
	t.Helper()
	rec, err := mgr.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	wantState(t, rec, status, version)
}

func wantPower(t *testing.T, d *qemu.Driver, id vm.ID, want vm.PowerState) {
	t.Helper()
	got, err := d.Power(context.Background(), id)
	if err != nil || got != want {
		t.Fatalf("power = %v, %v; want %v", got, err, want)
	}
}

// snapshot describes the VM's files (name, size, modification time), leaving out the logs,
// which a failed attempt may append to.
func snapshot(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".log") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s %d %d", e.Name(), fi.Size(), fi.ModTime().UnixNano()))
	}
	return out
}

func wantFiles(t *testing.T, dir string, want []string) {
	t.Helper()
	if got := snapshot(t, dir); !slices.Equal(got, want) {
		t.Fatalf("vm files changed:\n got %v\nwant %v", got, want)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func zstdOf(t *testing.T, data []byte, path string) {
	t.Helper()
	cmd := exec.Command("zstd", "-q", "-c")
	cmd.Stdin = strings.NewReader(string(data))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd: %v", err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func mustRename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

func mustRemove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func mustTruncate(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}
