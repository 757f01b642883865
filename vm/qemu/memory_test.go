package qemu_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

const (
	memoryMB  = 128
	diffBlock = 64 << 10 // the block size of vmmp/transfer
)

// TestMemoryFile checks the suspended memory format under each accelerator this machine has:
// the guest's RAM is memory.ram (sparse, page N at offset N*4096), memory.zst only the devices;
// a resumed guest continues counting; a second suspend after the guest ran a few seconds
// changes few of memory.ram's 64 KiB blocks; a running VM's files hold no memory and a stopped
// VM has none. TCG always runs the test guest; KVM does on some machines only, so under a KVM
// that the probe finds hanging real guests the round trip is checked without a counting guest.
func TestMemoryFile(t *testing.T) {
	g := qemutest.BuildGuest(t)
	accels := []struct {
		name      string
		accel     string
		guestRuns bool
	}{{"tcg", qemu.AccelTCG, true}}
	if _, err := os.Stat("/dev/kvm"); err == nil {
		cfg := qemutest.DriverConfig(t, g)
		cfg.Accel, cfg.ProbeKernel = qemu.AccelAuto, g.Kernel
		accel, err := qemutest.NewDriver(t, cfg).Accel(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(cfg.Dir, "accel.json"))
		t.Logf("kvm probe: %s", b)
		accels = append(accels, struct {
			name      string
			accel     string
			guestRuns bool
		}{"kvm", qemu.AccelKVM, accel == qemu.AccelKVM})
	} else {
		t.Logf("no /dev/kvm (%v): tcg only", err)
	}
	for _, a := range accels {
		t.Run(a.name, func(t *testing.T) {
			if !a.guestRuns {
				t.Log("the probe found kvm hanging real guests here: checking the round trip without a counting guest")
			}
			cfg := qemutest.DriverConfig(t, g)
			cfg.Accel = a.accel
			d := qemutest.NewDriver(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
			defer cancel()
			checkMemoryFile(t, ctx, d, g, a.guestRuns)
		})
	}
}

func checkMemoryFile(t *testing.T, ctx context.Context, d *qemu.Driver, g qemutest.Guest, guestRuns bool) {
	id := vm.NewID()
	if err := d.Create(ctx, g.Config(id, memoryMB, 64)); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	dir := d.Dir(id)
	ram, state := filepath.Join(dir, "memory.ram"), filepath.Join(dir, "memory.zst")
	if guestRuns {
		qemutest.WaitSerial(t, ctx, d, id, "boot", func(out string) bool { return qemutest.LastTick(out) >= 2 })
	}
	if fi, err := os.Stat(ram); err != nil || fi.Size() != memoryMB<<20 {
		t.Fatalf("a running vm's memory file: %v, %v; want %d bytes", fi, err, memoryMB<<20)
	}
	wantNoMemoryFiles(t, ctx, d, id, "running")

	if err := d.Suspend(ctx, id); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	wantPower(t, d, id, vm.PowerSuspended)
	atSuspend := qemutest.LastTick(qemutest.Serial(t, d, id))
	files, err := d.Files(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"disk.raw", "memory.zst", "memory.ram", "vmlinuz", "initrd", "vm.json"}; !slices.Equal(files.Names, want) {
		t.Fatalf("suspended vm's files %v, want %v", files.Names, want)
	}
	// The stream holds the devices only; the guest's RAM is in memory.ram.
	if n := fileSize(t, state); n > 2<<20 {
		t.Fatalf("memory.zst holds %d bytes: the guest's RAM went into the stream", n)
	}
	checkSparseMemory(t, ram)
	first := blockHashes(t, ram)

	if err := d.Resume(ctx, id); err != nil {
		t.Fatalf("resume: %v", err)
	}
	wantPower(t, d, id, vm.PowerRunning)
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("resumed vm kept its stream: %v", err)
	}
	wantNoMemoryFiles(t, ctx, d, id, "resumed")
	if guestRuns {
		// A few seconds of guest activity between the two suspends.
		out := qemutest.WaitSerial(t, ctx, d, id, "ticks after resume", func(out string) bool {
			return qemutest.LastTick(out) >= atSuspend+6
		})
		wantContinued(t, out, atSuspend)
	}
	if err := d.Suspend(ctx, id); err != nil {
		t.Fatalf("second suspend: %v", err)
	}
	checkSparseMemory(t, ram)
	changed := changedBlocks(first, blockHashes(t, ram))
	t.Logf("second suspend changed %d of %d 64 KiB blocks of memory.ram; memory.zst %d bytes",
		changed, len(first), fileSize(t, state))
	if changed*10 > len(first) {
		t.Fatalf("second suspend changed %d of %d blocks of memory.ram, want at most a tenth", changed, len(first))
	}

	if err := d.Resume(ctx, id); err != nil {
		t.Fatalf("second resume: %v", err)
	}
	if guestRuns {
		qemutest.WaitSerial(t, ctx, d, id, "ticks after the second resume", func(out string) bool {
			return qemutest.LastTick(out) > atSuspend+8
		})
	}
	if err := d.Stop(ctx, id); err != nil {
		t.Fatalf("stop: %v", err)
	}
	wantPower(t, d, id, vm.PowerOff)
	for _, p := range []string{ram, state} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a stopped vm keeps %s: %v", filepath.Base(p), err)
		}
	}
}

