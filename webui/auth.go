package webui

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
)

// Limits of the login links and sessions a node holds at once; past them the oldest give way.
const (
	maxLogins   = 32
	maxSessions = 64
)

// csrfHeader carries the session's CSRF token on every POST.
const csrfHeader = "X-CSRF-Token"

// The codes of the UI's own error answers, besides those of the API it relays.
const (
	CodeNoSession = "no_session"
	CodeCSRF      = "csrf"
	CodeHost      = "host_not_allowed"
	CodeOrigin    = "origin_not_allowed"
	CodeMethod    = "method_not_allowed"
)

var (
	errNoSession = node.WithCode(http.StatusUnauthorized, CodeNoSession,
		errors.New("not signed in, or the session expired: run `virtuoso ui` for a new login link"))
	errCSRF = node.WithCode(http.StatusForbidden, CodeCSRF,
		errors.New("missing or wrong CSRF token: reload the page and try again"))
	errHost = node.WithCode(http.StatusForbidden, CodeHost,
		errors.New("the Host header names no loopback address: open the UI at http://127.0.0.1:PORT or http://localhost:PORT"))
	errOrigin = node.WithCode(http.StatusForbidden, CodeOrigin,
		errors.New("the request comes from another site's page: only the UI's own pages may call it"))
	errMethod = node.WithCode(http.StatusMethodNotAllowed, CodeMethod,
		errors.New("the UI takes GET to read and POST to change, nothing else"))
)

// session is one signed-in browser.
type session struct {
	csrf    string
	expires time.Time
}

// sessions holds the node's outstanding login links and its sessions, each under the SHA-256
// of its secret, so that no secret is kept and a lookup's timing tells nothing about it. Both
// live in memory: a node that restarts forgets them, and its owner signs in again.
type sessions struct {
	now              func() time.Time
	loginTTL, ttl    time.Duration
	mu               sync.Mutex
	logins           map[[32]byte]time.Time
	active           map[[32]byte]*session
	loginOrder, sOrd [][32]byte
}

func newSessions(now func() time.Time, loginTTL, ttl time.Duration) *sessions {
	return &sessions{now: now, loginTTL: loginTTL, ttl: ttl,
		logins: map[[32]byte]time.Time{}, active: map[[32]byte]*session{}}
}

// secret is 32 random bytes, base64url.
func secret() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func digest(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// issue makes a one-time login token valid for loginTTL.
func (s *sessions) issue() (token string, expires time.Time) {
	token, expires = secret(), s.now().Add(s.loginTTL)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loginOrder = admit(s.loginOrder, digest(token), maxLogins, func(k [32]byte) bool {
		_, ok := s.logins[k]
		return ok
	}, func(k [32]byte) { delete(s.logins, k) })
	s.logins[digest(token)] = expires
	return token, expires
}

// redeem spends a login token: it opens a session, once, if the token is known and not
// expired.
func (s *sessions) redeem(token string) (id string, sess *session, ok bool) {
	k := digest(token)
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, known := s.logins[k]
	delete(s.logins, k)
	if !known || !s.now().Before(exp) {
		return "", nil, false
	}
	id = secret()
	sess = &session{csrf: secret(), expires: s.now().Add(s.ttl)}
	s.sOrd = admit(s.sOrd, digest(id), maxSessions, func(k [32]byte) bool {
		_, ok := s.active[k]
		return ok
	}, func(k [32]byte) { delete(s.active, k) })
	s.active[digest(id)] = sess
	return id, sess, true
}

// lookup answers the live session of id; an expired one is forgotten.
func (s *sessions) lookup(id string) (*session, bool) {
	if id == "" {
		return nil, false
	}
	k := digest(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.active[k]
	if ok && !s.now().Before(sess.expires) {
		delete(s.active, k)
		return nil, false
	}
	return sess, ok
}

// end forgets the session of id.
func (s *sessions) end(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.active, digest(id))
}

// admit appends k to order, first dropping keys no longer live and, past limit, the oldest.
func admit(order [][32]byte, k [32]byte, limit int, live func([32]byte) bool, drop func([32]byte)) [][32]byte {
	kept := order[:0]
	for _, o := range order {
		if live(o) {
			kept = append(kept, o)
		}
	}
	for len(kept) >= limit {
		drop(kept[0])
		kept = kept[1:]
	}
	return append(kept, k)
}

// loopbackHost reports whether a Host header names this machine's loopback: localhost (or a
// name under .localhost), or an address of 127.0.0.0/8 or ::1, with any port. Anything else
// may be a name an attacker's DNS pointed at 127.0.0.1 (DNS rebinding), and is refused.
func loopbackHost(host string) bool {
	h := host
	if sh, _, err := net.SplitHostPort(host); err == nil {
		h = sh
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// sameOrigin reports whether a request's Origin header, if any, is the UI's own: http and the
// Host the request was sent to. A browser sends Origin on every POST, on fetches from other
// origins and on websocket handshakes; a request without one comes from the UI's own page
// navigation or from a program, and the session and the CSRF token decide.
func sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		// Fetch metadata, where the browser sends it, must not say the request is
		// cross-site: pages on other loopback ports are "same-site" but not same-origin.
		site := r.Header.Get("Sec-Fetch-Site")
		return site == "" || site == "same-origin" || site == "none"
	}
	u, err := url.Parse(origin)
	return err == nil && u.Scheme == "http" && u.Host == r.Host && u.Path == "" && u.User == nil
}

// securityHeaders are sent with every answer of the UI: no framing, no content sniffing, no
// referrer (a login link must not leak), and a Content-Security-Policy that allows only the
// UI's own scripts, styles and connections: no inline script or style, no eval.
func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "+
		"font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

// csrfOK reports whether r carries the session's CSRF token.
func csrfOK(r *http.Request, sess *session) bool {
	got := r.Header.Get(csrfHeader)
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(sess.csrf)) == 1
}
