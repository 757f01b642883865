package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sys/unix"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/progress"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
)

// MigrateOptions configure the migration benchmark. Zero values take the defaults of
// `virtuoso bench migrate`, except Fill (0: the guest's sparse disk as it is).
type MigrateOptions struct {
	Dir    string        // where the nodes' homes are made (default: the system temp dir)
	Disk   int64         // the VM's disk (default 1 GiB)
	Memory int64         // the VM's memory (default 256 MiB)
	Run    time.Duration // how long the guest runs before the move back (default 1m)
	// Fill is the share of the disk beyond the guest's own image written with random data
	// before the first move, as a used disk would be; 0 leaves it sparse.
	Fill float64
	// FillWith is what the fill writes: "random" (default) data, or "files": an ext4
	// filesystem holding this machine's files in that share of its size.
	FillWith string
	Links    []string // "loopback" and emulated links "<n>mbit" or "<n>gbit" (default loopback,100mbit,1gbit)
	Accel    string   // the providers' accelerator: auto (probe KVM), kvm or tcg (default auto)
	// Guest is the directory of the busybox test guest (default: where `make guest` caches it).
	Guest string
	// Exec is the virtuoso binary run inside the namespaces of emulated links (default: this
	// executable).
	Exec     string
	Log      *slog.Logger `json:"-"`
	Progress io.Writer    `json:"-"` // where progress is shown; nil: nowhere
}

const (
	defaultMigrateDisk   = 1 << 30
	defaultMigrateMemory = 256 << 20
	defaultMigrateRun    = time.Minute
	// migrateBoot is how long the guest runs before it is first suspended: long enough to
	// have booted, so that its memory is that of a live system.
	migrateBoot = 8 * time.Second
)

