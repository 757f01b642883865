package transfer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/zeebo/xxh3"
)

// A cached signature lives next to the file it describes, in the bookkeeping directory:
//
//	header: magic "VMSG" | version u8 (2) | block size u32 | size u64 | dev u64 | inode u64 |
//	        mtime ns i64 | ctime ns i64 | verified-at ns i64 | image hash [32] |
//	        xxh3 u64 of the header before it
//	body:   strong hash [32] per block | sub-block hash u64 (little endian) per block and
//	        sub-block | xxh3 u64 of the body before it
//
// It is trusted when the file's identity (device, inode, size, mtime, ctime) is unchanged,
// the file's mtime is older than the moment its content was known to match (so a write in
// the same timestamp tick cannot hide), and a few sampled blocks still match. Otherwise it
// still saves work: a block whose sub-block hashes (XXH3, fast) match keeps its strong hash
// (BLAKE3, slower) without recomputing it.
//
// The header has its own checksum so that a transfer that only needs to know the image (the
// other side holds the same one) reads 97 bytes and the sampled blocks' hashes, not the body
// (160 bytes per 64 KiB block: 40 MiB for a 16 GiB disk); the body is read and checked when
// it is needed.

var sigMagic = [4]byte{'V', 'M', 'S', 'G'}

const (
	sigVersion   = 2
	sigHeaderLen = 4 + 1 + 4 + 8 + 8 + 8 + 8 + 8 + 8 + 32
	sigBodyOff   = sigHeaderLen + 8
	// racyMargin covers file timestamp granularity (a few kernel ticks).
	racyMargin = 25 * time.Millisecond
	spotChecks = 8
)

// identity is what changes whenever a file's content may have changed.
type identity struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64 // ns
}

func fileIdentity(fi os.FileInfo) identity {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return identity{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	}
	return identity{
		dev: uint64(st.Dev), ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}
}

// cachedSig is a signature with the identity of the file it was taken from.
type cachedSig struct {
	sig        *signature // nil while only the header is read (see load)
	id         identity
	verifiedAt int64 // ns: the content was known to match the hashes at this time
	image      Hash
	g          geometry
	file       string // the cache file the header was read from, for load
}

// trusted reports whether c describes the file with identity now without reading it.
func (c *cachedSig) trusted(now identity) bool {
	return c.id == now && now.mtime < c.verifiedAt-int64(racyMargin)
}

func sigPath(path string) string {
	return filepath.Join(filepath.Dir(path), bookkeepingDir, filepath.Base(path)+".sig")
}

func (c *cachedSig) marshal() []byte {
	g := c.sig.g
	b := make([]byte, 0, sigHeaderLen+g.nblocks*32+len(c.sig.subs)*8+8)
	b = append(b, sigMagic[:]...)
	b = append(b, sigVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(g.bs))
	b = binary.BigEndian.AppendUint64(b, uint64(g.size))
	b = binary.BigEndian.AppendUint64(b, c.id.dev)
	b = binary.BigEndian.AppendUint64(b, c.id.ino)
	b = binary.BigEndian.AppendUint64(b, uint64(c.id.mtime))
	b = binary.BigEndian.AppendUint64(b, uint64(c.id.ctime))
	b = binary.BigEndian.AppendUint64(b, uint64(c.verifiedAt))
	b = append(b, c.image[:]...)
	b = binary.BigEndian.AppendUint64(b, xxh3.Hash(b))
	for i := range c.sig.strong {
		b = append(b, c.sig.strong[i][:]...)
	}
	for _, s := range c.sig.subs {
		b = binary.LittleEndian.AppendUint64(b, s)
	}
	return binary.BigEndian.AppendUint64(b, xxh3.Hash(b[sigBodyOff:]))
}

var errBadCache = errors.New("bad signature cache")

// decodeCacheHeader parses the header of a cache file (its first sigBodyOff bytes).
func decodeCacheHeader(b []byte) (*cachedSig, error) {
	if len(b) < sigBodyOff {
		return nil, fmt.Errorf("%w: short", errBadCache)
	}
	if xxh3.Hash(b[:sigHeaderLen]) != binary.BigEndian.Uint64(b[sigHeaderLen:]) {
		return nil, fmt.Errorf("%w: header checksum", errBadCache)
	}
	d := dec{b: b[:sigHeaderLen]}
	if m := d.bytes("magic", 4); string(m) != string(sigMagic[:]) || d.u8("version") != sigVersion {
		return nil, fmt.Errorf("%w: magic or version", errBadCache)
	}
	bs := int(d.u32("block size"))
	size := d.u64("size")
	if !validBlockSize(bs) || size > MaxFileSize {
		return nil, fmt.Errorf("%w: geometry", errBadCache)
	}
	c := &cachedSig{g: newGeometry(int64(size), bs)}
	c.id.size = int64(size)
	c.id.dev = d.u64("dev")
	c.id.ino = d.u64("ino")
	c.id.mtime = int64(d.u64("mtime"))
	c.id.ctime = int64(d.u64("ctime"))
	c.verifiedAt = int64(d.u64("verified"))
	c.image = d.hash("image")
	return c, d.err
}

