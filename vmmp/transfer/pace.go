package transfer

import (
	"sync"
	"time"
)

// CompressionPolicy is how a source decides to compress the blocks it sends, when the
// destination allows it (WithCompression).
type CompressionPolicy int

const (
	// CompressAuto compresses while it moves the data faster: where the link binds (a slow
	// network), compressed blocks go faster; where the CPU binds (loopback, a fast network,
	// busy cores), they go slower and the source sends them as they are.
	CompressAuto CompressionPolicy = iota
	// CompressAlways compresses every block that shrinks, whatever binds.
	CompressAlways
)

// The pacer's cycle, in batches (batchBytes each): a probe with compression, a probe without,
// then the faster of the two for a hold; and again, so that a link or a load that changes
// during a transfer changes the choice.
const (
	// warmupBatches go uncompressed before the first probe: until the stream's buffers (the
	// muxer's window, the sockets') are full, every batch goes fast and a probe measures
	// nothing of the link. Uncompressed, they fill them soonest, and cost no CPU where the
	// CPU binds.
	warmupBatches = 16
	probeBatches  = 8
	holdBatches   = 64
	// paysBy is how much faster compressed blocks must go for compression to be kept: a tie
	// is decided for the CPU.
	paysBy = 1.05
)

// pacer decides, batch by batch, whether the source compresses, by measuring what each
// choice achieves while the transfer runs: the rate at which the sending goroutine gets the
// blocks' bytes onto the stream, in the probe batches sent with compression and in those sent
// without. That rate is the transfer's: it waits for the slowest of reading, hashing,
// compressing and the link (with the destination behind it). Only batches that carried data
// to send count; reused blocks and holes say nothing of compression.
type pacer struct {
	always bool
	now    func() time.Time

	mu      sync.Mutex
	cycle   int
	phase   int // 0 probe on, 1 probe off, 2 hold, 3 warming up
	issued  int // batches of the phase handed out
	hold    bool
	decided bool // the hold of this cycle was chosen from its probes
	last    time.Time
	// What the probes of this cycle measured, off [0] and on [1]: batches, bytes, time.
	n     [2]int
	bytes [2]int64
	dur   [2]time.Duration
}

// paceTag is what the pacer told a batch: compress or not, and whether it is a probe of which
// cycle.
type paceTag struct {
	on    bool
	probe bool
	cycle int
}

func newPacer(p CompressionPolicy) *pacer {
	return &pacer{always: p == CompressAlways, now: time.Now, phase: 3, cycle: -1}
}

// next is the tag of the batch a worker starts now.
func (p *pacer) next() paceTag {
	if p.always {
		return paceTag{on: true}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.issued++
	switch {
	case p.phase == 3 && p.issued > warmupBatches:
		p.cycle++
		p.phase, p.issued = 0, 1
	case p.phase == 0 && p.issued > probeBatches:
		p.phase, p.issued = 1, 1
	case p.phase == 1 && p.issued > probeBatches:
		p.phase, p.issued = 2, 1
	case p.phase == 2 && p.issued > holdBatches:
		p.cycle++
		p.phase, p.issued, p.decided = 0, 1, false
		p.n, p.bytes, p.dur = [2]int{}, [2]int64{}, [2]time.Duration{}
	}
	switch p.phase {
	case 0:
		return paceTag{on: true, probe: true, cycle: p.cycle}
	case 1:
		return paceTag{on: false, probe: true, cycle: p.cycle}
	}
	return paceTag{on: p.hold, cycle: p.cycle} // a hold, or the warm-up (hold is false until a probe decides)
}

// emitted records that the sending goroutine finished a batch tagged t that carried raw bytes
// of block data: the time since it finished the previous batch is what this one took.
func (p *pacer) emitted(t paceTag, raw int64) {
	if p.always {
		return
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	d := now.Sub(p.last)
	first := p.last.IsZero()
	p.last = now
	if first || raw == 0 || !t.probe || t.cycle != p.cycle {
		return
	}
	i := 0
	if t.on {
		i = 1
	}
	p.n[i]++
	p.bytes[i] += raw
	p.dur[i] += d
	p.decide()
}

// decide picks the faster mode of the probes, once each was measured on half its batches or
// more (a probe's last batches may carry no data); until then the last choice stands.
func (p *pacer) decide() {
	if p.decided || p.n[0] < probeBatches/2 || p.n[1] < probeBatches/2 || p.dur[0] <= 0 || p.dur[1] <= 0 {
		return
	}
	p.decided = true
	off := float64(p.bytes[0]) / p.dur[0].Seconds()
	on := float64(p.bytes[1]) / p.dur[1].Seconds()
	p.hold = on > off*paysBy
}
