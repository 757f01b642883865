package qemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
)

// running reports whether m's QEMU is up; if it ended on its own (the guest powered off, or
// QEMU died) the VM's console port and runtime state are released. Called with m.op held.
func (d *Driver) running(m *machine) bool {
	if m.proc != nil && !m.proc.alive() {
		d.log.Info("qemu has exited", "vm", m.id, "pid", m.proc.pid)
		d.forget(m)
	}
	return m.proc != nil
}

// forget drops m's QEMU, which has exited: its console port, runtime state, monitor socket
// (left behind when QEMU was killed) and, unless a saved state refers to it, the file its RAM
// was in: a VM that is off has no memory. Called with m.op held.
func (d *Driver) forget(m *machine) {
	m.proc = nil
	m.rt = runtimeState{}
	d.releasePort(m.id)
	m.saveRuntime()
	garbage := []string{qmpSock, ramLoadFile, usedStateFile}
	if !fileExists(filepath.Join(m.dir, memoryFile)) {
		garbage = append(garbage, ramFile)
	}
	if _, err := removeIfExists(m.dir, garbage...); err != nil {
		d.log.Warn("cannot remove runtime files of a vm that is off", "vm", m.id, "err", err)
	}
}

// Start implements vm.Driver.
func (d *Driver) Start(ctx context.Context, id vm.ID) error {
	m, err := d.lock(ctx, id)
	if err != nil {
		return err
	}
	defer m.op.Unlock()
	if d.running(m) {
		return fmt.Errorf("start vm %s: %w", id, vm.ErrRunning)
	}
	if fileExists(filepath.Join(m.dir, memoryFile)) {
		return fmt.Errorf("start vm %s: %w: it has a saved memory state; resume it", id, vm.ErrIllegalAction)
	}
	def, err := readDefinition(m.dir, id)
	if err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	if err := checkPresent(m.dir, def); err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	// A RAM file left by a QEMU that died with its driver is no state: the guest boots with
	// empty (sparse) memory.
	if _, err := removeIfExists(m.dir, ramFile, ramLoadFile); err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	q, err := d.launch(ctx, m, def, ramFile, nil)
	if err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	defer q.Close()
	if st, err := q.runStatus(ctx); err != nil || st != "running" {
		d.terminate(context.WithoutCancel(ctx), m, false)
		return fmt.Errorf("start vm %s: %w: status %q after start: %w", id, vm.ErrHypervisor, st, err)
	}
	m.setObserved(vm.PowerRunning)
	d.log.Info("vm started", "vm", id, "pid", m.proc.pid, "accel", m.rt.Accel, "vnc_port", m.rt.VNCPort)
	return nil
}

// Stop implements vm.Driver: ACPI power-off, then quit after Config.StopTimeout, then kill.
// Stopping a VM that is not running does nothing (a suspended VM keeps its saved state).
func (d *Driver) Stop(ctx context.Context, id vm.ID) error {
	m, err := d.lock(ctx, id)
	if err != nil {
		return err
	}
	defer m.op.Unlock()
	if !d.running(m) {
		return nil
	}
	if err := d.terminate(ctx, m, true); err != nil {
		return fmt.Errorf("stop vm %s: %w", id, err)
	}
	m.setObserved(vm.PowerOff)
	d.log.Info("vm stopped", "vm", id)
	return nil
}

