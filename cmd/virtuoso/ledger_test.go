package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/ledger"
)

// proc is a `virtuoso node` process the test may kill.
type proc struct {
	cmd    *exec.Cmd
	logs   *lockedBuffer
	exited chan struct{} // closed when the process is gone
}

// startProc runs `virtuoso node` on home until killed or the test ends, and waits for its API.
func startProc(t *testing.T, home string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, "node", "--home", home), logs: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Signal(syscall.SIGQUIT) // its goroutines, to the log
			select {
			case <-p.exited:
			case <-time.After(5 * time.Second):
				p.cmd.Process.Kill()
			}
			t.Errorf("node %s did not stop within 15s of SIGINT\n%s", home, p.logs.String())
		}
	})
	testwait.Eventually(t, 30*time.Second, func() error {
		if code, _, _ := run(t, "peers", "--home", home); code != 0 {
			return fmt.Errorf("node %s API not up\n%s", home, p.logs.String())
		}
		return nil
	})
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("a killed node did not exit")
	}
}

func ledgerStatus(t *testing.T, home string) (ledger.CoordinatorStatus, error) {
	t.Helper()
	code, out, errOut := run(t, "ledger", "status", "--home", home, "--json")
	var st ledger.CoordinatorStatus
	if code != 0 {
		return st, fmt.Errorf("ledger status of %s: %s", filepath.Base(home), errOut)
	}
	return st, json.Unmarshal([]byte(out), &st)
}

// TestCoordinatorKilled: three coordinator processes and a node sending transfers through
// the CLI; the leader is killed with SIGKILL in the middle. A new leader takes over within
// seconds, no transfer is lost or applied twice, the survivors agree on the state hash, and
// the killed coordinator, restarted, catches up to the same state.
func TestCoordinatorKilled(t *testing.T) {
	const transfers = 30
	dir := t.TempDir()
	home := func(name string) string { return filepath.Join(dir, name) }
	// No ticks: the state changes only with the entries, so replicas can be compared.
	fast := []string{`tick_interval = "5s"`, `tick_interval = "1h"`, `sync_interval = "5s"`, `sync_interval = "500ms"`}
	mustRun(t, "init", "--home", home("c0"), "--coordinator")
	editConfig(t, home("c0"), fast...)
	procs := map[string]*proc{"c0": startProc(t, home("c0"))}
	first := nodeID(t, home("c0"))
	addrs := []string{first.Addrs[0]}
	for _, c := range []string{"c1", "c2"} {
		mustRun(t, "init", "--home", home(c), "--coordinator", "--bootstrap", first.Addrs[0])
		editConfig(t, home(c), append(fast, "bootstrap = true", "bootstrap = false",
			"coordinators = []", fmt.Sprintf("coordinators = [%q]", first.Addrs[0]))...)
		procs[c] = startProc(t, home(c))
		mustRun(t, "ledger", "join", first.Addrs[0], "--home", home(c))
		addrs = append(addrs, nodeID(t, home(c)).Addrs[0])
	}
	quoted := make([]string, len(addrs))
	for i, a := range addrs {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	mustRun(t, "init", "--home", home("n"), "--bootstrap", first.Addrs[0])
	editConfig(t, home("n"), append(fast, "coordinators = []", "coordinators = ["+strings.Join(quoted, ", ")+"]")...)
	startProc(t, home("n"))
	payer, payee := nodeID(t, home("n")).PeerID, nodeID(t, home("c1")).PeerID
	st, err := ledgerStatus(t, home("c0"))
	if err != nil || len(st.Servers) != 3 || st.Leader.String() != first.PeerID {
		t.Fatalf("the group before the kill: %+v, %v", st, err)
	}
	mustRun(t, "ledger", "deposit", payer, "10", "--home", home("c0"))

	// The transfers go on while the leader is killed and a new one is elected. A transfer
	// made while there is no leader is kept in the node's log and pushed later: the command
	// says the coordinators did not answer, nothing is lost.
	failed := make(chan int, 1)
	killNow := make(chan struct{})
	go func() {
		n := 0
		for i := range transfers {
			if i == transfers/3 {
				close(killNow)
			}
			if code, _, _ := run(t, "ledger", "transfer", payee, "0.000001", "--home", home("n")); code != 0 {
				n++
			}
		}
		failed <- n
	}()
	<-killNow
	procs["c0"].kill(t)
	killed := time.Now()
	testwait.Eventually(t, 30*time.Second, func() error {
		st, err := ledgerStatus(t, home("c1"))
		if err != nil || st.Leader == "" || st.Leader.String() == first.PeerID {
			return fmt.Errorf("no new leader: %+v %v", st.Leader, err)
		}
		return nil
	})
	t.Logf("a new leader %v after the SIGKILL", time.Since(killed))
	t.Logf("%d of %d transfers answered before their push (pushed later)", <-failed, transfers)
	var acct ledger.AccountAnswer
	testwait.Eventually(t, 60*time.Second, func() error {
		if err := json.Unmarshal([]byte(mustRun(t, "account", "--home", home("n"), "--json")), &acct); err != nil {
			return err
		}
		if acct.Pending != 0 {
			return fmt.Errorf("%d entries not settled", acct.Pending)
		}
		return nil
	})
	if a := acct.View.Account; a.Sent != transfers || a.Balance != 10_000_000-transfers {
		t.Fatalf("after %d transfers of 0.000001 from 10: %+v", transfers, a)
	}
	same := func(homes ...string) error {
		var hash string
		for _, h := range homes {
			st, err := ledgerStatus(t, home(h))
			if err != nil {
				return err
			}
			if hash == "" {
				hash = st.Meta.Hash.String()
			} else if st.Meta.Hash.String() != hash {
				return fmt.Errorf("%s at state hash %s, another at %s", h, st.Meta.Hash.String()[:12], hash[:12])
			}
		}
		return nil
	}
	// Ticks go on: compare the survivors when both have applied the same log.
	testwait.Eventually(t, 30*time.Second, func() error { return same("c1", "c2") })
	// The killed coordinator comes back on another port: it finds the group again through a
	// bootstrap peer, as any restarted node does.
	editConfig(t, home("c0"), "bootstrap = []", fmt.Sprintf("bootstrap = [%q]", addrs[1]))
	procs["c0"] = startProc(t, home("c0"))
	testwait.Eventually(t, 60*time.Second, func() error { return same("c0", "c1", "c2") })
}
