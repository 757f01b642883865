package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
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

// streamMemory is what one transfer stream reserves from the resource manager: roughly its
// in-flight batch buffers.
const streamMemory = 4 << 20

// Server serves files to destinations that Fetch them, as the hook allows.
type Server struct {
	h         host.Host
	authorize AuthorizeFunc
	cfg       config

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// NewServer registers the transfer protocol on h. authorize decides every request; it is
// required, since without it any peer could read any file.
func NewServer(h host.Host, authorize AuthorizeFunc, opts ...Option) (*Server, error) {
	if authorize == nil {
		return nil, errors.New("transfer server: authorisation hook is required")
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{h: h, authorize: authorize, cfg: newConfig(opts), ctx: ctx, cancel: cancel}
	h.SetStreamHandler(ID, s.handle)
	return s, nil
}

// Close removes the handler and stops the transfers in progress.
func (s *Server) Close() error {
	s.h.RemoveStreamHandler(ID)
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Server) handle(st network.Stream) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = st.Reset()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	from := st.Conn().RemotePeer()
	log := s.cfg.log.With("peer", from)
	if err := st.Scope().SetService(ServiceName); err != nil {
		log.Debug("transfer: attach stream to service", "err", err)
		_ = st.Reset()
		return
	}
	if err := st.Scope().ReserveMemory(streamMemory, network.ReservationPriorityAlways); err != nil {
		log.Debug("transfer: reserve stream memory", "err", err)
		_ = st.Reset()
		return
	}
	defer st.Scope().ReleaseMemory(streamMemory)

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() })
	defer stop()

	sess := &session{cfg: &s.cfg, log: log, from: from, authorize: s.authorize}
	err := sess.serve(ctx, newIdleStream(ctx, st, s.cfg.idle))
	if err != nil {
		log.Info("transfer: send failed", "vm", sess.req.VM, "err", err)
		if errors.Is(err, errPeerFailed) || ctx.Err() != nil {
			_ = st.Reset()
		} else {
			_ = st.Close() // delivers the ERROR frame
		}
		return
	}
	log.Debug("transfer: sent", "vm", sess.req.VM, "bytes", sess.fw.n.Load())
	if s.cfg.served != nil {
		s.cfg.served(from, sess.req.Request)
	}
	_ = st.Close()
}

// session is one transfer on the source side.
type session struct {
	cfg       *config
	log       *slog.Logger
	from      peer.ID
	authorize AuthorizeFunc
	req       request
	fr        *frameReader
	fw        *frameWriter
	files     []*srcFile
	enc       *compressor
	pace      *pacer // whether to compress, when enc is set
}

// srcFile is a file being sent.
type srcFile struct {
	path   string
	f      *os.File
	id     identity
	g      geometry
	start  time.Time
	known  *signature // hashes trusted without reading (cache or change tracker)
	cached *cachedSig // the stored cache, valid as it is; known is its body once loaded
	stale  *signature // an earlier version's hashes, to skip strong hashing of unchanged blocks
	image  Hash       // known image hash, else zero
	dest   *destSig
}

