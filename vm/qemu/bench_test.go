package qemu_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// BenchmarkSuspend measures saving a running 256 MiB guest (memory.zst and memory.ram) and
// ending QEMU; state-bytes is the size of memory.zst, ram-bytes the space memory.ram takes.
func BenchmarkSuspend(b *testing.B) {
	d, g, ctx := benchDriver(b)
	id := bootedGuest(b, d, g, ctx)
	var size, ram int64
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
		if fi, err := os.Stat(filepath.Join(d.Dir(id), "memory.ram")); err == nil {
			ram = fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		if err := d.Resume(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(size), "state-bytes")
	b.ReportMetric(float64(ram), "ram-bytes")
	b.ReportMetric(float64(benchMemoryMB<<20), "guest-bytes")
}

// BenchmarkSuspendFormats compares the earlier suspend format (the guest's RAM inside the zstd
// stream, memory.zst alone) with the current one (RAM in memory.ram, devices in memory.zst) on a
// 256 MiB guest: ns/op is the suspend. Between suspends the guest is resumed and counts for
// about three seconds; changed-blocks is how many of the memory files' 64 KiB blocks (what
// vmmp/transfer sends) differ from the previous suspend, of total-blocks. state-bytes is the
// size of the memory files, disk-bytes the space they take, resume-s the time to resume.
func BenchmarkSuspendFormats(b *testing.B) {
	for _, format := range []struct {
		name      string
		anonymous bool
	}{{"earlier", true}, {"ram-file", false}} {
		b.Run(format.name, func(b *testing.B) {
			d, g, ctx := benchDriver(b)
			qemu.SetAnonymousRAM(d, format.anonymous)
			id := bootedGuest(b, d, g, ctx)
			dir := d.Dir(id)
			names := []string{"memory.zst", "memory.ram"}
			var prev map[string][][32]byte
			var changed, total, suspends int
			var size, disk int64
			var resume time.Duration
			for b.Loop() {
				if err := d.Suspend(ctx, id); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				suspends++
				cur := make(map[string][][32]byte)
				size, disk, total = 0, 0, 0
				for _, name := range names {
					path := filepath.Join(dir, name)
					fi, err := os.Stat(path)
					if err != nil {
						continue
					}
					size += fi.Size()
					disk += fi.Sys().(*syscall.Stat_t).Blocks * 512
					cur[name] = blockHashes(b, path)
					total += len(cur[name])
					if prev != nil {
						changed += changedBlocks(prev[name], cur[name])
					}
				}
				prev = cur
				at := qemutest.LastTick(qemutest.Serial(b, d, id))
				start := time.Now()
				if err := d.Resume(ctx, id); err != nil {
					b.Fatal(err)
				}
				resume += time.Since(start)
				qemutest.WaitSerial(b, ctx, d, id, "guest activity", func(out string) bool { return qemutest.LastTick(out) >= at+6 })
				b.StartTimer()
			}
			b.ReportMetric(float64(size), "state-bytes")
			b.ReportMetric(float64(disk), "disk-bytes")
			b.ReportMetric(float64(total), "total-blocks")
			if suspends > 1 {
				b.ReportMetric(float64(changed)/float64(suspends-1), "changed-blocks")
			}
			b.ReportMetric(resume.Seconds()/float64(suspends), "resume-s")
		})
	}
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
