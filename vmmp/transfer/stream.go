package transfer

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// idleStream is a transfer stream with a watchdog: it is reset when no byte has moved in
// either direction for the idle timeout (a stalled or vanished peer), however long the
// transfer itself runs. Per-operation deadlines would not do: while one side streams
// blocks for minutes, the other legitimately reads nothing.
type idleStream struct {
	st      network.Stream
	idle    time.Duration
	last    atomic.Int64 // unix ns of the last progress
	expired atomic.Bool

	// blocked is how long writes have blocked in all (ns): the link's back-pressure, which
	// the source's pacer reads.
	blocked atomic.Int64

	// rate, when set, caps reads at that many bytes a second: a slow link, in tests.
	rate     int64
	readNext time.Time // when the link may deliver again
}

// abortGrace is how long a failing side keeps writing, to get its ERROR frame out.
const abortGrace = 5 * time.Second

// newIdleStream wraps st; its watchdog runs until ctx ends.
func newIdleStream(ctx context.Context, st network.Stream, idle time.Duration) *idleStream {
	s := &idleStream{st: st, idle: idle}
	s.last.Store(time.Now().UnixNano())
	go s.watch(ctx)
	return s
}

func (s *idleStream) watch(ctx context.Context) {
	t := time.NewTicker(max(s.idle/8, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if now.Sub(time.Unix(0, s.last.Load())) > s.idle {
				s.expired.Store(true)
				_ = s.st.Reset()
				return
			}
		}
	}
}

func (s *idleStream) err(err error) error {
	if err != nil && s.expired.Load() {
		return fmt.Errorf("no progress for %v: %w", s.idle, err)
	}
	return err
}

func (s *idleStream) Read(p []byte) (int, error) {
	if s.rate > 0 {
		p = p[:min(len(p), int(max(s.rate/50, 1)))]
	}
	n, err := s.st.Read(p)
	if n > 0 {
		s.last.Store(time.Now().UnixNano())
		if s.rate > 0 {
			s.throttle(n)
		}
	}
	return n, s.err(err)
}

// throttle sleeps for as long as the link takes to carry n bytes after what it carried
// before; a link that idled saves up nothing.
func (s *idleStream) throttle(n int) {
	now := time.Now()
	if s.readNext.Before(now) {
		s.readNext = now
	}
	s.readNext = s.readNext.Add(time.Duration(float64(n) / float64(s.rate) * float64(time.Second)))
	time.Sleep(s.readNext.Sub(now))
}

func (s *idleStream) Write(p []byte) (int, error) {
	start := time.Now()
	n, err := s.st.Write(p)
	end := time.Now()
	s.blocked.Add(int64(end.Sub(start)))
	if n > 0 {
		s.last.Store(end.UnixNano())
	}
	return n, s.err(err)
}

// abort unblocks a session that failed: its reader at once, its writer after a grace
// period in which it may still report the failure.
func (s *idleStream) abort() {
	_ = s.st.SetWriteDeadline(time.Now().Add(abortGrace))
	_ = s.st.CloseRead()
}
