package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/virtuoso-market/virtuoso/vm"
)

// definition is vm.json: the configuration a VM was created from and the names of its files.
// It travels with the VM when it migrates.
type definition struct {
	Config     vm.Config `json:"config"` // Boot and BaseImage as given at creation, for the record
	Disk       string    `json:"disk"`
	DiskFormat string    `json:"disk_format"`
	Kernel     string    `json:"kernel,omitempty"`
	Initrd     string    `json:"initrd,omitempty"`
	Cmdline    string    `json:"cmdline,omitempty"`
	CPUs       int       `json:"cpus"`
}

func (def definition) validate(id vm.ID) error {
	if def.Config.ID != id {
		return fmt.Errorf("%w: definition is for vm %s", vm.ErrInvalidConfig, def.Config.ID)
	}
	if err := def.Config.Validate(); err != nil {
		return err
	}
	for _, name := range []string{def.Disk, def.Kernel, def.Initrd} {
		if name != "" && (name != filepath.Base(name) || strings.HasPrefix(name, ".") || strings.ContainsAny(name, ",=")) {
			return fmt.Errorf("%w: file name %q", vm.ErrInvalidConfig, name)
		}
	}
	if def.Disk == "" || (def.DiskFormat != "raw" && def.DiskFormat != "qcow2") {
		return fmt.Errorf("%w: disk %q format %q", vm.ErrInvalidConfig, def.Disk, def.DiskFormat)
	}
	if def.CPUs < 1 || def.CPUs > 1024 {
		return fmt.Errorf("%w: %d cpus", vm.ErrInvalidConfig, def.CPUs)
	}
	return nil
}

func readDefinition(dir string, id vm.ID) (definition, error) {
	f, err := os.Open(filepath.Join(dir, defFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return definition{}, fmt.Errorf("vm %s: %w", id, vm.ErrNotFound)
		}
		return definition{}, err
	}
	defer f.Close()
	return decodeDefinition(f, id)
}

// decodeDefinition reads vm.json, which for an imported VM comes from another provider: the
// size is capped and every file name must be a plain name inside the VM's directory.
func decodeDefinition(r io.Reader, id vm.ID) (definition, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxDefBytes+1))
	if err != nil {
		return definition{}, err
	}
	if len(b) > maxDefBytes {
		return definition{}, fmt.Errorf("%w: %s over %d bytes", vm.ErrInvalidConfig, defFile, maxDefBytes)
	}
	var def definition
	if err := json.Unmarshal(b, &def); err != nil {
		return definition{}, fmt.Errorf("%w: %s: %w", vm.ErrInvalidConfig, defFile, err)
	}
	if err := def.validate(id); err != nil {
		return definition{}, err
	}
	return def, nil
}