// Suspend implements vm.Driver. Each attempt pauses the VM, migrates its devices into zstd
// (its RAM stays in memory.ram, flushed to disk) and, when both succeed, makes the output
// memory.zst and ends QEMU. A failed attempt continues the VM; after Config.SuspendAttempts
// failures Suspend returns vm.ErrSuspendRefused with the VM running as before.
func (d *Driver) Suspend(ctx context.Context, id vm.ID) error {
	m, err := d.lock(ctx, id)
	if err != nil {
		return err
	}
	defer m.op.Unlock()
	if !d.running(m) {
		return fmt.Errorf("suspend vm %s: %w", id, vm.ErrNotRunning)
	}
	var last error
	attempt := 1
	for ; attempt <= d.cfg.SuspendAttempts; attempt++ {
		if last = d.suspendOnce(ctx, m, attempt); last == nil {
			break
		}
		if errors.Is(last, ErrNotInstalled) {
			return fmt.Errorf("suspend vm %s: %w; it keeps running", id, last)
		}
		// Wait before the next attempt. A QEMU that died (killed, crashed: the attempt failed
		// because of it) ends the wait, and the suspend, at once.
		wctx, cancel := context.WithTimeout(ctx, d.cfg.SuspendInterval)
		m.proc.wait(wctx)
		cancel()
		if !d.running(m) {
			return fmt.Errorf("suspend vm %s: %w: qemu exited (%v)", id, vm.ErrNotRunning, last)
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("suspend vm %s: %w after %d attempts (last: %v)", id, err, attempt, last)
		}
		if attempt == d.cfg.SuspendAttempts {
			break
		}
		d.log.Info("suspend refused; will retry", "vm", id, "attempt", attempt, "err", last)
	}
	if last != nil {
		return fmt.Errorf("suspend vm %s: %w after %d attempts; it keeps running (last: %v)", id, vm.ErrSuspendRefused, attempt, last)
	}
	// The state is safely on disk: end QEMU.
	if err := d.terminate(context.WithoutCancel(ctx), m, false); err != nil {
		return fmt.Errorf("suspend vm %s: state saved but %w", id, err)
	}
	if fileExists(filepath.Join(m.dir, ramFile)) {
		if err := punchZeroPages(filepath.Join(m.dir, ramFile)); err != nil {
			d.log.Warn("cannot make the memory file sparse", "vm", id, "err", err)
		}
	}
	m.setObserved(vm.PowerSuspended)
	d.log.Info("vm suspended", "vm", id, "attempts", attempt)
	return nil
}

// suspendOnce is one suspend attempt. On failure the VM runs again (if it ran before).
func (d *Driver) suspendOnce(ctx context.Context, m *machine, attempt int) (err error) {
	q, err := dialQMP(ctx, m.dir, qmpSock, m.proc.alive)
	if err != nil {
		return err
	}
	defer q.Close()
	st, err := q.runStatus(ctx)
	if err != nil {
		return err
	}
	wasRunning := st == "running"
	if err := q.execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	m.setObserved(vm.PowerPaused)
	defer func() {
		if err != nil && wasRunning {
			q.execute(context.WithoutCancel(ctx), "closefd", map[string]any{"fdname": "suspend"}, nil)
			if cerr := q.execute(context.WithoutCancel(ctx), "cont", nil, nil); cerr != nil {
				err = fmt.Errorf("%w; and continuing the vm failed: %v", err, cerr)
			} else {
				m.setObserved(vm.PowerRunning)
			}
		}
	}()

	tmpPath := filepath.Join(m.dir, memoryFile+".tmp")
	out, err := os.OpenFile(tmpPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		out.Close()
		if err != nil {
			os.Remove(tmpPath)
		}
	}()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	argv := []string{d.cfg.Zstd, "-q", "-1", "-T0", "-c"}
	if d.testHooks.compressor != nil {
		argv = d.testHooks.compressor(attempt)
	}
	zstd := exec.Command(argv[0], argv[1:]...)
	zstd.Stdin, zstd.Stdout = pr, out
	zstd.SysProcAttr = childAttr(false)
	zerr := zstd.Start()
	pr.Close()
	if zerr != nil {
		pw.Close()
		return toolError(argv[0], zerr)
	}
	zdone := make(chan error, 1)
	go func() { zdone <- zstd.Wait() }()
	waitZstd := func(limit time.Duration) error {
		select {
		case err := <-zdone:
			return err
		case <-time.After(limit):
			zstd.Process.Kill()
			return fmt.Errorf("compressor did not finish in %s", limit)
		}
	}

	gerr := q.executeFD(ctx, "getfd", map[string]any{"fdname": "suspend"}, nil, int(pw.Fd()))
	pw.Close() // QEMU holds its own copy now; the compressor sees EOF when QEMU closes it
	if gerr != nil {
		waitZstd(5 * time.Second)
		return gerr
	}
	q.execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil)
	if m.rt.RAM != "" {
		if err := q.execute(ctx, "migrate-set-capabilities", ignoreSharedCap, nil); err != nil {
			q.execute(ctx, "closefd", map[string]any{"fdname": "suspend"}, nil)
			waitZstd(5 * time.Second)
			return err
		}
	}
	if err := q.execute(ctx, "migrate", map[string]any{"uri": "fd:suspend"}, nil); err != nil {
		q.execute(ctx, "closefd", map[string]any{"fdname": "suspend"}, nil)
		waitZstd(5 * time.Second)
		return err
	}
	info, err := waitMigration(ctx, q)
	if err != nil {
		q.execute(context.WithoutCancel(ctx), "migrate_cancel", nil, nil)
		waitZstd(5 * time.Second)
		return err
	}
	if info.Status != "completed" {
		waitZstd(5 * time.Second)
		return fmt.Errorf("migration %s: %s", info.Status, info.Error)
	}
	if err := waitZstd(time.Minute); err != nil {
		return fmt.Errorf("compressor: %w", err)
	}
	if err := out.Sync(); err != nil {
		return err
	}
	if m.rt.RAM != "" {
		// The vCPUs are stopped and the devices quiesced: the RAM file holds the memory that
		// goes with the stream. It must be on disk before the stream says the VM is suspended.
		if err := syncFile(filepath.Join(m.dir, m.rt.RAM)); err != nil {
			return fmt.Errorf("flush memory file: %w", err)
		}
		if m.rt.RAM != ramFile {
			if err := os.Rename(filepath.Join(m.dir, m.rt.RAM), filepath.Join(m.dir, ramFile)); err != nil {
				return err
			}
			m.rt.RAM = ramFile
			m.saveRuntime()
		}
	}
	if err := os.Rename(tmpPath, filepath.Join(m.dir, memoryFile)); err != nil {
		return err
	}
	return syncDir(m.dir)
}