// TestResumeEarlierFormat checks that a VM suspended before RAM was file-backed (its RAM in the
// stream, no memory.ram) resumes and continues, and that its next suspend saves the new format.
func TestResumeEarlierFormat(t *testing.T) {
	g := qemutest.BuildGuest(t)
	d := qemutest.NewDriver(t, qemutest.DriverConfig(t, g))
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	id := vm.NewID()
	if err := d.Create(ctx, g.Config(id, memoryMB, 64)); err != nil {
		t.Fatal(err)
	}
	dir := d.Dir(id)
	ram, state := filepath.Join(dir, "memory.ram"), filepath.Join(dir, "memory.zst")

	qemu.SetAnonymousRAM(d, true)
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	qemutest.WaitSerial(t, ctx, d, id, "boot", func(out string) bool { return qemutest.LastTick(out) >= 2 })
	if err := d.Suspend(ctx, id); err != nil {
		t.Fatalf("suspend in the earlier format: %v", err)
	}
	qemu.SetAnonymousRAM(d, false)
	atSuspend := qemutest.LastTick(qemutest.Serial(t, d, id))
	files, err := d.Files(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"disk.raw", "memory.zst", "vmlinuz", "initrd", "vm.json"}; !slices.Equal(files.Names, want) {
		t.Fatalf("files %v, want %v", files.Names, want)
	}
	t.Logf("earlier format: memory.zst %d bytes", fileSize(t, state))
	if n := fileSize(t, state); n < 4<<20 {
		t.Fatalf("memory.zst of the earlier format holds %d bytes: not the guest's RAM", n)
	}

	if err := d.Resume(ctx, id); err != nil {
		t.Fatalf("resume from the earlier format: %v", err)
	}
	out := qemutest.WaitSerial(t, ctx, d, id, "ticks after resume", func(out string) bool {
		return qemutest.LastTick(out) > atSuspend+2
	})
	wantContinued(t, out, atSuspend)
	if _, err := os.Stat(filepath.Join(dir, "memory.ram.load")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the load's RAM file was not renamed: %v", err)
	}
	if fi, err := os.Stat(ram); err != nil || fi.Size() != memoryMB<<20 {
		t.Fatalf("memory file after resume: %v, %v", fi, err)
	}

	if err := d.Suspend(ctx, id); err != nil {
		t.Fatalf("suspend after resume from the earlier format: %v", err)
	}
	atSuspend = qemutest.LastTick(qemutest.Serial(t, d, id))
	if n := fileSize(t, state); n > 2<<20 {
		t.Fatalf("memory.zst holds %d bytes: still the earlier format", n)
	}
	checkSparseMemory(t, ram)
	if err := d.Resume(ctx, id); err != nil {
		t.Fatalf("resume: %v", err)
	}
	out = qemutest.WaitSerial(t, ctx, d, id, "ticks after the second resume", func(out string) bool {
		return qemutest.LastTick(out) > atSuspend+2
	})
	wantContinued(t, out, atSuspend)
}

