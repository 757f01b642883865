package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sync/errgroup"
)

// Fetch pulls the files of req from peer from into dstDir, where they replace the files of
// the same names once every one of them has been verified; until then the files already in
// dstDir are untouched and serve as the basis the source diffs against. An interrupted
// Fetch leaves its verified blocks staged under dstDir/.vmmp-transfer and the next Fetch of
// the same files resumes from them.
func Fetch(ctx context.Context, h host.Host, from peer.ID, req Request, dstDir string, opts ...Option) (*Result, error) {
	cfg := newConfig(opts)
	if err := req.validate(); err != nil {
		return nil, err
	}
	if !validBlockSize(cfg.blockSize) {
		return nil, fmt.Errorf("fetch: block size %d: %w", cfg.blockSize, ErrBlockSize)
	}
	if cfg.method != MethodBlockDiff && cfg.method != MethodFull {
		return nil, fmt.Errorf("fetch: unknown method %d", cfg.method)
	}
	start := time.Now()
	book := filepath.Join(dstDir, bookkeepingDir)
	if err := os.MkdirAll(book, 0o755); err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	unlock, err := lockDir(ctx, book)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	defer unlock()
	if err := recoverDir(dstDir, !cfg.noSync); err != nil {
		return nil, fmt.Errorf("fetch: finish an earlier commit: %w", err)
	}

	st, err := h.NewStream(ctx, from, ID)
	if err != nil {
		return nil, fmt.Errorf("fetch from %s: %w", from, err)
	}
	if err := st.Scope().SetService(ServiceName); err != nil {
		_ = st.Reset()
		return nil, fmt.Errorf("fetch from %s: %w", from, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	defer stop()
	sctx, cancel := context.WithCancel(ctx) // ends the stream's watchdog
	defer cancel()

	c := &client{st: st, cfg: &cfg, req: request{Request: req, method: cfg.method, blockSize: cfg.blockSize,
		compress: cfg.compress && cfg.method == MethodBlockDiff}, dir: dstDir, start: start}
	rw := newIdleStream(sctx, st, cfg.idle)
	rw.rate = cfg.readRate
	res, err := c.run(ctx, rw)
	if err != nil {
		if errors.Is(err, errPeerFailed) || ctx.Err() != nil {
			_ = st.Reset()
		} else {
			_ = st.Close() // delivers the verdict
		}
		if ctx.Err() != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("fetch %s from %s: %w", req.VM, from, err)
	}
	_ = st.Close()
	return res, nil
}

// client is one Fetch.
type client struct {
	st    network.Stream
	cfg   *config
	req   request
	dir   string
	start time.Time
	fr    *frameReader
	fw    *frameWriter
	files []*dstFile

	dec     *zstd.Decoder
	decOnce sync.Once
	decErr  error

	done, total atomic.Int64
	written     atomic.Int64
	lastReport  time.Time
}

// dstFile is a file being received.
type dstFile struct {
	name   string
	target string
	stageP string
	acc    acceptFile
	g      geometry // of the new image

	basis      *os.File // the version already held, or nil
	basisSize  int64
	basisCache *cachedSig // trusted cached signature of the basis, or nil
	stage      *os.File
	direct     *os.File // the stage opened for direct I/O, or nil
	noDirect   atomic.Bool
	resumed    bool
	copies     bool // the source was told it may name any page of the basis (COPY frames)

	vg        geometry   // of the basis as the source sees it: basis overlaid with staged pages
	dsig      *destSig   // our signature of vg, as sent
	pages     bitset     // 4 KiB pages of the stage that hold received data
	holes     []bool     // blocks the source said are zero
	final     *signature // hashes of the new image, as verified
	identical bool

	jobs    sync.WaitGroup
	errOnce sync.Once
	failed  atomic.Bool
	err     error // set once; read after jobs.Wait
	res     FileResult
}

func (f *dstFile) fail(err error) {
	f.errOnce.Do(func() {
		f.err = err
		f.failed.Store(true)
	})
}

func (c *client) run(ctx context.Context, rw *idleStream) (res *Result, err error) {
	c.fr = newFrameReader(rw)
	c.fw = newFrameWriter(rw)
	defer func() {
		if err == nil {
			// A stage the commit applied in place is unlinked but still open: its last close
			// frees its blocks, which on a filesystem mounted with discard waits for the
			// disk (tens of ms for tens of MiB). The files are committed; that can follow.
			files := c.files
			go func() {
				for _, f := range files {
					f.close()
				}
			}()
			return
		}
		for _, f := range c.files {
			f.close()
		}
		c.cleanup(err)
	}()
	if err := writePreamble(c.fw.w); err != nil {
		return nil, err
	}
	if err := c.fw.write(frameRequest, c.req.marshal()); err != nil {
		return nil, err
	}
	if err := c.fw.flush(); err != nil {
		return nil, err
	}
	if err := readPreamble(c.fr.r); err != nil {
		return nil, fmt.Errorf("read preamble: %w", err)
	}
	t, p, err := c.fr.read()
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	switch t {
	case frameError:
		e, err := decodeError(p)
		if err != nil {
			return nil, err
		}
		return nil, e.err()
	case frameAccept:
	default:
		return nil, fmt.Errorf("%w: frame 0x%02x instead of accept", ErrProtocol, t)
	}
	acc, err := decodeAccept(p)
	if err != nil {
		return nil, err
	}
	if len(acc.files) != len(c.req.Files) {
		return nil, fmt.Errorf("%w: accept lists %d files, asked for %d", ErrProtocol, len(acc.files), len(c.req.Files))
	}
	if c.cfg.maxSize > 0 {
		var total int64
		for _, f := range acc.files {
			total += f.size // each at most MaxFileSize, as decoded
		}
		if total > c.cfg.maxSize {
			return nil, fmt.Errorf("%w: the source announces %d bytes, at most %d are accepted", ErrTooLarge, total, c.cfg.maxSize)
		}
	}
	for i, name := range c.req.Files {
		f, err := c.open(name, acc.files[i])
		if err != nil {
			return nil, err
		}
		c.files = append(c.files, f)
		c.total.Add(f.g.size)
	}

	// A failure on either side of the stream unblocks the other (not the end of both: the
	// stream stays open for the verdict and the source's end).
	eg, gctx := errgroup.WithContext(ctx)
	abortOnErr := func(err error) error {
		if err != nil {
			rw.abort()
		}
		return err
	}
	eg.Go(func() error { return abortOnErr(c.sendSignatures(gctx)) })
	eg.Go(func() error { return abortOnErr(c.receive(gctx)) })
	if err := eg.Wait(); err != nil {
		c.tell(err)
		return nil, err
	}
	received := time.Since(c.start)
	if err := c.commit(ctx); err != nil {
		c.tell(err)
		return nil, err
	}
	c.cfg.log.Debug("transfer: fetched", "vm", c.req.VM, "received", received, "committed", time.Since(c.start),
		"wire", c.wire(), "written", c.written.Load())
	c.tell(nil)
	c.awaitSource()
	c.report("", true)
	res = &Result{WireBytes: c.wire(), WrittenBytes: c.written.Load(), Elapsed: time.Since(c.start)}
	for _, f := range c.files {
		res.Files = append(res.Files, f.res)
		res.ReusedBlocks += f.res.BlocksReused
	}
	return res, nil
}

func (c *client) wire() int64 { return c.fr.n.Load() + c.fw.n.Load() + 2*int64(len(preamble)) }

// tell sends the verdict to the source, best effort: the source only logs it.
func (c *client) tell(err error) {
	e := remoteError{code: codeOK}
	if err != nil {
		e = remoteError{code: errCode(err), msg: err.Error()}
		if errors.Is(err, errPeerFailed) {
			return
		}
	}
	if c.fw.write(frameDone, e.marshal()) == nil {
		_ = c.fw.flush()
	}
}

// sourceWrapUp bounds how long a committed Fetch waits for the source to finish its side.
const sourceWrapUp = 10 * time.Second

// awaitSource waits for the source to end the stream: it stores its signature and
// checkpoints its change tracker after it sent the last file (while this side committed), and
// what the caller does next (start the VM, send it back) must come after that. A source that
// neither ends nor fails the stream in time is left to it: the files are committed.
func (c *client) awaitSource() {
	_ = c.st.SetReadDeadline(time.Now().Add(sourceWrapUp))
	_, _, _ = c.fr.read() // the end, or a frame the source had no reason to send: either ends the wait
}

// open prepares to receive one file: the basis it holds, a stage left by an interrupted
// transfer, and a signature cache that may make hashing the basis unnecessary.
func (c *client) open(name string, acc acceptFile) (*dstFile, error) {
	f := &dstFile{
		name: name, target: filepath.Join(c.dir, name),
		stageP: filepath.Join(c.dir, bookkeepingDir, name+".stage"),
		acc:    acc, g: newGeometry(acc.size, c.req.blockSize),
	}
	f.res = FileResult{Name: name, Path: f.target, Size: acc.size}
	if c.req.method == MethodBlockDiff {
		b, err := os.Open(f.target)
		switch {
		case err == nil:
			fi, err := b.Stat()
			if err != nil {
				_ = b.Close()
				return nil, err
			}
			if !fi.Mode().IsRegular() {
				_ = b.Close()
				return nil, fmt.Errorf("%s exists and is not a regular file", f.target)
			}
			f.basis, f.basisSize = b, fi.Size()
			if cs := loadCacheHeader(f.target, c.req.blockSize); cs != nil && cs.trusted(fileIdentity(fi)) && cs.spotCheck(b) {
				f.basisCache = cs
			}
		case errors.Is(err, os.ErrNotExist):
		default:
			return nil, err
		}
	}
	stage, err := os.OpenFile(f.stageP, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open stage for %s: %w", name, err)
	}
	f.stage = stage
	f.direct, _ = openDirect(f.stageP) // nil where unsupported
	fi, err := stage.Stat()
	if err != nil {
		return nil, err
	}
	stageSize := fi.Size()
	if c.req.method == MethodFull && stageSize > 0 {
		// A full transfer sends every byte anyway: start the stage afresh.
		if err := stage.Truncate(0); err != nil {
			return nil, fmt.Errorf("reset stage for %s: %w", name, err)
		}
		stageSize = 0
	}
	f.resumed = stageSize > 0
	f.res.Resumed = f.resumed
	f.vg = newGeometry(max(f.basisSize, stageSize), c.req.blockSize)
	n := max(f.vg.nblocks, f.g.nblocks)
	f.holes = make([]bool, n)
	f.pages = newBitset(n * f.g.stride)
	if f.resumed {
		// What an interrupted transfer staged is what the stage holds data for. (Where the
		// filesystem allocates more than a page at a time, the extra pages read as zeros
		// and count as staged zeros: consistently, in the signature and in the commit.)
		data, err := dataBlocks(stage, newGeometry(stageSize, subBlockSize))
		if err != nil {
			return nil, err
		}
		copy(f.pages, data)
	}
	f.identical = !f.resumed && f.basisCache != nil && !acc.hash.IsZero() &&
		f.basisCache.image == acc.hash && f.basisSize == acc.size
	if !f.identical && f.basisCache != nil && !f.basisCache.load() {
		f.basisCache = nil // its body is needed, and it is damaged or was replaced: hash the basis
	}
	// Without a stage the signature describes the basis file alone, which stays as it is
	// until the commit: any of its pages may then be named as the content of a block. The
	// source looks them up once it has the whole signature, so only a signature known already
	// (not one hashed while the source waits) is offered for that, and only of a basis the
	// source indexes whole.
	f.copies = !f.identical && !f.resumed && f.basisCache != nil && f.vg.size > 0 &&
		f.vg.size/subBlockSize <= maxIndexed
	if !f.identical {
		f.final = newSignature(f.g)
	}
	f.dsig = newDestSig() // filled in by sendSignatures
	return f, nil
}

// staged reports whether any page of block i is staged.
func (f *dstFile) staged(i int) bool {
	for p := i * f.g.stride; p < (i+1)*f.g.stride; p++ {
		if f.pages.get(p) {
			return true
		}
	}
	return false
}

// stagedPages returns the staged pages of block i as a mask, one bit per page.
func (f *dstFile) stagedPages(i int) []bool {
	m := make([]bool, f.g.stride)
	for k := range m {
		m[k] = f.pages.get(i*f.g.stride + k)
	}
	return m
}

func (f *dstFile) setPages(i int, on bool) {
	for p := i * f.g.stride; p < (i+1)*f.g.stride; p++ {
		if on {
			f.pages.set(p)
		} else {
			f.pages.clear(p)
		}
	}
}

// overlayStage reads over buf, which holds block i of the basis, the pages of the block
// that are staged (per mask).
func (f *dstFile) overlayStage(buf []byte, i int, mask []bool) error {
	off := f.vg.off(i)
	for k := 0; k < len(mask); {
		if !mask[k] || k*subBlockSize >= len(buf) {
			k++
			continue
		}
		j := k
		for j < len(mask) && mask[j] && j*subBlockSize < len(buf) {
			j++
		}
		lo, hi := k*subBlockSize, min(len(buf), j*subBlockSize)
		if err := readZeroPadded(f.stage, -1, buf[lo:hi], off+int64(lo)); err != nil {
			return err
		}
		k = j
	}
	return nil
}

func (f *dstFile) close() {
	if f.basis != nil {
		_ = f.basis.Close()
	}
	if f.stage != nil {
		_ = f.stage.Close()
	}
	if f.direct != nil {
		_ = f.direct.Close()
	}
}

// sendSignatures sends, file by file, what the destination holds: the basis overlaid with
// any staged blocks. Hashing, when there is no cached signature, is pipelined with sending.
func (c *client) sendSignatures(ctx context.Context) error {
	stride := c.req.blockSize / subBlockSize
	chunk := sigChunk(stride)
	for idx, f := range c.files {
		d := f.dsig
		if c.req.method == MethodFull {
			d.sig = newSignature(newGeometry(0, c.req.blockSize))
			if err := c.fw.write(frameBasis, basis{file: idx}.marshal()); err != nil {
				return err
			}
			continue
		}
		if f.identical {
			// The source only confirms the image: the body of the cache is not needed.
			d.sig = newSignature(newGeometry(0, c.req.blockSize))
			d.advance(f.vg.nblocks)
			if err := c.fw.write(frameBasis, basis{file: idx, size: f.basisSize, identical: true}.marshal()); err != nil {
				return err
			}
			continue
		}
		if err := c.fw.write(frameBasis, basis{file: idx, size: f.vg.size, copies: f.copies}.marshal()); err != nil {
			return err
		}
		send := func(first, n int) error {
			for first < n {
				k := min(chunk, n-first)
				if err := c.writeSig(idx, d.sig, first, k); err != nil {
					return err
				}
				first += k
			}
			d.advance(n)
			return c.fw.flush()
		}
		if !f.resumed && f.basisCache != nil {
			d.sig = f.basisCache.sig
			if err := send(0, f.vg.nblocks); err != nil {
				return err
			}
			continue
		}
		var old *signature
		if cs := loadCachedSig(f.target, c.req.blockSize); cs != nil {
			old = cs.sig
		}
		src, err := newOverlay(f)
		if err != nil {
			return err
		}
		sig := newSignature(f.vg)
		d.sig = sig
		var sent int
		_, err = scanSignatureInto(ctx, sig, src, old, workerCount(c.cfg), func(first, n int) error {
			// Batches arrive in order; send what is complete.
			if err := send(sent, first+n); err != nil {
				return err
			}
			sent = first + n
			return nil
		})
		if err != nil {
			return fmt.Errorf("signature of %s: %w", f.name, err)
		}
		if err := send(sent, f.vg.nblocks); err != nil {
			return err
		}
	}
	return c.fw.flush()
}

func (c *client) writeSig(idx int, sig *signature, first, n int) error {
	if n == 0 {
		return nil
	}
	stride := sig.g.stride
	b := appendSigHeader(make([]byte, 0, 16+n*(32+8*stride)), sigHeader{file: idx, first: first, count: n})
	for i := first; i < first+n; i++ {
		b = append(b, sig.strong[i][:]...)
		for _, s := range sig.sub(i) {
			b = append(b, byte(s), byte(s>>8), byte(s>>16), byte(s>>24), byte(s>>32), byte(s>>40), byte(s>>48), byte(s>>56))
		}
	}
	return c.fw.write(frameSig, b)
}

// overlay is the destination's current content of a file as the source must see it: staged
// blocks of an interrupted transfer over the basis, zeros beyond either.
type overlay struct {
	f     *dstFile
	bdata bitset // basis blocks with data
}

func newOverlay(f *dstFile) (*overlay, error) {
	o := &overlay{f: f, bdata: newBitset(f.vg.nblocks)}
	if f.basis != nil {
		data, err := dataBlocks(f.basis, newGeometry(f.basisSize, f.vg.bs))
		if err != nil {
			return nil, err
		}
		copy(o.bdata, data)
	}
	return o, nil
}

func (o *overlay) hasData(i int) bool { return o.f.staged(i) || o.bdata.get(i) }

func (o *overlay) read(bufs [][]byte, first int) error {
	for j, buf := range bufs {
		i := first + j
		if err := readZeroPadded(o.f.basis, o.f.basisSize, buf, o.f.vg.off(i)); err != nil {
			return err
		}
		if o.f.staged(i) {
			if err := o.f.overlayStage(buf, i, o.f.stagedPages(i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// readZeroPadded reads len(p) bytes at off, as zeros past the end of the file (or of size,
// if not negative) or where there is no file.
func readZeroPadded(f *os.File, size int64, p []byte, off int64) error {
	n := 0
	if f != nil && (size < 0 || off < size) {
		want := len(p)
		if size >= 0 {
			want = int(min(int64(len(p)), size-off))
		}
		var err error
		n, err = f.ReadAt(p[:want], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read %s: %w", f.Name(), err)
		}
	}
	clear(p[n:])
	return nil
}

// job is received data for a worker to verify and stage: either a run of whole
// uncompressed blocks, contiguous in one aligned buffer and written with one system call,
// or one block that needs decoding or patching first.
type job struct {
	f      *dstFile
	first  int
	n      int    // blocks in a run
	hashes []Hash // a run's claimed block hashes
	single bool
	kind   byte // of a single block: frameData, framePatch or frameCopy
	frame  blockFrame
	buf    []byte // owns the bytes
	before []bool // a patch's base: pages of the block staged before it, else basis
}

// runBytes is the size of a run: large enough that a direct write costs little per byte
// (measured: 1 MiB writes cost twice the CPU per byte of 4 MiB ones). maxRuns bounds the
// run buffers of one Fetch, whatever the number of cores.
const (
	runBytes = 4 << 20
	maxRuns  = 16
)

// pools holds the receive buffers, recycled through channels so memory stays bounded.
type pools struct {
	runs, singles chan []byte
	bs            int
}

func (c *client) newPools(workers int) *pools {
	bs := c.req.blockSize
	p := &pools{runs: make(chan []byte, min(2*workers+2, maxRuns)), singles: make(chan []byte, 4*workers), bs: bs}
	for range cap(p.runs) {
		p.runs <- alignedBuf(max(runBytes, bs))[:0]
	}
	// A single block frame is read so that its block lands on an aligned address.
	for range cap(p.singles) {
		p.singles <- alignedBuf(directAlign + maxBlockFrame(bs))[directAlign-(dataHeaderLen-frameHeaderLen):][:0]
	}
	return p
}

// maxBlockFrame is the largest DATA, PATCH or COPY payload for a block of bs bytes: flags,
// hash, mask, references and the block.
func maxBlockFrame(bs int) int {
	nsub := (bs + subBlockSize - 1) / subBlockSize
	return 1 + len(Hash{}) + (nsub+7)/8 + nsub*maxRefLen + bs
}

func (p *pools) put(j *job) {
	if j.single {
		p.singles <- j.buf[:0]
	} else {
		p.runs <- j.buf[:0]
	}
}

func get(ctx context.Context, ch chan []byte) ([]byte, error) {
	select {
	case b := <-ch:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// receive reads the source's instructions and hands received blocks to workers that verify
// and write them in parallel.
func (c *client) receive(ctx context.Context) error {
	// Twice as many workers as cores: each also waits for its disk writes, and the cores
	// should not idle meanwhile.
	workers := 2 * workerCount(c.cfg)
	bs := c.req.blockSize
	jobs := make(chan *job, 2*workers)
	bufs := c.newPools(workers)
	eg, ctx := errgroup.WithContext(ctx)
	for range workers {
		eg.Go(func() error {
			scratch := alignedBuf(2 * bs)
			for j := range jobs {
				var err error
				if j.single {
					err = c.applyBlock(j, scratch)
				} else {
					err = c.applyRun(j)
				}
				if err != nil {
					j.f.fail(err)
				}
				bufs.put(j)
				j.f.jobs.Done()
			}
			return nil
		})
	}
	eg.Go(func() error {
		defer close(jobs)
		for idx, f := range c.files {
			if err := c.receiveFile(ctx, idx, f, jobs, bufs); err != nil {
				return fmt.Errorf("file %s: %w", f.name, err)
			}
		}
		return nil
	})
	return eg.Wait()
}

func (c *client) receiveFile(ctx context.Context, idx int, f *dstFile, jobs chan<- *job, bufs *pools) (err error) {
	var run *job // run of whole blocks being filled
	dispatch := func(j *job) error {
		f.jobs.Add(1)
		select {
		case jobs <- j:
			return nil
		case <-ctx.Done():
			f.jobs.Done()
			bufs.put(j)
			return ctx.Err()
		}
	}
	flushRun := func() error {
		if run == nil {
			return nil
		}
		j := run
		run = nil
		return dispatch(j)
	}
	// Whatever happens, wait for this file's workers before returning, so nothing writes to
	// the stage behind the caller's back.
	defer func() {
		if run != nil {
			bufs.put(run)
		}
		f.jobs.Wait()
		if f.err != nil {
			err = f.err // the root cause, rather than what it led to
		}
	}()
	t, p, err := c.fr.read()
	if err != nil {
		return err
	}
	if err := c.peerError(t, p); err != nil {
		return err
	}
	if t != frameFile {
		return fmt.Errorf("%w: frame 0x%02x instead of file %d", ErrProtocol, t, idx)
	}
	if n, err := decodeUvarintFrame(p, "file", MaxFiles); err != nil || n != idx {
		return fmt.Errorf("%w: file frame for %d, want %d", ErrProtocol, n, idx)
	}
	g := f.g
	z := newZeroes(g.bs)
	cursor := 0
	zeroSubs := make([]uint64, g.stride)
	var prefix [dataHeaderLen - frameHeaderLen]byte
	for {
		if f.failed.Load() {
			return nil // the deferred Wait picks up f.err
		}
		t, n, err := c.fr.next()
		if err != nil {
			return err
		}
		if f.identical && t != frameReuse && t != frameEnd && t != frameError {
			// The source confirms an image the destination holds: it may only reuse it.
			return fmt.Errorf("%w: frame 0x%02x for an image the destination holds", ErrProtocol, t)
		}
		if t == frameData || t == framePatch || t == frameCopy {
			if cursor >= g.nblocks {
				return fmt.Errorf("%w: block beyond the end of the file", ErrProtocol)
			}
			i, l := cursor, g.blockLen(cursor)
			if n < len(prefix) || n > maxBlockFrame(l) {
				return fmt.Errorf("%w: frame of %d bytes for block %d of %d bytes", ErrProtocol, n, i, l)
			}
			if t == framePatch && (i >= f.vg.nblocks || f.vg.blockLen(i) != l) {
				return fmt.Errorf("%w: patch of block %d the destination does not hold", ErrProtocol, i)
			}
			if t == frameCopy && !f.copies {
				return fmt.Errorf("%w: copy into block %d from a basis the destination did not offer", ErrProtocol, i)
			}
			if t == frameData && n == len(prefix)+g.bs && l == g.bs {
				// A whole block: the common case. Read its hash and flags, then the block
				// straight into the run buffer behind its predecessor.
				if _, err := c.fr.payload(prefix[:]); err != nil {
					return err
				}
				if prefix[0] != 0 {
					return fmt.Errorf("%w: compressed block %d as large as the block", ErrProtocol, i)
				}
				if run != nil && len(run.buf)+g.bs > cap(run.buf) {
					if err := flushRun(); err != nil {
						return err
					}
				}
				if run == nil {
					buf, err := get(ctx, bufs.runs)
					if err != nil {
						return err
					}
					run = &job{f: f, first: i, buf: buf, hashes: make([]Hash, 0, cap(buf)/g.bs)}
				}
				if _, err := c.fr.payload(run.buf[len(run.buf) : len(run.buf)+g.bs]); err != nil {
					return err
				}
				run.buf = run.buf[:len(run.buf)+g.bs]
				run.hashes = append(run.hashes, Hash(prefix[1:]))
				run.n++
				f.setPages(i, true)
				f.holes[i] = false
				f.res.BlocksSent++
				cursor++
				c.report(f.name, false)
				continue
			}
			if err := flushRun(); err != nil {
				return err
			}
			buf, err := get(ctx, bufs.singles)
			if err != nil {
				return err
			}
			p, err := c.fr.payload(buf[:n:cap(buf)])
			if err != nil {
				bufs.singles <- buf[:0]
				return err
			}
			var fr blockFrame
			switch nsub := (l + subBlockSize - 1) / subBlockSize; t {
			case frameData:
				fr, err = decodeData(p)
				f.res.BlocksSent++
			case framePatch:
				fr, err = decodePatch(p, nsub)
				f.res.BlocksPatched++
			default:
				fr, err = decodeCopy(p, i, g.stride, nsub, int(f.basisSize/subBlockSize))
				f.res.BlocksCopied++
			}
			if err == nil && len(fr.payload) > l {
				err = fmt.Errorf("%w: block %d carries %d bytes, block is %d", ErrProtocol, i, len(fr.payload), l)
			}
			if err != nil {
				bufs.singles <- buf[:0]
				return err
			}
			if fr.flags&flagZstd != 0 {
				f.res.BlocksCompressed++
			}
			j := &job{f: f, first: i, n: 1, single: true, kind: t, frame: fr, buf: p}
			if t == framePatch {
				// The worker will read the rest of the block: start reading it now.
				prefetch(f.basis, g.off(i), int64(l))
				// A patch stages only the pages it changes; the rest stay as they are.
				j.before = f.stagedPages(i)
				for k := range g.stride {
					if k/8 < len(fr.mask) && fr.mask[k/8]&(1<<(k%8)) != 0 {
						f.pages.set(i*g.stride + k)
					}
				}
			} else {
				f.setPages(i, true)
			}
			f.holes[i] = false
			if err := dispatch(j); err != nil {
				return err
			}
			cursor++
			c.report(f.name, false)
			continue
		}
		if err := flushRun(); err != nil {
			return err
		}
		if cap(c.fr.buf) < n {
			c.fr.buf = make([]byte, n)
		}
		p, err := c.fr.payload(c.fr.buf[:n])
		if err != nil {
			return err
		}
		if err := c.peerError(t, p); err != nil {
			return err
		}
		switch t {
		case frameReuse, frameHole:
			n, err := decodeUvarintFrame(p, "run", uint64(g.nblocks))
			if err != nil {
				return err
			}
			if n == 0 || cursor+n > g.nblocks {
				return fmt.Errorf("%w: run of %d blocks at %d of %d", ErrProtocol, n, cursor, g.nblocks)
			}
			for i := cursor; i < cursor+n; i++ {
				l := g.blockLen(i)
				if t == frameReuse {
					if i >= f.vg.nblocks || f.vg.blockLen(i) != l {
						return fmt.Errorf("%w: reuse of block %d the destination does not hold", ErrProtocol, i)
					}
					if f.identical {
						f.res.BlocksReused++ // the image is checked whole, at the end
						continue
					}
					if err := f.dsig.waitFor(ctx, i+1); err != nil {
						return err
					}
					f.final.strong[i] = f.dsig.sig.strong[i]
					copy(f.final.sub(i), f.dsig.sig.sub(i))
					f.res.BlocksReused++
					continue
				}
				if f.staged(i) {
					if err := punchHole(f.stage, g.off(i), int64(f.vg.bs)); err != nil {
						return err
					}
					f.setPages(i, false)
				}
				f.holes[i] = true
				f.final.strong[i] = z.hash(l)
				z.subs(l, zeroSubs)
				copy(f.final.sub(i), zeroSubs)
				f.res.BlocksHole++
			}
			c.done.Add(int64(g.off(cursor+n-1)-g.off(cursor)) + int64(g.blockLen(cursor+n-1)))
			cursor += n
		case frameEnd:
			want, err := decodeEnd(p)
			if err != nil {
				return err
			}
			if cursor != g.nblocks {
				return fmt.Errorf("%w: end after %d of %d blocks", ErrProtocol, cursor, g.nblocks)
			}
			f.jobs.Wait()
			if f.err != nil {
				return f.err
			}
			var got Hash
			if f.identical {
				got = f.basisCache.image // every block reused
			} else {
				got = f.final.image()
			}
			if got != want {
				return fmt.Errorf("%w: image hash %s, source says %s", ErrCorrupt, got, want)
			}
			if !f.acc.hash.IsZero() && got != f.acc.hash {
				return fmt.Errorf("%w: image hash %s, source announced %s", ErrCorrupt, got, f.acc.hash)
			}
			f.res.Hash = got
			c.report(f.name, false)
			return nil
		default:
			return fmt.Errorf("%w: unexpected frame 0x%02x from the source", ErrProtocol, t)
		}
		c.report(f.name, false)
	}
}

func (c *client) peerError(t byte, p []byte) error {
	if t != frameError {
		return nil
	}
	e, err := decodeError(p)
	if err != nil {
		return err
	}
	_ = c.st.Reset() // the source gave up: stop sending at once
	return fmt.Errorf("%w: source: %w", errPeerFailed, e.err())
}

// applyRun verifies a run of whole blocks and writes it to the stage at once.
func (c *client) applyRun(j *job) error {
	f, g := j.f, j.f.g
	for k := range j.n {
		i := j.first + k
		data := j.buf[k*g.bs : (k+1)*g.bs]
		if hashBlock(data) != j.hashes[k] {
			return fmt.Errorf("%w: block %d does not match its hash", ErrCorrupt, i)
		}
		f.final.strong[i] = j.hashes[k]
		hashSubs(data, f.final.sub(i))
	}
	if err := c.writeStage(f, j.buf, g.off(j.first)); err != nil {
		return err
	}
	c.done.Add(int64(len(j.buf)))
	return nil
}

// applyBlock verifies one received block, decoding or patching it first, and writes it to
// the stage.
func (c *client) applyBlock(j *job, scratch []byte) error {
	f, i := j.f, j.first
	g := f.g
	l := g.blockLen(i)
	data, err := c.decode(j.frame, scratch[g.bs:g.bs:2*g.bs])
	if err != nil {
		return fmt.Errorf("block %d: %w", i, err)
	}
	switch j.kind {
	case frameCopy:
		if data, err = f.assemble(scratch[:l], j.frame.refs, data); err != nil {
			return fmt.Errorf("block %d: %w", i, err)
		}
	case framePatch:
		base := scratch[:l]
		if err := readZeroPadded(f.basis, f.basisSize, base, g.off(i)); err != nil {
			return err
		}
		if err := f.overlayStage(base, i, j.before); err != nil {
			return err
		}
		for k := 0; k*subBlockSize < l; k++ {
			if j.frame.mask[k/8]&(1<<(k%8)) == 0 {
				continue
			}
			piece := base[k*subBlockSize : min(l, (k+1)*subBlockSize)]
			if len(data) < len(piece) {
				return fmt.Errorf("%w: patch of block %d is short", ErrCorrupt, i)
			}
			copy(piece, data)
			data = data[len(piece):]
		}
		if len(data) != 0 {
			return fmt.Errorf("%w: patch of block %d is long", ErrCorrupt, i)
		}
		data = base
	}
	if len(data) != l {
		return fmt.Errorf("%w: block %d is %d bytes, want %d", ErrCorrupt, i, len(data), l)
	}
	if hashBlock(data) != j.frame.hash {
		return fmt.Errorf("%w: block %d does not match its hash", ErrCorrupt, i)
	}
	f.final.strong[i] = j.frame.hash
	hashSubs(data, f.final.sub(i))
	if j.kind == framePatch {
		// Only the changed pages go to the stage: the commit copies only them.
		mask := j.frame.mask
		for k := 0; k*subBlockSize < l; {
			if mask[k/8]&(1<<(k%8)) == 0 {
				k++
				continue
			}
			e := k
			for e*subBlockSize < l && mask[e/8]&(1<<(e%8)) != 0 {
				e++
			}
			lo, hi := k*subBlockSize, min(l, e*subBlockSize)
			if err := c.writeStage(f, data[lo:hi], g.off(i)+int64(lo)); err != nil {
				return err
			}
			k = e
		}
	} else if err := c.writeStage(f, data, g.off(i)); err != nil {
		return err
	}
	c.done.Add(int64(l))
	return nil
}

// assemble builds a block of COPY in buf: the pages refs names from the basis (runs of them
// read at once), the others from sent, in order.
func (f *dstFile) assemble(buf []byte, refs []int, sent []byte) ([]byte, error) {
	for j := 0; j < len(refs); {
		lo := j * subBlockSize
		if refs[j] < 0 {
			piece := buf[lo:min(len(buf), lo+subBlockSize)]
			if len(sent) < len(piece) {
				return nil, fmt.Errorf("%w: copy is short", ErrCorrupt)
			}
			sent = sent[copy(piece, sent):]
			j++
			continue
		}
		e := j + 1
		for e < len(refs) && refs[e] == refs[j]+e-j {
			e++
		}
		if err := readZeroPadded(f.basis, f.basisSize, buf[lo:min(len(buf), e*subBlockSize)], int64(refs[j])*subBlockSize); err != nil {
			return nil, err
		}
		j = e
	}
	if len(sent) != 0 {
		return nil, fmt.Errorf("%w: copy is long", ErrCorrupt)
	}
	return buf, nil
}

func (c *client) decode(fr blockFrame, dst []byte) ([]byte, error) {
	if fr.flags&flagZstd == 0 {
		return fr.payload, nil
	}
	c.decOnce.Do(func() {
		c.dec, c.decErr = zstd.NewReader(nil, zstd.WithDecoderConcurrency(workerCount(c.cfg)),
			zstd.WithDecoderMaxMemory(uint64(2*c.req.blockSize)))
	})
	if c.decErr != nil {
		return nil, c.decErr
	}
	out, err := c.dec.DecodeAll(fr.payload, dst)
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %w", ErrCorrupt, err)
	}
	return out, nil
}

// writeStage writes to the stage, starting writeback every so often so the fsync at commit
// has little left to do.
func (c *client) writeStage(f *dstFile, p []byte, off int64) error {
	before := c.written.Add(int64(len(p))) - int64(len(p))
	if c.cfg.writeLimit > 0 && before+int64(len(p)) > c.cfg.writeLimit {
		return &os.PathError{Op: "write", Path: f.stageP, Err: syscall.ENOSPC}
	}
	if f.direct != nil && !f.noDirect.Load() && len(p) >= runBytes/4 && isAligned(p, off) {
		// Runs of blocks bypass the page cache: with the network already keeping the CPUs
		// busy, copying every block into the cache costs more than the disk does, and
		// large direct writes cost little per byte (small ones do not).
		_, err := f.direct.WriteAt(p, off)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EINVAL) {
			return err
		}
		f.noDirect.Store(true) // the filesystem refuses direct I/O after all
	}
	if _, err := f.stage.WriteAt(p, off); err != nil {
		return err
	}
	const window = 32 << 20
	if !c.cfg.noSync && (before+int64(len(p)))/window != before/window {
		startWriteback(f.stage, 0, 0)
	}
	return nil
}

// report calls the progress callback, at most ten times a second unless final.
func (c *client) report(file string, final bool) {
	if c.cfg.progress == nil {
		return
	}
	now := time.Now()
	if !final && now.Sub(c.lastReport) < c.cfg.reportEvery {
		return
	}
	c.lastReport = now
	p := Progress{File: file, Done: c.done.Load(), Total: c.total.Load(), WireBytes: c.wire()}
	if el := now.Sub(c.start).Seconds(); el > 0 {
		p.Rate = float64(p.Done) / el
	}
	if p.Rate > 0 && p.Done < p.Total {
		p.ETA = time.Duration(float64(p.Total-p.Done) / p.Rate * float64(time.Second))
	}
	c.cfg.progress(p)
}

// cleanup decides what an unsuccessful Fetch leaves behind: verified staged blocks are
// kept for a retry after a broken connection or a cancel, removed after anything that makes
// a retry of the same stage pointless or harmful (corrupt or malformed data, a full disk).
func (c *client) cleanup(err error) {
	if exists(filepath.Join(c.dir, bookkeepingDir, recordName)) {
		return // a commit is under way: Recover needs every stage
	}
	keep := !(errors.Is(err, ErrCorrupt) || errors.Is(err, ErrProtocol) || errors.Is(err, syscall.ENOSPC) ||
		errors.Is(err, ErrRefused) || errors.Is(err, ErrBadRequest))
	if errors.Is(err, ErrCorrupt) {
		// The basis signature may be what was wrong: hash the basis afresh next time.
		for _, f := range c.files {
			_ = os.Remove(sigPath(f.target))
		}
	}
	for _, f := range c.files {
		fi, serr := os.Stat(f.stageP)
		if !keep || serr != nil || fi.Size() == 0 {
			_ = os.Remove(f.stageP)
		}
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
