// Package qemutest gives tests of any package a real QEMU VM to work with: the tiny test guest
// built by scripts/guest/build.sh (a Debian kernel and a busybox initramfs that prints
// "VIRTUOSO GUEST BOOTED" and then "virtuoso guest tick N" every 0.5 s on its serial console),
// a driver in a temporary directory, helpers that watch the serial console, and a minimal VNC
// client that checks a console password.
package qemutest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/des"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
)

// Banner is the line the guest prints once it has booted.
const Banner = "VIRTUOSO GUEST BOOTED"

// Guest is the built test guest.
type Guest qemu.Guest

// BuildGuest returns the test guest, running scripts/guest/build.sh if its cache is empty or
// stale. It fails the test with the script's output if the guest cannot be built.
func BuildGuest(tb testing.TB) Guest {
	tb.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		tb.Fatal("qemutest: cannot locate the source tree")
	}
	script := filepath.Join(filepath.Dir(file), "..", "..", "..", "scripts", "guest", "build.sh")
	out, err := exec.Command("sh", script).Output()
	if err != nil {
		tb.Fatalf("qemutest: building the test guest with %s failed: %v\n%s\n(it needs the Debian packages linux-image-amd64 and busybox-static, installed or downloadable with apt-get)",
			script, err, exitStderr(err))
	}
	dir := strings.TrimSpace(string(out))
	if i := strings.LastIndexByte(dir, '\n'); i >= 0 {
		dir = dir[i+1:]
	}
	g, err := qemu.LoadGuest(dir)
	if err != nil {
		tb.Fatalf("qemutest: the guest build gave no usable manifest: %v", err)
	}
	return Guest(g)
}

// Kill ends the QEMU of running VM id with SIGKILL, as a crash would; the pid comes from the
// driver's runtime state in the VM's directory.
func Kill(tb testing.TB, d *qemu.Driver, id vm.ID) {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join(d.Dir(id), "state.json"))
	if err != nil {
		tb.Fatalf("qemutest: runtime state of a running vm: %v", err)
	}
	var st struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(raw, &st); err != nil || st.PID <= 0 {
		tb.Fatalf("qemutest: runtime state %s: %v", raw, err)
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		tb.Fatalf("qemutest: kill qemu %d: %v", st.PID, err)
	}
}

func exitStderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// Config returns a configuration of the test guest: direct kernel boot, the preconfigured disk
// as base image grown to diskMB.
func (g Guest) Config(id vm.ID, memoryMB, diskMB int64) vm.Config {
	return vm.Config{
		ID:            id,
		Name:          "test guest",
		SpeedBogomips: 1000,
		MemoryMB:      memoryMB,
		DiskMB:        diskMB,
		Processor:     "x86_64",
		OS:            "busybox",
		BaseImage:     g.Disk,
		Boot:          &vm.KernelBoot{Kernel: g.Kernel, Initrd: g.Initrd, Cmdline: g.Cmdline},
		MAC:           vm.MACFor(id),
	}
}