func (o *MigrateOptions) defaults() error {
	if o.Disk == 0 {
		o.Disk = defaultMigrateDisk
	}
	if o.Memory == 0 {
		o.Memory = defaultMigrateMemory
	}
	if o.Run == 0 {
		o.Run = defaultMigrateRun
	}
	if len(o.Links) == 0 {
		o.Links = []string{"loopback", "100mbit", "1gbit"}
	}
	if o.Accel == "" {
		o.Accel = "auto"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	switch {
	case o.Disk < 64<<20 || o.Disk > 1<<40:
		return fmt.Errorf("bench migrate: disk %s: want 64MiB to 1TiB", progress.FormatSize(o.Disk))
	case o.Memory < 64<<20 || o.Memory > 64<<30:
		return fmt.Errorf("bench migrate: memory %s: want 64MiB to 64GiB", progress.FormatSize(o.Memory))
	case o.Run < time.Second:
		return fmt.Errorf("bench migrate: run %v: want at least 1s", o.Run)
	case o.Fill < 0 || o.Fill > 1:
		return fmt.Errorf("bench migrate: fill %v: want 0%% to 100%%", o.Fill)
	case o.FillWith != "" && o.FillWith != "random" && o.FillWith != "files":
		return fmt.Errorf("bench migrate: fill with %q: want random or files", o.FillWith)
	case o.Accel != "auto" && o.Accel != "kvm" && o.Accel != "tcg":
		return fmt.Errorf("bench migrate: accelerator %q: want auto, kvm or tcg", o.Accel)
	}
	if err := checkLinks(o.Links); err != nil {
		return fmt.Errorf("bench migrate: %w", err)
	}
	if o.Guest == "" {
		dir, err := qemu.GuestCacheDir()
		if err != nil {
			return fmt.Errorf("bench migrate: %w", err)
		}
		o.Guest = dir
	}
	return nil
}

// The moves of one run, in order.
const (
	moveCold      = "cold"      // suspended at A, to B which has no copy
	moveAfterRun  = "after run" // run at B for MigrateOptions.Run, suspended, back to A's cache
	moveUnchanged = "unchanged" // to B again, whose cache holds exactly these files
)

// MigrateRow is one timed move of the VM's files: a migration or a baseline tool's copy.
type MigrateRow struct {
	Method string `json:"method"` // virtuoso, rsync, scp
	Move   string `json:"move"`
	// Steps are the agent's steps (lease, begin, copy, commit, finish, resume) with their
	// durations, for migrations; DestSteps when the destination's heartbeats first told each
	// of its steps, from the start of the copy (at heartbeat granularity).
	Steps     []StepTime    `json:"steps,omitempty"`
	DestSteps []StepTime    `json:"dest_steps,omitempty"`
	Total     time.Duration `json:"total"`
	// Wire is the bytes the method itself counts on the wire (the transfer's frames, rsync's
	// --stats), or -1; Link the bytes both ways on the emulated link's interface (with
	// headers, encryption and control traffic), or -1 on loopback.
	Wire  int64        `json:"wire"`
	Link  int64        `json:"link"`
	Files []FileFigure `json:"files,omitempty"`
	Note  string       `json:"note,omitempty"`
}

// StepTime is a step and how long it took (or, for a destination step, when it was seen).
type StepTime struct {
	Step string        `json:"step"`
	D    time.Duration `json:"d"`
}

// FileFigure is one file of a move: its size, the bytes it occupies on disk, and how many of
// its bytes differ from the destination's copy (in 64 KiB blocks that are not all zeros),
// which is what a block-diff transfer has to send at least.
type FileFigure struct {
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	Alloc   int64  `json:"alloc"`
	Changed int64  `json:"changed"`
}

// LinkResult is everything measured over one link.
type LinkResult struct {
	Link    string        `json:"link"`
	Shaping string        `json:"shaping,omitempty"`
	Accel   string        `json:"accel"`
	Suspend time.Duration `json:"suspend"` // the explicit suspend at B before the move back
	// SeedCopy is a reference: the VM's files copied on this machine (io.Copy) and fsynced,
	// which is what a destination does to seed its staging directory from its cached copy.
	SeedCopy time.Duration `json:"seed_copy"`
	Rows     []MigrateRow  `json:"rows"`
	Notes    []string      `json:"notes,omitempty"`
}

// Migrate runs the migration benchmark over every link of opts and prints one table per link.
func Migrate(ctx context.Context, opts MigrateOptions, out io.Writer) error {
	if err := opts.defaults(); err != nil {
		return err
	}
	load0 := loadAverage()
	filled := "random data"
	if opts.FillWith == "files" {
		filled = "this machine's files in ext4"
	}
	fmt.Fprintf(out, "virtuoso bench migrate: a VM of %s memory and a %s disk (%s of it filled with %s), the guest runs %v before the move back\n",
		progress.FormatSize(opts.Memory), progress.FormatSize(opts.Disk), formatPercent(opts.Fill), filled, opts.Run)
	fmt.Fprintf(out, "%d CPUs, load average at start %s\n\n", runtime.NumCPU(), load0)
	for i, l := range opts.Links {
		var res LinkResult
		var err error
		if l == "loopback" {
			res, err = RunMigrateLink(ctx, opts, loopbackSide(opts))
		} else {
			res, err = runEmulatedLink(ctx, opts, l, i)
		}
		if err != nil {
			return fmt.Errorf("bench migrate, %s: %w", l, err)
		}
		res.Print(out, opts)
		fmt.Fprintln(out)
	}
	fmt.Fprintf(out, "load average at end %s\n", loadAverage())
	return nil
}

// MigrateSide is one link's half that runs in this process: the buyer and provider A, and
// how to reach provider B and its ssh server.
type MigrateSide struct {
	Link    string         `json:"link"`
	Shaping string         `json:"shaping,omitempty"`
	Work    string         `json:"work"`     // this link's working directory
	LocalIP string         `json:"local_ip"` // where this process's nodes listen
	PeerIP  string         `json:"peer_ip"`  // where provider B and the ssh server listen
	PeerNS  string         `json:"peer_ns,omitempty"`
	Dev     string         `json:"dev,omitempty"` // the link's interface in this namespace
	Opts    MigrateOptions `json:"opts"`
}

func loopbackSide(opts MigrateOptions) MigrateSide {
	return MigrateSide{Link: "loopback", LocalIP: "127.0.0.1", PeerIP: "127.0.0.1", Opts: opts}
}

// benchProvider is a provider node of the benchmark, in this process or in another one.
type benchProvider struct {
	id      peer.ID
	addrs   []string
	home    string
	machine market.MachineID
	node    *daemon.Node // nil for a node in another process
	stop    func() error
}

// vmDir is where the provider keeps the files of VM id (the QEMU driver's layout in a home).
func (p *benchProvider) vmDir(id vm.ID) string {
	return filepath.Join(p.home, "vms", "vms", id.String())
}

// RunMigrateLink measures the moves over one link: the buyer and provider A run in this
// process, provider B in this process (loopback) or in side.PeerNS.
func RunMigrateLink(ctx context.Context, opts MigrateOptions, side MigrateSide) (res LinkResult, err error) {
	if err := opts.defaults(); err != nil {
		return res, err
	}
	res.Link, res.Shaping = side.Link, side.Shaping
	if side.Work == "" {
		if opts.Dir != "" {
			if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
				return res, fmt.Errorf("--dir: %w", err)
			}
		}
		if side.Work, err = os.MkdirTemp(opts.Dir, "virtuoso-bench-migrate-"); err != nil {
			return res, err
		}
		defer os.RemoveAll(side.Work)
	}
	guest, err := qemu.LoadGuest(opts.Guest)
	if err != nil {
		return res, fmt.Errorf("the busybox guest: %w", err)
	}
	log := opts.Log.With("link", side.Link)
	status := progress.New(opts.Progress, fmt.Sprintf("%-9s %-28s", side.Link, "setting up"))
	status.Status("starting the nodes")

	// Both providers hold the OS image: a lease names it, and a destination without it refuses.
	images := []market.Image{{Name: "busybox", OS: "linux", Disk: guest.Disk, MemoryMB: 128,
		Boot: &vm.KernelBoot{Kernel: guest.Kernel, Initrd: guest.Initrd, Cmdline: guest.Cmdline}}}
	buyer, err := startMigrateNode(ctx, filepath.Join(side.Work, "buyer"), side.LocalIP, log, nil, nil)
	if err != nil {
		return res, fmt.Errorf("start the buyer: %w", err)
	}
	defer buyer.Close()
	provider := func(cfg *node.Config) {
		cfg.Roles.Provider, cfg.Provider.Accel, cfg.Provider.ImageDirs = true, opts.Accel, []string{guest.Dir}
	}
	an, err := startMigrateNode(ctx, filepath.Join(side.Work, "provider-a"), side.LocalIP, log, provider, images)
	if err != nil {
		return res, fmt.Errorf("start provider A: %w", err)
	}
	defer an.Close()
	defer an.VMs.StopAll(context.WithoutCancel(ctx))
	a := &benchProvider{id: an.ID(), home: an.Home().Dir, node: an}
	var b *benchProvider
	if side.PeerNS == "" {
		bn, err := startMigrateNode(ctx, filepath.Join(side.Work, "provider-b"), side.PeerIP, log, provider, images)
		if err != nil {
			return res, fmt.Errorf("start provider B: %w", err)
		}
		defer bn.Close()
		defer bn.VMs.StopAll(context.WithoutCancel(ctx))
		b = &benchProvider{id: bn.ID(), home: bn.Home().Dir, node: bn}
	} else {
		if b, err = startProviderProcess(ctx, side, filepath.Join(side.Work, "provider-b"), guest, images, log); err != nil {
			return res, fmt.Errorf("start provider B in namespace %s: %w", side.PeerNS, err)
		}
		defer b.stop()
	}
	for i, p := range []*benchProvider{a, b} {
		info := peer.AddrInfo{ID: p.id}
		if p.node != nil {
			info.Addrs = p.node.Host().Addrs()
		} else if pi, err := peer.AddrInfoFromString(p.addrs[0]); err != nil {
			return res, err
		} else {
			info = *pi
		}
		if err := buyer.Host().Connect(ctx, info); err != nil {
			return res, fmt.Errorf("connect the buyer to %s: %w", market.Short(p.id), err)
		}
		if err := p.addMachine(ctx, side, i); err != nil {
			return res, fmt.Errorf("add a machine to provider %c: %w", 'A'+i, err)
		}
	}
	if err := wait(ctx, 60*time.Second, func() bool {
		_, okA := buyer.Book.Get(a.id, a.machine)
		_, okB := buyer.Book.Get(b.id, b.machine)
		return okA && okB
	}); err != nil {
		return res, errors.New("the providers' offers did not reach the buyer within a minute")
	}

	// The VM: stored at A, its disk filled, booted, suspended.
	status.Status("storing the VM")
	v, err := buyer.Buyer.Store(ctx, market.StoreRequest{ConfigName: "busybox", Provider: a.id.String(), Machine: a.machine,
		Edit: market.ConfigEdit{MemoryMB: opts.Memory >> 20, DiskMB: opts.Disk >> 20}})
	if err != nil {
		return res, fmt.Errorf("store the vm at A: %w", err)
	}
	files, err := an.VMs.Driver().Files(ctx, v.ID)
	if err != nil {
		return res, err
	}
	if opts.Fill > 0 {
		status.Status("filling the disk")
		if err := fillDisk(ctx, filepath.Join(files.Dir, files.Names[0]), guest.Disk, opts.Fill, opts.FillWith); err != nil {
			return res, fmt.Errorf("fill the disk: %w", err)
		}
	}
	status.Status("booting the guest")
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionStart); err != nil {
		return res, fmt.Errorf("start the vm: %w", err)
	}
	if d, ok := an.VMs.Driver().(*qemu.Driver); ok {
		res.Accel, _ = d.Accel(ctx)
	}
	if err := sleep(ctx, migrateBoot); err != nil {
		return res, err
	}
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionSuspend); err != nil {
		return res, fmt.Errorf("suspend the vm: %w", err)
	}
	if files, err = an.VMs.Driver().Files(ctx, v.ID); err != nil {
		return res, err
	}
	status.Finish(fmt.Sprintf("VM %s suspended at A (%s)", v.ID, res.Accel))

	tools, err := startBaselines(ctx, side, log)
	if err != nil {
		res.Notes = append(res.Notes, "rsync and scp rows missing: "+err.Error())
		log.Warn("bench migrate: no baselines", "err", err)
	} else {
		defer tools.stop()
	}
	names := files.Names
	baseline := func(move string) error {
		if tools == nil {
			return nil
		}
		src := a.vmDir(v.ID)
		for _, t := range tools.methods(move) {
			label := move
			if move == moveUnchanged && !t.rsync {
				label = "again"
			}
			bar := progress.New(opts.Progress, fmt.Sprintf("%-9s %-28s", side.Link, t.label+", "+label))
			bar.Status("running")
			row, err := tools.run(ctx, t, move, src, names)
			if err != nil {
				bar.Finish("failed")
				return err
			}
			row.Files = figures(src, "", names)
			bar.Finish(fmt.Sprintf("%.2fs, %s on the wire", row.Total.Seconds(), formatWire(row.Wire)))
			res.Rows = append(res.Rows, row)
			syscall.Sync()
		}
		return nil
	}
	move := func(name string, from, to *benchProvider) error {
		row, err := migrateOnce(ctx, buyer, v.ID, from, to, name, names, side, opts.Progress)
		if err != nil {
			return fmt.Errorf("migration %s: %w", name, err)
		}
		res.Rows = append(res.Rows, row)
		syscall.Sync()
		return nil
	}

	if err := move(moveCold, a, b); err != nil {
		return res, err
	}
	if err := baseline(moveCold); err != nil {
		return res, err
	}
	runBar := progress.New(opts.Progress, fmt.Sprintf("%-9s %-28s", side.Link, "guest runs at B"))
	runBar.Status(fmt.Sprintf("for %v", opts.Run))
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionResume); err != nil {
		return res, fmt.Errorf("resume the vm at B: %w", err)
	}
	if err := sleep(ctx, opts.Run); err != nil {
		return res, err
	}
	t0 := time.Now()
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionSuspend); err != nil {
		return res, fmt.Errorf("suspend the vm at B: %w", err)
	}
	res.Suspend = time.Since(t0)
	runBar.Finish(fmt.Sprintf("ran %v, suspended in %.2fs", opts.Run, res.Suspend.Seconds()))
	if err := move(moveAfterRun, b, a); err != nil {
		return res, err
	}
	if err := baseline(moveAfterRun); err != nil {
		return res, err
	}
	if err := move(moveUnchanged, a, b); err != nil {
		return res, err
	}
	if err := baseline(moveUnchanged); err != nil {
		return res, err
	}
	if res.SeedCopy, err = copyAndSync(a.vmDir(v.ID), filepath.Join(side.Work, "seed-copy"), names); err != nil {
		return res, fmt.Errorf("reference copy: %w", err)
	}
	return res, nil
}

