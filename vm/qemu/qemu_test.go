package qemu_test

import (
	"context"
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

// TestLifecycle drives one real guest through the whole chain: create, start (it boots and
// counts), console, suspend refused then retried, suspend, move to a second driver and resume
// there, resume here (the count continues, no reboot), re-attach from a new driver, stop,
// delete.
func TestLifecycle(t *testing.T) {
	g := qemutest.BuildGuest(t)
	cfg := qemutest.DriverConfig(t, g)
	cfg.MaxConsoles = 1
	cfg.StopTimeout = 4 * time.Second // the second vm is stopped before its guest listens
	d := qemutest.NewDriver(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()

	id := vm.NewID()
	if err := d.Create(ctx, g.Config(id, 128, 64)); err != nil {
		t.Fatalf("create: %v", err)
	}
	files, err := d.Files(ctx, id)
	if err != nil {
		t.Fatalf("files: %v", err)
	}
	if want := []string{"disk.raw", "vmlinuz", "initrd", "vm.json"}; !slices.Equal(files.Names, want) {
		t.Fatalf("files = %v, want %v", files.Names, want)
	}
	checkSparseDisk(t, filepath.Join(files.Dir, "disk.raw"), 64<<20)
	if err := d.Register(ctx, id); err != nil {
		t.Fatalf("register: %v", err)
	}
	wantPower(t, d, id, vm.PowerOff)

	if err := d.Start(ctx, id); err != nil {
		t.Fatalf("start: %v", err)
	}
	if err := d.Start(ctx, id); !errors.Is(err, vm.ErrRunning) {
		t.Fatalf("second start: err = %v, want ErrRunning", err)
	}
	wantPower(t, d, id, vm.PowerRunning)
	qemutest.WaitSerial(t, ctx, d, id, "boot", func(out string) bool {
		return strings.Contains(out, qemutest.Banner) && qemutest.LastTick(out) >= 2
	})

	t.Log("console")
	con, err := d.OpenConsole(ctx, id)
	if err != nil {
		t.Fatalf("open console: %v", err)
	}
	res, err := qemutest.VNCSession(ctx, con.Addr, con.Password)
	if err != nil {
		t.Fatalf("vnc session with the console password: %v", err)
	}
	if res.Width < 320 || res.Height < 200 || res.UpdateBytes < res.Width*res.Height {
		t.Fatalf("vnc session saw %+v, want a full framebuffer update", res)
	}
	if _, err := qemutest.VNCSession(ctx, con.Addr, "wrong"); !errors.Is(err, qemutest.ErrVNCAuth) {
		t.Fatalf("vnc with a wrong password: err = %v, want ErrVNCAuth", err)
	}

	// A second VM shows the session limit (MaxConsoles = 1). It need not finish booting.
	id2 := vm.NewID()
	if err := d.Create(ctx, g.Config(id2, 64, 40)); err != nil {
		t.Fatalf("create second vm: %v", err)
	}
	if err := d.Start(ctx, id2); err != nil {
		t.Fatalf("start second vm: %v", err)
	}
	if err := d.DiscardState(ctx, id2); !errors.Is(err, vm.ErrRunning) {
		t.Fatalf("discard state of a running vm: err = %v, want ErrRunning", err)
	}
	if _, err := d.OpenConsole(ctx, id2); !errors.Is(err, vm.ErrConsoleBusy) {
		t.Fatalf("second console: err = %v, want ErrConsoleBusy", err)
	}
	if err := d.CloseConsole(ctx, id); err != nil {
		t.Fatalf("close console: %v", err)
	}
	if _, err := qemutest.VNCSession(ctx, con.Addr, con.Password); !errors.Is(err, qemutest.ErrVNCAuth) {
		t.Fatalf("vnc with a closed session's password: err = %v, want ErrVNCAuth", err)
	}
	con2, err := d.OpenConsole(ctx, id2)
	if err != nil {
		t.Fatalf("console after the first closed: %v", err)
	}
	if con2.Addr == con.Addr {
		t.Fatalf("two vms share console address %s", con.Addr)
	}
	if err := d.Stop(ctx, id2); err != nil {
		t.Fatalf("stop second vm: %v", err)
	}
	if err := d.Delete(ctx, id2); err != nil {
		t.Fatalf("delete second vm: %v", err)
	}

	t.Log("suspend refused")
	qemu.SetCompressor(d, func(int) []string { return []string{"false"} })
	before := qemutest.LastTick(qemutest.Serial(t, d, id))
	if err := d.Suspend(ctx, id); !errors.Is(err, vm.ErrSuspendRefused) {
		t.Fatalf("suspend with a failing state file: err = %v, want ErrSuspendRefused", err)
	}
	wantPower(t, d, id, vm.PowerRunning)
	qemutest.WaitSerial(t, ctx, d, id, "ticks after a refused suspend", func(out string) bool {
		return qemutest.LastTick(out) > before+1
	})
	if _, err := os.Stat(filepath.Join(files.Dir, "memory.zst")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused suspend left a state file: %v", err)
	}

	t.Log("suspend on the second attempt")
	qemu.SetCompressor(d, func(attempt int) []string {
		if attempt == 1 {
			return []string{"false"}
		}
		return []string{"zstd", "-q", "-1", "-T0", "-c"}
	})
	if err := d.Suspend(ctx, id); err != nil {
		t.Fatalf("suspend: %v", err)
	}
	wantPower(t, d, id, vm.PowerSuspended)
	atSuspend := qemutest.LastTick(qemutest.Serial(t, d, id))
	files, err = d.Files(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(files.Names, "memory.zst") || !slices.Contains(files.Names, "memory.ram") {
		t.Fatalf("suspended vm files %v lack memory.zst or memory.ram", files.Names)
	}
	if err := d.Start(ctx, id); !errors.Is(err, vm.ErrIllegalAction) {
		t.Fatalf("start of a suspended vm: err = %v, want ErrIllegalAction", err)
	}

	t.Log("move the suspended vm to another driver and resume it there")
	cfg2 := qemutest.DriverConfig(t, g)
	d2 := qemutest.NewDriver(t, cfg2)
	staging, err := d2.StagingDir(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files.Names {
		copyFile(t, filepath.Join(files.Dir, name), filepath.Join(staging, name))
	}
	imported, err := d2.Import(ctx, id, staging)
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	if imported.ID != id || imported.MemoryMB != 128 {
		t.Fatalf("imported config %+v", imported)
	}
	if err := d2.Register(ctx, id); err != nil {
		t.Fatalf("register imported: %v", err)
	}
	wantPower(t, d2, id, vm.PowerSuspended)
	if err := d2.Resume(ctx, id); err != nil {
		t.Fatalf("resume on the second driver: %v", err)
	}
	out := qemutest.WaitSerial(t, ctx, d2, id, "ticks after resume elsewhere", func(out string) bool {
		return qemutest.LastTick(out) > atSuspend+1
	})
	if strings.Contains(out, qemutest.Banner) {
		t.Fatalf("the moved vm booted afresh instead of continuing:\n%s", out)
	}
	if first := firstTick(out); first != atSuspend+1 {
		t.Fatalf("moved vm's first tick %d, want %d (continuing from the suspend)", first, atSuspend+1)
	}
	if err := d2.Stop(ctx, id); err != nil {
		t.Fatalf("stop on the second driver: %v", err)
	}

	t.Log("resume here")
	if err := d.Resume(ctx, id); err != nil {
		t.Fatalf("resume: %v", err)
	}
	wantPower(t, d, id, vm.PowerRunning)
	out = qemutest.WaitSerial(t, ctx, d, id, "ticks after resume", func(out string) bool {
		return qemutest.LastTick(out) > atSuspend+1
	})
	if n := strings.Count(out, qemutest.Banner); n != 1 {
		t.Fatalf("guest booted %d times, want once (resume must continue it)", n)
	}
	if _, err := os.Stat(filepath.Join(files.Dir, "memory.zst")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("resumed vm kept its state file: %v", err)
	}

	t.Log("a new driver re-attaches")
	d3 := qemutest.NewDriver(t, cfg)
	qemutest.Reattach(t, ctx, d3, id)
	if err := d3.Delete(ctx, id); !errors.Is(err, vm.ErrRunning) {
		t.Fatalf("delete of a running vm: err = %v, want ErrRunning", err)
	}
	if err := d3.Stop(ctx, id); err != nil {
		t.Fatalf("stop through the new driver: %v", err)
	}
	wantPower(t, d3, id, vm.PowerOff)
	wantPower(t, d, id, vm.PowerOff)
	if !strings.Contains(qemutest.Serial(t, d3, id), "power button") {
		t.Log("guest did not see the power button; qemu was told to quit")
	}

	if err := d3.Delete(ctx, id); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := d3.Power(ctx, id); !errors.Is(err, vm.ErrNotFound) {
		t.Fatalf("power of a deleted vm: err = %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(files.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("deleted vm's directory remains: %v", err)
	}
}

// TestCreateFailuresLeaveNothing checks that every way Create can fail leaves no directory.
func TestCreateFailuresLeaveNothing(t *testing.T) {
	g := qemutest.BuildGuest(t)
	cfg := qemutest.DriverConfig(t, g)
	cfg.Host = vm.Host{SpeedBogomips: 10000, MemoryMB: 4096, DiskMB: 1 << 20}
	d := qemutest.NewDriver(t, cfg)
	ctx := context.Background()

	existing := vm.NewID()
	if err := d.Create(ctx, g.Config(existing, 64, 40)); err != nil {
		t.Fatal(err)
	}
	corrupt := filepath.Join(t.TempDir(), "corrupt.qcow2")
	if err := os.WriteFile(corrupt, []byte("QFI\xfbnot really a qcow2 image"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Dir = t.TempDir()
	cfg.ImageDirs = append(cfg.ImageDirs, filepath.Dir(corrupt))
	dCorrupt := qemutest.NewDriver(t, cfg)

	tests := []struct {
		name   string
		d      *qemu.Driver
		mutate func(c *vm.Config)
		want   error
	}{
		{"base image outside image dirs", d, func(c *vm.Config) { c.BaseImage = "/etc/passwd" }, vm.ErrInvalidConfig},
		{"kernel outside image dirs", d, func(c *vm.Config) { c.Boot.Kernel = "/etc/shadow" }, vm.ErrInvalidConfig},
		{"memory larger than the machine", d, func(c *vm.Config) { c.MemoryMB = 8192 }, vm.ErrTooLarge},
		{"speed larger than the machine", d, func(c *vm.Config) { c.SpeedBogomips = 20000 }, vm.ErrTooLarge},
		{"disk smaller than the base image", d, func(c *vm.Config) { c.DiskMB = 16 }, vm.ErrInvalidConfig},
		{"foreign processor", d, func(c *vm.Config) { c.Processor = "sparc" }, vm.ErrInvalidConfig},
		{"no mac", d, func(c *vm.Config) { c.MAC = vm.MAC{} }, vm.ErrInvalidConfig},
		{"duplicate id", d, func(c *vm.Config) { c.ID = existing }, vm.ErrExists},
		{"corrupt base image", dCorrupt, func(c *vm.Config) { c.BaseImage = corrupt }, vm.ErrHypervisor},
		{"missing initrd", d, func(c *vm.Config) { c.Boot.Initrd = filepath.Join(g.Dir, "nonexistent") }, vm.ErrInvalidConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := g.Config(vm.NewID(), 64, 40)
			tt.mutate(&c)
			before := vmDirs(t, tt.d)
			err := tt.d.Create(ctx, c)
			if !errors.Is(err, tt.want) {
				t.Fatalf("create: err = %v, want %v", err, tt.want)
			}
			if after := vmDirs(t, tt.d); !slices.Equal(before, after) {
				t.Fatalf("failed create changed the vm directory: %v -> %v", before, after)
			}
		})
	}
}

// TestAccelProbe checks the accelerator probe as a provider runs it, with a real kernel: a
// cached verdict of the older boot-sector probe is not trusted, the outcome is cached, and a
// guest started with the accelerator the probe picked prints its banner: if the probe picks
// KVM, guests really run under it.
func TestAccelProbe(t *testing.T) {
	g := qemutest.BuildGuest(t)
	cfg := qemutest.DriverConfig(t, g)
	cfg.Accel = qemu.AccelAuto
	cfg.ProbeKernel = g.Kernel
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// What the boot-sector probe cached: its key was host kernel|qemu binary|cpu model.
	release, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	bin, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	oldKey := fmt.Sprintf("%s|%s:%d:%d|%s", strings.TrimSpace(string(release)), bin, fi.Size(), fi.ModTime().Unix(), cfg.CPU)
	old, _ := json.Marshal(map[string]string{"key": oldKey, "accel": "kvm", "note": "kvm probe passed"})
	cache := filepath.Join(cfg.Dir, "accel.json")
	if err := os.WriteFile(cache, old, 0o600); err != nil {
		t.Fatal(err)
	}

	d := qemutest.NewDriver(t, cfg)
	start := time.Now()
	accel, err := d.Accel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cache)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("probe took %s: %s", time.Since(start).Round(time.Millisecond), b)
	var rec struct{ Key, Accel, Note string }
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Key == oldKey || rec.Accel != accel || !strings.Contains(rec.Note, "kernel "+g.Kernel) {
		t.Fatalf("probe record %s: want a new key, accel %s and a note about the kernel probe", b, accel)
	}

	id := vm.NewID()
	if err := d.Create(ctx, g.Config(id, 128, 64)); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	bootStart := time.Now()
	bctx, bcancel := context.WithTimeout(ctx, 60*time.Second)
	defer bcancel()
	qemutest.WaitSerial(t, bctx, d, id, "the banner of a guest under "+accel, func(out string) bool {
		return strings.Contains(out, qemutest.Banner)
	})
	t.Logf("guest under %s printed its banner %s after start", accel, time.Since(bootStart).Round(time.Millisecond))

	again := qemutest.NewDriver(t, cfg)
	if a2, err := again.Accel(ctx); err != nil || a2 != accel {
		t.Fatalf("cached accel = %q, %v; want %q", a2, err, accel)
	}
}

// TestAccelProbeBootSector checks the fallback for a driver with no kernel to probe with: the
// boot sector decides, and a KVM verdict says that guests may still hang.
func TestAccelProbeBootSector(t *testing.T) {
	g := qemutest.BuildGuest(t)
	cfg := qemutest.DriverConfig(t, g)
	cfg.Accel = qemu.AccelAuto
	cfg.ProbeKernel = ""
	d := qemutest.NewDriver(t, cfg)
	accel, err := d.Accel(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(cfg.Dir, "accel.json"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot-sector probe: %s", b)
	if accel == qemu.AccelKVM && !strings.Contains(string(b), "no kernel to probe with") {
		t.Fatalf("a kvm verdict of the boot sector does not warn: %s", b)
	}
	if accel == qemu.AccelTCG && !strings.Contains(string(b), "kvm probe failed") {
		t.Fatalf("a tcg verdict does not say why: %s", b)
	}
}

// TestAccelConfigured checks that a configured accelerator is used as it is, without a probe
// (TestLifecycle and the other tests boot the test guest with TCG forced).
func TestAccelConfigured(t *testing.T) {
	g := qemutest.BuildGuest(t)
	for _, accel := range []string{qemu.AccelTCG, qemu.AccelKVM} {
		t.Run(accel, func(t *testing.T) {
			cfg := qemutest.DriverConfig(t, g)
			cfg.Accel = accel
			d := qemutest.NewDriver(t, cfg)
			got, err := d.Accel(context.Background())
			if err != nil || got != accel {
				t.Fatalf("accel = %q, %v; want %q", got, err, accel)
			}
			if _, err := os.Stat(filepath.Join(cfg.Dir, "accel.json")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a configured accelerator was probed: %v", err)
			}
		})
	}
}

// TestFindProbeKernel checks where a provider's driver finds the kernel to probe with: the
// test guest's, else the newest one in /boot (scripts/deps.sh installs linux-image-amd64).
func TestFindProbeKernel(t *testing.T) {
	g := qemutest.BuildGuest(t)
	t.Setenv("VIRTUOSO_GUEST_CACHE", g.Dir)
	if got := qemu.FindProbeKernel(); got != g.Kernel {
		t.Fatalf("with the guest built: %q, want %q", got, g.Kernel)
	}
	if got := qemu.DefaultConfig(t.TempDir()).ProbeKernel; got != g.Kernel {
		t.Fatalf("default config probe kernel %q, want %q", got, g.Kernel)
	}
	t.Setenv("VIRTUOSO_GUEST_CACHE", t.TempDir())
	got := qemu.FindProbeKernel()
	if !strings.HasPrefix(got, "/boot/vmlinuz-") {
		t.Fatalf("without a guest: %q, want a /boot/vmlinuz-*", got)
	}
}

// TestProbeKernel runs the kernel probe under TCG, which always works, with a bound fit for
// TCG: it must pass; with a bound too short for it, or no kernel file, it must fail. (Under KVM the probe's
// verdict depends on the machine; TestAccelProbe checks that verdict against a real guest.)
func TestProbeKernel(t *testing.T) {
	g := qemutest.BuildGuest(t)
	ctx := context.Background()
	tests := []struct {
		name    string
		kernel  string
		timeout time.Duration
		ok      bool
		want    string
	}{
		{"real kernel", g.Kernel, 2 * time.Minute, true, "booted to its root-mount panic"},
		{"no such kernel", filepath.Join(g.Dir, "absent"), 30 * time.Second, false, "no such file"},
		{"too short a bound", g.Kernel, time.Second, false, "within 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := qemutest.DriverConfig(t, g)
			cfg.ProbeKernel, cfg.ProbeTimeout = tt.kernel, tt.timeout
			got, err := qemu.ProbeKernel(ctx, cfg, qemu.AccelTCG)
			t.Logf("probe: %q, %v", got, err)
			if tt.ok != (err == nil) {
				t.Fatalf("probe = %q, %v; want ok = %v", got, err, tt.ok)
			}
			msg := got
			if err != nil {
				msg = err.Error()
			}
			if !strings.Contains(msg, tt.want) {
				t.Fatalf("probe said %q, want it to say %q", msg, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*qemu.Config)
	}{
		{"no dir", func(c *qemu.Config) { c.Dir = "" }},
		{"ports below 5900", func(c *qemu.Config) { c.VNCPorts = qemu.PortRange{First: 5800, Last: 5810} }},
		{"ports reversed", func(c *qemu.Config) { c.VNCPorts = qemu.PortRange{First: 5999, Last: 5910} }},
		{"disk format", func(c *qemu.Config) { c.DiskFormat = "vmdk" }},
		{"accel", func(c *qemu.Config) { c.Accel = "hvf" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := qemu.DefaultConfig(t.TempDir())
			tt.mutate(&c)
			if _, err := qemu.New(c); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
	if _, err := qemu.New(qemu.DefaultConfig(t.TempDir())); err != nil {
		t.Fatalf("default config: %v", err)
	}
}

func wantPower(t *testing.T, d *qemu.Driver, id vm.ID, want vm.PowerState) {
	t.Helper()
	got, err := d.Power(context.Background(), id)
	if err != nil || got != want {
		t.Fatalf("power = %v, %v; want %v", got, err, want)
	}
}

func checkSparseDisk(t *testing.T, path string, size int64) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size {
		t.Fatalf("disk size %d, want %d", fi.Size(), size)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Blocks*512 > size/4 {
		t.Fatalf("disk uses %d bytes of %d: not sparse", st.Blocks*512, size)
	}
}

func vmDirs(t *testing.T, d *qemu.Driver) []string {
	entries, err := os.ReadDir(filepath.Dir(d.Dir(vm.ID{})))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// firstTick returns the counter of the first tick line in out.
func firstTick(out string) int {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "virtuoso guest tick") {
			return qemutest.LastTick(line)
		}
	}
	return 0
}

func copyFile(t *testing.T, src, dst string) {
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
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestImportRefusesUnsafeFiles checks what a destination does with files from another
// provider: images that would read files of this machine, or lie about their format, are
// refused and nothing is adopted.
func TestImportRefusesUnsafeFiles(t *testing.T) {
	g := qemutest.BuildGuest(t)
	d := qemutest.NewDriver(t, qemutest.DriverConfig(t, g))
	ctx := context.Background()
	tests := []struct {
		name   string
		format string
		make   []string // qemu-img arguments creating disk.<format>; the path is appended
		ok     bool
	}{
		{"qcow2", "qcow2", []string{"create", "-q", "-f", "qcow2"}, true},
		{"raw", "raw", []string{"create", "-q", "-f", "raw"}, true},
		{"backing file", "qcow2", []string{"create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw"}, false},
		{"external data file", "qcow2", []string{"create", "-q", "-f", "qcow2", "-o", "data_file=" + filepath.Join(t.TempDir(), "data")}, false},
		{"qcow2 declared raw", "raw", []string{"create", "-q", "-f", "qcow2"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := vm.NewID()
			dir, err := d.StagingDir(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			disk := filepath.Join(dir, "disk."+tt.format)
			if tt.name == "qcow2 declared raw" {
				disk = filepath.Join(dir, "disk.raw")
			}
			args := append(append([]string{}, tt.make...), disk, "16M")
			if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
			}
			def := map[string]any{
				"config":      vm.Config{ID: id, MemoryMB: 64, DiskMB: 16, MAC: vm.MACFor(id)},
				"disk":        filepath.Base(disk),
				"disk_format": tt.format,
				"cpus":        1,
			}
			b, _ := json.Marshal(def)
			if err := os.WriteFile(filepath.Join(dir, "vm.json"), b, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = d.Import(ctx, id, dir)
			if tt.ok {
				if err != nil {
					t.Fatalf("import: %v", err)
				}
				if err := d.Register(ctx, id); err != nil {
					t.Fatalf("register: %v", err)
				}
				return
			}
			if !errors.Is(err, vm.ErrInvalidConfig) {
				t.Fatalf("import: err = %v, want ErrInvalidConfig", err)
			}
			if _, err := d.Power(ctx, id); !errors.Is(err, vm.ErrNotFound) {
				t.Fatalf("refused import left a vm: %v", err)
			}
		})
	}
}