// TestResumeDamagedMemory checks that a saved state whose memory file is missing or damaged,
// or whose stream QEMU cannot load, gives vm.ErrStateUnusable and leaves every file as it was
// (QEMU writes nothing into memory.ram before the guest continues); put back, it resumes.
func TestResumeDamagedMemory(t *testing.T) {
	g := qemutest.BuildGuest(t)
	d := qemutest.NewDriver(t, qemutest.DriverConfig(t, g))
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	id := vm.NewID()
	if err := d.Create(ctx, g.Config(id, memoryMB, 64)); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	qemutest.WaitSerial(t, ctx, d, id, "boot", func(out string) bool { return qemutest.LastTick(out) >= 2 })
	if err := d.Suspend(ctx, id); err != nil {
		t.Fatal(err)
	}
	atSuspend := qemutest.LastTick(qemutest.Serial(t, d, id))
	dir := d.Dir(id)
	ram, state := filepath.Join(dir, "memory.ram"), filepath.Join(dir, "memory.zst")
	away := t.TempDir()
	// Streams that start right, then are garbage: of the earlier format, and of this one.
	garbage := bytes.Repeat([]byte("\xfe garbage"), 4096)
	earlier := append([]byte("QEVM\x00\x00\x00\x03"), garbage...)
	shared := append([]byte("QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x0dpc-i440fx-7.2\x05\x1aconfiguration/capabilities\x00\x00\x00\x01\x00\x00\x00\x01\x0fx-ignore-shared"), garbage...)

	tests := []struct {
		name    string
		moved   string // the file moved away and back
		damage  func(t *testing.T, moved string)
		want    []error
		message string
	}{
		{"memory file deleted", ram, func(*testing.T, string) {},
			[]error{vm.ErrStateUnusable, vm.ErrMissingFile}, ram + " does not exist"},
		{"memory file truncated", ram, func(t *testing.T, moved string) { copyPrefix(t, moved, ram, 1<<20) },
			[]error{vm.ErrStateUnusable}, ram + " is damaged"},
		{"memory file a link", ram, func(t *testing.T, moved string) { mustSymlink(t, moved, ram) },
			[]error{vm.ErrStateUnusable}, "not a regular file"},
		{"stream deleted", state, func(*testing.T, string) {},
			[]error{vm.ErrStateUnusable, vm.ErrMissingFile}, state + " does not exist"},
		{"stream truncated", state, func(t *testing.T, moved string) { copyPrefix(t, moved, state, fileSize(t, moved)/2) },
			[]error{vm.ErrStateUnusable}, state + " is damaged"},
		{"earlier-format stream qemu cannot load", state, func(t *testing.T, _ string) { zstdOf(t, earlier, state) },
			[]error{vm.ErrStateUnusable}, "qemu could not load " + state},
		{"stream qemu cannot load", state, func(t *testing.T, _ string) { zstdOf(t, shared, state) },
			[]error{vm.ErrStateUnusable}, "qemu could not load " + state},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			moved := filepath.Join(away, filepath.Base(tt.moved))
			if err := os.Rename(tt.moved, moved); err != nil {
				t.Fatal(err)
			}
			defer func() {
				os.Remove(tt.moved)
				if err := os.Rename(moved, tt.moved); err != nil {
					t.Fatal(err)
				}
			}()
			tt.damage(t, moved)
			before := dirDigest(t, dir)
			err := d.Resume(ctx, id)
			t.Logf("error: %v", err)
			for _, want := range tt.want {
				if !errors.Is(err, want) {
					t.Fatalf("resume: err = %v, want %v", err, want)
				}
			}
			for _, want := range []string{tt.message, "resume it fresh"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("resume error %q does not say %q", err, want)
				}
			}
			if after := dirDigest(t, dir); after != before {
				t.Fatalf("failed resume changed the vm's files:\n%s\nwas\n%s", after, before)
			}
			if _, err := os.Stat(state); err == nil {
				wantPower(t, d, id, vm.PowerSuspended) // no qemu left running
			}
		})
	}
	if err := d.Resume(ctx, id); err != nil {
		t.Fatalf("resume with the files put back: %v", err)
	}
	out := qemutest.WaitSerial(t, ctx, d, id, "ticks after resume", func(out string) bool {
		return qemutest.LastTick(out) > atSuspend+1
	})
	wantContinued(t, out, atSuspend)
}

// TestSuspendKilled checks a QEMU killed (SIGKILL) while it saves the VM: Suspend fails with
// vm.ErrNotRunning, the VM is off with no memory state (no stream, no memory file, no partial
// file), and it boots from its disk again. Then DiscardState drops a saved state whole.
func TestSuspendKilled(t *testing.T) {
	g := qemutest.BuildGuest(t)
	d := qemutest.NewDriver(t, qemutest.DriverConfig(t, g))
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	id := vm.NewID()
	if err := d.Create(ctx, g.Config(id, memoryMB, 64)); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	qemutest.WaitSerial(t, ctx, d, id, "boot", func(out string) bool { return qemutest.LastTick(out) >= 1 })
	dir := d.Dir(id)
	raw, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(raw, &st); err != nil || st.PID <= 0 {
		t.Fatalf("runtime state %s: %v", raw, err)
	}
	// The compressor kills QEMU as the migration into it begins.
	qemu.SetCompressor(d, func(int) []string {
		return []string{"sh", "-c", fmt.Sprintf("kill -9 %d; exec cat >/dev/null", st.PID)}
	})
	err = d.Suspend(ctx, id)
	t.Logf("error: %v", err)
	if !errors.Is(err, vm.ErrNotRunning) {
		t.Fatalf("suspend of a vm whose qemu was killed: err = %v, want ErrNotRunning", err)
	}
	wantPower(t, d, id, vm.PowerOff)
	for _, name := range []string{"memory.zst", "memory.zst.tmp", "memory.ram", "memory.ram.load", "state.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a vm killed during suspend keeps %s: %v", name, err)
		}
	}
	if err := d.Resume(ctx, id); !errors.Is(err, vm.ErrStateUnusable) {
		t.Fatalf("resume without a state: err = %v, want ErrStateUnusable", err)
	}
	qemu.SetCompressor(d, nil)
	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("start after the kill: %v", err)
	}
	qemutest.WaitSerial(t, ctx, d, id, "a second boot", func(out string) bool {
		return strings.Count(out, qemutest.Banner) == 2
	})

	t.Log("a discarded state leaves no memory behind")
	if err := d.Suspend(ctx, id); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	if err := d.DiscardState(ctx, id); err != nil {
		t.Fatalf("discard state: %v", err)
	}
	wantPower(t, d, id, vm.PowerOff)
	for _, name := range []string{"memory.zst", "memory.ram"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a discarded state keeps %s: %v", name, err)
		}
	}
}

