package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/testwait"
)

// binary is the virtuoso binary built once for the process-level tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "virtuoso-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "virtuoso")
	build := exec.Command("go", "build", "-race", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build virtuoso:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs the binary to completion and returns its exit code, stdout and stderr.
func run(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return code, out.String(), errb.String()
}

func mustRun(t testing.TB, args ...string) string {
	t.Helper()
	code, out, errOut := run(t, args...)
	if code != 0 {
		t.Fatalf("virtuoso %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// startNode runs `virtuoso node` in the background until the test ends and waits until its
// API answers.
func startNode(t testing.TB, home string, extra ...string) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"node", "--home", home}, extra...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var logs lockedBuffer // written by the command's copying goroutine while the test reads it
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("node %s did not stop cleanly: %v\n%s", home, err, logs.String())
			}
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			t.Errorf("node %s did not stop within 15s of SIGINT", home)
		}
	})
	testwait.Eventually(t, 30*time.Second, func() error {
		select {
		case err := <-exited:
			t.Fatalf("node %s exited: %v\n%s", home, err, logs.String())
		default:
		}
		if code, _, _ := run(t, "peers", "--home", home); code != 0 {
			return fmt.Errorf("node %s API not up\n%s", home, logs.String())
		}
		return nil
	})
}

// lockedBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type identity struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
}

