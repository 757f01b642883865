package transfer

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"runtime"

	"github.com/zeebo/blake3"
	"github.com/zeebo/xxh3"
)

// Hash is a BLAKE3-256 digest: of one block, or of a whole image (see ImageHash).
type Hash [32]byte

// String returns the hash in hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// IsZero reports whether h is the all-zero value, which stands for "not known".
func (h Hash) IsZero() bool { return h == Hash{} }

// subBlockSize is the granularity of the weak sub-block hashes: a guest page. A block that
// differs is sent as only its changed sub-blocks when that is cheaper, so scattered 4 KiB
// writes do not cost a whole 64 KiB block each.
const subBlockSize = 4 << 10

// imageHashContext separates image hashes from any other BLAKE3 use.
const imageHashContext = "vmmp/transfer/1 image\x00"

// geometry describes how a file of a given size is cut into blocks.
type geometry struct {
	size    int64
	bs      int // block size, a power of two in [MinBlockSize, MaxBlockSize]
	nblocks int
	stride  int // sub-block hashes per block: bs / subBlockSize
}

func newGeometry(size int64, bs int) geometry {
	n := int((size + int64(bs) - 1) / int64(bs))
	return geometry{size: size, bs: bs, nblocks: n, stride: bs / subBlockSize}
}

func (g geometry) off(i int) int64 { return int64(i) * int64(g.bs) }

func (g geometry) blockLen(i int) int {
	if i < 0 || i >= g.nblocks {
		return 0
	}
	return int(min(int64(g.bs), g.size-g.off(i)))
}

// validBlockSize reports whether bs is a supported block size.
func validBlockSize(bs int) bool {
	return bs >= MinBlockSize && bs <= MaxBlockSize && bs&(bs-1) == 0
}

// hashBlock returns the strong hash of a block.
func hashBlock(b []byte) Hash { return blake3.Sum256(b) }

// hashSubs writes the weak hash of each sub-block of b into subs (len(subs) == stride) and
// zeroes the slots past the end of a short tail block.
func hashSubs(b []byte, subs []uint64) {
	for j := range subs {
		lo := j * subBlockSize
		if lo >= len(b) {
			subs[j] = 0
			continue
		}
		subs[j] = xxh3.Hash(b[lo:min(len(b), lo+subBlockSize)])
	}
}

// zeroes holds the hashes of all-zero blocks, which the scanner assigns without reading.
type zeroes struct {
	buf     []byte
	full    Hash   // hash of a full zero block
	fullSub uint64 // hash of a full zero sub-block
}

func newZeroes(bs int) *zeroes {
	z := &zeroes{buf: make([]byte, bs)}
	z.full = hashBlock(z.buf)
	z.fullSub = xxh3.Hash(z.buf[:subBlockSize])
	return z
}

// hash returns the strong hash of n zero bytes.
func (z *zeroes) hash(n int) Hash {
	if n == len(z.buf) {
		return z.full
	}
	return hashBlock(z.buf[:n])
}

// subs fills subs with the weak hashes of an n-byte zero block.
func (z *zeroes) subs(n int, subs []uint64) {
	for j := range subs {
		lo := j * subBlockSize
		switch {
		case lo >= n:
			subs[j] = 0
		case n-lo >= subBlockSize:
			subs[j] = z.fullSub
		default:
			subs[j] = xxh3.Hash(z.buf[:n-lo])
		}
	}
}

// isZero reports whether b is all zero bytes.
func (z *zeroes) isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(z.buf))
		if !bytes.Equal(b[:n], z.buf[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// ImageHash is the whole-image hash: BLAKE3 over a context string, the image size, the block
// size and the strong hash of every block in order. Defining it over the block hashes means
// neither side needs a second pass over the data to verify an image: both already hold every
// block's hash.
func ImageHash(size int64, blockSize int, blocks []Hash) Hash {
	h := blake3.New()
	var hdr [12]byte
	binary.BigEndian.PutUint64(hdr[:8], uint64(size))
	binary.BigEndian.PutUint32(hdr[8:], uint32(blockSize))
	_, _ = h.WriteString(imageHashContext)
	_, _ = h.Write(hdr[:])
	for i := range blocks {
		_, _ = h.Write(blocks[i][:])
	}
	var out Hash
	h.Sum(out[:0])
	return out
}

// signature is what one side knows about the content of a file: per block a strong hash
// and the weak hashes of its sub-blocks.
type signature struct {
	g      geometry
	strong []Hash
	subs   []uint64 // stride per block
}

func newSignature(g geometry) *signature {
	return &signature{g: g, strong: make([]Hash, g.nblocks), subs: make([]uint64, g.nblocks*g.stride)}
}

func (s *signature) sub(i int) []uint64 { return s.subs[i*s.g.stride : (i+1)*s.g.stride] }

func (s *signature) image() Hash { return ImageHash(s.g.size, s.g.bs, s.strong) }

// HashFile computes the image hash of a local file with the given block size (0 means
// DefaultBlockSize), using and refreshing the file's cached signature. Transfers never need
// it; it is for checks.
func HashFile(ctx context.Context, path string, blockSize int) (Hash, error) {
	if blockSize == 0 {
		blockSize = DefaultBlockSize
	}
	if !validBlockSize(blockSize) {
		return Hash{}, fmt.Errorf("hash %s: block size %d: %w", path, blockSize, ErrBlockSize)
	}
	c, err := scanLocal(ctx, path, blockSize, runtime.GOMAXPROCS(0))
	if err != nil {
		return Hash{}, err
	}
	return c.image, nil
}
