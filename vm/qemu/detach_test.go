package qemu_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// helperDirEnv, when set, makes TestDetachedVMOutlivesProcess act as a node process: it starts
// a detached VM in that directory, prints its ID and exits without stopping it.
const helperDirEnv = "VIRTUOSO_QEMU_DETACH_HELPER_DIR"

// TestDetachedVMOutlivesProcess starts a VM from another process with Config.Detach, lets that
// process exit, and re-attaches to the VM from this one — a node restart.
func TestDetachedVMOutlivesProcess(t *testing.T) {
	g := qemutest.BuildGuest(t)
	if dir := os.Getenv(helperDirEnv); dir != "" {
		cfg := qemutest.DriverConfig(t, g)
		cfg.Dir, cfg.Detach, cfg.Logger = dir, true, nil
		d, err := qemu.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		id := vm.NewID()
		ctx := context.Background()
		if err := d.Create(ctx, g.Config(id, 64, 40)); err != nil {
			t.Fatal(err)
		}
		if err := d.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
		fmt.Println("VMID", id)
		return // no Close: the VM must keep running after this process ends
	}

	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestDetachedVMOutlivesProcess$", "-test.v")
	cmd.Env = append(os.Environ(), helperDirEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	var id vm.ID
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "VMID "); ok {
			id, _ = vm.ParseID(strings.TrimSpace(rest))
		}
	}
	// Whatever happens below, do not leave the detached QEMU behind.
	t.Cleanup(func() { killFromState(t, filepath.Join(dir, "vms", id.String(), "state.json")) })
	if err != nil || id.IsZero() {
		t.Fatalf("helper process: %v\n%s", err, out)
	}

	cfg := qemutest.DriverConfig(t, g)
	cfg.Dir = dir
	cfg.StopTimeout = time.Second // the guest may not have booted far enough to hear the button
	d := qemutest.NewDriver(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	qemutest.Reattach(t, ctx, d, id) // after the starting process exited
	if err := d.Stop(ctx, id); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if p, err := d.Power(ctx, id); err != nil || p != vm.PowerOff {
		t.Fatalf("power after stop = %v, %v", p, err)
	}
}

func killFromState(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var st struct {
		PID int `json:"pid"`
	}
	if json.Unmarshal(b, &st) == nil && st.PID > 0 {
		if syscall.Kill(st.PID, syscall.SIGKILL) == nil {
			t.Logf("killed leftover qemu %d", st.PID)
		}
	}
}