func nodeID(t testing.TB, home string) identity {
	t.Helper()
	var id identity
	if err := json.Unmarshal([]byte(mustRun(t, "id", "--home", home, "--json")), &id); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestThreeNodesFindEachOther(t *testing.T) {
	dir := t.TempDir()
	homes := []string{filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")}
	mustRun(t, "init", "--home", homes[0])
	startNode(t, homes[0])
	first := nodeID(t, homes[0])
	for _, h := range homes[1:] {
		mustRun(t, "init", "--home", h, "--bootstrap", first.Addrs[0])
		startNode(t, h)
	}
	ids := make([]string, len(homes))
	for i, h := range homes {
		ids[i] = nodeID(t, h).PeerID
	}
	for i, h := range homes {
		want := slices.Delete(slices.Clone(ids), i, i+1)
		testwait.Eventually(t, 20*time.Second, func() error {
			var peers []struct {
				PeerID string `json:"peer_id"`
			}
			if err := json.Unmarshal([]byte(mustRun(t, "peers", "--home", h, "--json")), &peers); err != nil {
				return err
			}
			var got []string
			for _, p := range peers {
				got = append(got, p.PeerID)
			}
			if slices.ContainsFunc(want, func(w string) bool { return !slices.Contains(got, w) }) {
				return fmt.Errorf("peers of %s = %v; want %v", h, got, want)
			}
			return nil
		})
	}
}

func TestBadInput(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	running := filepath.Join(t.TempDir(), "running")
	mustRun(t, "init", "--home", running)
	startNode(t, running)

	for _, tc := range []struct {
		name  string
		setup func(home string) // runs on an initialised home
		args  func(home string) []string
		code  int
		want  string
	}{
		{"unknown flag", nil, func(h string) []string { return []string{"node", "--home", h, "--bogus"} }, 2, "flag provided but not defined: -bogus"},
		{"unknown command", nil, func(h string) []string { return []string{"frobnicate"} }, 2, "unknown command"},
		{"destinations of a vm one does not have", nil, func(h string) []string { return []string{"migrate", "bf6ca656", "--home", running} }, 1, "no vm of yours"},
		{"migrate with hours out of range", nil, func(h string) []string { return []string{"migrate", "bf6ca656", "--hours", "25", "--home", running} }, 1, "--hours 25"},
		{"migrate by an unknown method", nil, func(h string) []string {
			return []string{"migrate", "bf6ca656", "--machine", "a1f6", "--method", "ftp", "--home", running}
		}, 2, "use blockdiff or full"},
		{"migrate to a machine not in the book", nil, func(h string) []string {
			return []string{"migrate", "bf6ca656", "--machine", "a1f6", "--home", running}
		}, 1, "no machine \"a1f6\" in the offer book"},
		{"ledger deposit on a node that is no coordinator", nil, func(h string) []string {
			return []string{"ledger", "deposit", "12D3KooWGzYMiWfhaXgvPpMHG8HWdQMPqjmWfdRy3MEcCEQrWx1x", "5", "--home", running}
		}, 1, "not a coordinator"},
		{"missing config", func(h string) { os.Remove(filepath.Join(h, "config.toml")) },
			func(h string) []string { return []string{"node", "--home", h} }, 1, "run `virtuoso init` first"},
		{"corrupt config", func(h string) { os.WriteFile(filepath.Join(h, "config.toml"), []byte("profile = [\n"), 0o600) },
			func(h string) []string { return []string{"node", "--home", h} }, 1, "is corrupt"},
		{"unknown config key", func(h string) { appendFile(h, "config.toml", "\nlisten_everywhere = true\n") },
			func(h string) []string { return []string{"node", "--home", h} }, 1, "unknown keys log.listen_everywhere"},
		{"corrupt key file", func(h string) { os.WriteFile(filepath.Join(h, "identity.key"), []byte("garbage"), 0o600) },
			func(h string) []string { return []string{"node", "--home", h} }, 1, "is corrupt"},
		{"unreadable key file", func(h string) {
			os.Remove(filepath.Join(h, "identity.key"))
			os.Mkdir(filepath.Join(h, "identity.key"), 0o700)
		}, func(h string) []string { return []string{"node", "--home", h} }, 1, "is unreadable"},
		{"API port in use", nil, func(h string) []string { return []string{"node", "--home", h, "--api", busy.Addr().String()} }, 1, "in use"},
		{"bootstrap not a multiaddr", nil, func(h string) []string { return []string{"node", "--home", h, "--bootstrap", "not-an-address"} }, 1, "is not a multiaddr"},
		{"bootstrap without peer ID", nil, func(h string) []string { return []string{"node", "--home", h, "--bootstrap", "/ip4/127.0.0.1/tcp/1"} }, 1, "no /p2p/<peer ID>"},
		{"bootstrap off loopback in local profile", nil, func(h string) []string {
			return []string{"node", "--home", h, "--bootstrap", "/ip4/192.0.2.1/tcp/1/p2p/12D3KooWEeo6MrTBB6hsUuxr6XtHRNXc3C9g9oDHpHJ2qGoSLTJw"}
		}, 1, "not on loopback"},
		{"second node on one home", nil, func(string) []string { return []string{"node", "--home", running} }, 1, "another node is already running"},
		{"init over an existing home", nil, func(h string) []string { return []string{"init", "--home", h} }, 1, "already initialised"},
		{"bad profile", nil, func(h string) []string { return []string{"init", "--home", h + "-new", "--profile", "galactic"} }, 1, "unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := filepath.Join(t.TempDir(), "home")
			mustRun(t, "init", "--home", home)
			if tc.setup != nil {
				tc.setup(home)
			}
			before := snapshot(t, home)
			code, _, stderr := run(t, tc.args(home)...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tc.code, stderr)
			}
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if len(lines) != 1 || !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr = %q; want one line containing %q", stderr, tc.want)
			}
			if after := snapshot(t, home); after != before {
				t.Errorf("the failed command changed the home's files:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func appendFile(dir, name, s string) {
	f, _ := os.OpenFile(filepath.Join(dir, name), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(s)
	f.Close()
}

// snapshot describes the home's top-level files and their contents, to prove nothing changed.
func snapshot(t testing.TB, home string) string {
	var b strings.Builder
	for _, name := range []string{"config.toml", "identity.key", "api.token"} {
		raw, err := os.ReadFile(filepath.Join(home, name))
		fmt.Fprintf(&b, "%s:%x:%v ", name, raw, err != nil)
	}
	return b.String()
}

func TestHelpAndVersion(t *testing.T) {
	for _, cmd := range []string{"init", "node", "id", "peers", "events", "demo", "version"} {
		code, out, _ := run(t, cmd, "--help")
		if code != 0 || !strings.Contains(out, "Usage: virtuoso "+cmd) {
			t.Errorf("%s --help: exit %d, %q", cmd, code, firstLine(out))
		}
	}
	if out := mustRun(t, "version"); !strings.HasPrefix(out, "virtuoso ") {
		t.Errorf("version = %q", out)
	}
}

func firstLine(s string) string {
	line, _, _ := bufio.NewReader(strings.NewReader(s)).ReadLine()
	return string(line)
}

// editConfig replaces lines of a home's config.toml, in old, new pairs; each old must be there.
func editConfig(t testing.TB, home string, oldNew ...string) {
	t.Helper()
	path := filepath.Join(home, "config.toml")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !strings.Contains(text, oldNew[i]) {
			t.Fatalf("config.toml has no %q", oldNew[i])
		}
		text = strings.Replace(text, oldNew[i], oldNew[i+1], 1)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
