package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Accelerators.
const (
	AccelAuto = "auto" // KVM if the probe passes, else TCG
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// probeSector is the fallback probe, for a driver with no kernel to probe with: a boot sector
// that runs CPUID leaf 1 and reports through QEMU's isa-debug-exit device (port 0xf4) whether
// SSE3 is present (exit code 33) or not (35). It catches a KVM that hangs, aborts or lacks basic
// CPU features in real mode, but not one that fails later: on some nested hosts it passes while
// a Linux kernel never gets past its decompressor. The kernel probe (probeKernel) is the one
// to trust.
var probeSector = func() []byte {
	code := []byte{
		0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
		0x0f, 0xa2, // cpuid
		0xb0, 0x10, // mov al, 0x10
		0xf6, 0xc1, 0x01, // test cl, 1   (ECX bit 0: SSE3)
		0x75, 0x02, // jnz +2
		0xb0, 0x11, // mov al, 0x11
		0xba, 0xf4, 0x00, // mov dx, 0xf4
		0xee,       // out dx, al
		0xf4,       // hlt
		0xeb, 0xfd, // jmp hlt
	}
	b := make([]byte, 512)
	copy(b, code)
	b[510], b[511] = 0x55, 0xaa
	return b
}()

// probeExitOK is isa-debug-exit's exit status for a write of 0x10: (0x10 << 1) | 1.
const probeExitOK = 33

// probeVersion is part of the cache key: a record made by an older, weaker probe is not
// trusted. Version 1 was the boot sector alone.
const probeVersion = "probe/2"

// accelRecord caches a probe's outcome in the driver's directory, keyed by what would change it.
type accelRecord struct {
	Key   string `json:"key"`
	Accel string `json:"accel"`
	Note  string `json:"note,omitempty"`
}

// resolveAccel returns the accelerator to use: the configured one, or for AccelAuto the
// outcome of a probe, cached in dir/accel.json for this host kernel, QEMU binary, CPU model,
// machine type and probe kernel.
func resolveAccel(ctx context.Context, cfg Config) (accel, note string, err error) {
	switch cfg.Accel {
	case AccelKVM, AccelTCG:
		return cfg.Accel, "configured", nil
	case AccelAuto, "":
	default:
		return "", "", fmt.Errorf("unknown accelerator %q (want auto, kvm or tcg)", cfg.Accel)
	}
	key := probeKey(cfg)
	cache := filepath.Join(cfg.Dir, "accel.json")
	if b, err := os.ReadFile(cache); err == nil {
		var rec accelRecord
		if json.Unmarshal(b, &rec) == nil && rec.Key == key && (rec.Accel == AccelKVM || rec.Accel == AccelTCG) {
			return rec.Accel, "cached: " + rec.Note, nil
		}
	}
	rec := accelRecord{Key: key, Accel: AccelTCG}
	passed, perr := probeKVM(ctx, cfg)
	if ctx.Err() != nil {
		return "", "", fmt.Errorf("probe accelerator: %w", ctx.Err())
	}
	if perr != nil {
		rec.Note = "kvm probe failed: " + perr.Error()
	} else {
		rec.Accel, rec.Note = AccelKVM, "kvm probe passed: "+passed
	}
	if b, err := json.Marshal(rec); err == nil {
		writeFileAtomic(cache, b)
	}
	return rec.Accel, rec.Note, nil
}

func probeKey(cfg Config) string {
	release, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	var bin string
	if path, err := exec.LookPath(cfg.QEMU); err == nil {
		bin = fileStamp(path)
	}
	kernel := "sector"
	if cfg.ProbeKernel != "" {
		kernel = fileStamp(cfg.ProbeKernel)
	}
	return strings.Join([]string{probeVersion, strings.TrimSpace(string(release)), bin, cfg.CPU, cfg.Machine, kernel}, "|")
}

// fileStamp identifies a file's version by path, size and modification time.
func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return path + ":absent"
	}
	return fmt.Sprintf("%s:%d:%d", path, fi.Size(), fi.ModTime().Unix())
}

// probeKVM tries KVM with the configured CPU model and machine type: it boots cfg.ProbeKernel
// when there is one, else the boot sector. It returns what passed, or why it failed.
func probeKVM(ctx context.Context, cfg Config) (string, error) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return "", fmt.Errorf("no /dev/kvm: %w", err)
	}
	if cfg.ProbeKernel == "" {
		if err := probeSectorKVM(ctx, cfg); err != nil {
			return "", err
		}
		return "boot sector ran (no kernel to probe with: guests may still hang; set the qemu driver's probe kernel, e.g. install linux-image-amd64)", nil
	}
	passed, err := probeKernel(ctx, cfg, AccelKVM)
	if err != nil && fileExists("/sys/module/kvm_pvm") {
		err = fmt.Errorf("%w; this host's /dev/kvm is provided by the kvm_pvm module (PVM), not by kvm_intel or kvm_amd", err)
	}
	return passed, err
}

