package transfer

import (
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
)

// newHost starts a libp2p host listening on loopback only.
func newHost(tb testing.TB, opts ...libp2p.Option) host.Host {
	tb.Helper()
	h, err := libp2p.New(append([]libp2p.Option{
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
		libp2p.Security(noise.ID, noise.New), // as the node does
		libp2p.DisableRelay(),
	}, opts...)...)
	if err != nil {
		tb.Fatalf("new host: %v", err)
	}
	tb.Cleanup(func() { _ = h.Close() })
	return h
}

func connect(tb testing.TB, a, b host.Host) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		tb.Fatalf("connect: %v", err)
	}
}

// pair is a source host serving srcDir and a destination host connected to it.
type pair struct {
	src, dst host.Host
	server   *Server
	srcDir   string
	dstDir   string
	refuse   error
}

func newPair(tb testing.TB, opts ...Option) *pair {
	tb.Helper()
	p := &pair{src: newHost(tb), dst: newHost(tb), srcDir: tb.TempDir(), dstDir: tb.TempDir()}
	p.server = p.serve(tb, p.src, opts...)
	connect(tb, p.dst, p.src)
	return p
}

// serve starts a Server on h that maps every requested file to srcDir.
func (p *pair) serve(tb testing.TB, h host.Host, opts ...Option) *Server {
	tb.Helper()
	s, err := NewServer(h, func(ctx context.Context, from peer.ID, req Request) ([]string, error) {
		if p.refuse != nil {
			return nil, p.refuse
		}
		paths := make([]string, len(req.Files))
		for i, f := range req.Files {
			paths[i] = filepath.Join(p.srcDir, f)
		}
		return paths, nil
	}, opts...)
	if err != nil {
		tb.Fatalf("new server: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func (p *pair) fetch(tb testing.TB, files []string, opts ...Option) (*Result, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return Fetch(ctx, p.dst, p.src.ID(), Request{VM: "vm-1", Files: files}, p.dstDir, opts...)
}

func (p *pair) mustFetch(tb testing.TB, files []string, opts ...Option) *Result {
	tb.Helper()
	res, err := p.fetch(tb, files, opts...)
	if err != nil {
		tb.Fatalf("fetch: %v", err)
	}
	for _, f := range files {
		assertSame(tb, filepath.Join(p.srcDir, f), filepath.Join(p.dstDir, f))
	}
	return res
}

// writeImage writes a file of size bytes of seeded random data, leaving the given ranges
// as holes.
func writeImage(tb testing.TB, path string, size int64, seed uint64, holes ...Extent) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 1})
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		_, _ = rng.Read(buf[:n])
		for _, h := range holes {
			lo, hi := max(h.Off, off), min(h.Off+h.Len, off+n)
			if lo < hi {
				clear(buf[lo-off : hi-off])
			}
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			tb.Fatal(err)
		}
		off += n
	}
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	for _, h := range holes {
		if err := punchHole(f, h.Off, h.Len); err != nil {
			tb.Fatal(err)
		}
	}
	settle()
}

// scribble overwrites n bytes at each offset with fresh random data.
func scribble(tb testing.TB, path string, seed uint64, n int, offs ...int64) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(seed, 7))
	buf := make([]byte, n)
	for _, off := range offs {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			tb.Fatal(err)
		}
	}
	settle()
}

// settle waits out the timestamp granularity, as a real VM's files do between their last
// write and a migration: a signature cached right after a write is not trusted (racyMargin).
func settle() { time.Sleep(racyMargin + 10*time.Millisecond) }

func fileSHA(tb testing.TB, path string) [32]byte {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		tb.Fatal(err)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func assertSame(tb testing.TB, want, got string) {
	tb.Helper()
	if fileSHA(tb, want) != fileSHA(tb, got) {
		tb.Fatalf("%s differs from %s", got, want)
	}
	wi, _ := os.Stat(want)
	gi, _ := os.Stat(got)
	if wi.Size() != gi.Size() {
		tb.Fatalf("%s is %d bytes, want %d", got, gi.Size(), wi.Size())
	}
}

// allocated returns the bytes a file occupies on disk.
func allocated(tb testing.TB, path string) int64 {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

func stagePath(dir, name string) string {
	return filepath.Join(dir, bookkeepingDir, name+".stage")
}
