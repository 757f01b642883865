package transfer

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// CompressionPolicy is how a source decides to compress the blocks it sends, when the
// destination allows it (WithCompression).
type CompressionPolicy int

const (
	// CompressAuto compresses while the link binds the transfer and the CPU does not: the
	// sending goroutine waits on the stream for most of its time and compressing what the link
	// takes costs a small share of one core, or the machine has cores to spare for it. On
	// loopback, or on a fast network from busy cores, it sends blocks as they are.
	CompressAuto CompressionPolicy = iota
	// CompressAlways compresses every block that shrinks, whatever binds.
	CompressAlways
)

// The pacer's measure.
const (
	// paceWindow is how often the pacer looks again: often enough to follow a link or a load
	// that changes, long enough to average the stream's bursts.
	paceWindow = 100 * time.Millisecond
	// linkBinds: the share of its time the sending goroutine spends blocked in writes to the
	// stream, above which the link (with the destination behind it) binds.
	linkBinds = 0.5
	// cpuSpare: the share of the machine's CPU time left idle, below which the CPU binds and
	// compressing would slow the transfer down.
	cpuSpare = 0.15
	// cpuKeep: while it compresses and the link still binds, the pacer goes on down to this
	// share idle. Compressing uses the idle time it found, so the share falls once it starts
	// (a gigabit emulated on one 2-core machine: from 70% to 14%, the transfer 1.6× faster);
	// what tells that the CPU binds then is the link ceasing to bind, or no idle time left.
	cpuKeep = 0.05
	// cheapCores: compressing at the link's rate costs at most this many cores: a slow link's
	// few MB a second (100 Mbit: about 0.1 cores at zstd's fastest), which cores busy with
	// other work still compress, their scheduler giving the transfer its share, while the
	// transfer waits on the link regardless. A gigabit's rate costs several times more.
	cheapCores = 0.25
)

// pacer decides whether the source compresses, by what binds the transfer, measured while it
// runs: the link binds when the sending goroutine spends most of its time blocked writing to
// the stream, the CPU when the machine has few idle cycles left (both ends of a transfer on
// one machine; other work). Compression pays only when the link binds and the CPU does not:
// it starts when the idle cores can compress twice the blocks' present rate (at zstd's cost
// per byte measured on this machine), or whatever the idle cores when that costs less than
// cheapCores, and stops when the link stops binding or the CPU starts (unless cheap): fewer
// than cpuKeep of the machine's cycles left idle while it compresses.
// Measuring the throughput of each choice instead would be fooled by the stream's buffers
// (the muxer's window holds megabytes, more raw data when compressed) and by a destination
// whose CPU binds, which compression does not help.
type pacer struct {
	always  bool
	cores   int
	now     func() time.Time
	idle    func() (idle, total time.Duration, ok bool) // the machine's CPU time so far
	blocked *atomic.Int64                               // ns the stream's writes have blocked so far

	fixedCost float64 // test hook: zstd's cost per byte, in seconds, instead of the measure

	on atomic.Bool
	// What the sending side did: bytes of blocks sent (before compression), and the bytes
	// zstd took in and the time it took, from which its cost per byte follows.
	sent, zIn, zNanos atomic.Int64

	mu                    sync.Mutex
	at                    time.Time
	lastBlocked, lastSent int64
	lastIdle, lastTotal   time.Duration
	haveCPU               bool
	linkShare, spareShare float64 // the last window's measures (spare: averaged), for tests
	windows               int     // CPU readings averaged
}

func newPacer(p CompressionPolicy, blocked *atomic.Int64) *pacer {
	pc := &pacer{always: p == CompressAlways, cores: runtime.NumCPU(), now: time.Now, idle: machineIdle, blocked: blocked}
	pc.on.Store(pc.always)
	return pc
}

// compressed records that zstd took in n bytes in d.
func (p *pacer) compressed(n int, d time.Duration) {
	p.zIn.Add(int64(n))
	p.zNanos.Add(int64(d))
}

// zstdCost is zstd's CPU time per byte taken in, as measured so far (0 if never).
func (p *pacer) zstdCost() float64 {
	if p.fixedCost > 0 {
		return p.fixedCost
	}
	if n := p.zIn.Load(); n > 0 {
		return float64(p.zNanos.Load()) / float64(n) / 1e9
	}
	return 0
}

// start begins the first window.
func (p *pacer) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.at = p.now()
	p.lastBlocked, p.lastSent = p.blocked.Load(), p.sent.Load()
	p.lastIdle, p.lastTotal, p.haveCPU = p.idle()
}

// compress says whether the batch a worker starts now goes compressed.
func (p *pacer) compress() bool { return p.on.Load() }

// tick is called by the sending goroutine after each batch: at the end of a window it decides
// anew.
func (p *pacer) tick() {
	if p.always {
		return
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	wall := now.Sub(p.at)
	if wall < paceWindow {
		return
	}
	blocked := p.blocked.Load()
	idle, total, ok := p.idle()
	p.linkShare = float64(blocked-p.lastBlocked) / float64(wall)
	if ok && p.haveCPU && total > p.lastTotal {
		// Averaged with the windows before: the kernel's idle accounting is coarse (10 ms
		// ticks, settled when a sleeping core wakes), and one window may read 0.
		spare := float64(idle-p.lastIdle) / float64(total-p.lastTotal)
		if p.windows == 0 {
			p.spareShare = spare
		} else {
			p.spareShare = (p.spareShare + spare) / 2
		}
		p.windows++
	} else if !ok {
		p.spareShare = 1
	}
	sent := p.sent.Load()
	rate := float64(sent-p.lastSent) / wall.Seconds() // bytes of blocks a second
	// The cores it takes to compress at the rate the blocks go now; twice over when not
	// compressing yet (compressed, more of them go through the same link).
	need := p.zstdCost() * rate
	if !p.on.Load() {
		need *= 2
	}
	switch {
	case p.linkShare < linkBinds:
		p.on.Store(false)
	case need <= cheapCores:
		p.on.Store(true)
	case p.on.Load() && p.spareShare >= cpuKeep:
		// Compressing, and the link still binds.
	case p.spareShare < cpuSpare:
		p.on.Store(false)
	case !p.on.Load():
		// To start compressing, the idle cores must keep up.
		p.on.Store(p.spareShare*float64(p.cores) >= need)
	}
	p.at, p.lastBlocked, p.lastSent, p.lastIdle, p.lastTotal, p.haveCPU = now, blocked, sent, idle, total, ok
}

// machineIdle reads the machine's idle and total CPU time from /proc/stat (idle and iowait
// are idle; time stolen by a hypervisor is not ours to use).
func machineIdle() (idle, total time.Duration, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, false
	}
	var ticks [8]int64
	for i := range ticks {
		if ticks[i], err = strconv.ParseInt(f[1+i], 10, 64); err != nil {
			return 0, 0, false
		}
	}
	var sum int64
	for _, t := range ticks {
		sum += t
	}
	const tick = 10 * time.Millisecond // USER_HZ
	return time.Duration(ticks[3]+ticks[4]) * tick, time.Duration(sum) * tick, true
}

// timeCPU runs fn on one thread and returns the CPU time it took there: zstd's cost in cycles,
// which a busy machine's scheduler does not stretch as it stretches the wall time (the wall
// time where the thread's clock cannot be read).
func timeCPU(fn func()) time.Duration {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c0, ok := threadCPU()
	t0 := time.Now()
	fn()
	if c1, ok1 := threadCPU(); ok && ok1 {
		return c1 - c0
	}
	return time.Since(t0)
}
