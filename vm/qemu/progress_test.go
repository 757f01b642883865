package qemu_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// TestProgress boots real VMs and checks what Progress sees of each: the test guest shows
// itself (its vCPU in kernel space, then its console output); the same guest told to keep its
// console on the screen shows itself by its vCPU alone; a bare VM with an empty disk, whose
// firmware finds nothing to boot, shows nothing however long it runs; and the test guest under
// KVM shows itself if and only if the accelerator probe would pick KVM on this machine.
func TestProgress(t *testing.T) {
	g := qemutest.BuildGuest(t)
	d := qemutest.NewDriver(t, qemutest.DriverConfig(t, g))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	probeCfg := qemutest.DriverConfig(t, g)
	probeCfg.Accel, probeCfg.ProbeKernel = qemu.AccelAuto, g.Kernel
	probed, err := qemutest.NewDriver(t, probeCfg).Accel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kvmCfg := qemutest.DriverConfig(t, g)
	kvmCfg.Accel = qemu.AccelKVM
	dKVM := qemutest.NewDriver(t, kvmCfg)
	kvmSign := "any"
	if probed != qemu.AccelKVM {
		kvmSign = ""
	}
	t.Logf("the probe picks %s here", probed)

	quiet := g.Config(vm.NewID(), 128, 64)
	quiet.Boot.Cmdline = "console=tty0 quiet panic=-1"
	bareID := vm.NewID()
	tests := []struct {
		name  string
		d     *qemu.Driver
		cfg   vm.Config
		sign  string // "" for none, "any" for any
		accel string
	}{
		{"test guest", d, g.Config(vm.NewID(), 128, 64), "any", "tcg"},
		{"guest quiet on its serial port", d, quiet, "vcpu in kernel space", "tcg"},
		{"empty disk", d, vm.Config{ID: bareID, Name: "bare", MemoryMB: 64, DiskMB: 16, MAC: vm.MACFor(bareID)}, "", "tcg"},
		{"test guest under kvm", dKVM, g.Config(vm.NewID(), 128, 64), kvmSign, "kvm"},
	}
	for _, tt := range tests {
		d := tt.d
		if err := d.Create(ctx, tt.cfg); err != nil {
			t.Fatalf("%s: create: %v", tt.name, err)
		}
		if _, err := d.Progress(ctx, tt.cfg.ID); !errors.Is(err, vm.ErrNotRunning) {
			t.Fatalf("%s: progress before start: err = %v, want ErrNotRunning", tt.name, err)
		}
	}
	started := time.Now()
	var wg sync.WaitGroup
	for _, tt := range tests {
		d := tt.d
		if err := d.Start(ctx, tt.cfg.ID); err != nil {
			t.Fatalf("%s: start: %v", tt.name, err)
		}
		wg.Go(func() {
			// A sign must come; no sign must stay so for as long as a guest takes to show one.
			for {
				p, err := d.Progress(ctx, tt.cfg.ID)
				if err != nil {
					t.Errorf("%s: progress: %v", tt.name, err)
					return
				}
				if p.Accel != tt.accel || p.Since.Before(started.Add(-time.Second)) || p.Since.After(time.Now()) {
					t.Errorf("%s: progress %+v: want accel %s, since the start", tt.name, p, tt.accel)
					return
				}
				if p.Sign != "" || (tt.sign == "" && time.Since(started) > 30*time.Second) {
					if p.Sign != tt.sign && (tt.sign != "any" || p.Sign == "") {
						t.Errorf("%s: sign %q, want %q; serial console: %q", tt.name, p.Sign, tt.sign, qemutest.Serial(t, d, tt.cfg.ID))
					}
					t.Logf("%s: %q after %s", tt.name, p.Sign, time.Since(started).Round(100*time.Millisecond))
					return
				}
				select {
				case <-ctx.Done():
					t.Errorf("%s: no sign of the guest: %v", tt.name, ctx.Err())
					return
				case <-time.After(500 * time.Millisecond):
				}
			}
		})
	}
	wg.Wait()
	if out := qemutest.Serial(t, d, quiet.ID); out != "" {
		t.Errorf("the quiet guest wrote to its serial console: %q", out)
	}
}
