package webui

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/virtuoso-market/virtuoso/node"
)

// The console in the page: noVNC speaks RFB over a websocket (subprotocol "binary") to the
// buyer's own node, which bridges it to the console tunnel that the market's Buyer opens to the
// provider (market/console.go).
//
//	POST /ui/console/{vm}        → {"ticket", "password", "vm"}: the API's console session (the
//	                               provider's one-time VNC password) and a ticket for its tunnel
//	GET  /ui/console/{ticket}/ws → websocket upgrade; the bytes of the tunnel both ways
//
// A ticket is good once, for ticketTTL, and only with the session that asked for it: the
// websocket, which cannot carry the CSRF header, needs the ticket that only a POST with it got.

// ticketTTL is how long a console ticket waits for its websocket.
const ticketTTL = time.Minute

type ticket struct {
	addr    string
	sess    *session
	expires time.Time
}

// tickets are the console tickets not yet taken.
type tickets struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[[32]byte]ticket
}

func newTickets(now func() time.Time) *tickets {
	return &tickets{now: now, m: map[[32]byte]ticket{}}
}

func (ts *tickets) add(addr string, sess *session) string {
	id := secret()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for k, t := range ts.m {
		if !ts.now().Before(t.expires) {
			delete(ts.m, k)
		}
	}
	ts.m[digest(id)] = ticket{addr: addr, sess: sess, expires: ts.now().Add(ticketTTL)}
	return id
}

// take spends the ticket id of sess.
func (ts *tickets) take(id string, sess *session) (string, bool) {
	k := digest(id)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t, ok := ts.m[k]
	if !ok || t.sess != sess {
		return "", false
	}
	delete(ts.m, k)
	return t.addr, ts.now().Before(t.expires)
}

// ConsoleTicket is the answer of POST /ui/console/{vm}.
type ConsoleTicket struct {
	Ticket   string          `json:"ticket"`
	Password string          `json:"password"`
	VM       json.RawMessage `json:"vm"`
}

func (u *UI) openConsole(w http.ResponseWriter, r *http.Request, sess *session) {
	var cs struct {
		VM       json.RawMessage `json:"vm"`
		Addr     string          `json:"addr"`
		Password string          `json:"password"`
	}
	if rec := u.call(r, http.MethodPost, "/v1/market/vms/"+url.PathEscape(r.PathValue("vm"))+"/console", &cs); rec.status != http.StatusOK {
		rec.writeTo(w)
		return
	}
	node.WriteJSON(w, http.StatusOK, ConsoleTicket{Ticket: u.tickets.add(cs.Addr, sess), Password: cs.Password, VM: cs.VM})
}

func (u *UI) bridgeConsole(w http.ResponseWriter, r *http.Request, sess *session) {
	addr, ok := u.tickets.take(r.PathValue("ticket"), sess)
	if !ok {
		node.WriteError(w, node.WithCode(http.StatusForbidden, "ticket",
			errors.New("the console ticket is unknown, used or expired: open the console again")))
		return
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	vnc, err := d.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		node.WriteError(w, node.WithCode(http.StatusBadGateway, "unavailable",
			errors.New("the console tunnel is closed: open the console again")))
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"binary"}})
	if err != nil {
		vnc.Close()
		return // Accept answered the handshake's error
	}
	if c.Subprotocol() != "binary" {
		vnc.Close()
		c.Close(websocket.StatusPolicyViolation, `the console speaks the "binary" subprotocol only`)
		return
	}
	c.SetReadLimit(1 << 20)
	u.bridges.Add(1)
	defer u.bridges.Done()
	ctx, stop := context.WithCancel(u.ctx)
	defer stop()
	ws := websocket.NetConn(ctx, c, websocket.MessageBinary)
	defer context.AfterFunc(ctx, func() { vnc.Close(); ws.Close() })()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(vnc, ws)
		stop()
	}()
	io.Copy(ws, vnc)
	stop()
	<-done
}

// captured is the answer of an API call the UI makes of its own.
type captured struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (c *captured) Header() http.Header         { return c.header }
func (c *captured) Write(b []byte) (int, error) { return c.body.Write(b) }
func (c *captured) WriteHeader(status int)      { c.status = status }

// writeTo passes the answer on.
func (c *captured) writeTo(w http.ResponseWriter) {
	for k, v := range c.header {
		w.Header()[k] = v
	}
	w.WriteHeader(c.status)
	w.Write(c.body.Bytes())
}
