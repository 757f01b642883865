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
//	magic "VMSG" | version u8 | block size u32 | size u64 | dev u64 | inode u64 |
//	mtime ns i64 | ctime ns i64 | verified-at ns i64 | image hash [32] |
//	strong hash [32] per block | sub-block hash u64 (little endian) per block and sub-block |
//	xxh3 u64 of everything before
//
// It is trusted when the file's identity (device, inode, size, mtime, ctime) is unchanged,
// the file's mtime is older than the moment its content was known to match (so a write in
// the same timestamp tick cannot hide), and a few sampled blocks still match. Otherwise it
// still saves work: a block whose sub-block hashes (XXH3, fast) match keeps its strong hash
// (BLAKE3, slower) without recomputing it.

var sigMagic = [4]byte{'V', 'M', 'S', 'G'}

const (
	sigVersion   = 1
	sigHeaderLen = 4 + 1 + 4 + 8 + 8 + 8 + 8 + 8 + 8 + 32
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
	sig        *signature
	id         identity
	verifiedAt int64 // ns: the content was known to match the hashes at this time
	image      Hash
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
	for i := range c.sig.strong {
		b = append(b, c.sig.strong[i][:]...)
	}
	for _, s := range c.sig.subs {
		b = binary.LittleEndian.AppendUint64(b, s)
	}
	return binary.BigEndian.AppendUint64(b, xxh3.Hash(b))
}

var errBadCache = errors.New("bad signature cache")

// decodeCachedSig parses a cache file; it rejects anything that is not exactly well formed.
func decodeCachedSig(b []byte) (*cachedSig, error) {
	if len(b) < sigHeaderLen+8 {
		return nil, fmt.Errorf("%w: short", errBadCache)
	}
	body, sum := b[:len(b)-8], binary.BigEndian.Uint64(b[len(b)-8:])
	if xxh3.Hash(body) != sum {
		return nil, fmt.Errorf("%w: checksum", errBadCache)
	}
	d := dec{b: body}
	if m := d.bytes("magic", 4); string(m) != string(sigMagic[:]) || d.u8("version") != sigVersion {
		return nil, fmt.Errorf("%w: magic or version", errBadCache)
	}
	bs := int(d.u32("block size"))
	size := d.u64("size")
	if !validBlockSize(bs) || size > MaxFileSize {
		return nil, fmt.Errorf("%w: geometry", errBadCache)
	}
	c := &cachedSig{}
	c.id.size = int64(size)
	c.id.dev = d.u64("dev")
	c.id.ino = d.u64("ino")
	c.id.mtime = int64(d.u64("mtime"))
	c.id.ctime = int64(d.u64("ctime"))
	c.verifiedAt = int64(d.u64("verified"))
	c.image = d.hash("image")
	g := newGeometry(int64(size), bs)
	if len(d.b) != g.nblocks*32+g.nblocks*g.stride*8 {
		return nil, fmt.Errorf("%w: length", errBadCache)
	}
	c.sig = newSignature(g)
	for i := range c.sig.strong {
		copy(c.sig.strong[i][:], d.b[i*32:])
	}
	subs := d.b[g.nblocks*32:]
	for i := range c.sig.subs {
		c.sig.subs[i] = binary.LittleEndian.Uint64(subs[i*8:])
	}
	if c.sig.image() != c.image {
		return nil, fmt.Errorf("%w: image hash", errBadCache)
	}
	return c, nil
}

// loadCachedSig reads the cached signature of path for block size bs; nil if there is none
// usable.
func loadCachedSig(path string, bs int) *cachedSig {
	b, err := os.ReadFile(sigPath(path))
	if err != nil {
		return nil
	}
	c, err := decodeCachedSig(b)
	if err != nil || c.sig.g.bs != bs {
		return nil
	}
	return c
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

// spotCheck re-reads a few blocks (the first, the last and some at random) and compares
// their sub-block hashes with the cache: a cheap guard against a file rewritten in a way
// that kept its identity.
func spotCheck(f *os.File, sig *signature) bool {
	g := sig.g
	if g.nblocks == 0 {
		return true
	}
	buf := make([]byte, g.bs)
	subs := make([]uint64, g.stride)
	picks := []int{0, g.nblocks - 1}
	for range spotChecks - 2 {
		picks = append(picks, rand.IntN(g.nblocks))
	}
	for _, i := range picks {
		n := g.blockLen(i)
		if _, err := f.ReadAt(buf[:n], g.off(i)); err != nil {
			return false
		}
		hashSubs(buf[:n], subs)
		for j, s := range subs {
			if sig.sub(i)[j] != s {
				return false
			}
		}
	}
	return true
}
