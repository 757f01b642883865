package node_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/virtuoso-market/virtuoso/internal/nodetest"
	"github.com/virtuoso-market/virtuoso/node"
)

func TestFiveNodesFindEachOtherThroughTheDHT(t *testing.T) {
	nodes := nodetest.Cluster(t, 5, nodetest.Options{})
	// Nodes 1..4 know only node 0; they must find each other through the rendezvous key.
	// The local profile has no mDNS, so the rendezvous record in the DHT is the only way.
	nodetest.WaitConnected(t, nodes, 20*time.Second)
}

func TestRestartKeepsIdentityAndData(t *testing.T) {
	home := node.Home{Dir: t.TempDir()}
	cfg := node.DefaultConfig(node.ProfileLocal)
	if err := home.Init(cfg, false); err != nil {
		t.Fatal(err)
	}
	first, err := node.New(home, cfg, node.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	id := first.ID()
	if err := first.Store().Space("test/").Put("k", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(home.APIAddrPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("api.addr left behind after Close: %v", err)
	}

	second := nodetest.Start(t, home, cfg, node.Options{})
	if second.ID() != id {
		t.Fatalf("peer ID changed across restart: %s → %s", id, second.ID())
	}
	if v, err := second.Store().Space("test/").Get("k"); err != nil || string(v) != "kept" {
		t.Fatalf("data after restart: %q, %v", v, err)
	}
	info, err := os.Stat(home.KeyPath())
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v, %v; want 0600", info.Mode(), err)
	}
}

func TestSecondNodeOnSameHomeIsRefused(t *testing.T) {
	home := node.Home{Dir: t.TempDir()}
	cfg := node.DefaultConfig(node.ProfileLocal)
	nodetest.Start(t, home, cfg, node.Options{})
	_, err := node.New(home, cfg, node.Options{})
	if !errors.Is(err, node.ErrHomeLocked) {
		t.Fatalf("second node on one home: %v, want ErrHomeLocked", err)
	}
	if !strings.Contains(err.Error(), "another node is already running") {
		t.Errorf("error does not say what is wrong: %v", err)
	}
}

func TestAPIPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	home := node.Home{Dir: t.TempDir()}
	cfg := node.DefaultConfig(node.ProfileLocal)
	cfg.API.Listen = busy.Addr().String()
	if err := home.Init(cfg, false); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(home, cfg, node.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("start with busy API port: %v, want an 'in use' error", err)
	}
	// Start failed, so the node closed itself: the home must be free again.
	again, err := node.New(home, cfg, node.Options{})
	if err != nil {
		t.Fatalf("home still locked after a failed start: %v", err)
	}
	again.Close()
}

