package qemu_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// TestDebianConsole boots the Debian guest with the accelerator the probe picks and uses its
// console as a buyer does: the driver's VNC console with its one-time password, a command
// typed on the keyboard of the root shell on the screen, and its effect seen on the serial
// console. Stopping it powers the guest off cleanly.
func TestDebianConsole(t *testing.T) {
	g := qemutest.BuildDebian(t)
	cfg := qemutest.DriverConfig(t, g)
	cfg.Accel, cfg.ProbeKernel = qemu.AccelAuto, g.Kernel
	d := qemutest.NewDriver(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	accel, err := d.Accel(ctx)
	if err != nil {
		t.Fatal(err)
	}

	id := vm.NewID()
	c := g.Config(id, 512, g.DiskMB)
	c.Name, c.OS = "debian", "debian"
	start := time.Now()
	if err := d.Create(ctx, c); err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Logf("created in %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("start: %v", err)
	}
	qemutest.WaitSerial(t, ctx, d, id, "the root shell on the serial console", func(out string) bool {
		return strings.Contains(out, qemu.DebianPrompt)
	})
	t.Logf("root shell on the serial console %s after start under %s", time.Since(start).Round(100*time.Millisecond), accel)

	con, err := d.OpenConsole(ctx, id)
	if err != nil {
		t.Fatalf("open console: %v", err)
	}
	v, err := qemutest.DialVNC(ctx, con.Addr, con.Password)
	if err != nil {
		t.Fatalf("vnc: %v", err)
	}
	defer v.Close()
	// The shell on tty1 may come up after the one on ttyS0, and getty drops what was typed
	// before it: type again until the command has run.
	for attempt := 1; ; attempt++ {
		if err := v.Type("echo typed-$((6*7)) > /dev/ttyS0\n"); err != nil {
			t.Fatalf("typing on the vnc keyboard: %v", err)
		}
		actx, acancel := context.WithTimeout(ctx, 15*time.Second)
		ran := false
		for !ran && actx.Err() == nil {
			ran = strings.Contains(qemutest.Serial(t, d, id), "typed-42")
			time.Sleep(100 * time.Millisecond)
		}
		acancel()
		if ran {
			t.Logf("the command typed on the vnc console ran (attempt %d), %s after start", attempt, time.Since(start).Round(100*time.Millisecond))
			break
		}
		if attempt == 4 {
			qemutest.WaitSerial(t, ctx, d, id, "typed-42, from a command typed on the vnc console", func(out string) bool {
				return strings.Contains(out, "typed-42")
			})
		}
	}
	if p, err := d.Progress(ctx, id); err != nil || p.Sign == "" {
		t.Fatalf("progress of the booted guest = %+v, %v", p, err)
	}
	// Stop presses the power button: the guest must shut down by itself, not be cut off.
	if err := d.Stop(ctx, id); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if out := qemutest.Serial(t, d, id); !strings.Contains(out, "reboot: Power down") {
		t.Fatalf("the guest did not power itself off on stop; serial console ends:\n%s", out[max(0, len(out)-1500):])
	}
}
