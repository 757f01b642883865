package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// ID is the libp2p protocol of the transfer stream.
const ID protocol.ID = "/vmmp/transfer/1.0.0"

// ServiceName is the resource-manager service transfer streams are attached to.
const ServiceName = "vmmp.transfer"

const (
	// DefaultBlockSize matches QEMU's dirty-bitmap granularity.
	DefaultBlockSize = 64 << 10
	// MinBlockSize and MaxBlockSize bound the configurable block size (a power of two).
	MinBlockSize = 4 << 10
	MaxBlockSize = 4 << 20
	// MaxFiles bounds the files of one request.
	MaxFiles = 64
	// MaxFileSize bounds one file (1 TiB): signatures are held in memory, about 160 bytes
	// per block.
	MaxFileSize = 1 << 40
)

var (
	// ErrRefused: the source's authorisation hook refused the request.
	ErrRefused = errors.New("transfer refused")
	// ErrCorrupt: a block or image failed verification against its hash.
	ErrCorrupt = errors.New("transfer data corrupt")
	// ErrProtocol: the peer sent a malformed, oversized or unexpected frame.
	ErrProtocol = errors.New("transfer protocol violation")
	// ErrSourceChanged: a source file changed while it was being sent; retry once it is
	// quiescent (the VM stopped or suspended).
	ErrSourceChanged = errors.New("source file changed during transfer")
	// ErrRemote: the peer failed for a reason of its own.
	ErrRemote = errors.New("transfer failed on the peer")
	// ErrBlockSize: a block size is not a power of two in [MinBlockSize, MaxBlockSize].
	ErrBlockSize = errors.New("invalid block size")
	// ErrTooLarge: the source announced files larger than WithMaxSize allows.
	ErrTooLarge = errors.New("transfer larger than allowed")
	// ErrBadRequest: the request names no file, too many, or a name that is not a plain
	// file name.
	ErrBadRequest = errors.New("invalid transfer request")
)

// Request names the files of one VM that the destination wants.
type Request struct {
	VM    string   // the VM's id, for the authorisation hook
	Files []string // plain file names (no directories, no leading dot), e.g. "disk.img", "state.zst"
}

// bookkeepingDir holds staging files, commit records and cached signatures next to the
// files they belong to. Requests may not name it.
const bookkeepingDir = ".vmmp-transfer"

func (r Request) validate() error {
	if len(r.VM) > maxVMLen {
		return fmt.Errorf("%w: vm id longer than %d bytes", ErrBadRequest, maxVMLen)
	}
	if len(r.Files) == 0 || len(r.Files) > MaxFiles {
		return fmt.Errorf("%w: %d files, want 1 to %d", ErrBadRequest, len(r.Files), MaxFiles)
	}
	seen := make(map[string]bool, len(r.Files))
	for _, f := range r.Files {
		// Names with a leading dot are each side's own bookkeeping (the transfer's, a change
		// tracker's), which describe one copy and never move.
		if f == "" || strings.HasPrefix(f, ".") || len(f) > maxNameLen || strings.ContainsAny(f, "/\x00") {
			return fmt.Errorf("%w: file name %q", ErrBadRequest, f)
		}
		if seen[f] {
			return fmt.Errorf("%w: file %q named twice", ErrBadRequest, f)
		}
		seen[f] = true
	}
	return nil
}

// AuthorizeFunc decides whether peer from may fetch req and maps each requested file name
// to a local path (same order). An error refuses the request; its text reaches the peer.
type AuthorizeFunc func(ctx context.Context, from peer.ID, req Request) (paths []string, err error)

// Progress is a snapshot of a running Fetch.
type Progress struct {
	File      string        // file being received
	Done      int64         // image bytes settled so far (reused, holes and received)
	Total     int64         // image bytes of all files
	WireBytes int64         // bytes on the stream so far, both directions
	Rate      float64       // image bytes per second since the start
	ETA       time.Duration // estimate of the time left, 0 when unknown
}

// Result describes a completed Fetch.
type Result struct {
	Files        []FileResult
	WireBytes    int64 // frame bytes on the stream, both directions
	WrittenBytes int64 // bytes written to disk, staging and commit
	ReusedBlocks int64 // blocks the destination already held
	Elapsed      time.Duration
}

// FileResult describes one received file.
type FileResult struct {
	Name          string
	Path          string // where it now lives
	Size          int64
	Hash          Hash // image hash, verified
	BlocksReused  int64
	BlocksSent    int64 // whole blocks received
	BlocksPatched int64 // blocks received as changed sub-blocks only
	// BlocksCopied is how many blocks were assembled, wholly or partly, from pages the
	// destination held elsewhere in its version of the file (content a guest moved or copied).
	BlocksCopied int64
	BlocksHole   int64 // all-zero blocks, kept sparse
	// BlocksCompressed is how many of the blocks sent, patched or copied came zstd-compressed.
	BlocksCompressed int64
	Resumed          bool // a staging file of an interrupted transfer was reused
}