// kernelBanner is the first line every Linux kernel prints on its console.
const kernelBanner = "Linux version "

// probeKernel boots cfg.ProbeKernel under accel with no root file system and no initramfs,
// its console on a serial port read here. A kernel that runs prints its banner, initialises
// the machine (memory, CPUs, timers, devices), finds no root to mount and panics; with
// panic=-1 and -no-reboot that ends QEMU. The probe passes only if both the banner and that
// exit come within cfg.ProbeTimeout: proof that a real guest kernel makes progress under the
// accelerator, where a boot sector would only prove that the first instructions run. Under KVM
// this takes a second or two; under TCG about ten, so the bound is meant for KVM.
func probeKernel(ctx context.Context, cfg Config, accel string) (string, error) {
	if _, err := os.Stat(cfg.ProbeKernel); err != nil {
		return "", fmt.Errorf("probe kernel: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ProbeTimeout)
	defer cancel()
	args := []string{"-accel", accel, "-machine", cfg.Machine, "-m", "128", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio", "-kernel", cfg.ProbeKernel, "-append", "console=ttyS0 panic=-1 loglevel=7"}
	if cfg.CPU != "" {
		args = append(args, "-cpu", cfg.CPU)
	}
	cmd := exec.CommandContext(ctx, cfg.QEMU, args...)
	cmd.SysProcAttr = childAttr(false)
	cmd.WaitDelay = time.Second
	var out, qemuErr limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &qemuErr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start).Round(10 * time.Millisecond)
	console := out.String()
	banner := strings.Contains(console, kernelBanner)
	why := strings.TrimSpace(qemuErr.String())
	if why != "" {
		why = " (qemu: " + oneLine(why, 200) + ")"
	}
	switch {
	case ctx.Err() != nil && !banner:
		return "", fmt.Errorf("kernel %s printed nothing on its console under %s within %s%s", cfg.ProbeKernel, accel, cfg.ProbeTimeout, why)
	case ctx.Err() != nil:
		return "", fmt.Errorf("kernel %s started but did not finish booting under %s within %s; last console line: %q%s", cfg.ProbeKernel, accel, cfg.ProbeTimeout, lastLine(console), why)
	case err != nil:
		return "", fmt.Errorf("qemu failed (%v)%s", err, why)
	case !banner:
		return "", fmt.Errorf("kernel %s ended without printing its banner%s", cfg.ProbeKernel, why)
	}
	return fmt.Sprintf("kernel %s booted to its root-mount panic in %s", cfg.ProbeKernel, took), nil
}

// probeSectorKVM boots probeSector under KVM.
func probeSectorKVM(ctx context.Context, cfg Config) error {
	f, err := os.CreateTemp(cfg.Dir, ".probe-*.img")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(probeSector); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ProbeTimeout)
	defer cancel()
	args := []string{"-accel", "kvm", "-machine", cfg.Machine, "-m", "16", "-nodefaults", "-no-user-config", "-display", "none",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=1",
		"-drive", "file=" + f.Name() + ",format=raw,if=ide", "-no-reboot"}
	if cfg.CPU != "" {
		args = append(args, "-cpu", cfg.CPU)
	}
	cmd := exec.CommandContext(ctx, cfg.QEMU, args...)
	cmd.SysProcAttr = childAttr(false)
	cmd.WaitDelay = time.Second
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("boot sector: no answer within %s", cfg.ProbeTimeout)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == probeExitOK {
		return nil
	}
	return fmt.Errorf("boot sector failed (%v): %s", err, oneLine(out.String(), 200))
}

// FindProbeKernel returns a Linux kernel on this machine for the KVM probe: the test guest's
// (see LoadGuest), else the newest /boot/vmlinuz-*, else "" (the probe then falls back to a
// boot sector).
func FindProbeKernel() string {
	if dir, err := GuestCacheDir(); err == nil {
		if g, err := LoadGuest(dir); err == nil && fileExists(g.Kernel) {
			return g.Kernel
		}
	}
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Slice(kernels, func(i, j int) bool { return modTime(kernels[i]).After(modTime(kernels[j])) })
	for _, k := range kernels {
		if f, err := os.Open(k); err == nil { // readable by us, so by the QEMU we start
			f.Close()
			return k
		}
	}
	return ""
}

func modTime(path string) time.Time {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// limitedBuffer keeps the first 64 KiB written to it: enough of a console or a log for a
// verdict and a message, whatever the child prints.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 64<<10 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }

// oneLine joins s's lines with "; " and shortens it to n bytes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ")), " ")
	if len(s) > n {
		s = s[:n]
	}
	return s
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return oneLine(s[strings.LastIndexByte(s, '\n')+1:], 200)
}