// copyAndSync copies the files names of dir into a new directory to as a destination seeds
// a migration from its cached copy (io.Copy, then fsync), and returns how long it took.
func copyAndSync(dir, to string, names []string) (time.Duration, error) {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return 0, err
	}
	defer os.RemoveAll(to)
	start := time.Now()
	for _, n := range names {
		in, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return 0, err
		}
		out, err := os.Create(filepath.Join(to, n))
		if err == nil {
			_, err = io.Copy(out, in)
			err = errors.Join(err, out.Sync(), out.Close())
		}
		in.Close()
		if err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// startMigrateNode starts a node of this process listening on ip.
func startMigrateNode(ctx context.Context, dir, ip string, log *slog.Logger, edit func(*node.Config), images []market.Image) (*daemon.Node, error) {
	cfg := migrateNodeConfig(ip, 0)
	if edit != nil {
		edit(&cfg)
	}
	return runBenchNode(ctx, node.Home{Dir: dir}, cfg, log, daemon.Options{Images: images})
}

// migrateNodeConfig is the config of a benchmark node listening on ip: the local profile on
// loopback; on a namespace's address the public one, with nothing that looks beyond the
// addresses given (no mDNS, NAT port mapping or hole punching; no bootstrap peers).
func migrateNodeConfig(ip string, port int) node.Config {
	var cfg node.Config
	if ip == "127.0.0.1" {
		cfg = node.DefaultConfig(node.ProfileLocal)
	} else {
		cfg = node.DefaultConfig(node.ProfilePublic)
		cfg.Network.MDNS, cfg.Network.NATPortMap, cfg.Network.HolePunching = false, false, false
	}
	cfg.Network.Listen = []string{fmt.Sprintf("/ip4/%s/tcp/%d", ip, port)}
	cfg.Network.DiscoveryInterval = 200 * time.Millisecond
	cfg.API.Listen = "127.0.0.1:0"
	return cfg
}