// Create implements vm.Driver: the disk (a blank sparse disk, or a copy of the base image
// grown to the configured size), the kernel files and vm.json are built in a temporary
// directory that is renamed into place only when all of it succeeded.
func (d *Driver) Create(ctx context.Context, cfg vm.Config) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if p := strings.ToLower(cfg.Processor); p != "" && p != "x86_64" && p != "amd64" && p != "x86-64" {
		return fmt.Errorf("%w: processor %q (this provider runs x86_64)", vm.ErrInvalidConfig, cfg.Processor)
	}
	host, err := d.DescribeHost(ctx)
	if err != nil {
		return err
	}
	if err := fits(cfg, host); err != nil {
		return err
	}
	def := definition{Config: cfg, DiskFormat: d.cfg.DiskFormat, Disk: "disk." + d.cfg.DiskFormat, CPUs: cpusFor(cfg.SpeedBogomips, host)}

	d.mu.Lock()
	_, exists := d.vms[cfg.ID]
	if exists || d.creating[cfg.ID] || fileExists(d.Dir(cfg.ID)) {
		d.mu.Unlock()
		return fmt.Errorf("create vm %s: %w", cfg.ID, vm.ErrExists)
	}
	d.creating[cfg.ID] = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.creating, cfg.ID)
		d.mu.Unlock()
	}()

	tmp, err := os.MkdirTemp(filepath.Join(d.cfg.Dir, "vms"), ".create-"+cfg.ID.String()+"-")
	if err != nil {
		return fmt.Errorf("create vm %s: %w", cfg.ID, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err := d.makeDisk(ctx, cfg, filepath.Join(tmp, def.Disk)); err != nil {
		return fmt.Errorf("create vm %s: %w", cfg.ID, err)
	}
	if def.DiskFormat == "raw" && !d.cfg.NoChangeTracking {
		// Made with the disk, so that a start only checks it; a start makes it if it fails here.
		if err := d.makeWrapper(ctx, filepath.Join(tmp, def.Disk)); err != nil {
			d.log.Warn("vm disk without change tracking until its first start", "vm", cfg.ID, "err", err)
		}
	}
	if cfg.Boot != nil {
		kernel, err := d.allowedImage(cfg.Boot.Kernel)
		if err != nil {
			return fmt.Errorf("create vm %s: kernel: %w", cfg.ID, err)
		}
		if err := copyFile(kernel, filepath.Join(tmp, kernelFile)); err != nil {
			return fmt.Errorf("create vm %s: %w", cfg.ID, err)
		}
		def.Kernel, def.Cmdline = kernelFile, cfg.Boot.Cmdline
		if cfg.Boot.Initrd != "" {
			initrd, err := d.allowedImage(cfg.Boot.Initrd)
			if err != nil {
				return fmt.Errorf("create vm %s: initrd: %w", cfg.ID, err)
			}
			if err := copyFile(initrd, filepath.Join(tmp, initrdFile)); err != nil {
				return fmt.Errorf("create vm %s: %w", cfg.ID, err)
			}
			def.Initrd = initrdFile
		}
	}
	b, err := json.MarshalIndent(def, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(tmp, defFile), b); err != nil {
		return fmt.Errorf("create vm %s: %w", cfg.ID, err)
	}
	if err := syncDir(tmp); err != nil {
		return fmt.Errorf("create vm %s: %w", cfg.ID, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("create vm %s: %w", cfg.ID, err)
	}
	if err := os.Rename(tmp, d.Dir(cfg.ID)); err != nil {
		return fmt.Errorf("create vm %s: %w", cfg.ID, err)
	}
	syncDir(filepath.Dir(tmp))
	d.log.Info("vm created", "vm", cfg.ID, "memory_mb", cfg.MemoryMB, "disk_mb", cfg.DiskMB, "cpus", def.CPUs)
	return nil
}

// makeDisk creates the VM's disk at path with qemu-img.
func (d *Driver) makeDisk(ctx context.Context, cfg vm.Config, path string) error {
	size := strconv.FormatInt(cfg.DiskMB, 10) + "M"
	if cfg.BaseImage == "" {
		return d.qemuImg(ctx, "create", "-q", "-f", d.cfg.DiskFormat, path, size)
	}
	base, err := d.allowedImage(cfg.BaseImage)
	if err != nil {
		return fmt.Errorf("base image: %w", err)
	}
	info, err := d.imageInfo(ctx, base)
	if err != nil {
		return err
	}
	if info.VirtualSize > cfg.DiskMB<<20 {
		return fmt.Errorf("%w: base image is %d MB, configuration asks for %d MB", vm.ErrInvalidConfig, info.VirtualSize>>20, cfg.DiskMB)
	}
	// convert writes sparse output: zero blocks of the base image stay holes.
	if err := d.qemuImg(ctx, "convert", "-q", "-f", info.Format, "-O", d.cfg.DiskFormat, base, path); err != nil {
		return err
	}
	if info.VirtualSize < cfg.DiskMB<<20 {
		return d.qemuImg(ctx, "resize", "-q", "-f", d.cfg.DiskFormat, path, size)
	}
	return nil
}

type imageInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	FormatSpecific  struct {
		Data struct {
			DataFile string `json:"data-file"`
		} `json:"data"`
	} `json:"format-specific"`
}

func (d *Driver) imageInfo(ctx context.Context, path string) (imageInfo, error) {
	cmd := exec.CommandContext(ctx, d.cfg.QEMUImg, "info", "--output=json", path)
	out, err := cmd.Output()
	if err != nil {
		if cmd.Process == nil {
			return imageInfo{}, toolError(d.cfg.QEMUImg, err)
		}
		return imageInfo{}, fmt.Errorf("%w: qemu-img info %s: %w: %s", vm.ErrHypervisor, path, err, exitStderr(err))
	}
	var info imageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return imageInfo{}, fmt.Errorf("%w: qemu-img info: %w", vm.ErrHypervisor, err)
	}
	if info.Format != "raw" && info.Format != "qcow2" {
		return imageInfo{}, fmt.Errorf("%w: image format %q (want raw or qcow2)", vm.ErrInvalidConfig, info.Format)
	}
	// A backing or external data file would let an image read files of this machine.
	if info.BackingFilename != "" || info.FormatSpecific.Data.DataFile != "" {
		return imageInfo{}, fmt.Errorf("%w: image refers to another file (backing %q, data %q)", vm.ErrInvalidConfig,
			info.BackingFilename, info.FormatSpecific.Data.DataFile)
	}
	return info, nil
}

func (d *Driver) qemuImg(ctx context.Context, args ...string) error {
	return d.qemuImgIn(ctx, "", args...)
}

func exitStderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// allowedImage resolves path and checks that it lies in one of Config.ImageDirs.
func (d *Driver) allowedImage(path string) (string, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("%w: %w", vm.ErrInvalidConfig, err)
	}
	real, _ = filepath.Abs(real)
	for _, dir := range d.cfg.ImageDirs {
		rd, err := filepath.EvalSymlinks(dir)
		if err != nil {
			continue
		}
		rd, _ = filepath.Abs(rd)
		if rel, err := filepath.Rel(rd, real); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			fi, err := os.Stat(real)
			if err != nil || !fi.Mode().IsRegular() {
				return "", fmt.Errorf("%w: %s is not a regular file", vm.ErrInvalidConfig, path)
			}
			return real, nil
		}
	}
	return "", fmt.Errorf("%w: %s is not in an image directory of this provider", vm.ErrInvalidConfig, path)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, cerr := io.Copy(out, in)
	serr := out.Sync()
	return errors.Join(cerr, serr, out.Close())
}

// fits checks a configuration against the machine (vm.ErrTooLarge).
func fits(cfg vm.Config, host vm.Host) error {
	var over []string
	if host.MemoryMB > 0 && cfg.MemoryMB > host.MemoryMB {
		over = append(over, fmt.Sprintf("memory %d MB > %d MB", cfg.MemoryMB, host.MemoryMB))
	}
	if host.DiskMB > 0 && cfg.DiskMB > host.DiskMB {
		over = append(over, fmt.Sprintf("disk %d MB > %d MB free", cfg.DiskMB, host.DiskMB))
	}
	if host.SpeedBogomips > 0 && cfg.SpeedBogomips > host.SpeedBogomips {
		over = append(over, fmt.Sprintf("speed %d > %d bogomips", cfg.SpeedBogomips, host.SpeedBogomips))
	}
	if len(over) > 0 {
		return fmt.Errorf("%w: %s", vm.ErrTooLarge, strings.Join(over, ", "))
	}
	return nil
}

// cpusFor turns the speed sold into virtual CPUs: as many of this machine's cores as the speed
// needs, at least one.
func cpusFor(speed int64, host vm.Host) int {
	if host.CPUs <= 0 || host.SpeedBogomips <= 0 || speed <= 0 {
		return 1
	}
	per := host.SpeedBogomips / int64(host.CPUs)
	n := int((speed + per - 1) / per)
	return max(1, min(n, host.CPUs))
}

// DescribeHost implements vm.HostDescriber: bogomips summed over cores, memory, and the free
// space where VMs are kept. Config.Host, when set, takes precedence.
func (d *Driver) DescribeHost(ctx context.Context) (vm.Host, error) {
	if d.cfg.Host != (vm.Host{}) {
		h := d.cfg.Host
		if h.CPUs == 0 {
			h.CPUs = runtime.NumCPU()
		}
		return h, nil
	}
	h := vm.Host{CPUs: runtime.NumCPU()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		var bogo float64
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "bogomips" {
				x, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				bogo += x
			}
		}
		f.Close()
		h.SpeedBogomips = int64(bogo)
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && k == "MemTotal" {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				h.MemoryMB = kb >> 10
			}
		}
		f.Close()
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.cfg.Dir, &st); err == nil {
		h.DiskMB = int64(st.Bavail) * st.Bsize >> 20
	}
	return h, nil
}

// Register implements vm.Driver. QEMU keeps no registry of its own: registering checks that
// the VM's files are complete and readable, so that a later start does not fail on them.
func (d *Driver) Register(ctx context.Context, id vm.ID) error {
	m, err := d.lock(ctx, id)
	if err != nil {
		return err
	}
	defer m.op.Unlock()
	def, err := readDefinition(m.dir, id)
	if err != nil {
		return fmt.Errorf("register vm %s: %w", id, err)
	}
	if err := d.checkFiles(ctx, m.dir, def); err != nil {
		return fmt.Errorf("register vm %s: %w", id, err)
	}
	return nil
}

// checkFiles verifies that the files def names are in dir, regular, and that the disk is an
// image of the declared format that refers to no other file; a saved state, if there is one,
// must be regular files too (QEMU would map a linked memory.ram's target as guest memory).
// Imported files come from another provider and are checked before anything runs them.
func (d *Driver) checkFiles(ctx context.Context, dir string, def definition) error {
	for _, name := range []string{def.Disk, def.Kernel, def.Initrd, memoryFile, ramFile} {
		if name == "" {
			continue
		}
		fi, err := os.Lstat(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) && (name == memoryFile || name == ramFile) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: %w", vm.ErrInvalidConfig, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%w: %s is not a regular file", vm.ErrInvalidConfig, name)
		}
	}
	info, err := d.imageInfo(ctx, filepath.Join(dir, def.Disk))
	if err != nil {
		return err
	}
	if info.Format != def.DiskFormat {
		return fmt.Errorf("%w: disk is %s, definition says %s", vm.ErrInvalidConfig, info.Format, def.DiskFormat)
	}
	return nil
}

