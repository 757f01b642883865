package qemu_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

const benchMemoryMB = 256

func benchDriver(b *testing.B) (*qemu.Driver, qemutest.Guest, context.Context) {
	g := qemutest.BuildGuest(b)
	cfg := qemutest.DriverConfig(b, g)
	cfg.Logger = nil
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	b.Cleanup(cancel)
	return qemutest.NewDriver(b, cfg), g, ctx
}

// BenchmarkCreateToRunning measures Create + Start of a 256 MiB guest until QEMU runs it
// (ns/op), and reports until the guest printed its boot banner (boot-s).
func BenchmarkCreateToRunning(b *testing.B) {
	d, g, ctx := benchDriver(b)
	var boot time.Duration
	for b.Loop() {
		id := vm.NewID()
		start := time.Now()
		if err := d.Create(ctx, g.Config(id, benchMemoryMB, 64)); err != nil {
			b.Fatal(err)
		}
		if err := d.Start(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		qemutest.WaitSerial(b, ctx, d, id, "boot", func(out string) bool { return strings.Contains(out, qemutest.Banner) })
		boot += time.Since(start)
		if err := d.Stop(ctx, id); err != nil {
			b.Fatal(err)
		}
		if err := d.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(boot.Seconds()/float64(b.N), "boot-s")
}

// bootedGuest creates and boots one 256 MiB guest for the suspend and resume benchmarks.
func bootedGuest(b *testing.B, d *qemu.Driver, g qemutest.Guest, ctx context.Context) vm.ID {
	id := vm.NewID()
	if err := d.Create(ctx, g.Config(id, benchMemoryMB, 64)); err != nil {
		b.Fatal(err)
	}
	if err := d.Start(ctx, id); err != nil {
		b.Fatal(err)
	}
	qemutest.WaitSerial(b, ctx, d, id, "boot", func(out string) bool { return qemutest.LastTick(out) >= 1 })
	return id
}

// BenchmarkSuspend measures saving a running 256 MiB guest to memory.zst and ending QEMU;
// state-bytes is the size of the saved state.
func BenchmarkSuspend(b *testing.B) {
	d, g, ctx := benchDriver(b)
	id := bootedGuest(b, d, g, ctx)
	var size int64
	for b.Loop() {
		if err := d.Suspend(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		fi, err := os.Stat(filepath.Join(d.Dir(id), "memory.zst"))
		if err != nil {
			b.Fatal(err)
		}
		size = fi.Size()
		if err := d.Resume(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(size), "state-bytes")
	b.ReportMetric(float64(benchMemoryMB<<20), "guest-bytes")
}

// BenchmarkResume measures starting QEMU from memory.zst until the 256 MiB guest runs again.
func BenchmarkResume(b *testing.B) {
	d, g, ctx := benchDriver(b)
	id := bootedGuest(b, d, g, ctx)
	for b.Loop() {
		b.StopTimer()
		if err := d.Suspend(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := d.Resume(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}
