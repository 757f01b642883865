package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/virtuoso-market/virtuoso/vm"
)

// Progress implements vm.ProgressReporter. Two signs show that the guest's operating system
// runs: it wrote to the serial console since QEMU started, or its first vCPU is in an operating
// system, seen in the registers QEMU reports: in user mode (CPL 3), or in the upper half of a
// 64-bit address space where x86-64 kernels (Linux, the BSDs, Windows) run. The second covers
// guests that keep their serial port quiet, and resumed guests, whose registers come back with
// their memory. Firmware looking for something to boot runs in the low megabytes, and a Linux
// kernel that never gets going under a broken accelerator stays in its decompressor, at low
// addresses too: neither shows a sign.
func (d *Driver) Progress(ctx context.Context, id vm.ID) (vm.Progress, error) {
	m, err := d.lock(ctx, id)
	if err != nil {
		return vm.Progress{}, err
	}
	defer m.op.Unlock()
	if !d.running(m) {
		return vm.Progress{}, fmt.Errorf("progress of vm %s: %w", id, vm.ErrNotRunning)
	}
	p := vm.Progress{Since: m.rt.Launched, Accel: m.rt.Accel}
	if p.Sign = consoleSign(m); p.Sign != "" {
		return p, nil
	}
	q, err := dialQMP(ctx, m.dir, qmpSock, m.proc.alive)
	if err != nil {
		return p, fmt.Errorf("progress of vm %s: %w", id, err)
	}
	defer q.Close()
	if p.Sign, err = vcpuSign(ctx, q); err != nil {
		return p, fmt.Errorf("progress of vm %s: %w", id, err)
	}
	return p, nil
}

// consoleSign is "console output" if m's guest wrote to the serial console since QEMU
// started, else "".
func consoleSign(m *machine) string {
	if fi, err := os.Stat(filepath.Join(m.dir, serialLog)); err == nil && fi.Size() > m.rt.SerialStart {
		return "console output"
	}
	return ""
}

// vcpuSign asks QEMU where the guest's first vCPU is and says whether that is in an operating
// system (cpuSign).
func vcpuSign(ctx context.Context, q *qmpConn) (string, error) {
	var regs string
	if err := q.execute(ctx, "human-monitor-command", map[string]any{"command-line": "info registers"}, &regs); err != nil {
		return "", err
	}
	return cpuSign(regs), nil
}

// cpuSign reads QEMU's "info registers" and says where the vCPU is if that is in an operating
// system, else "".
func cpuSign(regs string) string {
	var rip uint64
	cpl := -1
	for _, f := range strings.Fields(regs) {
		switch {
		case strings.HasPrefix(f, "RIP="):
			rip, _ = strconv.ParseUint(f[4:], 16, 64)
		case strings.HasPrefix(f, "CPL="):
			cpl, _ = strconv.Atoi(f[4:])
		}
	}
	switch {
	case cpl == 3:
		return "vcpu in user mode"
	case rip >= 1<<63:
		return "vcpu in kernel space"
	}
	return ""
}
