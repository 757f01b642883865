package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Accelerators.
const (
	AccelAuto = "auto" // KVM if the probe passes, else TCG
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// probeSector is a boot sector that proves a CPU model works under an accelerator: it runs
// CPUID leaf 1 and reports through QEMU's isa-debug-exit device (port 0xf4) whether SSE3 is
// present (exit code 33) or not (35). A KVM that cannot run guests hangs, aborts, or, as on
// some nested hosts, runs with a CPU model missing basic features that every x86-64 Linux
// kernel expects; all three fail the probe.
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

// accelRecord caches a probe's outcome in the driver's directory, keyed by what would change it.
type accelRecord struct {
	Key   string `json:"key"`
	Accel string `json:"accel"`
	Note  string `json:"note,omitempty"`
}

// resolveAccel returns the accelerator to use: the configured one, or for AccelAuto the
// outcome of a probe, cached in dir/accel.json for this kernel, QEMU binary and CPU model.
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
	if perr := probeKVM(ctx, cfg); perr != nil {
		rec.Note = "kvm probe failed: " + perr.Error()
	} else {
		rec.Accel, rec.Note = AccelKVM, "kvm probe passed"
	}
	if ctx.Err() != nil {
		return "", "", fmt.Errorf("probe accelerator: %w", ctx.Err())
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
		if fi, err := os.Stat(path); err == nil {
			bin = fmt.Sprintf("%s:%d:%d", path, fi.Size(), fi.ModTime().Unix())
		}
	}
	return strings.TrimSpace(string(release)) + "|" + bin + "|" + cfg.CPU
}

// probeKVM boots probeSector under KVM with the configured CPU model.
func probeKVM(ctx context.Context, cfg Config) error {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return fmt.Errorf("no /dev/kvm: %w", err)
	}
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
	args := []string{"-accel", "kvm", "-m", "16", "-nodefaults", "-no-user-config", "-display", "none",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=1",
		"-drive", "file=" + f.Name() + ",format=raw,if=ide", "-no-reboot"}
	if cfg.CPU != "" {
		args = append(args, "-cpu", cfg.CPU)
	}
	cmd := exec.CommandContext(ctx, cfg.QEMU, args...)
	cmd.SysProcAttr = childAttr(false)
	cmd.WaitDelay = time.Second
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("no answer within %s", cfg.ProbeTimeout)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == probeExitOK {
		return nil
	}
	msg := strings.TrimSpace(out.String())
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return fmt.Errorf("probe guest failed (%v): %s", err, msg)
}