// DriverConfig is a driver configuration for tests: TCG (no probe), a temporary directory,
// the guest's cache as image directory, short timeouts and few suspend attempts.
func DriverConfig(tb testing.TB, g Guest) qemu.Config {
	cfg := qemu.DefaultConfig(tb.TempDir())
	cfg.Accel = qemu.AccelTCG
	cfg.ImageDirs = []string{g.Dir}
	cfg.StopTimeout = 10 * time.Second
	cfg.SuspendAttempts = 3
	cfg.SuspendInterval = 50 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(logWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return cfg
}

// logWriter sends a driver's log lines to the test log.
type logWriter struct{ tb testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// NewDriver starts a driver from cfg and closes it (stopping its VMs) when the test ends.
func NewDriver(tb testing.TB, cfg qemu.Config) *qemu.Driver {
	tb.Helper()
	d, err := qemu.New(cfg)
	if err != nil {
		tb.Fatalf("qemutest: %v", err)
	}
	tb.Cleanup(func() {
		if err := d.Close(); err != nil {
			tb.Errorf("qemutest: close driver: %v", err)
		}
	})
	return d
}

var tickRE = regexp.MustCompile(`virtuoso guest tick (\d+)`)

// Reattach re-attaches d to the running VM id and checks that its console answers a VNC
// handshake with the password d hands out.
func Reattach(tb testing.TB, ctx context.Context, d *qemu.Driver, id vm.ID) {
	tb.Helper()
	p, err := d.Reattach(ctx, id)
	if err != nil || p != vm.PowerRunning {
		tb.Fatalf("reattach = %v, %v; want running", p, err)
	}
	con, err := d.OpenConsole(ctx, id)
	if err != nil {
		tb.Fatalf("console of the re-attached vm: %v", err)
	}
	if _, err := VNCSession(ctx, con.Addr, con.Password); err != nil {
		tb.Fatalf("vnc of the re-attached vm: %v", err)
	}
}

// Serial returns the VM's serial console output so far.
func Serial(tb testing.TB, d *qemu.Driver, id vm.ID) string {
	b, err := os.ReadFile(filepath.Join(d.Dir(id), "serial.log"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		tb.Fatalf("qemutest: %v", err)
	}
	return string(b)
}

// LastTick returns the highest counter value the guest printed in out, or 0.
func LastTick(out string) int {
	last := 0
	for _, m := range tickRE.FindAllStringSubmatch(out, -1) {
		if n, _ := strconv.Atoi(m[1]); n > last {
			last = n
		}
	}
	return last
}

// WaitSerial waits until cond holds for the VM's serial output, failing the test with the
// output when ctx ends first.
func WaitSerial(tb testing.TB, ctx context.Context, d *qemu.Driver, id vm.ID, what string, cond func(out string) bool) string {
	tb.Helper()
	for {
		out := Serial(tb, d, id)
		if cond(out) {
			return out
		}
		select {
		case <-ctx.Done():
			tail := out
			if len(tail) > 2000 {
				tail = tail[len(tail)-2000:]
			}
			tb.Fatalf("qemutest: vm %s: waiting for %s: %v; serial console:\n%s", id, what, ctx.Err(), tail)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// VNCResult is what a VNC session saw.
type VNCResult struct {
	Width, Height int
	Name          string
	UpdateBytes   int // pixel bytes of the first framebuffer update
}

// ErrVNCAuth is returned by VNCSession when the server refuses the password.
var ErrVNCAuth = errors.New("vnc authentication failed")

// VNCSession connects to a VNC server at addr, authenticates with password (RFB 3.8, VNC
// authentication), and reads one full framebuffer update.
func VNCSession(ctx context.Context, addr, password string) (VNCResult, error) {
	var res VNCResult
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return res, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	r := bufio.NewReader(c)
	version := make([]byte, 12)
	if _, err := io.ReadFull(r, version); err != nil {
		return res, fmt.Errorf("protocol version: %w", err)
	}
	if !bytes.HasPrefix(version, []byte("RFB 003.")) {
		return res, fmt.Errorf("not an RFB server: %q", version)
	}
	if _, err := c.Write([]byte("RFB 003.008\n")); err != nil {
		return res, err
	}
	n, err := r.ReadByte()
	if err != nil {
		return res, err
	}
	if n == 0 {
		return res, fmt.Errorf("server refused: %s", readReason(r))
	}
	types := make([]byte, n)
	if _, err := io.ReadFull(r, types); err != nil {
		return res, err
	}
	if !bytes.Contains(types, []byte{2}) {
		return res, fmt.Errorf("server offers security types %v, not VNC authentication", types)
	}
	if _, err := c.Write([]byte{2}); err != nil {
		return res, err
	}
	challenge := make([]byte, 16)
	if _, err := io.ReadFull(r, challenge); err != nil {
		return res, err
	}
	response, err := vncResponse(password, challenge)
	if err != nil {
		return res, err
	}
	if _, err := c.Write(response); err != nil {
		return res, err
	}
	var result uint32
	if err := binary.Read(r, binary.BigEndian, &result); err != nil {
		return res, err
	}
	if result != 0 {
		return res, fmt.Errorf("%w: %s", ErrVNCAuth, readReason(r))
	}
	if _, err := c.Write([]byte{1}); err != nil { // ClientInit, shared
		return res, err
	}
	var init struct {
		Width, Height uint16
		BPP, Depth    uint8
		BigEndian     uint8
		TrueColor     uint8
		_             [3]uint16
		_             [3]uint8
		_             [3]uint8
		NameLen       uint32
	}
	if err := binary.Read(r, binary.BigEndian, &init); err != nil {
		return res, fmt.Errorf("server init: %w", err)
	}
	if init.NameLen > 1<<16 {
		return res, fmt.Errorf("server name of %d bytes", init.NameLen)
	}
	name := make([]byte, init.NameLen)
	if _, err := io.ReadFull(r, name); err != nil {
		return res, err
	}
	res.Width, res.Height, res.Name = int(init.Width), int(init.Height), string(name)
	// FramebufferUpdateRequest for the whole screen, not incremental; no SetEncodings, so the
	// server answers in raw encoding.
	req := []byte{3, 0, 0, 0, 0, 0, byte(init.Width >> 8), byte(init.Width), byte(init.Height >> 8), byte(init.Height)}
	if _, err := c.Write(req); err != nil {
		return res, err
	}
	for {
		typ, err := r.ReadByte()
		if err != nil {
			return res, fmt.Errorf("waiting for framebuffer update: %w", err)
		}
		if typ != 0 {
			return res, fmt.Errorf("unexpected server message type %d", typ)
		}
		var hdr struct {
			_     uint8
			Rects uint16
		}
		if err := binary.Read(r, binary.BigEndian, &hdr); err != nil {
			return res, err
		}
		for i := 0; i < int(hdr.Rects); i++ {
			var rect struct {
				X, Y, W, H uint16
				Encoding   int32
			}
			if err := binary.Read(r, binary.BigEndian, &rect); err != nil {
				return res, err
			}
			if rect.Encoding != 0 {
				// Pseudo-encodings (e.g. a desktop resize) carry no pixels in raw mode.
				if rect.Encoding < 0 {
					continue
				}
				return res, fmt.Errorf("unexpected encoding %d", rect.Encoding)
			}
			size := int(rect.W) * int(rect.H) * int(init.BPP) / 8
			if _, err := io.CopyN(io.Discard, r, int64(size)); err != nil {
				return res, fmt.Errorf("rectangle pixels: %w", err)
			}
			res.UpdateBytes += size
		}
		if res.UpdateBytes > 0 {
			return res, nil
		}
	}
}

func readReason(r io.Reader) string {
	var n uint32
	if binary.Read(r, binary.BigEndian, &n) != nil || n > 4096 {
		return "(no reason)"
	}
	b := make([]byte, n)
	io.ReadFull(r, b)
	return string(b)
}

// vncResponse encrypts the challenge with DES in ECB mode, keyed by the password padded to 8
// bytes with each byte's bits reversed (the VNC authentication scheme's quirk).
func vncResponse(password string, challenge []byte) ([]byte, error) {
	key := make([]byte, 8)
	copy(key, password)
	for i, b := range key {
		var rev byte
		for bit := 0; bit < 8; bit++ {
			if b&(1<<bit) != 0 {
				rev |= 0x80 >> bit
			}
		}
		key[i] = rev
	}
	block, err := des.NewCipher(key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 16)
	block.Encrypt(out[:8], challenge[:8])
	block.Encrypt(out[8:], challenge[8:])
	return out, nil
}
