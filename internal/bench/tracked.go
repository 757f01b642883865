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
	const bs = 64 << 10
	want, err := os.Open(image)
	if err != nil {
		return 0, err
	}
	defer want.Close()
	have, err := os.Open(td.path)
	if err != nil {
		return 0, err
	}
	defer have.Close()
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
		n, err := io.ReadFull(want, a)
		if n == 0 {
			break
		}
		if err != nil && err != io.ErrUnexpectedEOF {
			return 0, err
		}
		if _, err := io.ReadFull(have, b[:n]); err != nil {
			return 0, err
		}
		differs := !bytes.Equal(a[:n], b[:n])
		if !differs || bytes.Equal(a[:n], zero[:n]) || len(run) >= 4<<20 || runOff+int64(len(run)) != off {
			if err := flush(); err != nil {
				return 0, err
			}
		}
		switch {
		case !differs:
		case bytes.Equal(a[:n], zero[:n]):
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
	cmd := exec.CommandContext(ctx, "qemu-io", "-f", "qcow2", filepath.Base(qemu.TrackingWrapper(td.path)))
	cmd.Dir = filepath.Dir(td.path)
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu-io: %w: %s", err, out)
	}
	return written, nil
}