// waitMigration polls query-migrate until the migration ends or ctx does.
func waitMigration(ctx context.Context, q *qmpConn) (migrationInfo, error) {
	delay := 5 * time.Millisecond
	for {
		info, err := q.queryMigrate(ctx)
		if err != nil {
			return info, err
		}
		switch info.Status {
		case "completed", "failed", "cancelled":
			return info, nil
		}
		select {
		case <-ctx.Done():
			return info, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
}

// Resume implements vm.Driver: QEMU starts with the VM's devices on its RAM file, loads the
// device state from memory.zst through zstd and continues. A state of the earlier format (RAM
// inside memory.zst) loads into a new RAM file, which becomes memory.ram once the VM runs. When
// the guest runs the saved state is gone: memory.ram is live memory again.
func (d *Driver) Resume(ctx context.Context, id vm.ID) error {
	m, err := d.lock(ctx, id)
	if err != nil {
		return err
	}
	defer m.op.Unlock()
	if d.running(m) {
		return fmt.Errorf("resume vm %s: %w", id, vm.ErrRunning)
	}
	statePath := filepath.Join(m.dir, memoryFile)
	if _, err := os.Stat(statePath); errors.Is(err, fs.ErrNotExist) {
		return stateMissing(id, statePath)
	}
	def, err := readDefinition(m.dir, id)
	if err != nil {
		return fmt.Errorf("resume vm %s: %w", id, err)
	}
	if err := checkPresent(m.dir, def); err != nil {
		return fmt.Errorf("resume vm %s: %w", id, err)
	}
	ramInFile, err := d.checkStateStart(ctx, statePath)
	if err != nil {
		if errors.Is(err, ErrNotInstalled) {
			return fmt.Errorf("resume vm %s: %w", id, err)
		}
		return stateDamaged(id, statePath, err)
	}
	ram := ramFile
	if ramInFile {
		ramPath := filepath.Join(m.dir, ramFile)
		if err := checkRAMFile(ramPath, def.Config.MemoryMB); errors.Is(err, fs.ErrNotExist) {
			return stateMissing(id, ramPath)
		} else if err != nil {
			return stateDamaged(id, ramPath, err)
		}
	} else {
		// A failed load must leave the directory as it was, whatever memory.ram holds.
		ram = ramLoadFile
		if _, err := removeIfExists(m.dir, ramLoadFile); err != nil {
			return fmt.Errorf("resume vm %s: %w", id, err)
		}
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	zstd := exec.Command(d.cfg.Zstd, "-q", "-dc", statePath)
	zstd.Stdout = pw
	zstd.SysProcAttr = childAttr(false)
	if err := zstd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("resume vm %s: %w", id, toolError(d.cfg.Zstd, err))
	}
	pw.Close()
	zdone := make(chan error, 1)
	go func() { zdone <- zstd.Wait() }()
	defer func() {
		select {
		case <-zdone:
		case <-time.After(5 * time.Second):
			zstd.Process.Kill()
			<-zdone
		}
	}()

	logPath := filepath.Join(m.dir, qemuLog)
	var logStart int64
	if fi, err := os.Stat(logPath); err == nil {
		logStart = fi.Size()
	}
	q, err := d.launch(ctx, m, def, ram, pr)
	pr.Close()
	if err != nil {
		return d.resumeFailed(ctx, id, statePath, logTail(logPath, logStart), err)
	}
	defer q.Close()
	fail := func(err error) error {
		d.terminate(context.WithoutCancel(ctx), m, false)
		return d.resumeFailed(ctx, id, statePath, logTail(logPath, logStart), err)
	}
	if ramInFile {
		if err := q.execute(ctx, "migrate-set-capabilities", ignoreSharedCap, nil); err != nil {
			return fail(err)
		}
	}
	if err := q.execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:3"}, nil); err != nil {
		return fail(err)
	}
	// Loading ends in "paused" (the VM was stopped before it was saved) or, on failure, with
	// QEMU exiting.
	delay := 5 * time.Millisecond
	for {
		st, err := q.runStatus(ctx)
		if err != nil {
			return fail(err)
		}
		if st == "paused" || st == "running" {
			break
		}
		if st != "inmigrate" && st != "prelaunch" {
			return fail(fmt.Errorf("%w: unexpected status %q while loading state", vm.ErrHypervisor, st))
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 50*time.Millisecond)
	}
	// Once the guest runs, memory.ram no longer matches the saved devices (nor does the
	// disk): the stream is moved aside first, and put back only if QEMU refused to continue.
	usedPath := filepath.Join(m.dir, usedStateFile)
	if err := os.Rename(statePath, usedPath); err != nil {
		return fail(err)
	}
	if err := q.execute(ctx, "cont", nil, nil); err != nil {
		var refused *qmpError
		if errors.As(err, &refused) && os.Rename(usedPath, statePath) == nil {
			return fail(err)
		}
		// The guest may have run before the monitor failed: the state is no longer usable.
		d.terminate(context.WithoutCancel(ctx), m, false)
		m.setObserved(vm.PowerOff)
		return fmt.Errorf("resume vm %s: %w: %w; it is off and its saved state is dropped (the guest may have run and changed its memory): start it to boot it from its disk",
			id, vm.ErrHypervisor, err)
	}
	if err := os.Remove(usedPath); err != nil {
		d.log.Warn("cannot remove used memory state", "vm", id, "err", err)
	}
	if ram != ramFile {
		if err := os.Rename(filepath.Join(m.dir, ram), filepath.Join(m.dir, ramFile)); err == nil {
			m.rt.RAM = ramFile
			m.saveRuntime()
		} // else the next suspend renames it
	}
	syncDir(m.dir)
	if st, err := q.runStatus(ctx); err != nil || st != "running" {
		d.terminate(context.WithoutCancel(ctx), m, false)
		m.setObserved(vm.PowerOff)
		return fmt.Errorf("resume vm %s: %w: status %q after cont: %v; it is off", id, vm.ErrHypervisor, st, err)
	}
	m.setObserved(vm.PowerRunning)
	d.log.Info("vm resumed", "vm", id, "pid", m.proc.pid, "memory_in_stream", !ramInFile)
	return nil
}

// Power implements vm.Driver. While another operation holds the VM it answers from what that
// operation last observed instead of waiting.
func (d *Driver) Power(ctx context.Context, id vm.ID) (vm.PowerState, error) {
	m, err := d.machine(id)
	if err != nil {
		return vm.PowerUnknown, err
	}
	if !m.op.TryLock() {
		return vm.PowerState(m.observed.Load()), nil
	}
	defer m.op.Unlock()
	return d.power(ctx, m)
}

func (d *Driver) power(ctx context.Context, m *machine) (vm.PowerState, error) {
	if !d.running(m) {
		if fileExists(filepath.Join(m.dir, memoryFile)) {
			m.setObserved(vm.PowerSuspended)
			return vm.PowerSuspended, nil
		}
		if !fileExists(filepath.Join(m.dir, defFile)) {
			return vm.PowerUnknown, fmt.Errorf("vm %s: %w", m.id, vm.ErrNotFound)
		}
		m.setObserved(vm.PowerOff)
		return vm.PowerOff, nil
	}
	q, err := dialQMP(ctx, m.dir, qmpSock, m.proc.alive)
	if err != nil {
		return d.monitorFailed(ctx, m, err)
	}
	st, err := q.runStatus(ctx)
	q.Close()
	if err != nil {
		return d.monitorFailed(ctx, m, err)
	}
	p := vm.PowerPaused
	switch st {
	case "running":
		p = vm.PowerRunning
	case "shutdown":
		p = vm.PowerOff
	}
	m.setObserved(p)
	return p, nil
}

// monitorFailed is power's answer when QEMU's monitor did not answer. QEMU may be exiting
// (killed, crashed, or stopped by another driver instance): that VM is off, not in error, so
// the process gets a moment to be gone before the monitor's failure counts.
func (d *Driver) monitorFailed(ctx context.Context, m *machine, err error) (vm.PowerState, error) {
	wctx, cancel := context.WithTimeout(ctx, exitGrace)
	m.proc.wait(wctx)
	cancel()
	if !d.running(m) {
		return d.power(ctx, m)
	}
	return vm.PowerUnknown, err
}

// exitGrace is how long a QEMU whose monitor fails may take to exit before Power reports the
// failure: a killed process is reaped within milliseconds, even on a loaded machine.
const exitGrace = 3 * time.Second

// checkPresent fails with vm.ErrMissingFile naming the first file of def missing from dir, so
// that a start fails with that name instead of QEMU's log.
func checkPresent(dir string, def definition) error {
	for _, f := range []struct{ what, name string }{{"disk", def.Disk}, {"kernel", def.Kernel}, {"initramfs", def.Initrd}} {
		if f.name == "" {
			continue
		}
		path := filepath.Join(dir, f.name)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: its %s %s does not exist; put it back and retry", vm.ErrMissingFile, f.what, path)
		}
	}
	return nil
}

