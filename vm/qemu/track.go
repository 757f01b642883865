package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// Change tracking. A raw disk runs under QEMU through a qcow2 wrapper that holds no data, only
// metadata: its data file is the raw disk itself (data_file_raw: guest offset N is byte N of
// disk.raw), and it keeps QEMU's persistent dirty bitmaps. The wrapper names its data file
// relative to the working directory, so QEMU and the tools open it in the disk's directory
// (and the pair moves together, staging → vms). The driver implements
// transfer.ChangeTracker with it:
//
//   - Checkpoint(path, h), called when the transfer stored the signature of disk.raw with image
//     hash h (the source after a send, the destination after a fetch), replaces the wrapper's
//     bitmap with an empty one named for h;
//   - a VM that runs writes through the wrapper: QEMU loads the bitmap, sets a bit for every
//     64 KiB it writes (discards and zero writes too) and stores it when it exits cleanly
//     (power-off, quit, or the end of a suspend's migration);
//   - Changed(path, h) reads the bitmap named for h (qemu-nbd exports it, qemu-img map lists
//     its dirty extents): the only ranges of disk.raw that can differ from the content whose
//     hash is h.
//
// What is not sure gives ok false, and the transfer scans the file: no wrapper, no bitmap for
// h (another content was checkpointed, or none), a bitmap QEMU left "in-use" (it was killed,
// so writes may be missing) or not enabled, a wrapper whose size or data file is not the
// disk's, a disk changed after the wrapper was last written (QEMU writes the wrapper as it
// closes, after its last write of the disk: a later change came from elsewhere), a VM that
// runs. Checkpoint and Changed hold the VM's lock, so no Start or Resume opens the wrapper
// meanwhile. Start and
// Resume repair the wrapper before QEMU runs (a damaged one is made anew, without bitmaps);
// if that fails the VM runs on disk.raw directly and the wrapper is removed first, so that no
// bitmap outlives writes it did not see. The transfer itself drops a file's signature before
// it rewrites the file, so no hash names content that only the transfer changed. qcow2 disks
// are not tracked: their bitmaps count guest offsets, not the file's bytes the transfer moves.
// The wrapper is named with a leading dot, which the transfer never moves: it describes this
// provider's copy only.

// trackPath names a raw disk's tracking wrapper: .<disk>.track beside it.
func trackPath(disk string) string {
	return filepath.Join(filepath.Dir(disk), "."+filepath.Base(disk)+".track")
}

const (
	bitmapPrefix = "virtuoso-"
	// maxMapOutput caps what qemu-img map may print (about 100 bytes an extent): a bitmap
	// more fragmented than that (over half a million extents) is not read, and the disk is
	// scanned instead.
	maxMapOutput = 64 << 20
)

func bitmapName(h transfer.Hash) string { return bitmapPrefix + hex.EncodeToString(h[:16]) }

// wrapperInfo is what qemu-img info tells of a wrapper.
type wrapperInfo struct {
	Format         string `json:"format"`
	VirtualSize    int64  `json:"virtual-size"`
	FormatSpecific struct {
		Data struct {
			DataFile    string       `json:"data-file"`
			DataFileRaw bool         `json:"data-file-raw"`
			Corrupt     bool         `json:"corrupt"`
			Bitmaps     []bitmapInfo `json:"bitmaps"`
		} `json:"data"`
	} `json:"format-specific"`
}

type bitmapInfo struct {
	Name  string   `json:"name"`
	Flags []string `json:"flags"`
}

// tracked reports whether disk (a file of a VM directory, or of a staging directory) is a raw
// disk this driver tracks: its directory's vm.json, valid (in a staging directory it comes
// from another provider, and its names end up in qemu-img's options), names it as the raw
// disk.
func (d *Driver) tracked(disk string) bool {
	if d.cfg.NoChangeTracking {
		return false
	}
	f, err := os.Open(filepath.Join(filepath.Dir(disk), defFile))
	if err != nil {
		return false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxDefBytes+1))
	if err != nil || len(b) > maxDefBytes {
		return false
	}
	var def definition
	if json.Unmarshal(b, &def) != nil || def.validate(def.Config.ID) != nil {
		return false
	}
	return def.DiskFormat == "raw" && def.Disk == filepath.Base(disk)
}