// ChangeTracker is an optional capability of a hypervisor driver (vm/qemu's dirty bitmaps
// implement it): it reports which ranges of a file may have changed since a checkpoint, so a
// source with a cached signature re-reads only those ranges instead of the whole file. It is
// trusted: ranges it leaves out are taken as unchanged, so a tracker that is not sure must
// answer ok false.
type ChangeTracker interface {
	// Checkpoint is called after the signature of the file at path, with image hash h, was
	// stored (by a Server after it sent the file, by a Fetch after it committed it): changes
	// are to be counted from here. Files it does not track it ignores.
	Checkpoint(ctx context.Context, path string, h Hash) error
	// Changed returns the byte ranges of path written since checkpoint h, or ok false if
	// it cannot tell (then the file is scanned).
	Changed(ctx context.Context, path string, since Hash) (ranges []Extent, ok bool, err error)
}

// Extent is a byte range of a file.
type Extent struct {
	Off, Len int64
}

// Option configures a Server or a Fetch. Options that concern only one side are ignored by
// the other.
type Option func(*config)

type config struct {
	log         *slog.Logger
	method      Method
	blockSize   int
	compress    bool
	compression CompressionPolicy
	progress    func(Progress)
	tracker     ChangeTracker
	idle        time.Duration
	workers     int
	noSync      bool
	maxSize     int64                                       // Fetch refuses files larger than this in all; 0: no cap
	writeLimit  int64                                       // test hook: staging writes past this many bytes fail with ENOSPC
	readRate    int64                                       // test hook: the destination reads at most this many bytes a second
	cpuIdle     func() (idle, total time.Duration, ok bool) // test hook: the machine's CPU time, for the pacer
	zstdCost    float64                                     // test hook: zstd's cost per byte (s), for the pacer
	reportEvery time.Duration                               // progress throttle
	served      func(from peer.ID, req Request)
	sent        func(path string) // test hook: a file's blocks are all sent, its identity not yet checked
}

func newConfig(opts []Option) config {
	c := config{
		log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		method:    MethodBlockDiff,
		blockSize: DefaultBlockSize,
		compress:  true,
		idle:      2 * time.Minute,

		reportEvery: 100 * time.Millisecond,
	}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// WithLogger sets the logger (both sides).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithMethod selects the transfer method (Fetch; default MethodBlockDiff).
func WithMethod(m Method) Option { return func(c *config) { c.method = m } }

// WithBlockSize sets the block size (Fetch; default DefaultBlockSize).
func WithBlockSize(n int) Option { return func(c *config) { c.blockSize = n } }

// WithCompression allows zstd for the blocks sent, or not (Fetch; default allowed). The source
// then compresses by its CompressionPolicy, and only blocks it shrinks.
func WithCompression(on bool) Option { return func(c *config) { c.compress = on } }

// WithCompressionPolicy sets how the source decides to compress (Server; default
// CompressAuto).
func WithCompressionPolicy(p CompressionPolicy) Option { return func(c *config) { c.compression = p } }

// WithProgress sets a callback for progress snapshots (Fetch), called from the receiving
// goroutine at most ten times a second and once at the end; it must not block.
func WithProgress(f func(Progress)) Option { return func(c *config) { c.progress = f } }

// WithServed calls fn on the source after each transfer it completed: every file sent to its
// end and the destination's word that it verified and committed them (Server).
func WithServed(fn func(from peer.ID, req Request)) Option { return func(c *config) { c.served = fn } }

// WithChangeTracker lets the source skip reading unchanged ranges (Server).
func WithChangeTracker(t ChangeTracker) Option { return func(c *config) { c.tracker = t } }

// WithIdleTimeout bounds how long a stream may make no progress (both sides; default 2m).
func WithIdleTimeout(d time.Duration) Option { return func(c *config) { c.idle = d } }

// WithWorkers sets how many goroutines hash and verify blocks (both sides; default
// GOMAXPROCS).
func WithWorkers(n int) Option { return func(c *config) { c.workers = n } }

// WithoutSync skips the fsyncs that make a commit durable (Fetch). Only for benchmarks and
// throwaway copies: after a power loss a commit may be lost or torn.
func WithoutSync() Option { return func(c *config) { c.noSync = true } }

// WithMaxSize makes Fetch refuse, before any byte is written, a source that announces files
// of more than n bytes in all (Fetch; default no cap beyond MaxFileSize per file): for files
// whose size the destination knows or bounds, such as an OS image named by its hash.
func WithMaxSize(n int64) Option { return func(c *config) { c.maxSize = n } }

// withWriteLimit makes staging writes fail with ENOSPC past n bytes: a full disk, in tests.
func withWriteLimit(n int64) Option { return func(c *config) { c.writeLimit = n } }

// withReadRate makes the destination read the stream at most n bytes a second: a slow link,
// in tests (Fetch).
func withReadRate(n int64) Option { return func(c *config) { c.readRate = n } }

// withCPUIdle makes the source's pacer read the machine's idle and total CPU time from f
// (Server): a machine as idle or as busy as a test needs.
func withCPUIdle(f func() (idle, total time.Duration, ok bool)) Option {
	return func(c *config) { c.cpuIdle = f }
}

// withZstdCost makes the source's pacer take zstd's cost per byte as d, not as measured.
func withZstdCost(d time.Duration) Option {
	return func(c *config) { c.zstdCost = d.Seconds() }
}

// withReportEvery changes the progress throttle; tests report every frame.
func withReportEvery(d time.Duration) Option { return func(c *config) { c.reportEvery = d } }

// withSent calls fn on the server once a file's blocks are all sent and before the server checks
// that the file did not change meanwhile: tests change a source there.
func withSent(fn func(path string)) Option { return func(c *config) { c.sent = fn } }
