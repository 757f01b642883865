package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/testwait"
)

// TestBuyerCommands walks the buyer's path with the CLI against two node processes: a provider
// sells a machine, the buyer finds it, stores a VM there and controls it.
func TestBuyerCommands(t *testing.T) {
	dir := t.TempDir()
	prov, buyer := filepath.Join(dir, "provider"), filepath.Join(dir, "buyer")
	mustRun(t, "init", "--home", prov, "--provider")
	editConfig(t, prov, `accel = "auto"`, `accel = "tcg"`) // KVM here is not usable
	startNode(t, prov)
	mustRun(t, "init", "--home", buyer, "--bootstrap", nodeID(t, prov).Addrs[0])
	startNode(t, buyer)

	out := mustRun(t, "machine", "add", "--home", prov, "--name", "rack-1", "--speed", "4000", "--memory", "2048", "--storage", "8192")
	if !strings.Contains(out, "rack-1") {
		t.Fatalf("machine add printed %q", out)
	}
	t.Cleanup(func() { run(t, "vm", "--local", "stop", "--home", prov) })

	// The offer reaches the buyer's book over gossip (or its catch-up query).
	var command string
	testwait.Eventually(t, 30*time.Second, func() error {
		out = mustRun(t, "search", "--home", buyer, "--config", "tiny", "--sort", "storage")
		i := strings.Index(out, "virtuoso store ")
		if i < 0 {
			return fmt.Errorf("search did not find the provider's machine:\n%s", out)
		}
		command = strings.TrimSpace(out[i:])
		return nil
	})
	if !strings.Contains(out, "rack-1") {
		t.Fatalf("search result does not name the machine:\n%s", out)
	}

	// The machine as the search's table shows it, by the start of its ID, is enough; a start
	// that names no machine is refused with where to look.
	fields := strings.Fields(command)
	machine := fields[slices.Index(fields, "--machine")+1]
	if code, _, errOut := run(t, "store", "--home", buyer, "--config", "tiny", "--machine", "ffff0000"); code == 0 ||
		!strings.Contains(errOut, `no machine "ffff0000" in the offer book`) {
		t.Fatalf("store on a machine nobody offers: exit %d\n%s", code, errOut)
	}
	args := []string{"store", "--config", "tiny", "--machine", machine[:8], "--home", buyer, "--json"}
	var stored struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, args...)), &stored); err != nil || stored.ID == "" {
		t.Fatalf("store --json: %+v, %v", stored, err)
	}
	id := stored.ID
	t.Cleanup(func() { run(t, "vm", "stop", "--home", buyer, id) })

	for _, step := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "ls", "--home", buyer}, "stored"},
		{[]string{"vm", "start", id, "--home", buyer}, "started"},
		{[]string{"vm", "console", id, "--home", buyer}, "VNC 127.0.0.1:"},
		{[]string{"vm", "stop", id, "--home", buyer}, "stopped"},
	} {
		if out := mustRun(t, step.args...); !strings.Contains(out, step.want) {
			t.Fatalf("virtuoso %s printed %q; want %q", strings.Join(step.args, " "), out, step.want)
		}
	}

	// Another node holds no lease on the VM: its `vm start` has nothing to act on.
	code, _, stderr := run(t, "vm", "start", id, "--home", prov)
	if code == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Fatalf("vm start from a node without the lease: exit %d, %q; want a one-line error", code, stderr)
	}
	// An illegal action for the status is refused with the reason.
	if code, _, stderr := run(t, "vm", "resume", id, "--home", buyer); code == 0 || !strings.Contains(stderr, "stopped") {
		t.Fatalf("resume of a stopped VM: exit %d, %q", code, stderr)
	}
}