func (ss *session) serve(ctx context.Context, rw *idleStream) (err error) {
	ss.fr = newFrameReader(rw)
	ss.fw = newFrameWriter(rw)
	defer func() {
		for _, f := range ss.files {
			_ = f.f.Close()
		}
	}()
	// Any failure past this point is reported to the peer before the stream closes. Local
	// failures are named but not detailed: paths and system errors stay in this node's log.
	defer func() {
		if err != nil && !errors.Is(err, errPeerFailed) {
			e := remoteError{code: errCode(err), msg: err.Error()}
			if e.code == codeInternal {
				e.msg = "the source could not read the requested files; its log has the details"
			}
			_ = ss.fw.write(frameError, e.marshal())
			_ = ss.fw.flush()
		}
	}()
	// The preamble goes first, so that even an ERROR about the peer's preamble is framed.
	if err := writePreamble(ss.fw.w); err != nil {
		return err
	}
	if err := readPreamble(ss.fr.r); err != nil {
		return fmt.Errorf("read preamble: %w", err)
	}
	t, p, err := ss.fr.read()
	if err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	if t != frameRequest {
		return fmt.Errorf("%w: frame 0x%02x before the request", ErrProtocol, t)
	}
	if ss.req, err = decodeRequest(p); err != nil {
		return err
	}
	paths, err := ss.authorize(ctx, ss.from, ss.req.Request)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if len(paths) != len(ss.req.Files) {
		return fmt.Errorf("authorisation hook mapped %d files to %d paths", len(ss.req.Files), len(paths))
	}
	var acc accept
	for i, path := range paths {
		sf, err := ss.open(ctx, path)
		if err != nil {
			return fmt.Errorf("file %s: %w", ss.req.Files[i], err)
		}
		ss.files = append(ss.files, sf)
		fi, _ := sf.f.Stat()
		acc.files = append(acc.files, acceptFile{
			size: sf.g.size, mode: uint32(fi.Mode().Perm()), mtime: sf.id.mtime, hash: sf.image,
		})
	}
	if ss.req.compress {
		if ss.enc, err = newCompressor(workerCount(ss.cfg)); err != nil {
			return err
		}
		defer ss.enc.close()
		ss.pace = newPacer(ss.cfg.compression, &rw.blocked)
		if ss.cfg.cpuIdle != nil {
			ss.pace.idle = ss.cfg.cpuIdle
		}
		ss.pace.fixedCost = ss.cfg.zstdCost
		ss.enc.pace = ss.pace
		ss.enc.calibrate()
		ss.pace.start()
	}
	if err := ss.fw.write(frameAccept, acc.marshal()); err != nil {
		return err
	}
	if err := ss.fw.flush(); err != nil {
		return err
	}

	for _, sf := range ss.files {
		sf.dest = newDestSig()
	}
	eg, ctx := errgroup.WithContext(ctx)
	stop := context.AfterFunc(ctx, rw.abort)
	defer stop()
	done := make(chan struct{})
	eg.Go(func() error {
		err := ss.receive(ctx, done)
		if errors.Is(err, errPeerFailed) {
			_ = rw.st.Reset() // the destination gave up: stop sending at once
		}
		return err
	})
	eg.Go(func() error {
		for i, sf := range ss.files {
			if err := ss.send(ctx, i, sf); err != nil {
				return fmt.Errorf("file %s: %w", ss.req.Files[i], err)
			}
		}
		if err := ss.fw.flush(); err != nil {
			return err
		}
		// Wait for the destination's verdict, so the log says whether it committed.
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	return eg.Wait()
}

// open opens a source file and works out what is already known of its content.
func (ss *session) open(ctx context.Context, path string) (*srcFile, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	if fi.Size() > MaxFileSize {
		_ = f.Close()
		return nil, fmt.Errorf("%s is larger than %d bytes", path, int64(MaxFileSize))
	}
	sf := &srcFile{path: path, f: f, id: fileIdentity(fi), start: time.Now()}
	sf.g = newGeometry(fi.Size(), ss.req.blockSize)
	c := loadCacheHeader(path, ss.req.blockSize)
	if c == nil {
		return sf, nil
	}
	z := newZeroes(sf.g.bs)
	switch {
	case c.trusted(sf.id) && c.spotCheck(f):
		// Its body is read only if the destination holds another image (send).
		sf.cached, sf.image = c, c.image
	case !c.load():
		// The body is damaged or was replaced: no cache at all.
	case ss.cfg.tracker != nil && c.sig.g.size == sf.g.size:
		ranges, ok, err := ss.cfg.tracker.Changed(ctx, path, c.image)
		if err != nil || !ok {
			sf.stale = c.sig
			break
		}
		sig, err := rehash(f, c.sig, ranges, z)
		if err != nil {
			_ = f.Close()
			return nil, err
		}
		if spotCheck(f, sig) {
			sf.known, sf.image = sig, sig.image()
		} else {
			sf.stale = c.sig
		}
	default:
		sf.stale = c.sig
	}
	return sf, nil
}

// rehash returns a copy of sig with the blocks overlapping ranges hashed afresh.
func rehash(f *os.File, sig *signature, ranges []Extent, z *zeroes) (*signature, error) {
	g := sig.g
	out := &signature{g: g, strong: append([]Hash(nil), sig.strong...), subs: append([]uint64(nil), sig.subs...)}
	dirty := newBitset(g.nblocks)
	for _, r := range ranges {
		dirty.setRange(g, max(0, r.Off), min(r.Len, g.size-max(0, r.Off)))
	}
	buf := make([]byte, g.bs)
	for i := range g.nblocks {
		if !dirty.get(i) {
			continue
		}
		b := buf[:g.blockLen(i)]
		if _, err := f.ReadAt(b, g.off(i)); err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Name(), err)
		}
		hashInto(out, i, b, z, nil)
	}
	return out, nil
}

