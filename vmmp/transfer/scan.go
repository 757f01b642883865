package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"golang.org/x/sync/errgroup"
)

// batchBytes is the unit of work of the hashing pool: large enough to amortise reads and
// channel hand-offs, small enough to keep every core busy and memory bounded.
const batchBytes = 1 << 20

// batch is a run of consecutive blocks that one worker reads and hashes. Its buffer holds
// each block behind room for a DATA frame's header, so that a batch of blocks sent whole is
// already a run of frames, written to the stream without another copy.
type batch struct {
	seq    int
	first  int // first block
	n      int // blocks
	buf    []byte
	blocks [][]byte // block k's bytes, nil if not read
	done   chan struct{}
	err    error

	// used by the sender
	ops  []op
	comp []byte
	ref  []int // scratch: where the destination finds each page of a block
	zstd bool  // compress its blocks, as the pacer said
}

func batchBlocks(bs int) int { return max(1, batchBytes/bs) }

// dataHeaderLen is the frame header, flags and hash in front of a DATA frame's block.
const dataHeaderLen = frameHeaderLen + 1 + len(Hash{})

func slotLen(bs int) int { return dataHeaderLen + bs }

// slot returns the frame area of block k of the batch: header room, then the block.
func (b *batch) slot(g geometry, k int) []byte {
	lo := k * slotLen(g.bs)
	return b.buf[lo : lo+dataHeaderLen+g.blockLen(b.first+k)]
}

func workerCount(c *config) int {
	if c.workers > 0 {
		return c.workers
	}
	return runtime.GOMAXPROCS(0)
}

