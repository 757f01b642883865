package node

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// API is the node's local HTTP API on loopback: JSON in and out, every route but /healthz
// behind the bearer token kept in the home's api.token. The CLI and the web UI talk to it.
type API struct {
	n       *Node
	mux     *http.ServeMux
	srv     *http.Server
	ln      net.Listener
	token   string
	maxBody int64
	// stopping is cancelled when the server shuts down, so that answers that last until
	// their client goes away (an event log follower) end and let the shutdown finish.
	stopping context.Context
}

// HTTPError carries the status and the code an API error is answered with. The client's
// errors are HTTPErrors too, so a caller branches on Code (or Status), never on the message.
type HTTPError struct {
	Status int
	// Code names the error for programs ("not_found", "state_unusable", ...): each package
	// that answers the API gives its sentinel errors one. Empty: derived from Status.
	Code string
	Err  error
}

func (e *HTTPError) Error() string { return e.Err.Error() }
func (e *HTTPError) Unwrap() error { return e.Err }

// WithStatus marks err to be answered with status.
func WithStatus(status int, err error) error { return &HTTPError{Status: status, Err: err} }

// WithCode marks err to be answered with status and code.
func WithCode(status int, code string, err error) error {
	return &HTTPError{Status: status, Code: code, Err: err}
}

// ErrorBody is the JSON of every error answer.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Fields is the problem of each field of the request that is wrong, by its dotted JSON
	// name (see FieldError), when the error names them.
	Fields map[string]string `json:"fields,omitempty"`
}

// statusCode is the code of an error marked with a status only.
func statusCode(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "bad_request"
	case http.StatusUnauthorized:
		return "unauthorized"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusConflict:
		return "conflict"
	case http.StatusRequestEntityTooLarge:
		return "too_large"
	case http.StatusBadGateway:
		return "unavailable"
	case http.StatusServiceUnavailable:
		return "service_unavailable"
	}
	return "internal"
}

// apiReadTimeout is how long the API server gives a request to arrive whole, body and all.
const apiReadTimeout = 30 * time.Second

func newAPI(n *Node, reg *prometheus.Registry) (*API, error) {
	token, err := n.home.Token()
	if err != nil {
		return nil, err
	}
	if len(token) < 16 {
		return nil, fmt.Errorf("API token in %s is empty or too short: remove the file and run `virtuoso init --force --home %s` to make a new one", n.home.TokenPath(), n.home.Dir)
	}
	ln, err := net.Listen("tcp", n.cfg.API.Listen)
	if err != nil {
		return nil, fmt.Errorf("API cannot listen on %s (%v): the port is in use; set api.listen in %s to a free port, or 127.0.0.1:0 for any", n.cfg.API.Listen, err, n.home.ConfigPath())
	}
	a := &API{n: n, mux: http.NewServeMux(), ln: ln, token: token, maxBody: n.cfg.API.MaxBodyBytes}
	// A request's header and body must come promptly and an idle connection is closed, so
	// that connections held open by whoever can reach the port cost nothing for long.
	a.srv = &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: apiReadTimeout,
		IdleTimeout: n.cfg.API.IdleTimeout}
	var stop context.CancelFunc
	a.stopping, stop = context.WithCancel(context.Background())
	a.srv.RegisterOnShutdown(stop)
	a.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "peer": n.id.String()})
	})
	a.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	a.Route("GET /v1/id", a.identity)
	a.Route("GET /v1/peers", a.peers)
	return a, nil
}

// ServeHTTP checks the token and the body size, then routes.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > a.maxBody {
		WriteError(w, WithStatus(http.StatusRequestEntityTooLarge,
			fmt.Errorf("request body of %d bytes exceeds the %d-byte limit", r.ContentLength, a.maxBody)))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, a.maxBody)
	a.mux.ServeHTTP(w, r)
}

// Handle adds a route behind the token.
func (a *API) Handle(pattern string, h http.Handler) {
	a.mux.Handle(pattern, a.authorised(h))
}

// HandleOpen adds a route that the token does not guard: for handlers that authenticate
// requests by themselves (the web UI, by its session cookie) or need no authentication.
func (a *API) HandleOpen(pattern string, h http.Handler) {
	a.mux.Handle(pattern, h)
}

// Stopping is done when the API server shuts down: answers that last until their client goes
// away (a follower of the event log, a stream of server-sent events) end with it, so that the
// shutdown finishes.
func (a *API) Stopping() context.Context { return a.stopping }

// Route adds a JSON route behind the token: fn's result is written as JSON, its error as an
// ErrorBody with the error's status (400 unless marked otherwise).
func (a *API) Route(pattern string, fn func(r *http.Request) (any, error)) {
	a.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		out, err := fn(r)
		if err != nil {
			WriteError(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, out)
	}))
}