// wantNoMemoryFiles checks that the files of a running VM hold no memory: memory.ram is then
// the guest's live memory.
func wantNoMemoryFiles(t *testing.T, ctx context.Context, d *qemu.Driver, id vm.ID, what string) {
	t.Helper()
	files, err := d.Files(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(files.Names, "memory.ram") || slices.Contains(files.Names, "memory.zst") {
		t.Fatalf("%s vm's files %v include its memory", what, files.Names)
	}
}

// wantContinued checks that the guest continued from tick atSuspend without booting again.
func wantContinued(t *testing.T, out string, atSuspend int) {
	t.Helper()
	if n := strings.Count(out, qemutest.Banner); n != 1 {
		t.Fatalf("guest booted %d times, want once (resume must continue it)", n)
	}
	lines := strings.Split(out, "\n")
	i := slices.IndexFunc(lines, func(l string) bool {
		return strings.Contains(l, "virtuoso guest tick") && qemutest.LastTick(l) == atSuspend
	})
	if i < 0 {
		t.Fatalf("no tick %d on the serial console", atSuspend)
	}
	if next := firstTick(strings.Join(lines[i+1:], "\n")); next != atSuspend+1 {
		t.Fatalf("first tick after the resume %d, want %d", next, atSuspend+1)
	}
}

// checkSparseMemory checks that memory.ram has the guest's size and takes no disk space for
// pages that are all zeros.
func checkSparseMemory(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != memoryMB<<20 {
		t.Fatalf("memory file of %d bytes, want %d", fi.Size(), memoryMB<<20)
	}
	used := fi.Sys().(*syscall.Stat_t).Blocks * 512
	nonzero := nonzeroBytes(t, path)
	t.Logf("memory.ram: %d bytes, %d on disk, %d in non-zero pages", fi.Size(), used, nonzero)
	if used >= fi.Size() || used > nonzero+1<<20 {
		t.Fatalf("memory file takes %d bytes on disk for %d bytes of non-zero pages: not sparse", used, nonzero)
	}
}

func nonzeroBytes(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zero := make([]byte, 4096)
	page := make([]byte, 4096)
	var n int64
	for {
		if _, err := io.ReadFull(f, page); err != nil {
			if err == io.EOF {
				return n
			}
			t.Fatal(err)
		}
		if !bytes.Equal(page, zero) {
			n += int64(len(page))
		}
	}
}

// blockHashes hashes the file at path in the transfer's 64 KiB blocks.
func blockHashes(tb testing.TB, path string) [][32]byte {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var hs [][32]byte
	buf := make([]byte, diffBlock)
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			hs = append(hs, sha256.Sum256(buf[:n]))
		}
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			return hs
		}
		if err != nil {
			tb.Fatal(err)
		}
	}
}

// changedBlocks counts the blocks of b that differ from a (blocks beyond the shorter count).
func changedBlocks(a, b [][32]byte) int {
	n := max(len(a), len(b)) - min(len(a), len(b))
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// dirDigest describes the files of a VM's directory (name, kind, size, content hash), leaving
// out the logs.
func dirDigest(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range entries {
		if name := e.Name(); name == "serial.log" || name == "qemu.log" {
			continue
		}
		path := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		sum := ""
		if fi.Mode().IsRegular() {
			sum = hashFile(t, path)
		}
		fmt.Fprintf(&b, "%s %s %d %s\n", e.Name(), fi.Mode().Type(), fi.Size(), sum)
	}
	return b.String()
}

func hashFile(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func fileSize(tb testing.TB, path string) int64 {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Size()
}

// copyPrefix writes the first n bytes of src to dst.
func copyPrefix(t *testing.T, src, dst string, n int64) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(out, in, n); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// zstdOf writes data compressed with zstd to path.
func zstdOf(t *testing.T, data []byte, path string) {
	t.Helper()
	cmd := exec.Command("zstd", "-q", "-c")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd: %v", err)
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}