// resumeFreshHint ends the message of every vm.ErrStateUnusable.
const resumeFreshHint = "resume it fresh to boot it from its disk (what was in its memory is lost)"

// resumeFailed explains a failed resume. A state file that zstd finds damaged, or that QEMU
// could not load, is vm.ErrStateUnusable (the file is kept as it is); any other failure is
// returned as it is. logTail is what QEMU logged during the attempt.
func (d *Driver) resumeFailed(ctx context.Context, id vm.ID, statePath, logTail string, err error) error {
	if errors.Is(err, ErrNotInstalled) || ctx.Err() != nil {
		return fmt.Errorf("resume vm %s: %w", id, err)
	}
	if terr := d.testState(ctx, statePath); terr != nil {
		return stateDamaged(id, statePath, terr)
	}
	if strings.Contains(logTail, "load of migration failed") {
		logTail = strings.ReplaceAll(logTail, "\n", "; ")
		return fmt.Errorf("resume vm %s: %w: qemu could not load %s (%s); it was left as it is: resume again on a provider whose qemu saved it, or %s",
			id, vm.ErrStateUnusable, statePath, logTail, resumeFreshHint)
	}
	return fmt.Errorf("resume vm %s: %w", id, err)
}

func stateMissing(id vm.ID, path string) error {
	return fmt.Errorf("resume vm %s: %w: %w: %s does not exist; put it back and resume again, or %s",
		id, vm.ErrStateUnusable, vm.ErrMissingFile, path, resumeFreshHint)
}

