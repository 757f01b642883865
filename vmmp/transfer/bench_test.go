package transfer

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// benchSize is the image of the Fetch benchmarks; `virtuoso bench transfer` runs the full
// 4 GiB comparison with rsync.
const benchSize = 256 << 20

func benchPair(b *testing.B) (*pair, string) {
	b.Helper()
	p := newPair(b)
	src := filepath.Join(p.srcDir, "disk.img")
	writeImage(b, src, benchSize, 1)
	syscall.Sync() // the source's writeback must not compete with the transfers timed
	return p, src
}

func resetDst(b *testing.B, p *pair) {
	b.Helper()
	if err := os.RemoveAll(p.dstDir); err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(p.dstDir, 0o755); err != nil {
		b.Fatal(err)
	}
}

// cpuTime is the CPU time this process has used; the benchmarks report it per operation
// because wall time on a shared machine says more about the neighbours than about the code.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFetchFirst: a first transfer, nothing at the destination; "cold" with no
// signature cached at the source either, so that it hashes the image as it sends it.
func BenchmarkFetchFirst(b *testing.B) {
	for _, tc := range []struct {
		m    Method
		cold bool
	}{{MethodBlockDiff, false}, {MethodBlockDiff, true}, {MethodFull, false}} {
		name := tc.m.String()
		if tc.cold {
			name += "-cold"
		}
		b.Run(name, func(b *testing.B) {
			p, src := benchPair(b)
			m := tc.m
			b.SetBytes(benchSize)
			var cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				resetDst(b, p)
				if tc.cold {
					if err := os.Remove(sigPath(src)); err != nil && !os.IsNotExist(err) {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				c := cpuTime()
				if _, err := p.fetch(b, []string{"disk.img"}, WithMethod(m)); err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime() - c
			}
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

// BenchmarkFetchChanged: a re-transfer after 1% of the image was rewritten, in whole
// blocks or in scattered 4 KiB writes; with compression allowed (the pacer decides) and
// without.
func BenchmarkFetchChanged(b *testing.B) {
	for _, tc := range []struct {
		name     string
		write    int
		compress bool
	}{{"64KiB-writes", DefaultBlockSize, true}, {"64KiB-writes-nozstd", DefaultBlockSize, false},
		{"4KiB-writes", 4 << 10, true}, {"4KiB-writes-nozstd", 4 << 10, false}} {
		b.Run(tc.name, func(b *testing.B) {
			p, src := benchPair(b)
			n := benchSize / 100 / tc.write
			var wire int64
			var cpu time.Duration
			b.SetBytes(benchSize)
			seed := uint64(0)
			for b.Loop() {
				b.StopTimer()
				if _, err := p.fetch(b, []string{"disk.img"}); err != nil {
					b.Fatal(err)
				}
				var offs []int64
				for i := range int64(n) {
					offs = append(offs, (i*7919%(benchSize/int64(tc.write)))*int64(tc.write))
				}
				seed++
				scribble(b, src, seed, tc.write, offs...)
				b.StartTimer()
				c := cpuTime()
				res, err := p.fetch(b, []string{"disk.img"}, WithCompression(tc.compress))
				if err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime() - c
				wire = res.WireBytes
			}
			b.ReportMetric(float64(wire)/float64(n*tc.write), "wire/changed")
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/op")
		})
	}
}

// BenchmarkFetchUnchanged: a re-transfer of an image both sides hold, signatures cached.
func BenchmarkFetchUnchanged(b *testing.B) {
	p, _ := benchPair(b)
	if _, err := p.fetch(b, []string{"disk.img"}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := p.fetch(b, []string{"disk.img"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScan: hashing a file with no usable cache (read, XXH3 and BLAKE3 on all cores).
func BenchmarkScan(b *testing.B) {
	path := filepath.Join(b.TempDir(), "disk.img")
	writeImage(b, path, benchSize, 2)
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	g := newGeometry(benchSize, DefaultBlockSize)
	src, err := newFileSource(f, g)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(benchSize)
	for b.Loop() {
		if _, err := scanSignatureInto(context.Background(), newSignature(g), src, nil, workerCount(&config{}), nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawStream is the ceiling: bytes through one libp2p stream into a sink.
func BenchmarkRawStream(b *testing.B) {
	src, dst := newHost(b), newHost(b)
	connect(b, src, dst)
	dst.SetStreamHandler("/bench/sink", func(s network.Stream) {
		_, _ = io.Copy(io.Discard, s)
		_, _ = s.Write([]byte{1})
		_ = s.Close()
	})
	buf := make([]byte, 1<<20)
	b.SetBytes(benchSize)
	c := cpuTime()
	defer func() { b.ReportMetric(float64((cpuTime()-c).Milliseconds())/float64(b.N), "cpu-ms/op") }()
	for b.Loop() {
		s, err := src.NewStream(context.Background(), dst.ID(), "/bench/sink")
		if err != nil {
			b.Fatal(err)
		}
		for range benchSize / len(buf) {
			if _, err := s.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		_ = s.CloseWrite()
		_, _ = io.ReadFull(s, buf[:1])
		_ = s.Close()
	}
}

// BenchmarkContentIndex: indexing the pages of a 4 GiB basis, the cost a re-transfer that
// sends changed blocks pays once.
func BenchmarkContentIndex(b *testing.B) {
	sig := newSignature(newGeometry(4<<30, DefaultBlockSize))
	rng := rand.New(rand.NewPCG(1, 2))
	for k := range sig.subs {
		sig.subs[k] = rng.Uint64()
	}
	for b.Loop() {
		newContentIndex(sig, 0, maxIndexed)
	}
}

// BenchmarkCacheRead: what each side reads of the cached signature of a 16 GiB image before
// an unchanged transfer (the header) against the whole cache (what a changed one needs).
func BenchmarkCacheRead(b *testing.B) {
	g := newGeometry(16<<30, DefaultBlockSize)
	sig := newSignature(g)
	rng := rand.New(rand.NewPCG(3, 4))
	for k := range sig.subs {
		sig.subs[k] = rng.Uint64()
	}
	path := filepath.Join(b.TempDir(), "disk.img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := storeCachedSig(path, &cachedSig{sig: sig, image: sig.image()}); err != nil {
		b.Fatal(err)
	}
	b.Run("header", func(b *testing.B) {
		for b.Loop() {
			if loadCacheHeader(path, DefaultBlockSize) == nil {
				b.Fatal("no cache")
			}
		}
	})
	b.Run("whole", func(b *testing.B) {
		for b.Loop() {
			if loadCachedSig(path, DefaultBlockSize) == nil {
				b.Fatal("no cache")
			}
		}
	})
}
