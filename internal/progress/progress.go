// Package progress shows the progress of long work to the person at the command line: a bar
// redrawn in place on a terminal, and a line now and then where the output is a file or a
// pipe, so that logs stay readable.
package progress

import (
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	barWidth    = 24
	redrawEvery = 100 * time.Millisecond // on a terminal
	lineEvery   = 5 * time.Second        // elsewhere, also on every tenth of the way
)

// Bar draws the progress of one piece of work. It is safe for concurrent use.
type Bar struct {
	w     io.Writer
	label string
	tty   bool
	now   func() time.Time

	mu      sync.Mutex
	last    time.Time // of the last drawing
	tenth   int       // last tenth of the way reported on a line
	drawn   int       // width of the bar on the terminal's current line
	stopped bool
}

// New returns a bar for the work named label, drawn on w. On a terminal it is redrawn in
// place at most ten times a second; elsewhere a line is written on every tenth of the way
// and at least every five seconds.
func New(w io.Writer, label string) *Bar {
	return &Bar{w: w, label: label, tty: IsTerminal(w), now: time.Now, tenth: -1}
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Update shows done of total bytes, at rate bytes per second with eta left (0: unknown).
func (b *Bar) Update(done, total int64, rate float64, eta time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return
	}
	now := b.now()
	if b.tty {
		if now.Sub(b.last) < redrawEvery && done < total {
			return
		}
		b.last = now
		line := b.line(done, total, rate, eta)
		pad := max(0, b.drawn-len(line))
		fmt.Fprintf(b.w, "\r%s%s", line, strings.Repeat(" ", pad))
		b.drawn = len(line)
		return
	}
	tenth := -1
	if total > 0 {
		tenth = int(min(10, done*10/total))
	}
	if tenth == b.tenth && now.Sub(b.last) < lineEvery {
		return
	}
	b.tenth, b.last = tenth, now
	fmt.Fprintln(b.w, b.line(done, total, rate, eta))
}

// Status shows msg in place of the bar on a terminal (e.g. "running" for work that reports
// no progress); elsewhere it writes nothing, and Finish says how it ended.
func (b *Bar) Status(msg string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped || !b.tty {
		return
	}
	line := b.label + "  " + msg
	fmt.Fprintf(b.w, "\r%s%s", line, strings.Repeat(" ", max(0, b.drawn-len(line))))
	b.drawn = len(line)
}

// Finish ends the bar with a last line, msg after the label (e.g. "done in 3.2s").
func (b *Bar) Finish(msg string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return
	}
	b.stopped = true
	line := b.label + "  " + msg
	if b.tty {
		pad := max(0, b.drawn-len(line))
		fmt.Fprintf(b.w, "\r%s%s\n", line, strings.Repeat(" ", pad))
		return
	}
	fmt.Fprintln(b.w, line)
}

// line is one rendering: label, bar, percentage, bytes, rate and ETA.
func (b *Bar) line(done, total int64, rate float64, eta time.Duration) string {
	var s strings.Builder
	s.WriteString(b.label)
	s.WriteString("  ")
	frac := 0.0
	if total > 0 {
		frac = math.Min(1, math.Max(0, float64(done)/float64(total)))
	}
	fill := int(frac * barWidth)
	s.WriteString("[")
	s.WriteString(strings.Repeat("=", fill))
	if fill < barWidth {
		s.WriteString(">")
		s.WriteString(strings.Repeat(" ", barWidth-fill-1))
	}
	s.WriteString("]")
	fmt.Fprintf(&s, " %3.0f%%  %s / %s", frac*100, FormatSize(done), FormatSize(total))
	if rate > 0 {
		fmt.Fprintf(&s, "  %s/s", FormatSize(int64(rate)))
	}
	if eta > 0 {
		fmt.Fprintf(&s, "  ETA %s", FormatETA(eta))
	}
	return s.String()
}

// FormatETA prints a duration left to the second, or to the minute past an hour.
func FormatETA(d time.Duration) string {
	switch {
	case d < time.Second:
		return "<1s"
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}

// FormatSize prints a byte count with a binary unit.
func FormatSize(n int64) string {
	const units = "KMGTP"
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	v, u := float64(n), -1
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f%ciB", v, units[u])
	}
	return fmt.Sprintf("%.2f%ciB", v, units[u])
}
