package bench

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain lets this test binary stand in for `virtuoso` where the benchmark runs itself
// again inside a namespace: `bench transfer-side … SPEC`, `bench transfer-dest … SPEC`.
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "bench" {
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		spec := os.Args[len(os.Args)-1]
		var err error
		switch os.Args[2] {
		case "transfer-side":
			err = TransferSideMain(context.Background(), spec, log, os.Stderr, os.Stdout)
		case "transfer-dest":
			err = TransferDestMain(context.Background(), spec, log, os.Stdin, os.Stdout)
		default:
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			log.Error("bench "+os.Args[2], "err", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// needRoot fails a test that builds namespaces when this process may not.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("emulated links need root (ip netns, tc, /dev/net/tun): run the tests as root")
	}
}

// inNamespace runs fn on a thread of its own that has entered namespace ns; sockets made
// there belong to ns. The thread ends with fn, so no other goroutine runs in ns.
func inNamespace(t *testing.T, ns string, fn func()) {
	t.Helper()
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		fn()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestEmulatedLink builds each kind of link, carries a TCP connection and data across it, and
// checks what the link adds: nothing measurable over a veth pair, at least the round trip
// asked for through the TUN devices; closing it leaves no namespace behind.
func TestEmulatedLink(t *testing.T) {
	needRoot(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i, tc := range []struct {
		link   string
		minRTT time.Duration
		kind   string
	}{
		{"1gbit", 0, "veth"},
		{"100mbit+20ms", 20 * time.Millisecond, "TUN"},
	} {
		t.Run(tc.link, func(t *testing.T) {
			l, err := newEmulatedLink(t.Context(), tc.link, 200+i, log)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(l.close)
			if !strings.Contains(l.shaping, tc.kind) {
				t.Errorf("shaping %q, want %s", l.shaping, tc.kind)
			}
			var ln net.Listener
			inNamespace(t, l.nsD, func() { ln, err = net.Listen("tcp", net.JoinHostPort(l.ipD, "0")) })
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan []byte, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				b, _ := io.ReadAll(c)
				got <- b
			}()
			want := bytes.Repeat([]byte("virtuoso"), 256<<10) // 2 MiB, past any window
			var rtt time.Duration
			inNamespace(t, l.nsO, func() {
				start := time.Now()
				var c net.Conn
				if c, err = net.Dial("tcp", ln.Addr().String()); err != nil {
					return
				}
				rtt = time.Since(start) // the handshake: one round trip
				if _, err = c.Write(want); err == nil {
					err = c.Close()
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if b := <-got; !bytes.Equal(b, want) {
				t.Fatalf("%d bytes arrived, want the %d sent", len(b), len(want))
			}
			ln.Close()
			t.Logf("%s: connect took %v", tc.link, rtt)
			if rtt < tc.minRTT {
				t.Errorf("a round trip took %v, want at least %v", rtt, tc.minRTT)
			}
			if _, err := os.Stat("/dev/net/tun"); err != nil {
				t.Fatal(err)
			}
			l.close()
			out, err := exec.Command("ip", "netns", "list").Output()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(out), l.nsO) || strings.Contains(string(out), l.nsD) {
				t.Errorf("namespaces left after close:\n%s", out)
			}
		})
	}
}

// TestTransferOverLink runs the transfer benchmark over an emulated link with a delay, its
// receiving node, rsync daemon and sshd in the other namespace (this test binary runs itself
// there as `virtuoso` would), so the link's side keeps working.
func TestTransferOverLink(t *testing.T) {
	needRoot(t)
	var out, prog bytes.Buffer
	opts := TransferOptions{Dir: t.TempDir(), Size: 8 << 20, Changed: 0.02, Links: []string{"1gbit+4ms"}, Progress: &prog}
	if err := Transfer(t.Context(), opts, &out); err != nil {
		t.Log("progress:\n" + prog.String())
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	for _, want := range []string{"over 1gbit+4ms (TUN devices", "libp2p stream, raw", "blockdiff, dirty bitmap", "rsync -W", "rsync over ssh -W", "goals:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "n/a") || strings.Contains(out.String(), "missing") {
		t.Errorf("a method did not run:\n%s", out.String())
	}
	// The receiving node's progress crossed the namespaces.
	if !strings.Contains(prog.String(), "changed    blockdiff                        [========================] 100%") {
		t.Errorf("progress lacks the receiving node's bar:\n%s", prog.String())
	}
}
