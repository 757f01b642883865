// Package bench runs the benchmarks behind `virtuoso bench`: each does the real work on
// this machine, side by side with the tool a user would otherwise pick, in one run, and
// prints one table.
package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"golang.org/x/sys/unix"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/progress"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// punch makes [off, off+n) of f a hole.
func punchRange(f *os.File, off, n int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// TransferOptions configure the transfer benchmark. Zero values take the defaults of
// `virtuoso bench transfer`.
type TransferOptions struct {
	Dir       string  // where the working directory is made (default: the system temp dir)
	Size      int64   // image size (default 4 GiB)
	Changed   float64 // fraction of the image rewritten between transfers (default 0.01)
	WriteSize int64   // size of each rewrite (default 64 KiB)
	Zero      float64 // fraction of the image that is zeros, half holes, half written (default 0)
	BlockSize int     // blockdiff block size (default transfer.DefaultBlockSize)
	// Image is "random" (default: a ChaCha8 stream, with Zero of it zeros) or "ext4" (a
	// filesystem holding Files bytes of this machine's files, half its size by default;
	// Changed is then the share of it a guest writes as files, WriteSize and Zero do not apply),
	// or "debian" (a VM's disk of the Debian guest, changed by the guest as it runs once).
	Image string
	Files int64
	// Format is the file the methods move: "raw" (default) or "qcow2" (the image converted by
	// qemu-img, changed through QEMU's block layer).
	Format string
	// DebianRun is where Transfer keeps the Debian guest's run for every link's image.
	DebianRun string
	// Links are what the two nodes are joined by, a table each: "loopback" (default), or a
	// link emulated between two network namespaces (links.go: "100mbit", "1gbit+20ms"; root).
	Links    []string
	Log      *slog.Logger `json:"-"`
	Progress io.Writer    `json:"-"` // where each run's progress is shown (a bar on a terminal); nil: nowhere
}

const (
	defaultTransferSize      = 4 << 30
	defaultTransferChanged   = 0.01
	defaultTransferWriteSize = 64 << 10
	transferGenBlock         = 64 << 10 // unit of the deterministic image generator
	transferZeroRegion       = 1 << 20  // unit of the zero layout
	transferSinkProto        = protocol.ID("/virtuoso/bench/sink/1.0.0")
)

func (o *TransferOptions) defaults() error {
	if o.Size == 0 {
		o.Size = defaultTransferSize
	}
	if o.Changed == 0 {
		o.Changed = defaultTransferChanged
	}
	if o.WriteSize == 0 {
		o.WriteSize = defaultTransferWriteSize
	}
	if o.BlockSize == 0 {
		o.BlockSize = transfer.DefaultBlockSize
	}
	if o.Image == "" {
		o.Image = "random"
	}
	if o.Image != "random" && o.Image != "ext4" && o.Image != "debian" {
		return fmt.Errorf("bench transfer: image %q: want random, ext4 or debian", o.Image)
	}
	if o.Format == "" {
		o.Format = "raw"
	}
	if o.Format != "raw" && o.Format != "qcow2" {
		return fmt.Errorf("bench transfer: format %q: want raw or qcow2", o.Format)
	}
	if o.Files == 0 {
		o.Files = o.Size / 2
	}
	if o.Files < 0 || o.Files > o.Size*9/10 {
		return fmt.Errorf("bench transfer: files %d: want up to 90%% of the image", o.Files)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(o.Links) == 0 {
		o.Links = []string{"loopback"}
	}
	if err := checkLinks(o.Links); err != nil {
		return fmt.Errorf("bench transfer: %w", err)
	}
	switch {
	case o.Size < transferGenBlock || o.Size > transfer.MaxFileSize:
		return fmt.Errorf("bench transfer: size %d: want 64KiB to 1TiB", o.Size)
	case o.Changed < 0 || o.Changed > 1:
		return fmt.Errorf("bench transfer: changed %v: want 0%% to 100%%", o.Changed)
	case o.Zero < 0 || o.Zero > 1:
		return fmt.Errorf("bench transfer: zero %v: want 0%% to 100%%", o.Zero)
	case o.WriteSize < 512 || o.WriteSize > o.Size || transferGenBlock%o.WriteSize != 0 && o.WriteSize%transferGenBlock != 0:
		return fmt.Errorf("bench transfer: write size %d: want a power of two from 512 bytes", o.WriteSize)
	}
	return nil
}

// method is one way of moving the image.
type transferMethod struct {
	name   string
	rsync  []string // rsync flags; nil for a libp2p transfer
	tm     transfer.Method
	policy transfer.CompressionPolicy
	noZstd bool
	// tracked serves the image as a QEMU VM's disk, the driver's dirty bitmap as the change
	// tracker, the change made through QEMU (trackedDisk).
	tracked bool
	ssh     bool // rsync through ssh to a private sshd at the far end, not the rsync daemon
}

var transferMethods = []transferMethod{
	{name: "rsync --no-whole-file --inplace", rsync: []string{"--no-whole-file", "--inplace"}},
	{name: "rsync -W", rsync: []string{"-W"}},
	// rsync leaves what it wrote to the kernel's writeback; blockdiff answers only once the
	// copy is on disk (a migration commits on it). These rows are rsync made as durable.
	{name: "rsync --inplace --fsync", rsync: []string{"--no-whole-file", "--inplace", "--fsync"}},
	{name: "rsync -W --fsync", rsync: []string{"-W", "--fsync"}},
	{name: "rsync over ssh --inplace", rsync: []string{"--no-whole-file", "--inplace"}, ssh: true},
	{name: "rsync over ssh -W", rsync: []string{"-W"}, ssh: true},
	{name: "full", tm: transfer.MethodFull},
	{name: "blockdiff", tm: transfer.MethodBlockDiff},
	{name: "blockdiff, dirty bitmap", tm: transfer.MethodBlockDiff, tracked: true},
	{name: "blockdiff, zstd always", tm: transfer.MethodBlockDiff, policy: transfer.CompressAlways},
	{name: "blockdiff, no zstd", tm: transfer.MethodBlockDiff, noZstd: true},
}

var transferScenarios = []string{"first", "changed", "unchanged"}

type transferTiming struct {
	d    time.Duration
	cpu  time.Duration // both ends
	wire int64
	ok   bool
	note string
}

// Transfer times, over each of opts.Links in turn, the methods on an image made under
// opts.Dir: for each, the first transfer, a re-transfer after rewriting part of the image,
// and a re-transfer of the unchanged image. It prints a table per link to out.
func Transfer(ctx context.Context, opts TransferOptions, out io.Writer) error {
	if err := opts.defaults(); err != nil {
		return err
	}
	if opts.Dir != "" {
		if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
			return fmt.Errorf("bench transfer: --dir: %w", err)
		}
	}
	if opts.Image == "debian" {
		run, err := os.MkdirTemp(opts.Dir, "virtuoso-bench-debian-")
		if err != nil {
			return fmt.Errorf("bench transfer: %w", err)
		}
		defer os.RemoveAll(run)
		if err := runDebianGuest(ctx, opts, run); err != nil {
			return fmt.Errorf("bench transfer: %w", err)
		}
		opts.DebianRun = run
	}
	for i, l := range opts.Links {
		if i > 0 {
			fmt.Fprintln(out)
		}
		var err error
		if l == "loopback" {
			err = runTransfer(ctx, opts, TransferSide{Link: l, LocalIP: "127.0.0.1", PeerIP: "127.0.0.1"}, out)
		} else {
			err = runTransferEmulated(ctx, opts, l, i, out)
		}
		if err != nil {
			return fmt.Errorf("bench transfer, %s: %w", l, err)
		}
	}
	return nil
}

// runTransfer measures over one link: the source node in this process, the destination in
// it too (loopback) or in side.PeerNS.
func runTransfer(ctx context.Context, opts TransferOptions, side TransferSide, out io.Writer) error {
	if err := opts.defaults(); err != nil {
		return err
	}
	load0 := loadAvg()
	work, err := os.MkdirTemp(opts.Dir, "virtuoso-bench-transfer-")
	if err != nil {
		return fmt.Errorf("bench transfer: %w", err)
	}
	defer os.RemoveAll(work)
	srcDir := filepath.Join(work, "src")
	if err := os.MkdirAll(srcDir, 0o755); err != nil {
		return err
	}
	imgPath := filepath.Join(srcDir, "disk.img")
	if opts.Format == "qcow2" {
		imgPath = filepath.Join(work, "raw", "disk.img")
		if err := os.MkdirAll(filepath.Dir(imgPath), 0o755); err != nil {
			return err
		}
	}
	var img transferImage = newBenchImage(opts, imgPath)
	switch opts.Image {
	case "ext4":
		img = newExt4Image(opts, imgPath)
	case "debian":
		img = newDebianImage(opts, imgPath)
	}
	if opts.Format == "qcow2" {
		img = &qcow2Image{raw: img, path: filepath.Join(srcDir, "disk.img")}
	}
	opts.Log.Info("bench transfer: making the image", "size", opts.Size, "image", opts.Image)
	if err := img.create(ctx); err != nil {
		return fmt.Errorf("bench transfer: create image: %w", err)
	}

	rsyncNote := ""
	rs, err := startRsyncDaemon(ctx, work, side, opts.Log)
	if err != nil {
		rsyncNote = err.Error()
		opts.Log.Warn("bench transfer: rsync unavailable", "err", err)
	} else {
		defer rs.stop()
	}

	// rsync as users copy between machines: over ssh (openssh from Debian), to a private sshd.
	sshNote := ""
	ssh, err := startBaselines(ctx, side.migrateSide(work), opts.Log)
	if err != nil {
		sshNote = err.Error()
		opts.Log.Warn("bench transfer: rsync over ssh unavailable", "err", err)
	} else {
		defer ssh.stop()
	}

	// Two real nodes, each with its own home, as providers run them.
	var srcNode *daemon.Node
	if side.PeerNS == "" {
		srcNode, err = startBenchNode(ctx, filepath.Join(work, "node-src"), nil, opts.Log, false, daemon.Options{})
	} else {
		srcNode, err = runBenchNode(ctx, node.Home{Dir: filepath.Join(work, "node-src")}, migrateNodeConfig(side.LocalIP, 4001), opts.Log, daemon.Options{})
	}
	if err != nil {
		return fmt.Errorf("bench transfer: %w", err)
	}
	defer srcNode.Close()
	var dst transferDst
	if side.PeerNS == "" {
		dst, err = newLocalDst(ctx, filepath.Join(work, "node-dst"), opts.Log)
	} else {
		dst, err = startRemoteDst(ctx, side, filepath.Join(work, "node-dst"), opts.Log)
	}
	if err != nil {
		return fmt.Errorf("bench transfer: %w", err)
	}
	defer dst.close()
	src := srcNode.Host()
	if err := dst.connect(ctx, src); err != nil {
		return fmt.Errorf("bench transfer: connect nodes: %w", err)
	}
	// The image as a QEMU VM's disk, for the dirty-bitmap rows.
	var td *trackedDisk
	trackNote := "qcow2 disks are not tracked (their bitmaps count the guest's offsets, not the bytes of the file that moves)"
	if opts.Format == "raw" {
		td, err = newTrackedDisk(ctx, filepath.Join(work, "qemu"), opts.Size, opts.Log)
		trackNote = ""
	}
	if err != nil {
		trackNote = err.Error()
		opts.Log.Warn("bench transfer: no qemu vm disk for the dirty-bitmap rows", "err", err)
	} else if td != nil {
		defer td.close()
	}
	// source is the file a method moves.
	source := func(m transferMethod) string {
		if m.tracked {
			return td.path
		}
		return img.file()
	}
	// serve serves the image from src with the method's compression policy.
	serve := func(m transferMethod) (*transfer.Server, error) {
		o := []transfer.Option{transfer.WithLogger(opts.Log), transfer.WithCompressionPolicy(m.policy)}
		if m.tracked {
			o = append(o, transfer.WithChangeTracker(td.drv))
		}
		return transfer.NewServer(src, func(ctx context.Context, from peer.ID, req transfer.Request) ([]string, error) {
			if from != dst.id() || len(req.Files) != 1 || req.Files[0] != "disk.img" {
				return nil, errors.New("not part of the benchmark")
			}
			return []string{source(m)}, nil
		}, o...)
	}
	daemons := dst.pids() // the receiving node, and the servers of the rsync rows: the far end's CPU time
	if rs != nil {
		daemons = append(daemons, rs.cmd.Process.Pid)
	}
	if ssh != nil {
		daemons = append(daemons, ssh.sshd.Process.Pid)
	}

	var raw transferTiming
	results := map[string]map[string]transferTiming{}
	for _, m := range transferMethods {
		results[m.name] = map[string]transferTiming{}
		if m.rsync != nil && !m.ssh && rs == nil || m.ssh && ssh == nil || m.tracked && td == nil {
			continue
		}
		dstDir := filepath.Join(work, "dst", strings.NewReplacer(" ", "_", "-", "", ",", "").Replace(m.name))
		if err := os.MkdirAll(dstDir, 0o755); err != nil {
			return err
		}
		if err := img.reset(ctx); err != nil {
			return fmt.Errorf("bench transfer: reset image: %w", err)
		}
		if m.tracked {
			if err := td.load(ctx, img.file()); err != nil {
				return fmt.Errorf("bench transfer: copy the image to the vm disk: %w", err)
			}
		}
		var srv *transfer.Server
		if m.rsync == nil {
			if srv, err = serve(m); err != nil {
				return err
			}
		}
		for _, sc := range transferScenarios {
			if sc == "changed" {
				if err := img.change(ctx); err != nil {
					return fmt.Errorf("bench transfer: change image: %w", err)
				}
				if m.tracked {
					n, err := td.replay(ctx, img.file())
					if err == nil {
						err = sameContent(img.file(), td.path)
					}
					if err != nil {
						return fmt.Errorf("bench transfer: change the vm disk through qemu: %w", err)
					}
					opts.Log.Info("bench transfer: the change written through qemu", "bytes", n)
				}
			}
			if m.name == "blockdiff" && sc == "first" {
				// The ceiling, measured right before the transfer it is compared with: on a
				// shared machine the available CPU drifts within a run.
				bar := opts.bar("first", "libp2p stream, raw")
				bar.Status("running")
				cpu0 := cpuTime(daemons...)
				if raw, err = rawStreamTiming(ctx, src, dst.id(), opts.Size); err != nil {
					return fmt.Errorf("bench transfer: raw stream: %w", err)
				}
				raw.cpu = cpuTime(daemons...) - cpu0
				bar.Finish(fmt.Sprintf("%.2fs", raw.d.Seconds()))
			}
			opts.Log.Info("bench transfer: run", "method", m.name, "scenario", sc)
			bar := opts.bar(sc, m.name)
			var r transferTiming
			cpu0 := cpuTime(daemons...)
			switch {
			case m.ssh:
				bar.Status("running")
				r, err = ssh.push(ctx, m.rsync, img.file(), dstDir)
				settleChildren(daemons...)
			case m.rsync != nil:
				bar.Status("running")
				r, err = rs.run(ctx, m.rsync, img.file(), dstDir)
				settleChildren(daemons...)
			default:
				r, err = dst.fetch(ctx, src.ID(), m, opts.BlockSize, dstDir, bar.Update)
			}
			r.cpu = cpuTime(daemons...) - cpu0
			if err != nil {
				bar.Finish("failed")
				return fmt.Errorf("bench transfer: %s, %s: %w", m.name, sc, err)
			}
			bar.Finish(fmt.Sprintf("%.2fs, %s on the wire", r.d.Seconds(), progress.FormatSize(r.wire)))
			if err := sameContent(source(m), filepath.Join(dstDir, "disk.img")); err != nil {
				return fmt.Errorf("bench transfer: %s, %s: %w", m.name, sc, err)
			}
			results[m.name][sc] = r
			syscall.Sync() // no writeback of one run bleeds into the next
		}
		if srv != nil {
			_ = srv.Close()
		}
		if err := os.RemoveAll(dstDir); err != nil {
			return err
		}
	}
	cmp, err := compareCompression(ctx, opts, results, img, func(m transferMethod, dir string) (transferTiming, error) {
		srv, err := serve(m)
		if err != nil {
			return transferTiming{}, err
		}
		defer srv.Close()
		defer os.RemoveAll(dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return transferTiming{}, err
		}
		bar := opts.bar("first", m.name+" (again)")
		r, err := dst.fetch(ctx, src.ID(), m, opts.BlockSize, dir, bar.Update)
		if err != nil {
			bar.Finish("failed")
			return transferTiming{}, fmt.Errorf("bench transfer: %s, first again: %w", m.name, err)
		}
		bar.Finish(fmt.Sprintf("%.2fs, %s on the wire", r.d.Seconds(), progress.FormatSize(r.wire)))
		syscall.Sync()
		return r, nil
	}, filepath.Join(work, "dst", "again"))
	if err != nil {
		return err
	}
	printTransferTable(out, opts, side, img, raw, results, rs, rsyncNote, trackNote, ssh, sshNote, cmp)
	fmt.Fprintf(out, "Load average (1 min) at start %s, at end %s: other work on this machine skews the times.\n", load0, loadAvg())
	return nil
}

// compressionRuns is how many more first copies with and without zstd compareCompression
// makes, interleaved: a single run of each differs by the machine's noise (5-15% here).
const compressionRuns = 3

// compressionCheck is the first copy's time with zstd as it pays and without, each the
// median of its runs.
type compressionCheck struct {
	with, without time.Duration
	runs          int
}

// compareCompression times the first copy again with blockdiff (compressing as it pays) and
// without zstd, alternately, compressionRuns times each, including the table's runs, when a
// first copy takes under half a minute (a slow link's difference is larger than the noise).
// fetch runs one first copy of a method into an empty dir.
func compareCompression(ctx context.Context, opts TransferOptions, results map[string]map[string]transferTiming, img transferImage,
	fetch func(m transferMethod, dir string) (transferTiming, error), dir string) (compressionCheck, error) {
	with, without := results["blockdiff"]["first"], results["blockdiff, no zstd"]["first"]
	if !with.ok || !without.ok || without.d > 30*time.Second {
		return compressionCheck{}, nil
	}
	if err := img.reset(ctx); err != nil { // the image the table's first copies copied
		return compressionCheck{}, fmt.Errorf("bench transfer: reset image: %w", err)
	}
	method := func(name string) transferMethod {
		for _, m := range transferMethods {
			if m.name == name {
				return m
			}
		}
		panic("no method " + name)
	}
	a, b := []time.Duration{with.d}, []time.Duration{without.d}
	for range compressionRuns - 1 {
		for _, run := range []struct {
			name string
			into *[]time.Duration
		}{{"blockdiff, no zstd", &b}, {"blockdiff", &a}} {
			opts.Log.Info("bench transfer: first copy again", "method", run.name)
			r, err := fetch(method(run.name), dir)
			if err != nil {
				return compressionCheck{}, err
			}
			*run.into = append(*run.into, r.d)
		}
	}
	return compressionCheck{with: median(a), without: median(b), runs: len(a)}, nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// loadAvg returns the one-minute load average, or "?" where there is none to read.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

// bar shows the progress of one run; rsync's and the raw stream's show only their end.
func (o *TransferOptions) bar(scenario, method string) *progress.Bar {
	w := o.Progress
	if w == nil {
		w = io.Discard
	}
	return progress.New(w, fmt.Sprintf("%-10s %-31s", scenario, method))
}

func fetchOnce(ctx context.Context, h host.Host, from peer.ID, tm transfer.Method, compress bool, bs int, dir string,
	show func(done, total int64, rate float64, eta time.Duration)) (transferTiming, error) {
	start := time.Now()
	res, err := transfer.Fetch(ctx, h, from, transfer.Request{VM: "bench", Files: []string{"disk.img"}}, dir,
		transfer.WithMethod(tm), transfer.WithBlockSize(bs), transfer.WithCompression(compress),
		transfer.WithProgress(func(p transfer.Progress) {
			show(p.Done, p.Total, p.Rate, p.ETA)
		}))
	if err != nil {
		return transferTiming{}, err
	}
	t := transferTiming{d: time.Since(start), wire: res.WireBytes, ok: true}
	if f := res.Files[0]; f.BlocksSent+f.BlocksPatched+f.BlocksCopied > 0 {
		t.note = fmt.Sprintf("%d%% zstd", 100*f.BlocksCompressed/(f.BlocksSent+f.BlocksPatched+f.BlocksCopied))
	}
	return t, nil
}

// cpuTime is the CPU time this process and its waited-for children used, and the daemons
// (the rsync daemon, sshd) with the children they reaped: both ends of every method.
func cpuTime(daemons ...int) time.Duration {
	var d time.Duration
	for _, who := range []int{unix.RUSAGE_SELF, unix.RUSAGE_CHILDREN} {
		var ru unix.Rusage
		if unix.Getrusage(who, &ru) == nil {
			d += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	for _, pid := range daemons {
		d += procCPU(pid)
	}
	return d
}

// procCPU is what /proc/PID/stat says pid and its reaped children used.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // after the command's name
	if len(f) < 15 {
		return 0
	}
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime, fields 14–17
		n, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// settleChildren waits, a second at most, until the daemons have reaped the processes that
// served the last push, so that their CPU time is counted.
func settleChildren(daemons ...int) {
	sum := func() (d time.Duration) {
		for _, pid := range daemons {
			d += procCPU(pid)
		}
		return d
	}
	prev := sum()
	for range 20 {
		time.Sleep(50 * time.Millisecond)
		cur := sum()
		if cur == prev {
			return
		}
		prev = cur
	}
}

// rawStreamTiming times size bytes through one libp2p stream into dst's sink (serveSink):
// the ceiling for a first transfer.
func rawStreamTiming(ctx context.Context, src host.Host, dst peer.ID, size int64) (transferTiming, error) {
	s, err := src.NewStream(ctx, dst, transferSinkProto)
	if err != nil {
		return transferTiming{}, err
	}
	defer s.Reset()
	buf := make([]byte, 1<<20)
	_, _ = rand.NewChaCha8([32]byte{9}).Read(buf)
	start := time.Now()
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		if _, err := s.Write(buf[:n]); err != nil {
			return transferTiming{}, err
		}
		left -= n
	}
	if err := s.CloseWrite(); err != nil {
		return transferTiming{}, err
	}
	if _, err := io.ReadFull(s, buf[:1]); err != nil {
		return transferTiming{}, err
	}
	return transferTiming{d: time.Since(start), wire: size, ok: true}, nil
}

// image is the benchmark's source file. Its content is a pure function of the offset (a
// ChaCha8 stream per 64 KiB, zeros in the zero regions), so a change can be undone by
// rewriting only what it touched.
type benchImage struct {
	opts    TransferOptions
	path    string  // the image
	writes  []int64 // offsets of the rewrites of the change
	changed bool
}

func newBenchImage(opts TransferOptions, path string) *benchImage {
	im := &benchImage{opts: opts, path: path}
	slots := opts.Size / opts.WriteSize
	n := int64(math.Round(opts.Changed * float64(opts.Size) / float64(opts.WriteSize)))
	rng := rand.New(rand.NewPCG(1, 2))
	seen := make(map[int64]bool, n)
	for int64(len(im.writes)) < min(n, slots) {
		s := rng.Int64N(slots)
		if !seen[s] {
			seen[s] = true
			im.writes = append(im.writes, s*opts.WriteSize)
		}
	}
	slices.Sort(im.writes)
	return im
}

// zeroKind says whether the zero region holding off is data (0), a hole (1) or written
// zeros (2): the zero fraction is spread evenly, alternating holes and written zeros.
func (im *benchImage) zeroKind(off int64) int {
	r := off / transferZeroRegion
	z := im.opts.Zero
	if math.Floor(float64(r+1)*z) <= math.Floor(float64(r)*z) {
		return 0
	}
	if int64(math.Floor(float64(r)*z))%2 == 0 {
		return 1
	}
	return 2
}

// gen fills p with the original content at off (a multiple of transferGenBlock).
func (im *benchImage) gen(p []byte, off int64) {
	for len(p) > 0 {
		n := min(len(p), transferGenBlock)
		if im.zeroKind(off) != 0 {
			clear(p[:n])
		} else {
			var seed [32]byte
			for i := range 8 {
				seed[i] = byte(uint64(off) >> (8 * i))
			}
			_, _ = rand.NewChaCha8(seed).Read(p[:n])
		}
		p, off = p[n:], off+int64(n)
	}
}

func (im *benchImage) file() string { return im.path }

func (im *benchImage) describe() string {
	return fmt.Sprintf("random, %s changed in %s writes, %s zeros", formatPercent(im.opts.Changed),
		progress.FormatSize(im.opts.WriteSize), formatPercent(im.opts.Zero))
}

func (im *benchImage) create(context.Context) error {
	f, err := os.Create(im.path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(im.opts.Size); err != nil {
		return err
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < im.opts.Size; off += int64(len(buf)) {
		n := min(int64(len(buf)), im.opts.Size-off)
		if err := im.restore(f, buf[:n], off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// restore writes the original content of [off, off+len(p)), leaving holes as holes.
func (im *benchImage) restore(f *os.File, p []byte, off int64) error {
	im.gen(p, off)
	for len(p) > 0 {
		n := min(int64(len(p)), transferZeroRegion-off%transferZeroRegion)
		if im.zeroKind(off) == 1 {
			if err := punchRange(f, off, n); err != nil {
				return err
			}
		} else if _, err := f.WriteAt(p[:n], off); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// reset undoes the change and drops the transfer's cached signature, so that every
// method starts from the same file, as new.
func (im *benchImage) reset(context.Context) error {
	if err := os.RemoveAll(filepath.Join(filepath.Dir(im.path), ".vmmp-transfer")); err != nil {
		return err
	}
	if !im.changed {
		return nil
	}
	f, err := os.OpenFile(im.path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	unit := max(im.opts.WriteSize, transferGenBlock)
	buf := make([]byte, unit)
	for _, off := range im.writes {
		lo := off / unit * unit
		n := min(unit, im.opts.Size-lo)
		if err := im.restore(f, buf[:n], lo); err != nil {
			return err
		}
	}
	im.changed = false
	return f.Sync()
}

// change rewrites opts.Changed of the image in writes of opts.WriteSize, then waits out
// the file timestamp granularity as a VM's disk would between its last write and a
// migration.
func (im *benchImage) change(context.Context) error {
	f, err := os.OpenFile(im.path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{7})
	buf := make([]byte, im.opts.WriteSize)
	for _, off := range im.writes {
		_, _ = rng.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
	}
	im.changed = true
	if err := f.Sync(); err != nil {
		return err
	}
	time.Sleep(100 * time.Millisecond)
	return nil
}

func (im *benchImage) changedBytes() int64 { return int64(len(im.writes)) * im.opts.WriteSize }

// sameContent checks that the copy is byte-identical, so no method is timed for a wrong result.
func sameContent(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); ; {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return fmt.Errorf("copy differs from the source near byte %d", off)
		}
		if ea != nil || eb != nil {
			if (ea == io.EOF || ea == io.ErrUnexpectedEOF) && (eb == io.EOF || eb == io.ErrUnexpectedEOF) {
				return nil
			}
			return errors.Join(ea, eb)
		}
		off += int64(na)
	}
}

// rsyncDaemon is an rsync daemon on the peer's address whose module is the working directory.
type rsyncDaemon struct {
	root    string // the module's directory
	ip      string
	cmd     *exec.Cmd
	port    int
	version string
	done    chan struct{}
}

// startRsyncDaemon starts rsync as a daemon on side.PeerIP (in side.PeerNS, if any),
// installing rsync first if it is missing and this process may (root, apt-get).
func startRsyncDaemon(ctx context.Context, work string, side TransferSide, log *slog.Logger) (*rsyncDaemon, error) {
	bin, err := exec.LookPath("rsync")
	if err != nil {
		if os.Geteuid() != 0 {
			return nil, errors.New("rsync is not installed (install it, e.g. apt-get install -y rsync)")
		}
		log.Info("bench transfer: installing rsync")
		if out, err := exec.CommandContext(ctx, "apt-get", "install", "-y", "rsync").CombinedOutput(); err != nil {
			_ = exec.CommandContext(ctx, "apt-get", "update").Run()
			if out2, err := exec.CommandContext(ctx, "apt-get", "install", "-y", "rsync").CombinedOutput(); err != nil {
				return nil, fmt.Errorf("install rsync: %w: %s%s", err, out, out2)
			}
		}
		if bin, err = exec.LookPath("rsync"); err != nil {
			return nil, fmt.Errorf("rsync: %w", err)
		}
	}
	v, _ := exec.CommandContext(ctx, bin, "--version").Output()
	version := "(unknown version)"
	if f := strings.Fields(string(v)); len(f) >= 3 && f[1] == "version" {
		version = f[2]
	}
	port := 873 // a namespace of the benchmark's own has nothing else listening
	if side.PeerNS == "" {
		l, err := net.Listen("tcp", net.JoinHostPort(side.PeerIP, "0"))
		if err != nil {
			return nil, err
		}
		port = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
	}
	conf := filepath.Join(work, "rsyncDaemon.conf")
	body := fmt.Sprintf("use chroot = no\nuid = %d\ngid = %d\nlog file = %s\n[bench]\npath = %s\nread only = no\n",
		os.Geteuid(), os.Getegid(), filepath.Join(work, "rsyncDaemon.log"), work)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return nil, err
	}
	args := []string{bin, "--daemon", "--no-detach", "--port", strconv.Itoa(port), "--address", side.PeerIP, "--config", conf}
	if side.PeerNS != "" {
		args = append([]string{"ip", "netns", "exec", side.PeerNS}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start rsync daemon: %w", err)
	}
	r := &rsyncDaemon{root: work, ip: side.PeerIP, cmd: cmd, port: port, version: version, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(r.done) }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("tcp", net.JoinHostPort(side.PeerIP, strconv.Itoa(port)))
		if err == nil {
			_ = c.Close()
			return r, nil
		}
		select {
		case <-r.done:
			return nil, errors.New("rsync daemon exited at start")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("rsync daemon does not listen: %w", err)
		}
	}
}

func (r *rsyncDaemon) stop() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// push copies src into dstDir with rsync over ssh and returns the time and the bytes rsync
// reports on the wire.
func (t *baselineTools) push(ctx context.Context, flags []string, src, dstDir string) (transferTiming, error) {
	return timeRsync(ctx, append(append([]string{"-I", "--stats", "-e", strings.Join(t.ssh, " ")}, flags...), src,
		fmt.Sprintf("root@%s:%s/", t.side.PeerIP, dstDir)))
}

// timeRsync runs rsync with args (which ask for --stats) and returns the time and the bytes
// it reports on the wire.
func timeRsync(ctx context.Context, args []string) (transferTiming, error) {
	start := time.Now()
	out, err := exec.CommandContext(ctx, "rsync", args...).CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return transferTiming{}, fmt.Errorf("rsync %s: %w: %s", strings.Join(args, " "), err, out)
	}
	m := transferTiming{d: d, ok: true}
	for _, g := range rsyncStatLine.FindAllStringSubmatch(string(out), -1) {
		n, _ := strconv.ParseInt(strings.NewReplacer(",", "", ".", "").Replace(g[2]), 10, 64)
		m.wire += n
	}
	return m, nil
}

var rsyncStatLine = regexp.MustCompile(`Total bytes (sent|received): ([\d,.]+)`)

// run pushes src into dstDir through the daemon and returns the time and the bytes rsync
// reports on the wire. -I makes rsync compare content instead of trusting size and mtime,
// as the transfer's content check does.
func (r *rsyncDaemon) run(ctx context.Context, flags []string, src, dstDir string) (transferTiming, error) {
	rel, err := filepath.Rel(r.root, dstDir)
	if err != nil {
		return transferTiming{}, err
	}
	return timeRsync(ctx, append(append([]string{"-I", "--stats"}, flags...), src,
		fmt.Sprintf("rsync://%s/bench/%s/", net.JoinHostPort(r.ip, strconv.Itoa(r.port)), filepath.ToSlash(rel))))
}

func printTransferTable(out io.Writer, opts TransferOptions, side TransferSide, im transferImage, raw transferTiming, res map[string]map[string]transferTiming,
	rs *rsyncDaemon, rsyncNote, trackNote string, ssh *baselineTools, sshNote string, cmp compressionCheck) {
	link := side.Link
	if side.Shaping != "" {
		link += " (" + side.Shaping + ")"
	}
	fmt.Fprintf(out, "virtuoso bench transfer over %s: %s image, %s, %s blocks, %d CPUs\n\n",
		link, progress.FormatSize(opts.Size), im.describe(), progress.FormatSize(int64(opts.BlockSize)), runtime.NumCPU())
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tmethod\ttime\tvs rsync --inplace\tvs rsync -W\twire\twire vs rsync --inplace\twire vs rsync -W\tCPU-s/GiB\tzstd\t")
	inplace, whole := res[transferMethods[0].name], res[transferMethods[1].name]
	gib := float64(opts.Size) / (1 << 30)
	row := func(sc, label, name string, m transferTiming) {
		if !m.ok {
			fmt.Fprintf(tw, "%s\t%s\tn/a\t\t\t\t\t\t\t\t\n", label, name)
			return
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2fs\t%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t\n", label, name, m.d.Seconds(),
			speedupRatio(inplace[sc], m), speedupRatio(whole[sc], m), progress.FormatSize(m.wire),
			wireBytesRatio(inplace[sc], m), wireBytesRatio(whole[sc], m), m.cpu.Seconds()/gib, m.note)
	}
	for _, sc := range transferScenarios {
		label := sc
		if sc == "changed" {
			label = "changed " + formatPercent(opts.Changed)
		}
		if sc == "first" {
			row(sc, label, "libp2p stream, raw", raw)
		}
		for _, m := range transferMethods {
			if m.tracked && trackNote != "" || m.ssh && ssh == nil {
				continue // said below
			}
			row(sc, label, m.name, res[m.name][sc])
		}
	}
	_ = tw.Flush()

	bd, off := res["blockdiff"], res["blockdiff, no zstd"]
	fmt.Fprintln(out)
	fmt.Fprintln(out, "goals:")
	goal := func(ok bool, format string, args ...any) {
		mark := "met"
		if !ok {
			mark = "NOT MET"
		}
		fmt.Fprintf(out, "  %-7s  %s\n", mark, fmt.Sprintf(format, args...))
	}
	// durable: the same comparison with rsync made to wait for the disk as blockdiff does.
	durable := func(name, sc, what string) {
		if f, w := bd[sc], res[name][sc]; f.ok && w.ok {
			fmt.Fprintf(out, "  %-7s  %s: %.2fx faster than %s, a copy as durable as blockdiff's\n", "-", what, w.d.Seconds()/f.d.Seconds(), name)
		}
	}
	if f := bd["first"]; f.ok && raw.ok && opts.Image == "random" && opts.Zero == 0 {
		r := f.cpu.Seconds() / raw.cpu.Seconds()
		goal(r <= 1.3, "first copy, random image: %.2fx the raw stream's CPU-seconds (want <= 1.3x)", r)
		if w := whole["first"]; w.ok {
			goal(f.d <= w.d, "first copy, random image: %.2fx the speed of rsync -W (want >= 1x)", w.d.Seconds()/f.d.Seconds())
			durable("rsync -W --fsync", "first", "first copy, random image")
		}
	}
	if f, w := bd["first"], whole["first"]; f.ok && w.ok && opts.Image == "ext4" {
		switch share := float64(opts.Files) / float64(opts.Size); {
		case share >= 0.4 && strings.HasPrefix(side.Link, "100mbit"):
			if w := res["rsync over ssh -W"]["first"]; w.ok {
				goal(w.d.Seconds() >= 5*f.d.Seconds(), "first copy, half-full ext4, over %s: %.2fx faster than rsync -W over ssh (want >= 5x)", side.Link, w.d.Seconds()/f.d.Seconds())
			}
		case share >= 0.4 && side.Link != "loopback":
			goal(w.d.Seconds() >= f.d.Seconds(), "first copy, half-full ext4, over %s: %.2fx faster than rsync -W (the goals are for loopback and 100 Mbit; want >= 1x)", side.Link, w.d.Seconds()/f.d.Seconds())
		case share >= 0.4:
			goal(w.d.Seconds() >= 3*f.d.Seconds(), "first copy, half-full ext4: %.2fx faster than rsync -W (want >= 3x)", w.d.Seconds()/f.d.Seconds())
			durable("rsync -W --fsync", "first", "first copy, half-full ext4")
		case share <= 0.15:
			goal(w.d.Seconds() >= 8*f.d.Seconds(), "first copy, ext4 %s full: %.2fx faster than rsync -W (want >= 8x)", formatPercent(share), w.d.Seconds()/f.d.Seconds())
		}
	}
	for _, sc := range transferScenarios {
		if sc == "first" && cmp.runs > 0 {
			goal(cmp.with.Seconds() <= cmp.without.Seconds()*1.05, "first: blockdiff at %.2fx the time of blockdiff without zstd, medians of %d interleaved runs each (%.2fs and %.2fs; want <= 1x, 5%% noise allowed)",
				cmp.with.Seconds()/cmp.without.Seconds(), cmp.runs, cmp.with.Seconds(), cmp.without.Seconds())
			continue
		}
		if f, o := bd[sc], off[sc]; f.ok && o.ok && sc != "unchanged" && o.d < time.Second {
			fmt.Fprintf(out, "  %-7s  %s: blockdiff with and without zstd not compared: one run of %.2fs is within the machine's noise (BenchmarkFetchChanged in vmmp/transfer compares them, interleaved)\n",
				"-", sc, o.d.Seconds())
		} else if f.ok && o.ok && sc != "unchanged" {
			goal(f.d.Seconds() <= o.d.Seconds()*1.05, "%s: blockdiff at %.2fx the time of blockdiff without zstd (want <= 1x, 5%% noise allowed)", sc, f.d.Seconds()/o.d.Seconds())
		}
	}
	loop := side.Link == "loopback" // the re-transfer goals are for loopback: over a link the wire binds both
	if c, r := bd["changed"], inplace["changed"]; c.ok && r.ok && loop {
		s := r.d.Seconds() / c.d.Seconds()
		goal(s >= 5, "re-transfer after the change %.1fx faster than rsync --no-whole-file --inplace (want >= 5x without a dirty bitmap)", s)
	}
	if c, r := res["blockdiff, dirty bitmap"]["changed"], inplace["changed"]; c.ok && r.ok && loop {
		s := r.d.Seconds() / c.d.Seconds()
		goal(s >= 20, "re-transfer after the change, dirty bitmap on, %.1fx faster than rsync --no-whole-file --inplace (want >= 20x)", s)
		if d := res["rsync --inplace --fsync"]["changed"]; d.ok {
			fmt.Fprintf(out, "  %-7s  re-transfer after the change, dirty bitmap on: %.1fx faster than rsync --inplace --fsync, a copy as durable as blockdiff's\n", "-", d.d.Seconds()/c.d.Seconds())
		}
	}
	if u := bd["unchanged"]; u.ok {
		goal(u.d < 100*time.Millisecond, "unchanged re-transfer in %.3fs (want < 0.1s)", u.d.Seconds())
	}
	if opts.Image == "random" && opts.WriteSize < int64(opts.BlockSize) {
		if c := bd["changed"]; c.ok {
			r := float64(c.wire) / float64(im.changedBytes())
			goal(r < 2, "%s writes: %.2fx the changed bytes on the wire (want < 2x)", progress.FormatSize(opts.WriteSize), r)
		}
	}
	if opts.Zero >= 0.5 {
		if f, w := bd["first"], whole["first"]; f.ok && w.ok {
			s := w.d.Seconds() / f.d.Seconds()
			goal(s >= 10, "%s-empty image, first transfer %.1fx faster than rsync -W (want >= 10x; re-transfers: changed %s, unchanged %s)",
				formatPercent(opts.Zero), s, speedupRatio(whole["changed"], bd["changed"]), speedupRatio(whole["unchanged"], bd["unchanged"]))
		}
	}

	fmt.Fprintln(out)
	if rs != nil {
		fmt.Fprintf(out, "rsync %s pushes to an rsync daemon at the far end (TCP, no encryption; the libp2p rows run between two Virtuoso nodes over TCP+Noise+Yamux),\n", rs.version)
		fmt.Fprintln(out, "with -I so it compares content instead of trusting size and mtime (without it an unchanged file is skipped unread).")
	} else {
		fmt.Fprintf(out, "rsync rows missing: %s\n", rsyncNote)
	}
	if ssh != nil {
		fmt.Fprintf(out, "rsync over ssh: rsync %s -I, through OpenSSH to a private sshd at the far end (the encrypted way users copy between machines).\n", ssh.version)
	} else {
		fmt.Fprintf(out, "rsync over ssh rows missing: %s\n", sshNote)
	}
	if trackNote != "" {
		fmt.Fprintf(out, "dirty-bitmap rows missing: %s\n", trackNote)
	} else {
		fmt.Fprintln(out, "dirty bitmap: the image is a QEMU VM's raw disk (the qemu driver's, with its tracking wrapper) and its change is written")
		fmt.Fprintln(out, "through QEMU's block layer (qemu-io), which marks it in the disk's bitmap as it marks a guest's writes; the source reads what it marks.")
	}
	fmt.Fprintln(out, "blockdiff and full verify the image hash and fsync before they commit; rsync does not fsync, except in the rows with --fsync.")
	fmt.Fprintln(out, "Every method starts from an empty destination and the same source, which stays in the page cache;")
	fmt.Fprintln(out, "blockdiff keeps signatures cached next to the files, as a node does. Time ratios: x faster; wire ratios: x the bytes.")
	fmt.Fprintln(out, "CPU-s/GiB: CPU time of both ends (this process, both nodes in it; rsync's client and daemon) per GiB of image.")
	fmt.Fprintln(out, "zstd: share of the blocks sent that went compressed (blockdiff: the source compresses while it moves the data faster).")
}

func speedupRatio(ref, m transferTiming) string {
	if !ref.ok || m.d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", ref.d.Seconds()/m.d.Seconds())
}

func wireBytesRatio(ref, m transferTiming) string {
	if !ref.ok || ref.wire == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f", float64(m.wire)/float64(ref.wire))
}

var sizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)$`)

var sizeUnits = map[string]float64{
	"": 1, "b": 1,
	"k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40, "tb": 1e12,
}

// ParseSize parses a byte count such as "4GiB", "64KiB", "4G" (binary) or "1.5GB"
// (decimal), or a plain number of bytes.
func ParseSize(s string) (int64, error) {
	g := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if g == nil {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (KiB, MiB, GiB, TiB, KB, ...)", s)
	}
	unit, ok := sizeUnits[strings.ToLower(g[2])]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q", s, g[2])
	}
	v, err := strconv.ParseFloat(g[1], 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	n := math.Round(v * unit)
	if n > 1<<62 {
		return 0, fmt.Errorf("size %q is out of range", s)
	}
	return int64(n), nil
}

// ParsePercent parses "1%", "0.5%" or a plain fraction such as "0.01".
func ParsePercent(s string) (float64, error) {
	t := strings.TrimSpace(s)
	pct := strings.HasSuffix(t, "%")
	v, err := strconv.ParseFloat(strings.TrimSuffix(t, "%"), 64)
	if err != nil {
		return 0, fmt.Errorf("percentage %q: want e.g. 1%%", s)
	}
	if pct {
		v /= 100
	}
	if v < 0 || v > 1 || math.IsNaN(v) {
		return 0, fmt.Errorf("percentage %q: want 0%% to 100%%", s)
	}
	return v, nil
}

func formatPercent(f float64) string {
	return strconv.FormatFloat(f*100, 'g', 4, 64) + "%"
}
