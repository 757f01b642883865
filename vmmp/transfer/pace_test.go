package transfer

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	goyamux "github.com/libp2p/go-yamux/v5"
)

// TestPacer: the pacer compresses when the stream's writes block most of the time and the
// machine's idle cores can compress the blocks at their rate (the link binds), or compressing
// them costs a small share of one core (a slow link, even on busy cores); not when the writes
// flow (the CPU or the disk binds), when the machine's CPU is used up at a rate that costs
// more, or when the idle cores could not keep up; it follows a change within a window, and
// without a reading of the machine's CPU goes by the link alone.
func TestPacer(t *testing.T) {
	type window struct {
		blocked, idle time.Duration // of a 100 ms window (idle out of 200 ms of CPU: 2 cores)
		sent          int64         // bytes of blocks sent in it
		want          bool
	}
	for _, tc := range []struct {
		name    string
		noCPU   bool
		windows []window
	}{
		// zstd costs 2 ns a byte here: 1.2 MB in 100 ms (12 MB/s) needs 0.05 cores twice over;
		// 60 MB in 100 ms (600 MB/s) needs 2.4, more than the 1.5 idle; 10 MB in 100 ms (100 MB/s,
		// a gigabit) needs 0.4, more than is cheap.
		{"slow link", false, []window{{90 * time.Millisecond, 150 * time.Millisecond, 1_200_000, true}}},
		{"busy cores, a slow link", false, []window{{90 * time.Millisecond, 10 * time.Millisecond, 1_200_000, true}}},
		{"the cpu binds", false, []window{{90 * time.Millisecond, 10 * time.Millisecond, 20_000_000, false}}},
		{"the cpu starts to bind", false, []window{ // its idle share is averaged over windows
			{90 * time.Millisecond, 150 * time.Millisecond, 20_000_000, true},
			{90 * time.Millisecond, 0, 20_000_000, true},
			{90 * time.Millisecond, 0, 20_000_000, true},
			{90 * time.Millisecond, 0, 20_000_000, true}, // 9% idle: compressing took the rest
			{90 * time.Millisecond, 0, 20_000_000, false},
		}},
		{"compressing takes the idle time", false, []window{ // a gigabit: the link still binds
			{90 * time.Millisecond, 140 * time.Millisecond, 10_000_000, true},
			{90 * time.Millisecond, 14 * time.Millisecond, 25_000_000, true},
			{90 * time.Millisecond, 14 * time.Millisecond, 25_000_000, true},
			{90 * time.Millisecond, 14 * time.Millisecond, 25_000_000, true},
			{40 * time.Millisecond, 14 * time.Millisecond, 25_000_000, false}, // then the cpu binds
		}},
		{"idle but not enough to start", false, []window{{90 * time.Millisecond, 20 * time.Millisecond, 10_000_000, false}}},
		{"the writes flow", false, []window{{10 * time.Millisecond, 150 * time.Millisecond, 1_200_000, false}}},
		{"too fast to compress on the idle cores", false, []window{{90 * time.Millisecond, 150 * time.Millisecond, 60_000_000, false}}},
		{"the link gets fast", false, []window{
			{90 * time.Millisecond, 150 * time.Millisecond, 1_200_000, true},
			{90 * time.Millisecond, 100 * time.Millisecond, 3_000_000, true},  // compressing: more goes through
			{90 * time.Millisecond, 100 * time.Millisecond, 30_000_000, true}, // idle cores keep up
			{20 * time.Millisecond, 100 * time.Millisecond, 3_000_000, false},
			{80 * time.Millisecond, 120 * time.Millisecond, 1_200_000, true},
		}},
		{"no cpu reading", true, []window{{90 * time.Millisecond, 0, 1_200_000, true}, {10 * time.Millisecond, 0, 1_200_000, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var blocked atomic.Int64
			clock := time.Unix(0, 0)
			var idle, total time.Duration
			p := newPacer(CompressAuto, &blocked)
			p.cores = 2
			p.compressed(1_000_000, 2*time.Millisecond) // 2 ns a byte
			p.now = func() time.Time { return clock }
			p.idle = func() (time.Duration, time.Duration, bool) { return idle, total, !tc.noCPU }
			p.start()
			if p.compress() {
				t.Fatal("compressing before the first window")
			}
			for i, w := range tc.windows {
				clock = clock.Add(paceWindow / 2)
				p.tick() // within the window: nothing changes yet
				clock = clock.Add(paceWindow / 2)
				blocked.Add(int64(w.blocked))
				p.sent.Add(w.sent)
				idle, total = idle+w.idle, total+2*paceWindow
				p.tick()
				if got := p.compress(); got != w.want {
					t.Fatalf("window %d (link %.2f, spare %.2f): compress %v, want %v", i, p.linkShare, p.spareShare, got, w.want)
				}
			}
		})
	}
	if !newPacer(CompressAlways, new(atomic.Int64)).compress() {
		t.Fatal("CompressAlways did not compress")
	}
	if idle, total, ok := machineIdle(); !ok || idle <= 0 || total <= idle {
		t.Fatalf("/proc/stat: idle %v of %v, %v", idle, total, ok)
	}
}

// TestCompressionFollowsTheLink: over a slow link (the destination reads 4 MB a second, the
// source's machine has idle cores) the source compresses a compressible image, and the wire
// carries far fewer bytes than the image; on loopback, where the CPU binds (its real use,
// measured), it does not. The copy is exact whichever way each batch went.
func TestCompressionFollowsTheLink(t *testing.T) {
	// A stream window of 256 KiB, as a link's bandwidth-delay product would bound it (100 Mbit
	// at 20 ms), rather than yamux's 16 MiB, which would hold much of this image in flight.
	cfg := *(*goyamux.Config)(yamux.DefaultTransport)
	cfg.MaxStreamWindowSize = 256 << 10
	narrow := libp2p.Muxer(yamux.ID, (*yamux.Transport)(&cfg))
	p := &pair{src: newHost(t, narrow), dst: newHost(t, narrow), srcDir: t.TempDir(), dstDir: t.TempDir()}
	// The machine reads as idle, whatever else runs beside the test (the slow link's source
	// has cores to spare, as a provider's would).
	start := time.Now()
	p.server = p.serve(t, p.src, withCPUIdle(func() (time.Duration, time.Duration, bool) {
		d := time.Since(start)
		return d, d, true
	}))
	connect(t, p.dst, p.src)
	const size = 48 << 20
	writeText(t, filepath.Join(p.srcDir, "disk.img"), size)
	res := p.mustFetch(t, []string{"disk.img"}, withReadRate(4<<20))
	f := res.Files[0]
	t.Logf("slow link: %d of %d blocks compressed, %d wire bytes for %d", f.BlocksCompressed, f.BlocksSent, res.WireBytes, int64(size))
	// All but what the pipeline took on before the first window ended, compressed.
	if f.BlocksCompressed < f.BlocksSent*7/10 {
		t.Fatalf("over a slow link only %d of %d blocks went compressed", f.BlocksCompressed, f.BlocksSent)
	}
	if res.WireBytes > size/2 {
		t.Fatalf("%d wire bytes for a %d-byte image that compresses well", res.WireBytes, int64(size))
	}

	// The same slow link from a machine whose cores are busy with other work: compressing a
	// few MB a second takes a small share of one core, and still pays. zstd's cost is taken as
	// it runs in a build (3 ns a byte here), not as it runs under the race detector (80-120).
	b := &pair{src: newHost(t, narrow), dst: newHost(t, narrow), srcDir: t.TempDir(), dstDir: t.TempDir()}
	b.server = b.serve(t, b.src, withZstdCost(3*time.Nanosecond), withCPUIdle(func() (time.Duration, time.Duration, bool) {
		return 0, time.Since(start), true
	}))
	connect(t, b.dst, b.src)
	writeText(t, filepath.Join(b.srcDir, "disk.img"), size)
	res = b.mustFetch(t, []string{"disk.img"}, withReadRate(4<<20))
	f = res.Files[0]
	t.Logf("slow link, busy cores: %d of %d blocks compressed, %d wire bytes", f.BlocksCompressed, f.BlocksSent, res.WireBytes)
	if f.BlocksCompressed < f.BlocksSent*7/10 || res.WireBytes > size/2 {
		t.Fatalf("over a slow link from busy cores %d of %d blocks went compressed, %d wire bytes", f.BlocksCompressed, f.BlocksSent, res.WireBytes)
	}

	// On loopback, under the race detector, the two ends of the transfer use up the CPU:
	// compression pays in a window now and then at most (the destination waiting on its disk
	// while a core idles).
	q := newPair(t)
	writeText(t, filepath.Join(q.srcDir, "disk.img"), size)
	res = q.mustFetch(t, []string{"disk.img"})
	f = res.Files[0]
	t.Logf("loopback: %d of %d blocks compressed, %d wire bytes", f.BlocksCompressed, f.BlocksSent, res.WireBytes)
	if f.BlocksCompressed > f.BlocksSent/4 {
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
