package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
)

// proc is a running QEMU process: a child of this driver, or one re-attached after a restart.
type proc struct {
	pid       int
	startTime uint64
	child     bool
	done      chan struct{} // child only: closed once the process is reaped
}

func (p *proc) alive() bool {
	if p.child {
		select {
		case <-p.done:
			return false
		default:
			return true
		}
	}
	return processMatches(p.pid, p.startTime, vm.ID{})
}

// wait blocks until the process has exited or ctx ends.
func (p *proc) wait(ctx context.Context) error {
	if p.child {
		select {
		case <-p.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for p.alive() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func (p *proc) kill() {
	syscall.Kill(p.pid, syscall.SIGKILL)
}

// processMatches reports whether pid is alive (not a zombie) with the given start time and,
// when id is not zero, runs QEMU for that VM — so a reused pid is never mistaken for the VM.
func processMatches(pid int, startTime uint64, id vm.ID) bool {
	st, zombie, err := procStart(pid)
	if err != nil || zombie || st != startTime {
		return false
	}
	if id.IsZero() {
		return true
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(cmdline, []byte("\x00-uuid\x00"+id.String()+"\x00"))
}

// procStart reads a process's start time (field 22 of /proc/<pid>/stat) and whether it is a
// zombie.
func procStart(pid int) (uint64, bool, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, false, errors.New("malformed stat")
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	return st, f[0] == "Z", err
}

// childAttr makes QEMU outlive us (detach: own session, so the node's terminal signals do not
// reach it) or die with us (tests: a crashed test binary must not leave VMs behind).
func childAttr(detach bool) *syscall.SysProcAttr {
	if detach {
		return &syscall.SysProcAttr{Setsid: true}
	}
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// launch starts QEMU for m with its RAM in file ram of the VM's directory and waits for its
// monitor. incoming, if not nil, is a migration stream to load (resume): QEMU gets it as fd 3
// and waits for migrate-incoming (startIncoming) before it reads a byte of it.
func (d *Driver) launch(ctx context.Context, m *machine, def definition, ram string, incoming *os.File) (*qmpConn, error) {
	accel, err := d.accelerator(ctx)
	if err != nil {
		return nil, err
	}
	// QEMU opens a raw disk through its change-tracking wrapper (track.go).
	if def.Disk, def.DiskFormat, err = d.driveFor(ctx, m.dir, def); err != nil {
		return nil, err
	}
	var lastErr error
	for try := 0; try < 3; try++ {
		port := d.takePort(m.id)
		q, err := d.launchOnce(ctx, m, def, accel, port, ram, incoming)
		if err == nil {
			return q, nil
		}
		d.releasePort(m.id)
		lastErr = err
		// Another program (another provider's QEMU, on a shared machine) took the port between
		// our check and QEMU's bind: try another. That holds for a resume too: QEMU reads the
		// incoming stream only when told to, after it came up.
		if port == 0 || !strings.Contains(err.Error(), "Address already in use") {
			break
		}
	}
	return nil, lastErr
}

func (d *Driver) launchOnce(ctx context.Context, m *machine, def definition, accel string, port int, ram string, incoming *os.File) (*qmpConn, error) {
	os.Remove(filepath.Join(m.dir, qmpSock))
	logf, err := os.OpenFile(filepath.Join(m.dir, qemuLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, io.SeekEnd)
	fmt.Fprintf(logf, "--- %s start accel=%s vnc=%d incoming=%v\n", time.Now().UTC().Format(time.RFC3339), accel, port, incoming != nil)

	var serialStart int64
	if fi, err := os.Stat(filepath.Join(m.dir, serialLog)); err == nil {
		serialStart = fi.Size()
	}
	if d.testHooks.anonymousRAM {
		ram = ""
	}
	args := d.args(def, accel, port, ram, incoming != nil)
	cmd := exec.Command(d.cfg.QEMU, args...)
	cmd.Dir = m.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = childAttr(d.cfg.Detach)
	if incoming != nil {
		cmd.ExtraFiles = []*os.File{incoming}
	}
	if err := cmd.Start(); err != nil {
		return nil, toolError(d.cfg.QEMU, err)
	}
	p := &proc{pid: cmd.Process.Pid, child: true, done: make(chan struct{})}
	d.waiters.Go(func() {
		cmd.Wait()
		close(p.done)
	})
	if st, _, err := procStart(p.pid); err == nil {
		p.startTime = st
	}
	sctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
	defer cancel()
	q, err := dialQMP(sctx, m.dir, qmpSock, p.alive)
	if err != nil {
		p.kill()
		<-p.done
		os.Remove(filepath.Join(m.dir, qmpSock))
		return nil, fmt.Errorf("%w: qemu did not come up: %v: %s", vm.ErrHypervisor, err, logTail(filepath.Join(m.dir, qemuLog), logStart))
	}
	m.proc = p
	m.rt = runtimeState{PID: p.pid, StartTime: p.startTime, VNCPort: port, Accel: accel,
		Launched: time.Now().UTC(), SerialStart: serialStart, RAM: ram}
	if err := m.saveRuntime(); err != nil {
		d.log.Warn("cannot save vm runtime state; a restarted node will not re-attach", "vm", m.id, "err", err)
	}
	return q, nil
}

// args is QEMU's command line for a VM. Paths are relative to the VM's directory (QEMU's
// working directory), which keeps them short and free of characters QEMU's option syntax
// would need escaped. Resume must use exactly the devices the VM was suspended with, so
// everything here derives from the definition and the accelerator only. The guest's RAM is
// backed by file ram, or by anonymous memory when ram is empty.
func (d *Driver) args(def definition, accel string, vncPort int, ram string, incoming bool) []string {
	id := def.Config.ID.String()
	a := []string{"-name", "virtuoso-" + id, "-uuid", id}
	a = append(a, machineArgs(d.cfg.Machine, def.Config.MemoryMB, ram)...)
	a = append(a,
		"-accel", accel,
		"-m", strconv.FormatInt(def.Config.MemoryMB, 10),
		"-smp", strconv.Itoa(def.CPUs),
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-device", "VGA",
		"-chardev", "socket,id=qmp,path="+qmpSock+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "file,id=serial0,path="+serialLog+",append=on",
		"-serial", "chardev:serial0",
		"-drive", "file="+def.Disk+",format="+def.DiskFormat+",if=virtio,cache=writeback,discard=unmap",
		"-netdev", "user,id=net0,restrict=on",
		"-device", "virtio-net-pci,netdev=net0,romfile=,mac="+def.Config.MAC.String(),
	)
	if d.cfg.CPU != "" {
		a = append(a, "-cpu", d.cfg.CPU)
	}
	if vncPort > 0 {
		a = append(a, "-vnc", fmt.Sprintf("127.0.0.1:%d,password=on", vncPort-5900))
	}
	if def.Kernel != "" {
		a = append(a, "-kernel", def.Kernel)
		if def.Initrd != "" {
			a = append(a, "-initrd", def.Initrd)
		}
		if def.Cmdline != "" {
			a = append(a, "-append", def.Cmdline)
		}
	}
	if incoming {
		a = append(a, "-incoming", "defer")
	}
	return a
}

// takePort assigns a free console port to VM id, or 0 if none is free.
func (d *Driver) takePort(id vm.ID) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	for port := d.cfg.VNCPorts.First; port <= d.cfg.VNCPorts.Last; port++ {
		if _, used := d.ports[port]; used {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // another program has it
		}
		l.Close()
		d.ports[port] = id
		return port
	}
	d.log.Warn("no console port free; vm runs without a console", "vm", id)
	return 0
}

// releasePort frees the console port and the console session of VM id.
func (d *Driver) releasePort(id vm.ID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for port, holder := range d.ports {
		if holder == id {
			delete(d.ports, port)
		}
	}
	delete(d.consoles, id)
}

// powerButtonEvery is how often terminate presses the ACPI power button while it waits for
// the guest: a press the guest's OS was not yet listening for (one still booting) is lost.
const powerButtonEvery = time.Second

// terminate ends m's QEMU: a guest power-off first (graceful), then quit, then SIGKILL. It
// answers no questions because QEMU asks none; the escalation is what VMware's default
// answers were for in the report. A guest that shows no sign of running an operating system
// (cpuSign: firmware with nothing to boot, a kernel stuck under a broken accelerator) cannot
// act on the power button, so it is not waited for. The quit and the kill take their own
// short limits even when ctx is done, so that a cancelled stop still ends QEMU.
func (d *Driver) terminate(ctx context.Context, m *machine, graceful bool) error {
	p := m.proc
	if p == nil {
		return nil
	}
	defer func() {
		if !p.alive() {
			d.forget(m)
		}
	}()
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	q, err := dialQMP(qctx, m.dir, qmpSock, p.alive)
	cancel()
	if err == nil {
		defer q.Close()
		if graceful && d.powerOff(ctx, m, q) {
			return nil
		}
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		q.execute(qctx, "quit", nil, nil) // the reply may be lost as QEMU exits
		p.wait(qctx)
		cancel()
	}
	if p.alive() {
		d.log.Warn("killing qemu", "vm", m.id, "pid", p.pid)
		p.kill()
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := p.wait(wctx); err != nil {
			return fmt.Errorf("%w: qemu pid %d does not exit", vm.ErrHypervisor, p.pid)
		}
	}
	return nil
}

// powerOff asks m's running guest to power off and waits up to StopTimeout, pressing the
// power button again every powerButtonEvery; it reports whether QEMU exited.
func (d *Driver) powerOff(ctx context.Context, m *machine, q *qmpConn) bool {
	if st, _ := q.runStatus(ctx); st != "running" {
		return false
	}
	if consoleSign(m) == "" {
		if sign, err := vcpuSign(ctx, q); err == nil && sign == "" {
			d.log.Info("guest shows no sign of running an operating system; quitting qemu", "vm", m.id)
			return false
		}
	}
	d.log.Info("waiting for the guest to power off", "vm", m.id, "timeout", d.cfg.StopTimeout)
	wctx, cancel := context.WithTimeout(ctx, d.cfg.StopTimeout)
	defer cancel()
	t := time.NewTicker(powerButtonEvery)
	defer t.Stop()
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		m.proc.wait(wctx)
	}()
	for {
		if err := q.execute(wctx, "system_powerdown", nil, nil); err != nil && m.proc.alive() && wctx.Err() == nil {
			d.log.Debug("power button", "vm", m.id, "err", err)
		}
		select {
		case <-exited:
			if !m.proc.alive() {
				d.log.Info("guest powered off", "vm", m.id)
				return true
			}
			d.log.Info("guest did not power off in time; quitting qemu", "vm", m.id, "timeout", d.cfg.StopTimeout)
			return false
		case <-t.C:
		}
	}
}

// logTail returns what QEMU wrote to its log since offset, shortened, for error messages.
func logTail(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return ""
	}
	s := strings.TrimSpace(string(b[offset:]))
	if i := strings.IndexByte(s, '\n'); i >= 0 && strings.HasPrefix(s, "---") {
		s = s[i+1:]
	}
	if len(s) > 500 {
		s = s[len(s)-500:]
	}
	return s
}
