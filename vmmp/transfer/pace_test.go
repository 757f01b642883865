package transfer

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	goyamux "github.com/libp2p/go-yamux/v5"
)

// TestPacer: after an uncompressed warm-up, the pacer keeps compression where compressed
// batches go faster (a slow link), drops it where they go slower (the CPU binds) or no faster,
// keeps its choice (none) when a probe measured nothing, and decides again every cycle.
func TestPacer(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name    string
		on, off time.Duration // what a batch of 1 MiB takes, compressed or not
		raw     int64
		want    bool // compression held after the first cycle's probes
	}{
		{"slow link", 2 * time.Millisecond, 8 * time.Millisecond, mib, true},
		{"cpu binds", 8 * time.Millisecond, 2 * time.Millisecond, mib, false},
		{"a tie goes to the cpu", 4 * time.Millisecond, 4 * time.Millisecond, mib, false},
		{"no data: the default stands", 2 * time.Millisecond, 8 * time.Millisecond, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := time.Unix(0, 0)
			p := newPacer(CompressAuto)
			p.now = func() time.Time { return clock }
			p.emitted(paceTag{}, 0) // the start
			var held []bool
			for i := range warmupBatches {
				if tag := p.next(); tag.on || tag.probe {
					t.Fatalf("warm-up batch %d: %+v", i, tag)
				}
				clock = clock.Add(time.Millisecond)
			}
			for i := range 2 * (2*probeBatches + holdBatches) {
				tag := p.next()
				if i < probeBatches && !tag.on || i >= probeBatches && i < 2*probeBatches && tag.on {
					t.Fatalf("batch %d: probe tag %+v", i, tag)
				}
				if tag.on {
					clock = clock.Add(tc.on)
				} else {
					clock = clock.Add(tc.off)
				}
				p.emitted(tag, tc.raw)
				if !tag.probe {
					held = append(held, tag.on)
				}
			}
			for i, on := range held {
				if on != tc.want {
					t.Fatalf("held batch %d compressed %v, want %v", i, on, tc.want)
				}
			}
			if len(held) != 2*holdBatches {
				t.Fatalf("%d held batches, want %d", len(held), 2*holdBatches)
			}
		})
	}
	t.Run("the link changes", func(t *testing.T) {
		clock := time.Unix(0, 0)
		p := newPacer(CompressAuto)
		p.now = func() time.Time { return clock }
		p.emitted(paceTag{}, 0)
		cost := map[bool]time.Duration{true: 2 * time.Millisecond, false: 8 * time.Millisecond}
		var last bool
		for range warmupBatches {
			p.next()
		}
		for i := range 2 * (2*probeBatches + holdBatches) {
			if i == 2*probeBatches+holdBatches { // the link got fast: the CPU binds now
				cost = map[bool]time.Duration{true: 8 * time.Millisecond, false: 2 * time.Millisecond}
			}
			tag := p.next()
			clock = clock.Add(cost[tag.on])
			p.emitted(tag, 1<<20)
			if !tag.probe {
				last = tag.on
			}
		}
		if last {
			t.Fatal("the second cycle kept compression after the CPU came to bind")
		}
	})
	if !newPacer(CompressAlways).next().on {
		t.Fatal("CompressAlways did not compress")
	}
}

// TestCompressionFollowsTheLink: over a slow link (the destination reads 4 MB a second) the
// source compresses a compressible image once its probes found that it pays, and the wire
// carries far fewer bytes than the image; on loopback, where the CPU binds, it compresses only
// its probe. The copy is exact whichever way each batch went.
func TestCompressionFollowsTheLink(t *testing.T) {
	// A stream window of 256 KiB, as a link's bandwidth-delay product would bound it (100 Mbit
	// at 20 ms), rather than yamux's 16 MiB, which would hold much of this image in flight.
	cfg := *(*goyamux.Config)(yamux.DefaultTransport)
	cfg.MaxStreamWindowSize = 256 << 10
	narrow := libp2p.Muxer(yamux.ID, (*yamux.Transport)(&cfg))
	p := &pair{src: newHost(t, narrow), dst: newHost(t, narrow), srcDir: t.TempDir(), dstDir: t.TempDir()}
	p.server = p.serve(t, p.src)
	connect(t, p.dst, p.src)
	const size = 64 << 20
	writeText(t, filepath.Join(p.srcDir, "disk.img"), size)
	res := p.mustFetch(t, []string{"disk.img"}, withReadRate(4<<20))
	f := res.Files[0]
	t.Logf("slow link: %d of %d blocks compressed, %d wire bytes for %d", f.BlocksCompressed, f.BlocksSent, res.WireBytes, int64(size))
	// 64 batches: 16 of warm-up and 8 of probe go as they are, 8 of probe and the 32 of the
	// hold compressed, but for the few the pipeline started before the probes were measured.
	if f.BlocksCompressed < f.BlocksSent*45/100 {
		t.Fatalf("over a slow link only %d of %d blocks went compressed", f.BlocksCompressed, f.BlocksSent)
	}
	if res.WireBytes > size*3/4 {
		t.Fatalf("%d wire bytes for a %d-byte image that compresses well", res.WireBytes, int64(size))
	}

	// On loopback, under the race detector, zstd (pure Go, slowed severalfold) binds: but for
	// the compressed probe, the source sends the blocks as they are.
	q := newPair(t)
	writeText(t, filepath.Join(q.srcDir, "disk.img"), size)
	res = q.mustFetch(t, []string{"disk.img"})
	f = res.Files[0]
	t.Logf("loopback: %d of %d blocks compressed, %d wire bytes", f.BlocksCompressed, f.BlocksSent, res.WireBytes)
	if f.BlocksCompressed > f.BlocksSent*25/100 { // the compressed probe only
		t.Fatalf("on loopback %d of %d blocks went compressed", f.BlocksCompressed, f.BlocksSent)
	}
}

// writeText writes size bytes of text-like data (words from a small vocabulary), which zstd
// shrinks severalfold.
func writeText(tb testing.TB, path string, size int64) {
	tb.Helper()
	words := []string{"virtuoso ", "block ", "lease ", "offer ", "ledger ", "guest ", "kernel ", "provider\n", "market ", "disk "}
	rng := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	for int64(b.Len()) < size {
		b.WriteString(words[rng.IntN(len(words))])
	}
	if err := os.WriteFile(path, b.Bytes()[:size], 0o644); err != nil {
		tb.Fatal(err)
	}
	settle()
}