// destSig is the destination's signature of one file as it arrives. Workers wait for the
// blocks they compare against; hashing their own blocks does not wait.
type destSig struct {
	opened    chan struct{} // closed once the BASIS frame arrived
	sig       *signature
	identical bool
	copies    bool // COPY frames may name any page of the basis

	indexOnce sync.Once
	idx       *contentIndex

	mu     sync.Mutex
	ready  atomic.Int64 // blocks received
	notify chan struct{}
}

func newDestSig() *destSig {
	return &destSig{opened: make(chan struct{}), notify: make(chan struct{})}
}

func (d *destSig) advance(n int) {
	d.mu.Lock()
	d.ready.Store(int64(n))
	close(d.notify)
	d.notify = make(chan struct{})
	d.mu.Unlock()
}

func (d *destSig) waitFor(ctx context.Context, n int) error {
	for {
		if d.ready.Load() >= int64(n) {
			return nil
		}
		d.mu.Lock()
		ch := d.notify
		ready := d.ready.Load()
		d.mu.Unlock()
		if ready >= int64(n) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// index returns the content index of the destination's basis once its whole signature has
// arrived, or nil if the destination allows no COPY frames (or ctx ended first).
func (d *destSig) index(ctx context.Context, z *zeroes) *contentIndex {
	if !d.copies || d.waitFor(ctx, d.sig.g.nblocks) != nil {
		return nil
	}
	d.indexOnce.Do(func() { d.idx = newContentIndex(d.sig, z.fullSub, maxIndexed) })
	return d.idx
}

var errPeerFailed = errors.New("peer reported failure")

// receive reads the destination's frames: the signature of each file in order, then the
// verdict.
func (ss *session) receive(ctx context.Context, done chan<- struct{}) error {
	stride := ss.req.blockSize / subBlockSize
	cur, next := -1, 0 // file whose SIG frames are arriving; blocks received of it
	for {
		t, p, err := ss.fr.read()
		if err != nil {
			return fmt.Errorf("read from destination: %w", err)
		}
		switch t {
		case frameBasis:
			b, err := decodeBasis(p)
			if err != nil {
				return err
			}
			if b.file != cur+1 || b.file >= len(ss.files) || (cur >= 0 && next != ss.files[cur].dest.sig.g.nblocks) {
				return fmt.Errorf("%w: basis of file %d out of order", ErrProtocol, b.file)
			}
			if ss.req.method == MethodFull && b.size != 0 {
				return fmt.Errorf("%w: basis sent for a full transfer", ErrProtocol)
			}
			cur, next = b.file, 0
			d := ss.files[cur].dest
			d.identical, d.copies = b.identical, b.copies
			if b.identical {
				d.sig = newSignature(newGeometry(0, ss.req.blockSize))
			} else {
				d.sig = newSignature(newGeometry(b.size, ss.req.blockSize))
			}
			close(d.opened)
		case frameSig:
			h, entries, err := decodeSig(p, stride)
			if err != nil {
				return err
			}
			if cur < 0 || h.file != cur || h.first != next || next+h.count > ss.files[cur].dest.sig.g.nblocks {
				return fmt.Errorf("%w: signature chunk out of order", ErrProtocol)
			}
			d := ss.files[cur].dest
			sig := d.sig
			w := 32 + 8*stride
			for k := range h.count {
				e := entries[k*w : (k+1)*w]
				i := h.first + k
				copy(sig.strong[i][:], e[:32])
				subs := sig.sub(i)
				for j := range subs {
					subs[j] = leUint64(e[32+8*j:])
				}
			}
			next += h.count
			d.advance(next)
		case frameDone, frameError:
			e, err := decodeError(p)
			if err != nil {
				return err
			}
			if t == frameDone {
				close(done)
			} else if e.code == codeOK {
				return fmt.Errorf("%w: ERROR frame without an error", ErrProtocol)
			}
			if e.code == codeCorrupt {
				ss.dropCaches()
			}
			if err := e.err(); err != nil {
				return fmt.Errorf("%w: destination: %w", errPeerFailed, err)
			}
			return nil
		default:
			return fmt.Errorf("%w: unexpected frame 0x%02x from the destination", ErrProtocol, t)
		}
	}
}

// dropCaches forgets the cached signatures of the files sent: the destination found data
// that did not match its hash, and a cache trusted by mistake (a file rewritten without a
// trace in its identity) must not make every retry fail the same way.
func (ss *session) dropCaches() {
	for _, sf := range ss.files {
		if err := os.Remove(sigPath(sf.path)); err == nil {
			ss.log.Info("transfer: dropped a cached signature after a failed verification", "vm", ss.req.VM)
		}
	}
}

// op is one instruction for a block, or a run of blocks, of the file being sent.
type op struct {
	kind    byte // frameReuse, frameHole, frameData, framePatch, frameCopy
	count   int  // blocks, for reuse and hole
	flags   byte
	hash    Hash
	mask    []byte
	refs    []byte // a COPY's encoded references
	payload []byte
	frame   []byte // the whole DATA frame, built in the batch buffer around the block
}

// inPlace turns an uncompressed DATA op for block k, whose bytes sit in their slot, into a
// complete frame in that slot.
func (b *batch) inPlace(g geometry, k int, o op) op {
	if o.kind != frameData || o.flags != 0 || b.blocks[k] == nil || len(o.payload) == 0 {
		return o
	}
	s := b.slot(g, k)
	if &s[dataHeaderLen] != &o.payload[0] {
		return o
	}
	s[0] = frameData
	binary.BigEndian.PutUint32(s[1:frameHeaderLen], uint32(1+len(o.hash)+len(o.payload)))
	s[frameHeaderLen] = o.flags
	copy(s[frameHeaderLen+1:], o.hash[:])
	o.frame = s
	return o
}

// progressRun and progressEvery bound how much work the source does without telling.
const (
	progressRun   = 4096
	progressEvery = 100 * time.Millisecond
)

// patchLimit: a changed block goes as its changed sub-blocks when they are at most this
// fraction of it; beyond, the merge on the destination costs more than it saves.
const patchLimitNum, patchLimitDen = 3, 4

// send streams one file: it hashes blocks on a pool of workers (pipelined with the network
// by runOrdered) and writes the instructions in order.
func (ss *session) send(ctx context.Context, idx int, sf *srcFile) error {
	d := sf.dest
	select {
	case <-d.opened:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := ss.fw.write(frameFile, marshalUvarint(idx)); err != nil {
		return err
	}
	g := sf.g
	if d.identical {
		// The destination holds the image the source announced; only confirm it.
		if sf.image.IsZero() {
			return fmt.Errorf("%w: identical basis claimed for an unannounced image", ErrProtocol)
		}
		if err := ss.checkUnchanged(sf); err != nil {
			return err
		}
		if g.nblocks > 0 {
			if err := ss.fw.write(frameReuse, marshalUvarint(g.nblocks)); err != nil {
				return err
			}
		}
		return ss.fw.write(frameEnd, sf.image[:])
	}

	if sf.cached != nil && sf.known == nil {
		if !sf.cached.load() {
			// Damaged or replaced since its header was read: hash the file, which must come
			// to the image announced.
			sf.cached = nil
		} else {
			sf.known = sf.cached.sig
		}
	}
	full := ss.req.method == MethodFull
	z := newZeroes(g.bs)
	src, err := newFileSource(sf.f, g)
	if err != nil {
		return err
	}
	sig := sf.known
	if sig == nil {
		sig = newSignature(g)
	}
	dsig := d.sig
	dHas := func(i int) bool {
		return i < dsig.g.nblocks && dsig.g.blockLen(i) == g.blockLen(i)
	}
	need := func(i int) bool {
		if !src.hasData(i) {
			return false
		}
		if full || sf.known == nil {
			return true
		}
		h := sf.known.strong[i]
		if h == z.hash(g.blockLen(i)) {
			return false
		}
		if dHas(i) {
			if err := d.waitFor(ctx, i+1); err != nil {
				return true
			}
			return dsig.strong[i] != h
		}
		return true
	}
	work := func(ctx context.Context, b *batch) error {
		b.zstd = ss.pace != nil && ss.pace.compress()
		if err := readNeeded(src, g, b, need); err != nil {
			return err
		}
		if sf.known == nil {
			for k := range b.n {
				hashInto(sig, b.first+k, b.blocks[k], z, sf.stale)
			}
		}
		if err := d.waitFor(ctx, min(b.first+b.n, dsig.g.nblocks)); err != nil {
			return err
		}
		for k := range b.n {
			i := b.first + k
			n := g.blockLen(i)
			h := sig.strong[i]
			data := b.blocks[k]
			switch {
			case full:
				if data == nil {
					data = z.buf[:n]
				}
				b.ops = append(b.ops, b.inPlace(g, k, op{kind: frameData, hash: h, payload: data}))
			case dHas(i) && dsig.strong[i] == h:
				b.ops = append(b.ops, op{kind: frameReuse, count: 1})
			case h == z.hash(n):
				b.ops = append(b.ops, op{kind: frameHole, count: 1})
			case data == nil:
				return fmt.Errorf("block %d was not read", i) // cannot happen: need() read it
			default:
				b.ops = append(b.ops, b.inPlace(g, k, ss.changed(ctx, b, i, data, h, sig.sub(i), d, dHas(i), z)))
			}
		}
		return ctx.Err()
	}
	var run op // pending reuse or hole run, merged across batches
	lastFlush := time.Now()
	flushRun := func() error {
		if run.count == 0 {
			return nil
		}
		err := ss.fw.write(run.kind, marshalUvarint(run.count))
		run.count = 0
		return err
	}
	emit := func(b *batch) error {
		var span []byte // adjacent in-place DATA frames, written in one go
		flushSpan := func() error {
			if len(span) == 0 {
				return nil
			}
			err := ss.fw.writeFrames(span)
			span = nil
			return err
		}
		for _, o := range b.ops {
			if o.frame != nil {
				if err := flushRun(); err != nil {
					return err
				}
				if len(span) > 0 && len(span) < cap(span) && &span[:cap(span)][len(span)] == &o.frame[0] {
					span = span[:len(span)+len(o.frame)]
				} else {
					if err := flushSpan(); err != nil {
						return err
					}
					span = o.frame
				}
				continue
			}
			if err := flushSpan(); err != nil {
				return err
			}
			switch o.kind {
			case frameReuse, frameHole:
				if run.count > 0 && run.kind != o.kind {
					if err := flushRun(); err != nil {
						return err
					}
				}
				run.kind = o.kind
				run.count += o.count
				continue
			}
			if err := flushRun(); err != nil {
				return err
			}
			hdr := [33]byte{o.flags}
			copy(hdr[1:], o.hash[:])
			var err error
			switch o.kind {
			case framePatch:
				err = ss.fw.write(framePatch, hdr[:], o.mask, o.payload)
			case frameCopy:
				err = ss.fw.write(frameCopy, hdr[:], o.mask, o.refs, o.payload)
			default:
				err = ss.fw.write(frameData, hdr[:], o.payload)
			}
			if err != nil {
				return err
			}
		}
		if err := flushSpan(); err != nil {
			return err
		}
		if ss.pace != nil {
			ss.pace.tick()
		}
		// Long stretches of reused or zero blocks still show progress to the destination
		// (its progress bar, and its watchdog).
		if run.count >= progressRun {
			if err := flushRun(); err != nil {
				return err
			}
		}
		if time.Since(lastFlush) > progressEvery {
			lastFlush = time.Now()
			return ss.fw.flush()
		}
		return nil
	}
	if err := runOrdered(ctx, g, workerCount(ss.cfg), work, emit); err != nil {
		return err
	}
	if err := flushRun(); err != nil {
		return err
	}
	if ss.cfg.sent != nil {
		ss.cfg.sent(sf.path)
	}
	if err := ss.checkUnchanged(sf); err != nil {
		return err
	}
	ss.log.Debug("transfer: file sent", "vm", ss.req.VM, "file", ss.req.Files[idx], "took", time.Since(sf.start),
		"cached", sf.known != nil)
	image := sig.image()
	if err := ss.fw.write(frameEnd, image[:]); err != nil {
		return err
	}
	// The destination has all it needs: it verifies and commits while this side stores the
	// signature and checkpoints the tracker (a fsync and hypervisor tools: tens of ms).
	if err := ss.fw.flush(); err != nil {
		return err
	}
	if sf.cached == nil {
		c := &cachedSig{sig: sig, id: sf.id, verifiedAt: sf.start.UnixNano(), image: image}
		if err := storeCachedSig(sf.path, c); err != nil {
			ss.log.Debug("transfer: cache signature", "err", err)
		} else if ss.cfg.tracker != nil {
			if err := ss.cfg.tracker.Checkpoint(ctx, sf.path, image); err != nil {
				ss.log.Warn("transfer: checkpoint of the change tracker", "file", sf.path, "err", err)
			}
		}
	}
	return nil
}

// checkUnchanged fails if the file changed since it was opened: what was sent may mix two
// versions.
func (ss *session) checkUnchanged(sf *srcFile) error {
	fi, err := os.Stat(sf.path)
	if err != nil || fileIdentity(fi) != sf.id {
		return ErrSourceChanged
	}
	return nil
}

// whole is the DATA instruction for a block, compressed if that pays.
func (ss *session) whole(b *batch, data []byte, h Hash) op {
	ss.counted(len(data))
	o := op{kind: frameData, hash: h, payload: data}
	if c, ok := ss.enc.compress(b, data); ok {
		o.flags, o.payload = flagZstd, c
	}
	return o
}

// counted tells the pacer of n bytes of block data to send.
func (ss *session) counted(n int) {
	if ss.pace != nil {
		ss.pace.sent.Add(int64(n))
	}
}

// changed is the instruction for block i, which the destination does not hold as it is:
// when the pages the destination has cover most of it — at this offset (inPlace: it holds a
// block i of this length), or, through the content index, anywhere in its basis — a PATCH
// (pages in place only) or COPY frame carrying only the rest; else the whole block.
func (ss *session) changed(ctx context.Context, b *batch, i int, data []byte, h Hash, subs []uint64, d *destSig, inPlace bool, z *zeroes) op {
	stride := len(subs)
	nsub := (len(data) + subBlockSize - 1) / subBlockSize
	if cap(b.ref) < nsub {
		b.ref = make([]int, stride)
	}
	ref := b.ref[:nsub]
	placed := 0
	if x := d.index(ctx, z); x != nil {
		placed = x.place(i, stride, subs, len(data), ref)
	} else if inPlace {
		dsubs := d.sig.sub(i)
		for j := range ref {
			ref[j] = -1
			if subs[j] == dsubs[j] {
				ref[j] = i*stride + j
				placed++
			}
		}
	}
	if placed == 0 {
		return ss.whole(b, data, h)
	}
	send, moved := 0, false
	for j, k := range ref {
		if k < 0 {
			send += min(len(data), (j+1)*subBlockSize) - j*subBlockSize
		} else if k != i*stride+j {
			moved = true
		}
	}
	// Every page in place but the block differs: the weak hashes collided, send it whole.
	if send == 0 && !moved || send*patchLimitDen > len(data)*patchLimitNum {
		return ss.whole(b, data, h)
	}
	kind := framePatch
	if moved || !inPlace {
		kind = frameCopy
	}
	start := len(b.comp)
	b.comp = append(b.comp, make([]byte, (nsub+7)/8)...)
	for j, k := range ref {
		if k < 0 {
			b.comp[start+j/8] |= 1 << (j % 8)
		}
	}
	mask := b.comp[start : start+(nsub+7)/8 : start+(nsub+7)/8]
	var refs []byte
	if kind == frameCopy {
		at := len(b.comp)
		b.comp = appendRefs(b.comp, i, stride, ref)
		refs = b.comp[at:len(b.comp):len(b.comp)]
	}
	at := len(b.comp)
	for j, k := range ref {
		if k < 0 {
			b.comp = append(b.comp, data[j*subBlockSize:min(len(data), (j+1)*subBlockSize)]...)
		}
	}
	payload := b.comp[at:len(b.comp):len(b.comp)]
	ss.counted(len(payload))
	o := op{kind: kind, hash: h, mask: mask, refs: refs, payload: payload}
	if c, ok := ss.enc.compress(b, o.payload); ok {
		o.flags, o.payload = flagZstd, c
	}
	return o
}

// compressor applies zstd where it pays. Incompressible data (most of a random or encrypted
// disk) backs it off exponentially, so it costs little CPU when it does not help.
type compressor struct {
	enc     *zstd.Encoder
	skip    atomic.Int64
	backoff atomic.Int64
	pace    *pacer // told what compressing costs
}

func newCompressor(workers int) (*compressor, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(workers), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	return &compressor{enc: enc}, nil
}

func (c *compressor) close() { _ = c.enc.Close() }

// calibrate measures zstd's cost per byte on this machine, on a block of text-like data, for
// the pacer to know before the first block is compressed.
func (c *compressor) calibrate() {
	block := make([]byte, 256<<10)
	for i := range block {
		block[i] = "virtuoso block lease offer\n"[i%27] ^ byte(i>>12)
	}
	out := c.enc.EncodeAll(block, nil) // the first use makes the encoder's tables: not timed
	c.pace.compressed(len(block), timeCPU(func() { out = c.enc.EncodeAll(block, out[:0]) }))
}

// compress returns data compressed into b's scratch, or false if it did not pay or b is sent
// without compression.
func (c *compressor) compress(b *batch, data []byte) ([]byte, bool) {
	if c == nil || !b.zstd || len(data) < 512 {
		return nil, false
	}
	if c.skip.Load() > 0 {
		c.skip.Add(-1)
		return nil, false
	}
	start := len(b.comp)
	var out []byte
	d := timeCPU(func() { out = c.enc.EncodeAll(data, b.comp[start:start]) })
	if c.pace != nil {
		c.pace.compressed(len(data), d)
	}
	if len(out) <= len(data)-len(data)/8 {
		c.backoff.Store(0)
		if len(out) <= cap(b.comp)-start && &out[0] == &b.comp[start:cap(b.comp)][0] {
			b.comp = b.comp[:start+len(out)]
		}
		return out[:len(out):len(out)], true
	}
	n := min(max(1, 2*c.backoff.Load()), 256)
	c.backoff.Store(n)
	c.skip.Store(n)
	return nil, false
}

func leUint64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// openRegular opens path for reading only if it names a regular file itself: a symbolic link
// is not followed (O_NOFOLLOW), so a name in a VM's directory that links elsewhere serves
// nothing, and a device, pipe or directory is refused after the open, before any byte is read.
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symbolic link, not a regular file", path)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		_ = f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return f, nil
}