// runOrdered processes nbatches batches of blocks with work on a pool of workers, and hands
// them to emit one at a time in file order. At most depth batches (and their buffers) are
// in flight, so a slow consumer (the network) holds back the readers instead of letting
// memory grow, and fast hashing overlaps the consumer instead of preceding it.
func runOrdered(ctx context.Context, g geometry, workers int,
	work func(ctx context.Context, b *batch) error, emit func(b *batch) error) error {
	per := batchBlocks(g.bs)
	nbatches := (g.nblocks + per - 1) / per
	if nbatches == 0 {
		return nil
	}
	workers = max(1, min(workers, nbatches))
	depth := min(nbatches, 2*workers+2)
	eg, ctx := errgroup.WithContext(ctx)
	free := make(chan *batch, depth)
	for range depth {
		free <- &batch{buf: make([]byte, per*slotLen(g.bs)), blocks: make([][]byte, per)}
	}
	todo := make(chan *batch)
	ordered := make(chan *batch, depth)
	eg.Go(func() error {
		defer close(todo)
		defer close(ordered)
		for seq := range nbatches {
			var b *batch
			select {
			case b = <-free:
			case <-ctx.Done():
				return ctx.Err()
			}
			b.seq, b.first = seq, seq*per
			b.n = min(per, g.nblocks-b.first)
			b.done, b.err = make(chan struct{}), nil
			b.ops, b.comp = b.ops[:0], b.comp[:0]
			clear(b.blocks)
			ordered <- b // never blocks: at most depth batches exist
			select {
			case todo <- b:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	for range workers {
		eg.Go(func() error {
			for b := range todo {
				err := work(ctx, b)
				b.err = err
				close(b.done) // b belongs to the emitter from here on
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	eg.Go(func() error {
		for b := range ordered {
			select {
			case <-b.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if b.err != nil {
				return b.err
			}
			if err := emit(b); err != nil {
				return err
			}
			free <- b
		}
		return nil
	})
	return eg.Wait()
}

// blockSource is content addressed by block: a file, or a staging file laid over a basis.
type blockSource interface {
	// hasData is false for a block known to be all zeros without reading it (a hole).
	hasData(i int) bool
	// read fills bufs[j] with block first+j; each is exactly the block's length.
	read(bufs [][]byte, first int) error
}

// fileSource reads blocks of a file, skipping holes.
type fileSource struct {
	f    *os.File
	g    geometry
	data bitset // blocks that overlap a data extent
}

func newFileSource(f *os.File, g geometry) (*fileSource, error) {
	data, err := dataBlocks(f, g)
	if err != nil {
		return nil, err
	}
	return &fileSource{f: f, g: g, data: data}, nil
}

func (s *fileSource) hasData(i int) bool { return s.data.get(i) }

func (s *fileSource) read(bufs [][]byte, first int) error {
	if err := preadv(s.f, bufs, s.g.off(first)); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: it shrank below %d bytes", ErrSourceChanged, s.g.size)
		}
		return fmt.Errorf("read %s: %w", s.f.Name(), err)
	}
	return nil
}

// readNeeded reads the blocks of b for which need is true into their slots (b.blocks[k];
// nil for a block not read), one read per run of consecutive blocks.
func readNeeded(src blockSource, g geometry, b *batch, need func(i int) bool) error {
	for k := 0; k < b.n; {
		if !need(b.first + k) {
			b.blocks[k] = nil
			k++
			continue
		}
		start := k
		for ; k < b.n && need(b.first+k); k++ {
			b.blocks[k] = b.slot(g, k)[dataHeaderLen:]
		}
		if err := src.read(b.blocks[start:k], b.first+start); err != nil {
			return err
		}
	}
	return nil
}

// hashInto computes block i's hashes from its bytes into sig. A block whose sub-block
// hashes match old (a stale cache of an earlier version) keeps old's strong hash; the
// cheaper XXH3 pass stands in for BLAKE3 there.
func hashInto(sig *signature, i int, data []byte, z *zeroes, old *signature) {
	subs := sig.sub(i)
	if data == nil || z.isZero(data) {
		n := sig.g.blockLen(i)
		sig.strong[i] = z.hash(n)
		z.subs(n, subs)
		return
	}
	hashSubs(data, subs)
	if old != nil && i < old.g.nblocks && old.g.blockLen(i) == len(data) && equalSubs(old.sub(i), subs) {
		sig.strong[i] = old.strong[i]
		return
	}
	sig.strong[i] = hashBlock(data)
}

func equalSubs(a, b []uint64) bool {
	for j := range a {
		if a[j] != b[j] {
			return false
		}
	}
	return true
}

// scanSignatureInto hashes src in parallel into sig; old, if not nil, is a stale signature
// of an earlier version that saves strong hashing of unchanged blocks. emit, if not nil,
// sees each batch's block range, in order, once its hashes are in sig.
func scanSignatureInto(ctx context.Context, sig *signature, src blockSource, old *signature, workers int,
	emit func(first, n int) error) (*signature, error) {
	g := sig.g
	z := newZeroes(g.bs)
	work := func(ctx context.Context, b *batch) error {
		if err := readNeeded(src, g, b, src.hasData); err != nil {
			return err
		}
		for k := range b.n {
			hashInto(sig, b.first+k, b.blocks[k], z, old)
		}
		return ctx.Err()
	}
	err := runOrdered(ctx, g, workers, work, func(b *batch) error {
		if emit != nil {
			return emit(b.first, b.n)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// scanLocal computes the signature of a local file, using and refreshing its cache.
func scanLocal(ctx context.Context, path string, bs int, workers int) (*cachedSig, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	id := fileIdentity(fi)
	g := newGeometry(fi.Size(), bs)
	c := loadCachedSig(path, bs)
	if c != nil && c.trusted(id) && spotCheck(f, c.sig) {
		return c, nil
	}
	var old *signature
	if c != nil {
		old = c.sig
	}
	start := time.Now()
	src, err := newFileSource(f, g)
	if err != nil {
		return nil, err
	}
	sig, err := scanSignatureInto(ctx, newSignature(g), src, old, workers, nil)
	if err != nil {
		return nil, fmt.Errorf("hash %s: %w", path, err)
	}
	c = &cachedSig{sig: sig, id: id, verifiedAt: start.UnixNano(), image: sig.image()}
	if fi2, err := f.Stat(); err == nil && fileIdentity(fi2) == id {
		_ = storeCachedSig(path, c)
	}
	return c, nil
}

// bitset is a fixed-size set of block indexes.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) get(i int) bool { return b[i/64]&(1<<(i%64)) != 0 }
func (b bitset) set(i int)      { b[i/64] |= 1 << (i % 64) }
func (b bitset) clear(i int)    { b[i/64] &^= 1 << (i % 64) }

// setRange marks every block overlapping bytes [off, off+n).
func (b bitset) setRange(g geometry, off, n int64) {
	if n <= 0 {
		return
	}
	lo := int(off / int64(g.bs))
	hi := int((off + n - 1) / int64(g.bs))
	for i := lo; i <= hi && i < g.nblocks; i++ {
		b.set(i)
	}
}