func stateDamaged(id vm.ID, statePath string, why error) error {
	return fmt.Errorf("resume vm %s: %w: %s is damaged (%v); it was left as it is: put an intact copy back and resume again, or %s",
		id, vm.ErrStateUnusable, statePath, why, resumeFreshHint)
}

// stateMagic starts every QEMU migration stream (QEMU_VM_FILE_MAGIC).
const stateMagic = "QEVM"

// checkStateStart decompresses the first bytes of the saved state, checks that they start a
// QEMU migration stream and reports whether the stream's RAM is in memory.ram (see
// parseStateHead). QEMU waits forever for a stream that never delivers a byte, so an empty or
// undecodable file must be caught before QEMU is given it; damage further in makes QEMU fail
// by itself (resumeFailed).
func (d *Driver) checkStateStart(ctx context.Context, path string) (ramInFile bool, err error) {
	cmd := exec.CommandContext(ctx, d.cfg.Zstd, "-q", "-dc", path)
	cmd.SysProcAttr = childAttr(false)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return false, err
	}
	if err := cmd.Start(); err != nil {
		return false, toolError(d.cfg.Zstd, err)
	}
	head := make([]byte, stateHeadBytes)
	n, rerr := io.ReadFull(out, head)
	if rerr == nil {
		cmd.Process.Kill() // the rest is QEMU's to read
	}
	werr := cmd.Wait()
	if rerr != nil && werr != nil {
		return false, fmt.Errorf("zstd: %s", zstdReason(stderr.String()))
	}
	return parseStateHead(head[:n])
}

