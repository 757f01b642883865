// Package qemutest gives tests of any package a real QEMU VM to work with: the tiny test guest
// built by scripts/guest/build.sh (a Debian kernel and a busybox initramfs that prints
// "VIRTUOSO GUEST BOOTED" and then "virtuoso guest tick N" every 0.5 s on its serial console),
// the Debian guest built by scripts/guest/debian.sh (systemd and a root shell on the VNC and
// serial consoles), a driver in a temporary directory, helpers that watch the serial console,
// and a minimal VNC client that checks a console password and types on the keyboard.
package qemutest

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
)

// Banner is the line the guest prints once it has booted.
const Banner = "VIRTUOSO GUEST BOOTED"

// Guest is the built test guest.
type Guest qemu.Guest

// BuildGuest returns the test guest, running scripts/guest/build.sh if its cache is empty or
// stale. It fails the test with the script's output if the guest cannot be built.
func BuildGuest(tb testing.TB) Guest {
	tb.Helper()
	return build(tb, "build.sh", qemu.LoadGuest,
		"it needs the Debian packages linux-image-amd64 and busybox-static, installed or downloadable with apt-get")
}

// BuildDebian returns the Debian guest, running scripts/guest/debian.sh if its cache is empty
// or stale (a one-off build of a minute or more). It fails the test with the script's output if
// the guest cannot be built.
func BuildDebian(tb testing.TB) Guest {
	tb.Helper()
	return build(tb, "debian.sh", qemu.LoadDebian,
		"it needs root, mmdebstrap and e2fsprogs (installed with apt-get) and Debian's mirrors")
}

func build(tb testing.TB, name string, load func(dir string) (qemu.Guest, error), needs string) Guest {
	tb.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		tb.Fatal("qemutest: cannot locate the source tree")
	}
	script := filepath.Join(filepath.Dir(file), "..", "..", "..", "scripts", "guest", name)
	out, err := exec.Command("sh", script).Output()
	if err != nil {
		tb.Fatalf("qemutest: building a guest with %s failed: %v\n%s\n(%s)", script, err, exitStderr(err), needs)
	}
	dir := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(dir, '\n'); i >= 0 {
		dir = dir[i+1:]
	}
	g, err := load(dir)
	if err != nil {
		tb.Fatalf("qemutest: the guest build gave no usable manifest: %v", err)
	}
	return Guest(g)
}

// Kill ends the QEMU of running VM id with SIGKILL, as a crash would; the pid comes from the
// driver's runtime state in the VM's directory.
func Kill(tb testing.TB, d *qemu.Driver, id vm.ID) {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join(d.Dir(id), "state.json"))
	if err != nil {
		tb.Fatalf("qemutest: runtime state of a running vm: %v", err)
	}
	var st struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(raw, &st); err != nil || st.PID <= 0 {
		tb.Fatalf("qemutest: runtime state %s: %v", raw, err)
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		tb.Fatalf("qemutest: kill qemu %d: %v", st.PID, err)
	}
}

func exitStderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// Config returns a configuration of the test guest: direct kernel boot, the preconfigured disk
// as base image grown to diskMB.
func (g Guest) Config(id vm.ID, memoryMB, diskMB int64) vm.Config {
	return vm.Config{
		ID:            id,
		Name:          "test guest",
		SpeedBogomips: 1000,
		MemoryMB:      memoryMB,
		DiskMB:        diskMB,
		Processor:     "x86_64",
		OS:            "busybox",
		BaseImage:     g.Disk,
		Boot:          &vm.KernelBoot{Kernel: g.Kernel, Initrd: g.Initrd, Cmdline: g.Cmdline},
		MAC:           vm.MACFor(id),
	}
}

// DriverConfig is a driver configuration for tests: TCG (no probe), a temporary directory,
// the guest's cache as image directory, short timeouts and few suspend attempts.
func DriverConfig(tb testing.TB, g Guest) qemu.Config {
	cfg := qemu.DefaultConfig(tb.TempDir())
	cfg.Accel = qemu.AccelTCG
	cfg.ImageDirs = []string{g.Dir}
	cfg.StopTimeout = 10 * time.Second
	cfg.SuspendAttempts = 3
	cfg.SuspendInterval = 50 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(logWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return cfg
}

// logWriter sends a driver's log lines to the test log.
type logWriter struct{ tb testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// NewDriver starts a driver from cfg and closes it (stopping its VMs) when the test ends.
func NewDriver(tb testing.TB, cfg qemu.Config) *qemu.Driver {
	tb.Helper()
	d, err := qemu.New(cfg)
	if err != nil {
		tb.Fatalf("qemutest: %v", err)
	}
	tb.Cleanup(func() {
		if err := d.Close(); err != nil {
			tb.Errorf("qemutest: close driver: %v", err)
		}
	})
	return d
}

var tickRE = regexp.MustCompile(`virtuoso guest tick (\d+)`)

// Reattach re-attaches d to the running VM id and checks that its console answers a VNC
// handshake with the password d hands out.
func Reattach(tb testing.TB, ctx context.Context, d *qemu.Driver, id vm.ID) {
	tb.Helper()
	p, err := d.Reattach(ctx, id)
	if err != nil || p != vm.PowerRunning {
		tb.Fatalf("reattach = %v, %v; want running", p, err)
	}
	con, err := d.OpenConsole(ctx, id)
	if err != nil {
		tb.Fatalf("console of the re-attached vm: %v", err)
	}
	if _, err := VNCSession(ctx, con.Addr, con.Password); err != nil {
		tb.Fatalf("vnc of the re-attached vm: %v", err)
	}
}

// Serial returns the VM's serial console output so far.
func Serial(tb testing.TB, d *qemu.Driver, id vm.ID) string {
	b, err := os.ReadFile(filepath.Join(d.Dir(id), "serial.log"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		tb.Fatalf("qemutest: %v", err)
	}
	return string(b)
}

// LastTick returns the highest counter value the guest printed in out, or 0.
func LastTick(out string) int {
	last := 0
	for _, m := range tickRE.FindAllStringSubmatch(out, -1) {
		if n, _ := strconv.Atoi(m[1]); n > last {
			last = n
		}
	}
	return last
}

// WaitSerial waits until cond holds for the VM's serial output, failing the test with the
// output when ctx ends first.
func WaitSerial(tb testing.TB, ctx context.Context, d *qemu.Driver, id vm.ID, what string, cond func(out string) bool) string {
	tb.Helper()
	for {
		out := Serial(tb, d, id)
		if cond(out) {
			return out
		}
		select {
		case <-ctx.Done():
			tail := out
			if len(tail) > 2000 {
				tail = tail[len(tail)-2000:]
			}
			tb.Fatalf("qemutest: vm %s: waiting for %s: %v; serial console:\n%s", id, what, ctx.Err(), tail)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
