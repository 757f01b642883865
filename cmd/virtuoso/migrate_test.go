package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/failpoint"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/ledger"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// startProcAt runs `virtuoso node` on home like startProc, armed to kill itself at failpoint
// (none if empty); it does not wait for the API of a node that is to die early.
func startProcAt(t *testing.T, home, point string) *proc {
	t.Helper()
	if point == "" {
		return startProc(t, home)
	}
	p := &proc{cmd: exec.Command(binary, "node", "--home", home), logs: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), failpoint.Env+"="+point)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	testwait.Eventually(t, 30*time.Second, func() error {
		if code, _, _ := run(t, "peers", "--home", home); code != 0 {
			return fmt.Errorf("node %s API not up\n%s", home, p.logs.String())
		}
		return nil
	})
	return p
}

// api calls the local API of the node on home.
func api(t *testing.T, home, path string, out any) error {
	t.Helper()
	c, err := node.Dial(node.Home{Dir: home})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return c.Get(ctx, path, out)
}

// TestMigrationKilled: a buyer's VM moves between two provider processes, and for each
// protocol step that matters one of the three nodes is killed with SIGKILL right there (the
// agent before it asks for the copy, after the destination's SUCCESS, after the origin's
// confirmation but before the ledger; the destination during the copy, after it adopted the
// VM but before its commit, after its commit but before RESP; the origin as it starts to
// send) and started again. Each time the VM ends up at exactly one provider, the one the step
// decides, under the buyer's lease there, at the version the buyer knows, with the ledger
// billing that lease and no money made or lost; and the next migration succeeds.
func TestMigrationKilled(t *testing.T) {
	dir := t.TempDir()
	home := func(name string) string { return filepath.Join(dir, name) }
	fast := []string{`tick_interval = "5s"`, `tick_interval = "2s"`, `sync_interval = "5s"`, `sync_interval = "500ms"`}
	mustRun(t, "init", "--home", home("c"), "--coordinator")
	editConfig(t, home("c"), fast...)
	cproc := startProc(t, home("c"))
	coord := nodeID(t, home("c"))
	coords := []string{"coordinators = []", fmt.Sprintf("coordinators = [%q]", coord.Addrs[0])}
	for _, name := range []string{"a", "b"} {
		mustRun(t, "init", "--home", home(name), "--provider", "--bootstrap", coord.Addrs[0])
		editConfig(t, home(name), append(append(fast, coords...), `accel = "auto"`, `accel = "tcg"`)...)
	}
	mustRun(t, "init", "--home", home("x"), "--bootstrap", coord.Addrs[0])
	editConfig(t, home("x"), append(fast, coords...)...)
	procs := map[string]*proc{"c": cproc}
	for _, name := range []string{"a", "b", "x"} {
		procs[name] = startProc(t, home(name))
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for name, p := range procs {
			logs := p.logs.String()
			t.Logf("--- %s's log, its end:\n%s", name, logs[max(0, len(logs)-20000):])
		}
	})
	peerOf := map[string]string{}
	for _, name := range []string{"a", "b", "x"} {
		peerOf[name] = nodeID(t, home(name)).PeerID
	}
	mustRun(t, "ledger", "deposit", peerOf["x"], "100", "--home", home("c"))
	for _, name := range []string{"a", "b"} {
		mustRun(t, "machine", "add", "--home", home(name), "--name", "rack-"+name, "--speed", "4000", "--memory", "2048", "--storage", "8192")
		t.Cleanup(func() { run(t, "vm", "--local", "stop", "--home", home(name)) })
	}
	// Both machines reach the buyer's book; the buyer has money settled.
	testwait.Eventually(t, 60*time.Second, func() error {
		var offers []market.Offer
		if err := api(t, home("x"), "/v1/market/offers", &offers); err != nil {
			return err
		}
		if len(offers) < 2 {
			return fmt.Errorf("%d offers in the buyer's book", len(offers))
		}
		var acct ledger.AccountAnswer
		if err := api(t, home("x"), "/v1/ledger/account", &acct); err != nil || acct.View.Account.Balance == 0 {
			return fmt.Errorf("the buyer's deposit is not settled: %+v %v", acct.View.Account, err)
		}
		return nil
	})
	var machines []market.Offer
	api(t, home("x"), "/v1/market/offers", &machines)
	machineOf := map[string]string{}
	for _, o := range machines {
		for name, p := range peerOf {
			if o.Provider.String() == p {
				machineOf[name] = o.Machine.String()
			}
		}
	}
	var stored market.VM
	out := mustRun(t, "store", "--config", "tiny", "--provider", peerOf["a"], "--machine", machineOf["a"], "--home", home("x"), "--json")
	if err := json.Unmarshal([]byte(out), &stored); err != nil {
		t.Fatal(err)
	}
	id := stored.ID.String()

	// check waits until the migration ended and then checks that the VM is at want only.
	check := func(t *testing.T, want, other string, migrated bool) market.VM {
		t.Helper()
		testwait.Eventually(t, 90*time.Second, func() error {
			if !migrated {
				return nil
			}
			var m market.Migration
			if err := api(t, home("x"), "/v1/market/migrations/"+id, &m); err != nil {
				return err
			}
			if !m.Ended() {
				return fmt.Errorf("the migration is at step %s %s", m.Step, m.Waiting)
			}
			return nil
		})
		var v market.VM
		if err := api(t, home("x"), "/v1/market/vms/"+id+"?refresh=true", &v); err != nil {
			t.Fatal(err)
		}
		if v.Provider.String() != peerOf[want] || v.LeaseState != market.LeaseStateActive {
			t.Fatalf("the buyer's vm is at %s (%s), want %s", market.Short(v.Provider), v.LeaseState, want)
		}
		var rec vm.Record
		if err := api(t, home(want), "/v1/vms/"+id, &rec); err != nil || rec.Cached || rec.Lease != v.Lease.String() || rec.State != v.State {
			t.Fatalf("at %s: %+v, %v; the buyer knows %+v under lease %s", want, rec, err, v.State, v.Lease)
		}
		testwait.Eventually(t, 60*time.Second, func() error {
			var rec vm.Record
			if err := api(t, home(other), "/v1/vms/"+id, &rec); err == nil && !rec.Cached {
				return fmt.Errorf("the vm is live at %s too: %+v", other, rec.State)
			}
			var leases []market.ProviderLease
			if err := api(t, home(other), "/v1/market/leases", &leases); err != nil {
				return err
			}
			for _, l := range leases {
				if l.Lease.VM == v.ID && l.State != market.LeaseStateEnded {
					return fmt.Errorf("%s still holds a %s lease of the vm", other, l.State)
				}
			}
			// The ledger bills the buyer's current lease, and only it.
			var acct ledger.AccountAnswer
			if err := api(t, home("x"), "/v1/ledger/account", &acct); err != nil {
				return err
			}
			if acct.Pending != 0 {
				return fmt.Errorf("%d entries of the buyer not settled", acct.Pending)
			}
			for _, l := range acct.View.Leases {
				if l.VM == v.ID && l.Active() != (l.ID == v.Lease) {
					return fmt.Errorf("the ledger's lease %s of the vm active=%v; the buyer's is %s", l.ID, l.Active(), v.Lease)
				}
			}
			var total market.Money
			for _, name := range []string{"a", "b", "x"} {
				var acct ledger.AccountAnswer
				if err := api(t, home("x"), "/v1/ledger/account/"+peerOf[name], &acct); err != nil {
					return err
				}
				total += acct.View.Account.Balance
			}
			if total != 100*market.Unit {
				return fmt.Errorf("the balances add up to %s, 100 were deposited", total)
			}
			return nil
		})
		return v
	}
	at := "a"
	check(t, at, "b", false)
	// Where it can go, as the user sees it: the other provider, with the cost beside today's.
	bID, err := peer.Decode(peerOf["b"])
	if err != nil {
		t.Fatal(err)
	}
	out = mustRun(t, "migrate", id, "--home", home("x"))
	for _, want := range []string{"is on " + market.Short(stored.Provider), market.Short(bID), "blockdiff,full", "VS NOW", "virtuoso migrate " + id + " --to " + peerOf["b"]} {
		if !strings.Contains(out, want) {
			t.Fatalf("virtuoso migrate %s printed\n%s\nwant %q in it", id, out, want)
		}
	}

	for _, tc := range []struct {
		name   string
		victim string // agent, dest or origin
		point  string
		moves  bool // whether the VM ends up at the destination
	}{
		{"agent before the copy", "agent", "agent:copy", false},
		{"agent after the destination's success", "agent", "agent:finish", true},
		{"agent after the origin confirmed, before the ledger", "agent", "agent:commit", true},
		{"destination during the copy", "dest", "dest:copy", false},
		{"destination after adopting, before its commit", "dest", "dest:adopted", false},
		{"destination after its commit, before its answer", "dest", "dest:arrived", true},
		{"origin as it sends", "origin", "origin:send", false},
	} {
		func() { // one scenario after the other, on the same nodes (which outlive each)
			t.Logf("kill the %s at %s", tc.victim, tc.point)
			to := map[string]string{"a": "b", "b": "a"}[at]
			victim := map[string]string{"agent": "x", "dest": to, "origin": at}[tc.victim]
			procs[victim].cmd.Process.Signal(os.Interrupt)
			<-procs[victim].exited
			procs[victim] = startProcAt(t, home(victim), tc.point)
			if victim != "x" {
				// The buyer reconnects to the restarted node before it moves the VM.
				testwait.Eventually(t, 30*time.Second, func() error {
					_, out, _ := run(t, "peers", "--home", home("x"))
					if !strings.Contains(out, peerOf[victim]) {
						return fmt.Errorf("x is not connected to %s again", victim)
					}
					return nil
				})
			}
			code, _, stderr := run(t, "migrate", id, "--to", peerOf[to], "--home", home("x"))
			select {
			case <-procs[victim].exited:
			case <-time.After(60 * time.Second):
				t.Fatalf("%s: %s did not die at %s (migrate: exit %d, %s)\n%s", tc.name, victim, tc.point, code, stderr, procs[victim].logs.String())
			}
			t.Logf("migrate: exit %d: %s", code, strings.TrimSpace(stderr))
			procs[victim] = startProc(t, home(victim))
			if tc.moves {
				check(t, to, at, true)
				at = to
			} else {
				check(t, at, to, true)
			}
		}()
	}
	// After all that, a migration succeeds, as a user sees it.
	to := map[string]string{"a": "b", "b": "a"}[at]
	out = mustRun(t, "migrate", id, "--to", peerOf[to], "--home", home("x"))
	dest, err := peer.Decode(peerOf[to])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "is on "+market.Short(dest)) {
		t.Fatalf("migrate printed %q", out)
	}
	check(t, to, at, true)
}