// migrateOnce moves VM id from one provider to the other and times each step.
func migrateOnce(ctx context.Context, buyer *daemon.Node, id vm.ID, from, to *benchProvider, move string, names []string,
	side MigrateSide, w io.Writer) (MigrateRow, error) {
	row := MigrateRow{Method: "virtuoso", Move: move, Wire: -1, Link: -1}
	row.Files = figures(from.vmDir(id), to.vmDir(id), names)
	bar := progress.New(w, fmt.Sprintf("%-9s %-28s", side.Link, "virtuoso, "+move))
	bar.Status(market.StepLease)

	var mu sync.Mutex
	type seen struct {
		at time.Time
		m  market.Migration
	}
	var events []seen
	link0 := linkBytes(side.Dev)
	start := time.Now()
	_, err := buyer.Buyer.Migrate(ctx, id, market.MigrateRequest{Provider: to.id.String(), Machine: to.machine,
		Progress: func(m market.Migration) {
			now := time.Now()
			mu.Lock()
			events = append(events, seen{now, m})
			mu.Unlock()
			if m.Step == market.StepCopy && m.Total > 0 {
				bar.Update(m.Done, m.Total, m.Rate(), 0)
			} else {
				bar.Status(m.Step + " " + m.DestStep)
			}
		}})
	row.Total = time.Since(start)
	if err != nil {
		bar.Finish("failed")
		return row, err
	}
	if link0 >= 0 {
		row.Link = linkBytes(side.Dev) - link0
	}
	mu.Lock()
	defer mu.Unlock()
	// Each agent step lasts from its first report to the next step's (the lease, from the
	// call); the destination's steps are placed where a heartbeat first told them.
	step, at := market.StepLease, start
	var copyStart time.Time
	destSeen := map[string]bool{}
	for _, e := range events {
		if e.m.Step != step {
			row.Steps = append(row.Steps, StepTime{step, e.at.Sub(at)})
			step, at = e.m.Step, e.at
		}
		if e.m.Step == market.StepCopy {
			if copyStart.IsZero() {
				copyStart = e.at
			}
			if e.m.DestStep != "" && !destSeen[e.m.DestStep] {
				destSeen[e.m.DestStep] = true
				row.DestSteps = append(row.DestSteps, StepTime{e.m.DestStep, e.at.Sub(copyStart)})
			}
		}
		if e.m.Wire > 0 {
			row.Wire = e.m.Wire
		}
	}
	if step != market.StepDone {
		row.Steps = append(row.Steps, StepTime{step, time.Since(at)})
	}
	bar.Finish(fmt.Sprintf("%.2fs, %s on the wire", row.Total.Seconds(), formatWire(row.Wire)))
	return row, nil
}