// zstdReason shortens zstd's message "[zstd: ]<file name, shortened>: ... : <what is wrong>"
// to what is wrong; the caller names the file.
func zstdReason(msg string) string {
	msg = strings.TrimSpace(msg)
	msg = msg[strings.LastIndexByte(msg, '\n')+1:]
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return strings.TrimSpace(msg)
}

// testState checks the saved state's integrity with zstd (frame structure and checksum). It
// returns nil when the file is intact or when zstd cannot tell.
func (d *Driver) testState(ctx context.Context, path string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.cfg.Zstd, "-q", "-t", path)
	cmd.SysProcAttr = childAttr(false)
	out, err := cmd.CombinedOutput()
	if err == nil || cmd.Process == nil || ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("zstd: %s", zstdReason(string(out)))
}

// DiscardState implements vm.StateDiscarder: memory.zst and memory.ram are removed, so the VM
// is off and the next Start boots it from its disk.
func (d *Driver) DiscardState(ctx context.Context, id vm.ID) error {
	m, err := d.lock(ctx, id)
	if err != nil {
		return err
	}
	defer m.op.Unlock()
	if d.running(m) {
		return fmt.Errorf("discard saved state of vm %s: %w", id, vm.ErrRunning)
	}
	removed, err := removeIfExists(m.dir, memoryFile, memoryFile+".tmp", usedStateFile, ramFile, ramLoadFile)
	if err != nil {
		return fmt.Errorf("discard saved state of vm %s: %w", id, err)
	}
	if err := syncDir(m.dir); err != nil {
		return fmt.Errorf("discard saved state of vm %s: %w", id, err)
	}
	m.setObserved(vm.PowerOff)
	if removed {
		d.log.Warn("saved memory state discarded; the vm will boot from its disk", "vm", id)
	}
	return nil
}