func (a *API) authorised(h http.Handler) http.Handler {
	want := []byte("Bearer " + a.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("Connection", "close") // nothing to keep open for a client without the token
			WriteError(w, WithStatus(http.StatusUnauthorized,
				errors.New("missing or wrong API token: send 'Authorization: Bearer <token>' with the token from api.token in the node's home")))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Addr is the API's listen address.
func (a *API) Addr() string { return a.ln.Addr().String() }

func (a *API) serve() error {
	if err := a.srv.Serve(a.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("API: %w", err)
	}
	return nil
}

// publish writes the API's address into the home, so the CLI finds its node from --home.
func (a *API) publish() error {
	return writeFileAtomic(a.n.home.APIAddrPath(), []byte(a.Addr()+"\n"), 0o600)
}

func (a *API) close() error {
	os.Remove(a.n.home.APIAddrPath())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return a.srv.Shutdown(ctx)
}

// DecodeJSON reads a JSON request body into v; an oversized body is a 413, a malformed one
// a 400.
func DecodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return WithCode(http.StatusRequestEntityTooLarge, "too_large", fmt.Errorf("request body too large: %w", err))
		}
		if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok && te.Field != "" {
			return WithCode(http.StatusBadRequest, "invalid", &FieldError{Field: te.Field,
				Err: fmt.Errorf("got %s, want %s", te.Value, jsonForm(te.Type))})
		}
		return WithCode(http.StatusBadRequest, "malformed", fmt.Errorf("malformed JSON body: %w", err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return WithCode(http.StatusBadRequest, "malformed", errors.New("malformed JSON body: trailing data after the object"))
	}
	return nil
}

// jsonForm says what a value of type t looks like in JSON, for the message of a wrong one; a
// type may say it itself with a JSONForm method.
func jsonForm(t reflect.Type) string {
	if t == nil {
		return "another type"
	}
	if f, ok := reflect.Zero(t).Interface().(interface{ JSONForm() string }); ok {
		return f.JSONForm()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "text"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "a list"
	}
	return "an object"
}

// WriteJSON writes v as a JSON answer.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// WriteError writes err as an ErrorBody with its status and code.
func WriteError(w http.ResponseWriter, err error) {
	status, code := http.StatusBadRequest, ""
	if he, ok := errors.AsType[*HTTPError](err); ok {
		status, code = he.Status, he.Code
	} else if errors.Is(err, ErrNotFound) {
		status = http.StatusNotFound
	}
	if code == "" {
		code = statusCode(status)
	}
	WriteJSON(w, status, ErrorBody{Code: code, Message: err.Error(), Fields: Fields(err)})
}

// Identity is what /v1/id answers.
type Identity struct {
	PeerID      string   `json:"peer_id"`
	Addrs       []string `json:"addrs"`
	Version     string   `json:"version"`
	Profile     Profile  `json:"profile"`
	Provider    bool     `json:"provider"`
	Coordinator bool     `json:"coordinator"`
}

func (a *API) identity(*http.Request) (any, error) {
	n := a.n
	id := Identity{PeerID: n.id.String(), Version: n.opts.Version, Profile: n.cfg.Profile,
		Provider: n.cfg.Roles.Provider, Coordinator: n.cfg.Roles.Coordinator}
	for _, addr := range n.host.Addrs() {
		id.Addrs = append(id.Addrs, addr.String()+"/p2p/"+n.id.String())
	}
	return id, nil
}

// PeerInfo is one connected peer in /v1/peers.
type PeerInfo struct {
	PeerID    string   `json:"peer_id"`
	Addrs     []string `json:"addrs"`
	LatencyMS float64  `json:"latency_ms"`
	Agent     string   `json:"agent,omitempty"`
}

// peers lists connected peers, pinging each (in parallel, briefly) for a fresh latency.
func (a *API) peers(r *http.Request) (any, error) {
	h := a.n.host
	ids := h.Network().Peers()
	out := make([]PeerInfo, len(ids))
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	done := make(chan struct{}, len(ids))
	for i, p := range ids {
		out[i] = PeerInfo{PeerID: p.String()}
		for _, c := range h.Network().ConnsToPeer(p) {
			out[i].Addrs = append(out[i].Addrs, c.RemoteMultiaddr().String())
		}
		if agent, err := h.Peerstore().Get(p, "AgentVersion"); err == nil {
			out[i].Agent, _ = agent.(string)
		}
		go func(i int, p peer.ID) {
			defer func() { done <- struct{}{} }()
			select {
			case res := <-ping.Ping(ctx, h, p):
				if res.Error == nil {
					out[i].LatencyMS = float64(res.RTT.Microseconds()) / 1000
					return
				}
			case <-ctx.Done():
			}
			out[i].LatencyMS = float64(h.Peerstore().LatencyEWMA(p).Microseconds()) / 1000
		}(i, p)
	}
	for range ids {
		<-done
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PeerID < out[j].PeerID })
	return out, nil
}