// figures describes the files names in dir, comparing each with its namesake in other, the
// destination's copy ("" or missing: none).
func figures(dir, other string, names []string) []FileFigure {
	out := make([]FileFigure, 0, len(names))
	for _, n := range names {
		f := FileFigure{Name: n}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, n), &st); err == nil {
			f.Size, f.Alloc = st.Size, st.Blocks*512
		}
		f.Changed = changedBytes(filepath.Join(dir, n), filepath.Join(other, n))
		out = append(out, f)
	}
	return out
}

// changedBytes counts the bytes of the 64 KiB blocks of path that differ from those of old
// at the same offset and are not all zeros; -1 when path cannot be read.
func changedBytes(path, old string) int64 {
	const block = 64 << 10
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	var g *os.File
	if old != "" && old != path {
		if g, err = os.Open(old); err == nil {
			defer g.Close()
		}
	}
	a, b := make([]byte, block), make([]byte, block)
	zero := make([]byte, block)
	var n int64
	for off := int64(0); ; off += block {
		na, err := f.ReadAt(a, off)
		if na == 0 {
			break
		}
		nb := 0
		if g != nil {
			nb, _ = g.ReadAt(b, off)
		}
		if !bytes.Equal(a[:na], zero[:na]) && (nb != na || !bytes.Equal(a[:na], b[:nb])) {
			n += int64(na)
		}
		if err != nil {
			break
		}
	}
	return n
}

