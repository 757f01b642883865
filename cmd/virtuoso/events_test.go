package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEventsCommand: `virtuoso events` prints what happened on a running node, in order, one
// line a record; --follow prints what happens next as it happens, until Ctrl-C; without a
// running node it says how to start one.
func TestEventsCommand(t *testing.T) {
	home := filepath.Join(t.TempDir(), "provider")
	mustRun(t, "init", "--home", home, "--provider")
	editConfig(t, home, `accel = "auto"`, `accel = "tcg"`) // KVM here is not usable
	if code, _, stderr := run(t, "events", "--home", home); code != 1 || !strings.Contains(stderr, "no node is running on home") ||
		!strings.Contains(stderr, "virtuoso node --home "+home) {
		t.Fatalf("events without a running node: exit %d, %q; want one saying how to start it", code, stderr)
	}
	startNode(t, home)

	follower := exec.Command(binary, "events", "--follow", "--home", home)
	follower.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := follower.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var followerErr lockedBuffer
	follower.Stderr = &followerErr
	if err := follower.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- follower.Wait()
	}()
	t.Cleanup(func() { follower.Process.Kill() })

	added := mustRun(t, "machine", "add", "--home", home, "--name", "rack-1", "--speed", "4000", "--memory", "2048", "--storage", "8192")
	id := strings.Fields(strings.TrimPrefix(added, "added machine "))[0]
	mustRun(t, "machine", "edit", id, "--home", home, "--name", "rack-2")
	mustRun(t, "machine", "rm", id, "--home", home)
	want := []string{
		`machine.added    machine ` + id[:8] + ` "rack-1" added: 4000 bogomips, 2048 MB memory, 8192 MB storage`,
		`machine.edited   machine ` + id[:8] + ` "rack-2" edited`,
		`machine.removed  machine ` + id[:8] + ` "rack-2" removed`,
	}
	// The follower prints them as they happen (those before it connected as its first lines).
	for _, w := range want {
		select {
		case line, ok := <-lines:
			if !ok || !strings.HasSuffix(line, w) || !printsTime(line) {
				t.Fatalf("events --follow printed %q (open %v); want a line with the time and %q\n%s", line, ok, w, followerErr.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("events --follow printed no %q within 20s\n%s", w, followerErr.String())
		}
	}

	// Without --follow: the newest records, in order, filtered.
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, want},
		{[]string{"--kind", "machine.edited"}, want[1:2]},
		{[]string{"--kind", "machine", "-n", "2"}, want[1:]},
		{[]string{"--kind", "vm"}, nil},
	} {
		out := mustRun(t, append([]string{"events", "--home", home}, tc.args...)...)
		got := strings.Split(strings.TrimSpace(out), "\n")
		if out == "" {
			got = nil
		}
		if len(got) != len(tc.want) {
			t.Fatalf("events %v printed\n%s\nwant %d lines ending\n%s", tc.args, out, len(tc.want), strings.Join(tc.want, "\n"))
		}
		for i, w := range tc.want {
			if !strings.HasSuffix(got[i], w) {
				t.Fatalf("events %v line %d = %q; want it to end %q", tc.args, i+1, got[i], w)
			}
		}
	}
	var rec struct {
		Seq     uint64 `json:"seq"`
		Kind    string `json:"kind"`
		Message string `json:"message"`
		Data    struct {
			Machine struct {
				ID string `json:"id"`
			} `json:"machine"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, "events", "--home", home, "--json", "-n", "1")), &rec); err != nil ||
		rec.Seq != 3 || rec.Kind != "machine.removed" || rec.Data.Machine.ID != id {
		t.Fatalf("events --json -n 1: %+v, %v; want record 3, the machine removed, with its ID in the data", rec, err)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kind", "nope"}, `kind "nope" is unknown: use one of vm.status`},
		{[]string{"--vm", "not-an-id"}, "not a VM ID"},
		{[]string{"-n", "0"}, "-n 0 is out of range"},
	} {
		code, _, stderr := run(t, append([]string{"events", "--home", home}, tc.args...)...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Fatalf("events %v: exit %d, %q; want exit 1 saying %q", tc.args, code, stderr, tc.want)
		}
	}
	if _, _, stderr := run(t, "events", "--home", home, "--kind", "nope"); !strings.Contains(stderr, "`virtuoso events --help` lists the kinds") {
		t.Fatalf("events --kind nope: %q; want the remedy", stderr)
	}

	// Ctrl-C ends the follower cleanly.
	follower.Process.Signal(os.Interrupt)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("events --follow after Ctrl-C: %v\n%s", err, followerErr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("events --follow did not end within 10s of Ctrl-C")
	}
}

// printsTime reports whether line starts with a time as `virtuoso events` prints it.
func printsTime(line string) bool {
	const layout = "2006-01-02 15:04:05.000"
	if len(line) < len(layout) {
		return false
	}
	_, err := time.ParseInLocation(layout, line[:len(layout)], time.Local)
	return err == nil
}