// Files implements vm.Driver: the disk, the saved memory state if suspended (memory.zst, and
// memory.ram unless the state is of the earlier format), the kernel files and vm.json. Runtime
// files (state.json, logs, sockets) are not part of the VM, nor is the memory of a running VM:
// memory.ram is then the guest's live memory.
func (d *Driver) Files(ctx context.Context, id vm.ID) (vm.Files, error) {
	m, err := d.lock(ctx, id)
	if err != nil {
		return vm.Files{}, err
	}
	defer m.op.Unlock()
	def, err := readDefinition(m.dir, id)
	if err != nil {
		return vm.Files{}, err
	}
	names := []string{def.Disk}
	if !d.running(m) && fileExists(filepath.Join(m.dir, memoryFile)) {
		names = append(names, memoryFile)
		if fileExists(filepath.Join(m.dir, ramFile)) {
			names = append(names, ramFile)
		}
	}
	for _, n := range []string{def.Kernel, def.Initrd} {
		if n != "" {
			names = append(names, n)
		}
	}
	names = append(names, defFile)
	return vm.Files{Dir: m.dir, Names: names}, nil
}

// Delete implements vm.Driver. The directory is first renamed aside so that a crash midway
// never leaves a half-deleted VM that looks whole.
func (d *Driver) Delete(ctx context.Context, id vm.ID) error {
	m, err := d.lock(ctx, id)
	if err != nil {
		return err
	}
	defer m.op.Unlock()
	if d.running(m) {
		return fmt.Errorf("delete vm %s: %w; stop it first", id, vm.ErrRunning)
	}
	trash, err := os.MkdirTemp(filepath.Join(d.cfg.Dir, "vms"), ".trash-")
	if err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	if err := os.Rename(m.dir, filepath.Join(trash, "vm")); err != nil {
		os.Remove(trash)
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	d.mu.Lock()
	delete(d.vms, id)
	d.mu.Unlock()
	d.releasePort(id)
	if err := os.RemoveAll(trash); err != nil {
		d.log.Warn("leftover files of deleted vm", "vm", id, "dir", trash, "err", err)
	}
	d.log.Info("vm deleted", "vm", id)
	return nil
}

// StagingDir implements vm.Importer.
func (d *Driver) StagingDir(ctx context.Context, id vm.ID) (string, error) {
	dir, err := os.MkdirTemp(d.StagingRoot(), id.String()+"-")
	if err != nil {
		return "", fmt.Errorf("staging dir for vm %s: %w", id, err)
	}
	return dir, nil
}

// StagingRoot is the directory StagingDir makes staging directories in.
func (d *Driver) StagingRoot() string { return filepath.Join(d.cfg.Dir, "staging") }

// Import implements vm.Importer: the staged directory must hold a valid vm.json for id and
// the files it names; it replaces an older copy of the VM that is not running.
func (d *Driver) Import(ctx context.Context, id vm.ID, dir string) (vm.Config, error) {
	def, err := readDefinition(dir, id)
	if err != nil {
		return vm.Config{}, fmt.Errorf("import vm %s: %w", id, err)
	}
	if err := d.checkFiles(ctx, dir, def); err != nil {
		return vm.Config{}, fmt.Errorf("import vm %s: %w", id, err)
	}
	for _, name := range []string{stateFile, qmpSock} {
		os.Remove(filepath.Join(dir, name)) // runtime state of the origin means nothing here
	}
	// Hold the older copy's lock (if any) until the new files are in place, so that no
	// operation sees the old directory half replaced.
	if m, err := d.lock(ctx, id); err == nil {
		defer m.op.Unlock()
		if d.running(m) {
			return vm.Config{}, fmt.Errorf("import vm %s: %w here", id, vm.ErrRunning)
		}
		defer func() {
			d.mu.Lock()
			delete(d.vms, id) // reloaded from the new files on next use
			d.mu.Unlock()
		}()
	}
	target := d.Dir(id)
	if fileExists(target) {
		trash, err := os.MkdirTemp(filepath.Join(d.cfg.Dir, "vms"), ".trash-")
		if err != nil {
			return vm.Config{}, err
		}
		if err := os.Rename(target, filepath.Join(trash, "vm")); err != nil {
			return vm.Config{}, fmt.Errorf("import vm %s: %w", id, err)
		}
		defer os.RemoveAll(trash)
	}
	if err := os.Rename(dir, target); err != nil {
		return vm.Config{}, fmt.Errorf("import vm %s: %w", id, err)
	}
	syncDir(filepath.Dir(target))
	d.log.Info("vm imported", "vm", id)
	return def.Config, nil
}
