package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/testwait"
)

// virtuoso runs one command in-process and returns its exit code, stdout and stderr.
func virtuoso(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := Run(args, Env{Stdout: &out, Stderr: &errOut, Version: "test"})
	return code, out.String(), errOut.String()
}

func mustVirtuoso(t testing.TB, args ...string) string {
	t.Helper()
	code, out, errOut := virtuoso(args...)
	if code != 0 {
		t.Fatalf("virtuoso %s: exit %d: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// initHome makes a node home in a temporary directory and returns it with its peer ID.
func initHome(t testing.TB) (home, peerID string) {
	t.Helper()
	home = filepath.Join(t.TempDir(), "home")
	out := mustVirtuoso(t, "init", "--home", home)
	for _, line := range strings.Split(out, "\n") {
		if id, ok := strings.CutPrefix(line, "peer ID  "); ok {
			return home, id
		}
	}
	t.Fatalf("init printed no peer ID:\n%s", out)
	return "", ""
}

func TestIDOfAStoppedNodeSaysSoAndLabelsTheConfiguredAddresses(t *testing.T) {
	home, peerID := initHome(t)
	out := mustVirtuoso(t, "id", "--home", home)
	for _, want := range []string{
		"peer ID  " + peerID + "\n",
		"not running",
		"virtuoso node --home " + home,
		"configured listen addresses (port 0 is picked when the node starts):\n  /ip4/127.0.0.1/tcp/0\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("id of a stopped node lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "address  ") {
		t.Errorf("id of a stopped node prints a configured listen address as the node's address:\n%s", out)
	}

	var rep struct {
		PeerID           string   `json:"peer_id"`
		Addrs            []string `json:"addrs"`
		Running          bool     `json:"running"`
		ConfiguredListen []string `json:"configured_listen"`
	}
	if err := json.Unmarshal([]byte(mustVirtuoso(t, "id", "--home", home, "--json")), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.PeerID != peerID || rep.Running || len(rep.Addrs) != 0 || !slices.Contains(rep.ConfiguredListen, "/ip4/127.0.0.1/tcp/0") {
		t.Errorf("id --json of a stopped node = %+v, want peer %s, not running, no addresses, the configured listen addresses", rep, peerID)
	}
}

func TestIDOfARunningNodePrintsItsRealAddresses(t *testing.T) {
	home, peerID := initHome(t)
	ctx, cancel := context.WithCancel(context.Background())
	var nodeOut, nodeLog bytes.Buffer
	exited := make(chan error, 1)
	go func() {
		exited <- runNode(ctx, Env{Stdout: &nodeOut, Stderr: &nodeLog, Version: "test"}, []string{"--home", home})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-exited; err != nil {
			t.Errorf("node: %v\n%s", err, nodeLog.String())
		}
	})

	var out string
	testwait.Eventually(t, 30*time.Second, func() error {
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("the node exited before its API answered: %v", err)
		default:
		}
		out = mustVirtuoso(t, "id", "--home", home)
		if strings.Contains(out, "not running") {
			return errors.New("`virtuoso id` still says the node is not running")
		}
		return nil
	})
	if !strings.HasPrefix(out, "peer ID  "+peerID+"\n") {
		t.Errorf("id of the running node does not start with its peer ID %s:\n%s", peerID, out)
	}
	tcp := ""
	for _, line := range strings.Split(out, "\n") {
		if a, ok := strings.CutPrefix(line, "address  "); ok && strings.Contains(a, "/tcp/") {
			tcp = a
		}
	}
	if tcp == "" || strings.Contains(tcp, "/tcp/0/") || !strings.HasSuffix(tcp, "/p2p/"+peerID) {
		t.Errorf("id of the running node prints no real TCP address with its peer ID (%q):\n%s", tcp, out)
	}
	if strings.Contains(out, "configured") {
		t.Errorf("id of the running node shows configured addresses:\n%s", out)
	}
}
