package progress

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// clock is a hand-moved time source.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newBar(out *bytes.Buffer, tty bool) (*Bar, *clock) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	b := New(out, "first blockdiff")
	b.tty, b.now = tty, c.now
	return b, c
}

func TestLinesWhenNotATerminal(t *testing.T) {
	var out bytes.Buffer
	b, c := newBar(&out, false)
	const total = 4 << 30
	for done := int64(0); done <= total; done += 64 << 20 {
		b.Update(done, total, 800<<20, time.Duration(float64(total-done)/(800<<20)*float64(time.Second)))
		c.advance(80 * time.Millisecond)
	}
	b.Status("running") // shown on terminals only
	b.Finish("done in 5.2s")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	// One line per tenth of the way (0% to 100%: 11), and the last one.
	if len(lines) != 12 {
		t.Fatalf("%d lines, want 12:\n%s", len(lines), out.String())
	}
	if strings.Contains(out.String(), "\r") {
		t.Errorf("carriage return outside a terminal:\n%q", out.String())
	}
	want := "first blockdiff  [============>           ]  50%  2GiB / 4GiB  800MiB/s  ETA 3s"
	if lines[5] != want {
		t.Errorf("halfway line\n got %q\nwant %q", lines[5], want)
	}
	if lines[11] != "first blockdiff  done in 5.2s" {
		t.Errorf("last line %q", lines[11])
	}
	b.Update(total, total, 1, 0) // after Finish: ignored
	if n := strings.Count(out.String(), "\n"); n != 12 {
		t.Errorf("update after finish drew: %d lines", n)
	}
}

func TestSlowWorkStillReportsOutsideATerminal(t *testing.T) {
	var out bytes.Buffer
	b, c := newBar(&out, false)
	for range 20 {
		b.Update(1<<20, 1<<40, 1<<20, time.Hour) // stuck under a tenth for 20 s
		c.advance(time.Second)
	}
	if n := strings.Count(out.String(), "\n"); n != 4 {
		t.Errorf("%d lines in 20 s of slow work, want 4 (every 5 s):\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "ETA 1h0m0s") {
		t.Errorf("no ETA in hours:\n%s", out.String())
	}
}

func TestRedrawOnATerminal(t *testing.T) {
	var out bytes.Buffer
	b, c := newBar(&out, true)
	b.Status("connecting")
	b.Update(0, 100<<20, 0, 0)
	b.Update(10<<20, 100<<20, 0, 0) // within 100 ms: not drawn
	c.advance(150 * time.Millisecond)
	b.Update(50<<20, 100<<20, 10<<20, 5*time.Second)
	b.Update(100<<20, 100<<20, 10<<20, 0) // the end is always drawn
	b.Finish("done")
	s := out.String()
	if n := strings.Count(s, "\r"); n != 5 {
		t.Errorf("%d redraws, want 5: %q", n, s)
	}
	if strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") {
		t.Errorf("want one newline, at the end: %q", s)
	}
	if !strings.Contains(s, " 50%  50MiB / 100MiB  10MiB/s  ETA 5s") || !strings.Contains(s, "100%") {
		t.Errorf("missing states: %q", s)
	}
	// The short last line blanks out the rest of the longer bar before it.
	last := s[strings.LastIndex(s, "\r")+1:]
	if !strings.HasPrefix(last, "first blockdiff  done ") || len(strings.TrimRight(last, "\n")) < 60 {
		t.Errorf("last redraw does not cover the bar: %q", last)
	}
}

// TestIsTerminal opens a real pseudo-terminal.
func TestIsTerminal(t *testing.T) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	if !IsTerminal(slave) {
		t.Error("a pseudo-terminal is not a terminal")
	}
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) || IsTerminal(&bytes.Buffer{}) {
		t.Error("a file or a buffer is a terminal")
	}
}

func TestFormat(t *testing.T) {
	for in, want := range map[int64]string{
		0: "0B", 1023: "1023B", 1024: "1KiB", 64 << 10: "64KiB", 1536: "1.50KiB",
		4 << 30: "4GiB", 41700000: "39.77MiB", 1 << 50: "1PiB",
	} {
		if got := FormatSize(in); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[time.Duration]string{
		300 * time.Millisecond: "<1s", 2400 * time.Millisecond: "2s", 90 * time.Second: "1m30s",
		3*time.Hour + 20*time.Second: "3h0m0s",
	} {
		if got := FormatETA(in); got != want {
			t.Errorf("FormatETA(%v) = %q, want %q", in, got, want)
		}
	}
}