func TestEmptyAPITokenIsRefused(t *testing.T) {
	home := node.Home{Dir: t.TempDir()}
	cfg := node.DefaultConfig(node.ProfileLocal)
	if err := home.Init(cfg, false); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(home.TokenPath(), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(home, cfg, node.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("start with an empty API token: %v; want a refusal naming the token", err)
	}
	if err := n.Start(context.Background()); err == nil {
		t.Fatal("a node closed by its failed start started again")
	}
}

func TestAPI(t *testing.T) {
	n := nodetest.Cluster(t, 2, nodetest.Options{})[1]
	addr, err := n.Home().APIAddr()
	if err != nil {
		t.Fatal(err)
	}
	token, _ := n.Home().Token()
	base := "http://" + addr

	call := func(method, path, auth string, body io.Reader) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, body)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(raw)
	}
	for _, tc := range []struct {
		name, method, path, auth string
		body                     io.Reader
		status                   int
		contains                 string
	}{
		{"healthz needs no token", "GET", "/healthz", "", nil, 200, `"ok": true`},
		{"no token", "GET", "/v1/id", "", nil, 401, "API token"},
		{"wrong token", "GET", "/v1/id", "Bearer nope", nil, 401, "API token"},
		{"id", "GET", "/v1/id", "Bearer " + token, nil, 200, n.ID().String()},
		{"metrics", "GET", "/metrics", "Bearer " + token, nil, 200, "virtuoso_peers 1"},
		{"oversized body", "POST", "/v1/id", "Bearer " + token, bytes.NewReader(make([]byte, 2<<20)), 413, "exceeds"},
		{"unknown route", "GET", "/v1/nothing", "Bearer " + token, nil, 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := call(tc.method, tc.path, tc.auth, tc.body)
			if status != tc.status || !strings.Contains(body, tc.contains) {
				t.Fatalf("%s %s: %d %q; want %d containing %q", tc.method, tc.path, status, body, tc.status, tc.contains)
			}
		})
	}

	c, err := node.Dial(n.Home())
	if err != nil {
		t.Fatal(err)
	}
	var peers []node.PeerInfo
	if err := c.Get(context.Background(), "/v1/peers", &peers); err != nil {
		t.Fatal(err)
	}
	if len(peers) != 1 || peers[0].LatencyMS <= 0 || len(peers[0].Addrs) == 0 {
		t.Fatalf("peers = %+v; want the one other node with an address and a latency", peers)
	}
}

func TestTopicJoinedOnce(t *testing.T) {
	n := nodetest.Cluster(t, 1, nodetest.Options{})[0]
	a, err := n.Topic("/test/1", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.Topic("/test/1", nil)
	if err != nil || a != b {
		t.Fatalf("second Topic call: %p, %v; want the same topic %p", b, err, a)
	}
}

func TestProtocolLimitsAreEnforced(t *testing.T) {
	const proto = "/virtuoso/test-limited/1.0.0"
	nodes := nodetest.Cluster(t, 2, nodetest.Options{
		Protocols: []node.ProtocolLimit{{Protocol: proto, Streams: 2, StreamsPerPeer: 2, Memory: 1 << 20}},
	})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	nodes[0].Host().SetStreamHandler(proto, func(s network.Stream) {
		<-release
		s.Reset()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var opened int
	var lastErr error
	for range 4 {
		s, err := nodes[1].Host().NewStream(ctx, nodes[0].ID(), proto)
		if err != nil {
			lastErr = err
			continue
		}
		// The limit is checked when the protocol is set on the stream; a write forces the
		// negotiation to finish so a refused stream shows here.
		if _, err := s.Write([]byte{1}); err != nil {
			lastErr = err
			continue
		}
		s.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := s.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			// An accepted stream blocks in the handler; a refused one is reset at once.
			lastErr = err
			continue
		}
		opened++
	}
	if opened != 2 || lastErr == nil {
		t.Fatalf("opened %d streams of a protocol limited to 2 (last error %v)", opened, lastErr)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestAPIConnectionsDoNotLinger: a client without the token gets its 401 and its connection
// closed; a keep-alive connection that carries no request is closed after api.idle_timeout.
func TestAPIConnectionsDoNotLinger(t *testing.T) {
	n := nodetest.Cluster(t, 1, nodetest.Options{Configure: func(_ int, cfg *node.Config) {
		cfg.API.IdleTimeout = 300 * time.Millisecond
	}})[0]
	addr, err := n.Home().APIAddr()
	if err != nil {
		t.Fatal(err)
	}
	token, _ := n.Home().Token()
	closedAfter := func(auth string) error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /v1/id HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive\r\n%s\r\n", addr, auth)
		r := bufio.NewReader(c)
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
			return fmt.Errorf("after a %d answer the connection stayed open: %v", resp.StatusCode, err)
		}
		return nil
	}
	if err := closedAfter(""); err != nil {
		t.Fatalf("without a token: %v", err)
	}
	if err := closedAfter("Authorization: Bearer " + token + "\r\n"); err != nil {
		t.Fatalf("idle after a request: %v", err)
	}
}