// cacheLen is the length of the cache file of a signature of geometry g.
func cacheLen(g geometry) int64 {
	return sigBodyOff + int64(g.nblocks)*32 + int64(g.nblocks)*int64(g.stride)*8 + 8
}

// decodeCachedSig parses a whole cache file; it rejects anything that is not exactly well
// formed.
func decodeCachedSig(b []byte) (*cachedSig, error) {
	c, err := decodeCacheHeader(b)
	if err != nil {
		return nil, err
	}
	g := c.g
	if int64(len(b)) != cacheLen(g) {
		return nil, fmt.Errorf("%w: length", errBadCache)
	}
	body, sum := b[sigBodyOff:len(b)-8], binary.BigEndian.Uint64(b[len(b)-8:])
	if xxh3.Hash(body) != sum {
		return nil, fmt.Errorf("%w: checksum", errBadCache)
	}
	c.sig = newSignature(g)
	for i := range c.sig.strong {
		copy(c.sig.strong[i][:], body[i*32:])
	}
	subs := body[g.nblocks*32:]
	for i := range c.sig.subs {
		c.sig.subs[i] = binary.LittleEndian.Uint64(subs[i*8:])
	}
	if c.sig.image() != c.image {
		return nil, fmt.Errorf("%w: image hash", errBadCache)
	}
	return c, nil
}

// loadCachedSig reads the whole cached signature of path for block size bs; nil if there is
// none usable.
func loadCachedSig(path string, bs int) *cachedSig {
	c := loadCacheHeader(path, bs)
	if c == nil || !c.load() {
		return nil
	}
	return c
}

// loadCacheHeader reads only the header of the cached signature of path for block size bs;
// nil if there is none usable. load reads the rest.
func loadCacheHeader(path string, bs int) *cachedSig {
	f, err := os.Open(sigPath(path))
	if err != nil {
		return nil
	}
	defer f.Close()
	var b [sigBodyOff]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return nil
	}
	c, err := decodeCacheHeader(b[:])
	if err != nil || c.g.bs != bs {
		return nil
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != cacheLen(c.g) {
		return nil
	}
	c.file = f.Name()
	return c
}

// load reads and checks the body of a cache whose header was read, unless it is loaded
// already. It fails if the body is damaged or the cache was replaced since its header was
// read; the cache is then of no use.
func (c *cachedSig) load() bool {
	if c.sig != nil {
		return true
	}
	b, err := os.ReadFile(c.file)
	if err != nil {
		return false
	}
	full, err := decodeCachedSig(b)
	if err != nil || full.id != c.id || full.verifiedAt != c.verifiedAt || full.image != c.image || full.g != c.g {
		return false
	}
	c.sig = full.sig
	return true
}

// storeCachedSig writes c next to path, atomically. A cache is an optimisation: callers
// log a failure and go on.
func storeCachedSig(path string, c *cachedSig) error {
	p := sigPath(path)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("store signature of %s: %w", path, err)
	}
	tmp := fmt.Sprintf("%s.%d.tmp", p, rand.Uint64())
	if err := os.WriteFile(tmp, c.marshal(), 0o644); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("store signature of %s: %w", path, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("store signature of %s: %w", path, err)
	}
	return nil
}

// spotCheck re-reads a few blocks of f (the first, the last and some at random) and compares
// their sub-block hashes with the cache's: a cheap guard against a file rewritten in a way
// that kept its identity. A cache whose body is not loaded has those blocks' hashes read
// from its file.
func (c *cachedSig) spotCheck(f *os.File) bool {
	if c.sig != nil {
		return spotCheck(f, c.sig)
	}
	cf, err := os.Open(c.file)
	if err != nil {
		return false
	}
	defer cf.Close()
	g := c.g
	raw := make([]byte, g.stride*8)
	want := make([]uint64, g.stride)
	return spotCheckWith(f, g, func(i int) []uint64 {
		if _, err := cf.ReadAt(raw, sigBodyOff+int64(g.nblocks)*32+int64(i)*int64(len(raw))); err != nil {
			return nil
		}
		for j := range want {
			want[j] = binary.LittleEndian.Uint64(raw[j*8:])
		}
		return want
	})
}

// spotCheck is spotCheckWith the sub-block hashes of sig.
func spotCheck(f *os.File, sig *signature) bool {
	return spotCheckWith(f, sig.g, sig.sub)
}

// spotCheckWith re-reads a few blocks of f and compares their sub-block hashes with what
// subs says they are (nil: cannot tell).
func spotCheckWith(f *os.File, g geometry, subs func(i int) []uint64) bool {
	if g.nblocks == 0 {
		return true
	}
	buf := make([]byte, g.bs)
	got := make([]uint64, g.stride)
	picks := []int{0, g.nblocks - 1}
	for range spotChecks - 2 {
		picks = append(picks, rand.IntN(g.nblocks))
	}
	for _, i := range picks {
		n := g.blockLen(i)
		if _, err := f.ReadAt(buf[:n], g.off(i)); err != nil {
			return false
		}
		hashSubs(buf[:n], got)
		want := subs(i)
		if want == nil {
			return false
		}
		for j, s := range got {
			if want[j] != s {
				return false
			}
		}
	}
	return true
}