// fillDisk writes, beyond the guest's own image (which the guest uses), what a disk in use
// would hold: random data over fill of the rest, or (with "files") an ext4 filesystem over the
// rest whose files (this machine's) fill that share of it.
func fillDisk(ctx context.Context, path, base string, fill float64, with string) error {
	st, err := os.Stat(base)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	from := (st.Size() + 1<<20 - 1) &^ (1<<20 - 1)
	if with == "files" {
		return fillWithFiles(ctx, f, from, fi.Size()-from, fill)
	}
	end := from + int64(fill*float64(fi.Size()-from))
	buf := make([]byte, 4<<20)
	rng := rand.NewChaCha8([32]byte{5})
	for off := from; off < end; off += int64(len(buf)) {
		n := min(int64(len(buf)), end-off)
		_, _ = rng.Read(buf[:n])
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// fillWithFiles writes an ext4 filesystem of size bytes at off of f, its files filling share
// of it; only its data is written, its holes stay holes.
func fillWithFiles(ctx context.Context, f *os.File, off, size int64, share float64) error {
	dir, err := os.MkdirTemp(filepath.Dir(f.Name()), "fill-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	im := newExt4Image(TransferOptions{Size: size &^ (4<<10 - 1)}, filepath.Join(dir, "src", "fs.img"))
	im.share = share
	if err := os.MkdirAll(filepath.Dir(im.path), 0o755); err != nil {
		return err
	}
	if err := im.create(ctx); err != nil {
		return err
	}
	src, err := os.Open(im.path)
	if err != nil {
		return err
	}
	defer src.Close()
	buf := make([]byte, 4<<20)
	for pos := int64(0); ; {
		data, err := unix.Seek(int(src.Fd()), pos, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: no data past pos
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		for p := data; p < hole; {
			n, err := src.ReadAt(buf[:min(int64(len(buf)), hole-p)], p)
			if n > 0 {
				if _, err := f.WriteAt(buf[:n], off+p); err != nil {
					return err
				}
			}
			if err != nil {
				return err
			}
			p += int64(n)
		}
		pos = hole
	}
	return f.Sync()
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func formatWire(n int64) string {
	if n < 0 {
		return "-"
	}
	return progress.FormatSize(n)
}

// Print writes the link's table, the files of each move and the goal.
func (r LinkResult) Print(out io.Writer, opts MigrateOptions) {
	title := r.Link
	if r.Shaping != "" {
		title += " (" + r.Shaping + ")"
	}
	fmt.Fprintf(out, "link %s; accelerator %s\n", title, r.Accel)
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', tabwriter.AlignRight)
	cols := []string{market.StepLease, market.StepBegin, market.StepCopy, market.StepFinish, market.StepCommit, market.StepResume}
	fmt.Fprintf(tw, "method\tmove\t%s\ttotal\twire\ton the link\t\n", strings.Join(cols, "\t"))
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "%s\t%s\t", row.Method, row.Move)
		for _, c := range cols {
			s := "-"
			for _, st := range row.Steps {
				if st.Step == c {
					s = fmt.Sprintf("%.3fs", st.D.Seconds())
				}
			}
			fmt.Fprintf(tw, "%s\t", s)
		}
		fmt.Fprintf(tw, "%.3fs\t%s\t%s\t\n", row.Total.Seconds(), formatWire(row.Wire), formatWire(row.Link))
	}
	_ = tw.Flush()
	fmt.Fprintln(out, "files (size / on disk / differing from the destination's copy, in non-zero 64KiB blocks):")
	for _, row := range r.Rows {
		if row.Method != "virtuoso" {
			continue
		}
		parts := make([]string, 0, len(row.Files))
		for _, f := range row.Files {
			parts = append(parts, fmt.Sprintf("%s %s/%s/%s", f.Name, progress.FormatSize(f.Size), progress.FormatSize(f.Alloc), formatWire(f.Changed)))
		}
		fmt.Fprintf(out, "  %-10s %s\n", row.Move+":", strings.Join(parts, ", "))
		if len(row.DestSteps) > 0 {
			ds := make([]string, 0, len(row.DestSteps))
			for _, s := range row.DestSteps {
				ds = append(ds, fmt.Sprintf("%s +%.1fs", s.Step, s.D.Seconds()))
			}
			fmt.Fprintf(out, "  %-10s destination's steps as its heartbeats (1/s) told them, from the copy's start: %s\n", "", strings.Join(ds, ", "))
		}
	}
	if r.Suspend > 0 {
		fmt.Fprintf(out, "before the move back the VM was suspended at B in %.2fs (not part of the move)\n", r.Suspend.Seconds())
	}
	if r.SeedCopy > 0 {
		fmt.Fprintf(out, "reference: copying the VM's files on this machine and fsyncing them (how a destination seeds a move from its cached copy) took %.2fs\n", r.SeedCopy.Seconds())
	}
	for _, row := range r.Rows {
		if row.Method == "virtuoso" && row.Move == moveUnchanged {
			mark := "met"
			if row.Total >= 2*time.Second {
				mark = "NOT MET"
			}
			fmt.Fprintf(out, "goal %s: cached re-migration of the unchanged VM in %.2fs end to end (want < 2s over 100mbit; the report: < 5s for 1.1 GB)\n",
				mark, row.Total.Seconds())
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintln(out, n)
	}
}

// marshal encodes side for the process that runs it in its namespace.
func (s MigrateSide) marshal() (string, error) {
	b, err := json.Marshal(s)
	return string(b), err
}
