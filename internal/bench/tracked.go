package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// trackedDisk is the benchmark's image as the raw disk of a QEMU VM (made by the real driver,
// with its change-tracking wrapper), served with the driver as the transfer's change tracker.
// The image's changes reach it through QEMU's block layer (qemu-io on the wrapper), which marks
// them in the disk's dirty bitmap as it marks a running guest's writes.
type trackedDisk struct {
	drv  *qemu.Driver
	path string
}

func newTrackedDisk(ctx context.Context, dir string, size int64, log *slog.Logger) (*trackedDisk, error) {
	if size%(1<<20) != 0 {
		return nil, fmt.Errorf("a vm disk is whole MiB; the image is %d bytes", size)
	}
	cfg := qemu.DefaultConfig(dir)
	cfg.Accel = qemu.AccelTCG // no VM runs: nothing to probe
	cfg.Host = vm.Host{SpeedBogomips: 1 << 20, MemoryMB: 1 << 20, DiskMB: size>>20 + 1, CPUs: 64}
	cfg.Logger = log
	drv, err := qemu.New(cfg)
	if err != nil {
		return nil, err
	}
	id := vm.NewID()
	if err := drv.Create(ctx, vm.Config{ID: id, Name: "bench disk", MemoryMB: 64, DiskMB: size >> 20, MAC: vm.MACFor(id)}); err != nil {
		drv.Close()
		return nil, err
	}
	files, err := drv.Files(ctx, id)
	if err != nil {
		drv.Close()
		return nil, err
	}
	return &trackedDisk{drv: drv, path: filepath.Join(files.Dir, files.Names[0])}, nil
}

func (td *trackedDisk) close() { td.drv.Close() }

// load makes the disk a copy of image, with no signature: the next transfer scans it.
func (td *trackedDisk) load(ctx context.Context, image string) error {
	if err := os.RemoveAll(filepath.Join(filepath.Dir(td.path), ".vmmp-transfer")); err != nil {
		return err
	}
	if err := os.Remove(td.path); err != nil {
		return err
	}
	return transfer.CopySparse(ctx, td.path, image)
}

// replay writes into the disk, through the wrapper, every 64 KiB block in which image differs
// from it, so that it becomes a copy of image again with those blocks in its dirty bitmap.
// It returns the bytes written.
func (td *trackedDisk) replay(ctx context.Context, image string) (int64, error) {
	return replayThroughQEMU(ctx, filepath.Dir(td.path), filepath.Base(qemu.TrackingWrapper(td.path)), "qcow2", image, td.path)
}

// replayThroughQEMU writes into the disk image target (of format, in dir, as QEMU opens it),
// through QEMU's block layer (qemu-io), every 64 KiB block in which want differs from have, a
// raw file of what target holds: target then holds what want does. It returns the bytes
// written.
func replayThroughQEMU(ctx context.Context, dir, target, format, want, have string) (int64, error) {
	const bs = 64 << 10
	w, err := os.Open(want)
	if err != nil {
		return 0, err
	}
	defer w.Close()
	h, err := os.Open(have)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	tmp, err := os.MkdirTemp("", "virtuoso-bench-replay-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	var script strings.Builder
	var written int64
	var run []byte // differing data blocks, adjacent, from runOff
	var runOff int64
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		f := filepath.Join(tmp, fmt.Sprint(runOff))
		if err := os.WriteFile(f, run, 0o600); err != nil {
			return err
		}
		fmt.Fprintf(&script, "write -q -s %s %d %d\n", f, runOff, len(run))
		written += int64(len(run))
		run = run[:0]
		return nil
	}
	a, b, zero := make([]byte, bs), make([]byte, bs), make([]byte, bs)
	for off := int64(0); ; off += bs {
		n, err := io.ReadFull(w, a)
		if n == 0 {
			break
		}
		if err != nil && err != io.ErrUnexpectedEOF {
			return 0, err
		}
		if _, err := io.ReadFull(h, b[:n]); err != nil {
			return 0, err
		}
		differs, isZero := !bytes.Equal(a[:n], b[:n]), bytes.Equal(a[:n], zero[:n])
		if !differs || isZero || len(run) >= 4<<20 || runOff+int64(len(run)) != off {
			if err := flush(); err != nil {
				return 0, err
			}
		}
		switch {
		case !differs:
		case isZero:
			fmt.Fprintf(&script, "write -q -z %d %d\n", off, n)
			written += int64(n)
		default:
			if len(run) == 0 {
				runOff = off
			}
			run = append(run, a[:n]...)
		}
	}
	if err := flush(); err != nil {
		return 0, err
	}
	script.WriteString("quit\n")
	cmd := exec.CommandContext(ctx, "qemu-io", "-f", format, target)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(script.String())
	out, err := cmd.CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("error")) || bytes.Contains(out, []byte("failed")) {
		return 0, fmt.Errorf("qemu-io: %v: %s", err, out)
	}
	return written, nil
}

// qcow2Image is an image (random or ext4) as a qcow2 file, which the methods move: made by
// qemu-img convert, changed by writing what the change rewrote through QEMU's block layer
// (new clusters appended, tables updated), as a guest's writes change a qcow2 disk.
type qcow2Image struct {
	raw  transferImage
	path string
}

func (q *qcow2Image) file() string { return q.path }

func (q *qcow2Image) describe() string { return q.raw.describe() + ", as qcow2" }

func (q *qcow2Image) changedBytes() int64 { return q.raw.changedBytes() }

func (q *qcow2Image) create(ctx context.Context) error {
	if err := q.raw.create(ctx); err != nil {
		return err
	}
	return q.convert(ctx)
}

func (q *qcow2Image) convert(ctx context.Context) error {
	if err := os.RemoveAll(filepath.Join(filepath.Dir(q.path), ".vmmp-transfer")); err != nil {
		return err
	}
	if err := os.Remove(q.path); err != nil && !os.IsNotExist(err) {
		return err
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", q.raw.file(), q.path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img convert: %w: %s", err, out)
	}
	return nil
}

func (q *qcow2Image) reset(ctx context.Context) error {
	if err := q.raw.reset(ctx); err != nil {
		return err
	}
	return q.convert(ctx)
}

func (q *qcow2Image) change(ctx context.Context) error {
	prev := q.raw.file() + ".prev"
	os.Remove(prev)
	if err := transfer.CopySparse(ctx, prev, q.raw.file()); err != nil {
		return err
	}
	defer os.Remove(prev)
	if err := q.raw.change(ctx); err != nil {
		return err
	}
	_, err := replayThroughQEMU(ctx, filepath.Dir(q.path), filepath.Base(q.path), "qcow2", q.raw.file(), prev)
	return err
}