// Reattach implements vm.Reattacher. New already took back every VM whose QEMU survived; this
// checks the monitor answers and invalidates any console password of the previous driver.
func (d *Driver) Reattach(ctx context.Context, id vm.ID) (vm.PowerState, error) {
	m, err := d.lock(ctx, id)
	if err != nil {
		return vm.PowerUnknown, err
	}
	defer m.op.Unlock()
	p, err := d.power(ctx, m)
	if err != nil {
		return p, fmt.Errorf("reattach vm %s: %w", id, err)
	}
	if p == vm.PowerRunning || p == vm.PowerPaused {
		if err := d.lockConsole(ctx, m); err != nil {
			return p, fmt.Errorf("reattach vm %s: %w", id, err)
		}
	}
	return p, nil
}

// OpenConsole implements vm.Driver: a new one-time password (any earlier one stops working),
// valid for new connections during Config.ConsoleWindow.
func (d *Driver) OpenConsole(ctx context.Context, id vm.ID) (vm.Console, error) {
	m, err := d.lock(ctx, id)
	if err != nil {
		return vm.Console{}, err
	}
	defer m.op.Unlock()
	if !d.running(m) {
		return vm.Console{}, fmt.Errorf("console of vm %s: %w", id, vm.ErrNotRunning)
	}
	if m.rt.VNCPort == 0 {
		return vm.Console{}, fmt.Errorf("console of vm %s: %w: it was started while every console port was taken; restart it", id, vm.ErrConsoleBusy)
	}
	d.mu.Lock()
	if !d.consoles[id] && len(d.consoles) >= d.cfg.MaxConsoles {
		d.mu.Unlock()
		return vm.Console{}, fmt.Errorf("console of vm %s: %w (%d open)", id, vm.ErrConsoleBusy, d.cfg.MaxConsoles)
	}
	d.consoles[id] = true
	d.mu.Unlock()

	pw := randomPassword()
	err = d.setConsolePassword(ctx, m, pw, fmt.Sprintf("+%d", max(1, int(d.cfg.ConsoleWindow/time.Second))))
	if err != nil {
		d.mu.Lock()
		delete(d.consoles, id)
		d.mu.Unlock()
		return vm.Console{}, fmt.Errorf("console of vm %s: %w", id, err)
	}
	m.rt.Console = true
	m.saveRuntime()
	return vm.Console{Addr: fmt.Sprintf("127.0.0.1:%d", m.rt.VNCPort), Password: pw}, nil
}

// CloseConsole implements vm.Driver: the session's password stops working and its slot is
// free. A viewer already connected stays connected until it disconnects (QEMU 7.2's VNC
// server cannot drop clients on a password change).
func (d *Driver) CloseConsole(ctx context.Context, id vm.ID) error {
	m, err := d.lock(ctx, id)
	if err != nil {
		return err
	}
	defer m.op.Unlock()
	d.mu.Lock()
	open := d.consoles[id]
	delete(d.consoles, id)
	d.mu.Unlock()
	if !open || !d.running(m) {
		return nil
	}
	m.rt.Console = false
	m.saveRuntime()
	return d.lockConsole(ctx, m)
}

// lockConsole replaces the console password with an unknown one that has already expired.
func (d *Driver) lockConsole(ctx context.Context, m *machine) error {
	if m.rt.VNCPort == 0 {
		return nil
	}
	return d.setConsolePassword(ctx, m, randomPassword(), "now")
}

func (d *Driver) setConsolePassword(ctx context.Context, m *machine, pw, expire string) error {
	q, err := dialQMP(ctx, m.dir, qmpSock, m.proc.alive)
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.execute(ctx, "set_password", map[string]any{"protocol": "vnc", "password": pw}, nil); err != nil {
		return err
	}
	return q.execute(ctx, "expire_password", map[string]any{"protocol": "vnc", "time": expire}, nil)
}

// randomPassword returns 8 random characters: VNC authentication uses at most 8 bytes.
func randomPassword() string {
	const alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
	b := make([]byte, 8)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

var _ interface {
	vm.Driver
	vm.StateDiscarder
	vm.Reattacher
	vm.Importer
	vm.HostDescriber
	vm.ProgressReporter
} = (*Driver)(nil)