// lockDisk holds the lock of the VM whose disk is at path, if it is one of this driver's VMs
// (a staging directory's is no VM yet: nothing runs there), so that no Start or Resume opens
// the wrapper meanwhile; running says whether the VM runs.
func (d *Driver) lockDisk(ctx context.Context, path string) (unlock func(), running bool, err error) {
	dir := filepath.Dir(path)
	id, err := vm.ParseID(filepath.Base(dir))
	if err != nil || d.Dir(id) != dir {
		return func() {}, false, nil
	}
	m, err := d.lock(ctx, id)
	if errors.Is(err, vm.ErrNotFound) {
		return func() {}, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return m.op.Unlock, d.running(m), nil
}

// wrapperState reads the wrapper of disk; ok is false when it is missing or not one this
// driver made for disk (then it is to be made anew).
func (d *Driver) wrapperState(ctx context.Context, disk string) (wrapperInfo, bool, error) {
	w := trackPath(disk)
	fi, err := os.Stat(disk)
	if err != nil {
		return wrapperInfo{}, false, err
	}
	if _, err := os.Lstat(w); err != nil {
		return wrapperInfo{}, false, nil
	}
	cmd := exec.CommandContext(ctx, d.cfg.QEMUImg, "info", "--output=json", "-f", "qcow2", filepath.Base(w))
	cmd.Dir = filepath.Dir(w)
	out, err := cmd.Output()
	if err != nil {
		if cmd.Process == nil {
			return wrapperInfo{}, false, toolError(d.cfg.QEMUImg, err)
		}
		return wrapperInfo{}, false, nil
	}
	var info wrapperInfo
	if json.Unmarshal(out, &info) != nil {
		return wrapperInfo{}, false, nil
	}
	data := info.FormatSpecific.Data
	ok := info.Format == "qcow2" && data.DataFile == filepath.Base(disk) && data.DataFileRaw && !data.Corrupt &&
		info.VirtualSize == fi.Size()
	return info, ok, nil
}

// writtenBehind reports whether disk changed after its wrapper was last written: QEMU writes
// the wrapper (its bitmaps) when it closes, after its last write of the disk, and Checkpoint
// writes it after the transfer did; a disk changed later was changed by something else (a
// QEMU run without the wrapper, by an older driver or by hand), which no bitmap saw.
func writtenBehind(disk string) bool {
	var ds, ws syscall.Stat_t
	if syscall.Stat(disk, &ds) != nil || syscall.Stat(trackPath(disk), &ws) != nil {
		return true
	}
	return ds.Ctim.Nano() > ws.Mtim.Nano()
}

// makeWrapper makes disk's wrapper anew, without bitmaps. qemu-img create makes the data file
// afresh, so it runs in a directory of its own, on a data file of the disk's name that is
// thrown away; the wrapper then moves beside the disk.
func (d *Driver) makeWrapper(ctx context.Context, disk string) error {
	fi, err := os.Stat(disk)
	if err != nil {
		return err
	}
	if old, _ := filepath.Glob(filepath.Join(filepath.Dir(disk), ".track-new-*")); len(old) > 0 {
		for _, o := range old { // left by a crash
			os.RemoveAll(o)
		}
	}
	tmp, err := os.MkdirTemp(filepath.Dir(disk), ".track-new-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	opts := "data_file=" + filepath.Base(disk) + ",data_file_raw=on"
	if err := d.qemuImgIn(ctx, tmp, "create", "-q", "-f", "qcow2", "-o", opts, "wrapper", fmt.Sprint(fi.Size())); err != nil {
		return err
	}
	return os.Rename(filepath.Join(tmp, "wrapper"), trackPath(disk))
}

// qemuImgIn runs qemu-img in dir ("": this process's). The wrapper names its data file
// relative to the working directory, so every tool that opens a wrapper runs in the directory
// of its disk.
func (d *Driver) qemuImgIn(ctx context.Context, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, d.cfg.QEMUImg, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		if cmd.Process == nil {
			return toolError(d.cfg.QEMUImg, err)
		}
		return fmt.Errorf("%w: qemu-img %s: %v: %s", vm.ErrHypervisor, args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// driveFor is the file and format QEMU is to open for the VM's disk in dir: the wrapper of a
// raw disk, repaired first, or the disk itself. A raw disk that runs without its wrapper loses
// it first; if that fails the VM does not run (its bitmap would miss what it writes).
func (d *Driver) driveFor(ctx context.Context, dir string, def definition) (file, format string, err error) {
	disk := filepath.Join(dir, def.Disk)
	if def.DiskFormat != "raw" {
		return def.Disk, def.DiskFormat, nil
	}
	if d.cfg.NoChangeTracking {
		if err := os.Remove(trackPath(disk)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", "", fmt.Errorf("%w: remove the change tracking of the disk, which would miss what the vm writes: %w", vm.ErrHypervisor, err)
		}
		return def.Disk, def.DiskFormat, nil
	}
	err = func() error {
		info, ok, err := d.wrapperState(ctx, disk)
		if err != nil {
			return err
		}
		for _, b := range info.FormatSpecific.Data.Bitmaps {
			if slices.Contains(b.Flags, "in-use") {
				ok = false // QEMU was killed with it open: writes may be missing from it
			}
		}
		if ok {
			return nil
		}
		return d.makeWrapper(ctx, disk)
	}()
	if err != nil {
		// Without the wrapper QEMU writes what no bitmap sees: none may survive.
		if rerr := os.Remove(trackPath(disk)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return "", "", fmt.Errorf("%w: the disk's change tracking is damaged (%v) and cannot be removed: %w", vm.ErrHypervisor, err, rerr)
		}
		d.log.Warn("vm disk runs without change tracking: its next transfer scans it", "disk", disk, "err", err)
		return def.Disk, def.DiskFormat, nil
	}
	return filepath.Base(trackPath(disk)), "qcow2", nil
}

// Checkpoint implements transfer.ChangeTracker: the wrapper of the raw disk at path gets an
// empty bitmap for content h, in place of any earlier one. Files that are not a tracked disk
// are left alone.
func (d *Driver) Checkpoint(ctx context.Context, path string, h transfer.Hash) error {
	if !d.tracked(path) {
		return nil
	}
	unlock, running, err := d.lockDisk(ctx, path)
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	defer unlock()
	if running {
		return fmt.Errorf("checkpoint %s: %w", path, vm.ErrRunning)
	}
	info, ok, err := d.wrapperState(ctx, path)
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if !ok {
		if err := d.makeWrapper(ctx, path); err != nil {
			return fmt.Errorf("checkpoint %s: %w", path, err)
		}
		info = wrapperInfo{}
	}
	dir, w := filepath.Dir(path), filepath.Base(trackPath(path))
	for _, b := range info.FormatSpecific.Data.Bitmaps {
		if err := d.qemuImgIn(ctx, dir, "bitmap", "-f", "qcow2", "--remove", w, b.Name); err != nil {
			return fmt.Errorf("checkpoint %s: %w", path, err)
		}
	}
	if err := d.qemuImgIn(ctx, dir, "bitmap", "-f", "qcow2", "--add", w, bitmapName(h)); err != nil {
		return fmt.Errorf("checkpoint %s: %w", path, err)
	}
	return nil
}

// Changed implements transfer.ChangeTracker: the extents of the raw disk at path that QEMU
// wrote since its content had hash since, from the wrapper's bitmap; ok false when that is
// not known for sure.
func (d *Driver) Changed(ctx context.Context, path string, since transfer.Hash) ([]transfer.Extent, bool, error) {
	if !d.tracked(path) {
		return nil, false, nil
	}
	unlock, running, err := d.lockDisk(ctx, path)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	if running {
		return nil, false, nil // its changes are still being made
	}
	info, ok, err := d.wrapperState(ctx, path)
	if err != nil || !ok || writtenBehind(path) {
		return nil, false, err
	}
	name := bitmapName(since)
	i := slices.IndexFunc(info.FormatSpecific.Data.Bitmaps, func(b bitmapInfo) bool { return b.Name == name })
	// A bitmap QEMU held open when it died ("in-use") may lack writes; one not enabled
	// ("auto" missing) records none.
	if i < 0 || slices.Contains(info.FormatSpecific.Data.Bitmaps[i].Flags, "in-use") || !slices.Contains(info.FormatSpecific.Data.Bitmaps[i].Flags, "auto") {
		return nil, false, nil
	}
	ranges, err := d.dirtyExtents(ctx, trackPath(path), name, info.VirtualSize)
	if err != nil {
		return nil, false, err
	}
	return ranges, true, nil
}

// dirtyExtents lists the extents bitmap marks in wrapper: qemu-nbd exports the wrapper
// read-only with the bitmap (and exits when its one client leaves), and qemu-img map, told
// to read the bitmap as allocation status, prints dirty extents as "data": false.
func (d *Driver) dirtyExtents(ctx context.Context, wrapper, bitmap string, size int64) ([]transfer.Extent, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	sockDir, err := os.MkdirTemp("", "virtuoso-nbd-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockDir)
	sock, pidFile := filepath.Join(sockDir, "s"), filepath.Join(sockDir, "pid")
	logf, err := os.Create(filepath.Join(sockDir, "log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// --fork returns once the socket listens; the server then exits with its one client. Its
	// output goes to a file: a pipe would stay open as long as the forked server runs.
	nbd := exec.CommandContext(ctx, d.cfg.QEMUNBD, "--fork", "--pid-file="+pidFile, "-r", "-f", "qcow2",
		"-x", "disk", "-B", bitmap, "-k", sock, filepath.Base(wrapper))
	nbd.Dir = filepath.Dir(wrapper)
	nbd.Stdout, nbd.Stderr = logf, logf
	// A server whose client never came (cancelled, qemu-img failed) would wait for it for
	// ever, holding the disk's lock: it is ended, whatever happened.
	defer endForked(pidFile, "qemu-nbd")
	if err := nbd.Run(); err != nil {
		if nbd.Process == nil {
			return nil, toolError(d.cfg.QEMUNBD, err)
		}
		out, _ := os.ReadFile(logf.Name())
		return nil, fmt.Errorf("export the bitmap of %s: %v: %s", wrapper, err, strings.TrimSpace(string(out)))
	}
	opts := "driver=nbd,export=disk,server.type=unix,server.path=" + sock + ",x-dirty-bitmap=qemu:dirty-bitmap:" + bitmap
	m := exec.CommandContext(ctx, d.cfg.QEMUImg, "map", "--output=json", "--image-opts", opts)
	stdout, err := m.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	m.Stderr = &stderr
	if err := m.Start(); err != nil {
		return nil, toolError(d.cfg.QEMUImg, err)
	}
	ranges, perr := parseDirtyMap(io.LimitReader(stdout, maxMapOutput), size)
	io.Copy(io.Discard, stdout)
	if err := m.Wait(); err != nil {
		return nil, fmt.Errorf("read the bitmap of %s: %v: %s", wrapper, err, strings.TrimSpace(stderr.String()))
	}
	if perr != nil {
		return nil, fmt.Errorf("read the bitmap of %s: %w", wrapper, perr)
	}
	return ranges, nil
}

// endForked ends the process whose pid is in pidFile if it still runs program.
func endForked(pidFile, program string) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	if cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(cmd, []byte(program)) {
		syscall.Kill(pid, syscall.SIGTERM)
	}
}

// parseDirtyMap reads qemu-img map's JSON (an array of extents, which must cover the disk's
// size bytes without a gap) and returns those marked dirty ("data": false), adjacent ones
// merged.
func parseDirtyMap(r io.Reader, size int64) ([]transfer.Extent, error) {
	dec := json.NewDecoder(bufio.NewReader(r))
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return nil, fmt.Errorf("qemu-img map: not a list of extents (%v)", err)
	}
	var out []transfer.Extent
	var end int64
	for dec.More() {
		var e struct {
			Start  int64 `json:"start"`
			Length int64 `json:"length"`
			Data   *bool `json:"data"`
		}
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("qemu-img map: %w", err)
		}
		if e.Start != end || e.Length <= 0 || e.Data == nil {
			return nil, fmt.Errorf("qemu-img map: extent %d+%d out of order or incomplete", e.Start, e.Length)
		}
		end = e.Start + e.Length
		if *e.Data {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len == e.Start {
			out[n-1].Len += e.Length
			continue
		}
		out = append(out, transfer.Extent{Off: e.Start, Len: e.Length})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("qemu-img map: %w", err)
	}
	if end != size {
		return nil, fmt.Errorf("qemu-img map: extents end at %d, the disk at %d", end, size)
	}
	return out, nil
}

// TrackingWrapper is the file through which QEMU opens the raw disk at disk: its change
// tracking (a qcow2 of metadata only, named relative to the disk's directory). What writes the
// disk through it, run in that directory (qemu-io, as the benchmarks do), is in its dirty
// bitmap as a guest's writes are.
func TrackingWrapper(disk string) string { return trackPath(disk) }
