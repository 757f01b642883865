package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/progress"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// debianImage is the disk of a VM of the Debian guest (make guest builds it), as the QEMU
// driver makes it from the guest's image; its change is what the real guest wrote to it while
// it ran once under QEMU: it booted (systemd, its journal), installed a package-sized tree of
// real files (a copy of its own libraries), removed its documentation and touched its
// configuration, then powered itself off. The guest runs once per benchmark (runDebianGuest);
// every method's change writes the blocks it changed, so all see the same change.
type debianImage struct {
	opts   TransferOptions
	path   string
	orig   string // the VM's disk before it ran
	ran    string // and after
	accel  string
	blocks []int64 // the 64 KiB blocks that differ
}

// debianWorkload is what the guest does in the run, as systemd.run on its kernel command line;
// its last line on the serial console says it finished (made by the run, in lower case, so
// that no echo of the command line reads as it).
const (
	debianWorkload = "mkdir -p /opt/pkg && cp -a /usr/lib/x86_64-linux-gnu/. /opt/pkg/ && rm -rf /usr/share/doc /usr/share/man && " +
		"find /etc -type f -exec touch {} + && sync && echo VIRTUOSO-BENCH-RAN | tr A-Z a-z >/dev/ttyS0"
	debianRanMark = "virtuoso-bench-ran"
)

// newDebianImage is the image at path, of the guest's run in opts.DebianRun (runDebianGuest).
func newDebianImage(opts TransferOptions, path string) *debianImage {
	return &debianImage{opts: opts, path: path, orig: filepath.Join(opts.DebianRun, "debian-orig.img"), ran: filepath.Join(opts.DebianRun, "debian-ran.img")}
}

func (im *debianImage) file() string        { return im.path }
func (im *debianImage) changedBytes() int64 { return int64(len(im.blocks)) * transferGenBlock }
func (im *debianImage) describe() string {
	return fmt.Sprintf("the Debian guest's disk, changed by the guest as it ran once under %s (%s of 64KiB blocks rewritten: boot, its libraries copied as a package install, docs removed, /etc touched)",
		im.accel, progress.FormatSize(im.changedBytes()))
}

func (im *debianImage) create(ctx context.Context) error {
	accel, err := os.ReadFile(filepath.Join(im.opts.DebianRun, "accel"))
	if err != nil {
		return fmt.Errorf("the Debian guest's run: %w", err)
	}
	im.accel = string(accel)
	if im.blocks, err = differingBlocks(im.orig, im.ran); err != nil {
		return err
	}
	return im.reset(ctx)
}

// runDebianGuest makes, in dir, a VM's disk of the Debian guest of opts.Size
// (debian-orig.img), runs the guest on it once and keeps what it left (debian-ran.img), with
// the accelerator it ran under (accel). Every link's table uses the same run.
func runDebianGuest(ctx context.Context, opts TransferOptions, dir string) error {
	cache, err := qemu.GuestCacheDir()
	if err != nil {
		return err
	}
	g, err := qemu.LoadDebian(cache)
	if err != nil {
		return fmt.Errorf("the Debian guest: %w", err)
	}
	if opts.Size>>20 < g.DiskMB || opts.Size%(1<<20) != 0 {
		return fmt.Errorf("the Debian guest's disk is %d MiB: --size must be whole MiB and at least that", g.DiskMB)
	}
	cfg := qemu.DefaultConfig(filepath.Join(dir, "vm"))
	cfg.ProbeKernel = g.Kernel
	cfg.ImageDirs = []string{cache}
	cfg.Host = vm.Host{SpeedBogomips: 1 << 20, MemoryMB: 1 << 20, DiskMB: opts.Size>>20 + 1, CPUs: 64}
	cfg.Logger = opts.Log
	drv, err := qemu.New(cfg)
	if err != nil {
		return err
	}
	defer drv.Close()
	accel, err := drv.Accel(ctx)
	if err != nil {
		return err
	}
	id := vm.NewID()
	c := vm.Config{ID: id, Name: "bench debian", SpeedBogomips: 1000, MemoryMB: 512, DiskMB: opts.Size >> 20, Processor: "x86_64",
		OS: "debian", BaseImage: g.Disk, MAC: vm.MACFor(id),
		Boot: &vm.KernelBoot{Kernel: g.Kernel, Initrd: g.Initrd, Cmdline: g.Cmdline +
			` systemd.run="/bin/sh -c '` + debianWorkload + `'" systemd.run_success_action=poweroff systemd.run_failure_action=poweroff`}}
	if err := drv.Create(ctx, c); err != nil {
		return err
	}
	files, err := drv.Files(ctx, id)
	if err != nil {
		return err
	}
	disk := filepath.Join(files.Dir, files.Names[0])
	if err := transfer.CopySparse(ctx, filepath.Join(dir, "debian-orig.img"), disk); err != nil {
		return err
	}
	opts.Log.Info("bench transfer: the Debian guest runs once", "accel", accel)
	if err := drv.Start(ctx, id); err != nil {
		return err
	}
	serial := func() string {
		b, _ := os.ReadFile(filepath.Join(files.Dir, "serial.log"))
		return string(b)
	}
	for deadline := time.Now().Add(10 * time.Minute); ; {
		p, err := drv.Power(ctx, id)
		if err != nil {
			return err
		}
		if p == vm.PowerOff {
			break
		}
		if time.Now().After(deadline) {
			_ = drv.Stop(ctx, id)
			return fmt.Errorf("the Debian guest did not power off within 10 minutes; its serial console ends %q", tail(serial(), 2000))
		}
		select {
		case <-ctx.Done():
			_ = drv.Stop(context.Background(), id)
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if !strings.Contains(serial(), debianRanMark) {
		return fmt.Errorf("the Debian guest powered off without finishing its work; its serial console ends %q", tail(serial(), 2000))
	}
	if err := transfer.CopySparse(ctx, filepath.Join(dir, "debian-ran.img"), disk); err != nil {
		return err
	}
	if err := drv.Delete(ctx, id); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "accel"), []byte(accel), 0o644)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// differingBlocks is the offsets of the 64 KiB blocks in which a and b differ.
func differingBlocks(a, b string) ([]int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return nil, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return nil, err
	}
	defer fb.Close()
	var offs []int64
	pa, pb := make([]byte, transferGenBlock), make([]byte, transferGenBlock)
	for off := int64(0); ; off += transferGenBlock {
		na, ea := io.ReadFull(fa, pa)
		nb, eb := io.ReadFull(fb, pb)
		if na != nb {
			return nil, fmt.Errorf("%s and %s differ in size", a, b)
		}
		if na > 0 && !bytes.Equal(pa[:na], pb[:nb]) {
			offs = append(offs, off)
		}
		if ea != nil || eb != nil {
			return offs, nil
		}
	}
}

func (im *debianImage) reset(ctx context.Context) error { return resetFrom(ctx, im.path, im.orig) }

// change writes, in place, the blocks the guest changed, as its run left them.
func (im *debianImage) change(context.Context) error {
	src, err := os.Open(im.ran)
	if err != nil {
		return err
	}
	defer src.Close()
	f, err := os.OpenFile(im.path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, transferGenBlock)
	for _, off := range im.blocks {
		n, err := src.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	time.Sleep(100 * time.Millisecond) // past the timestamp granularity, as a VM's disk between its last write and a move
	return nil
}
