package webui

import (
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
)

// Defaults of Options.
const (
	DefaultLoginTTL   = 5 * time.Minute
	DefaultSessionTTL = 12 * time.Hour
)

// Options tune the UI; the zero value is usable but shows no events.
type Options struct {
	// EventLog feeds the pages' live updates (/ui/events).
	EventLog *node.EventLog
	// LoginTTL is how long a login link is good for (DefaultLoginTTL if 0), SessionTTL how
	// long a session lasts from its login (DefaultSessionTTL if 0).
	LoginTTL, SessionTTL time.Duration
	// Now is the clock of logins and sessions (time.Now if nil).
	Now func() time.Time
}

// web holds the front end: web/static is the UI's own pages, scripts and styles, committed;
// web/node_modules is what `npm ci` installs there from the committed lock file (see the
// package comment). A directory pattern embeds whatever is present, so the Go build never
// depends on npm.
//
//go:embed web
var web embed.FS

// Where the front-end packages are in web.
const (
	novncDir = "web/node_modules/@novnc/novnc"
	uplotDir = "web/node_modules/uplot/dist"
)

// PackagesInstalled reports whether the binary was built with the front-end packages (noVNC
// and uPlot) that `npm ci` installs in webui/web/node_modules; without them the pages work but
// the console and the price plot say the packages are missing.
func PackagesInstalled() bool {
	for _, f := range []string{novncDir + "/core/rfb.js", uplotDir + "/uPlot.esm.js"} {
		if _, err := fs.Stat(web, f); err != nil {
			return false
		}
	}
	return true
}

// UI is the node owner's web interface, a node.Service: it adds its routes to the node's
// local HTTP server, beside the API, in Start.
type UI struct {
	opts   Options
	sess   *sessions
	pages  *template.Template
	api    *node.API
	token  string
	cookie string
	peer   string

	tickets *tickets
	ctx     context.Context
	cancel  context.CancelFunc
	bridges sync.WaitGroup
}

// New returns the UI to attach to a node.
func New(opts Options) *UI {
	opts.LoginTTL = cmp.Or(opts.LoginTTL, DefaultLoginTTL)
	opts.SessionTTL = cmp.Or(opts.SessionTTL, DefaultSessionTTL)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &UI{opts: opts, sess: newSessions(opts.Now, opts.LoginTTL, opts.SessionTTL),
		pages:   template.Must(template.ParseFS(web, "web/static/login.html")),
		tickets: newTickets(opts.Now), ctx: ctx, cancel: cancel}
}

// LoginLink is the answer of POST /v1/ui/login: a link that signs one browser in, once.
type LoginLink struct {
	URL     string    `json:"url"`
	Expires time.Time `json:"expires"`
}

// guard is what a route of the UI requires beyond the security headers and the Host and
// Origin checks that every one has.
type guard int

const (
	open     guard = iota // the login page: nothing more
	page                  // a page: a session, else a redirect to the login page
	signedIn              // data and actions: a session (else 401), GET or POST, a CSRF token on POST
)

// Start adds the UI's routes to the node's HTTP server.
func (u *UI) Start(_ context.Context, n *node.Node) error {
	token, err := n.Home().Token()
	if err != nil {
		return err
	}
	u.api, u.token, u.peer = n.API(), token, n.ID().String()
	// Cookies are not kept apart by port: every node on this machine gets its own name, so
	// that signing in to one does not sign another out.
	u.cookie = "virtuoso-" + u.peer
	a := u.api
	a.Route("POST /v1/ui/login", func(*http.Request) (any, error) { return u.Login(), nil })
	a.HandleOpen("GET /login", u.with(open, u.login))
	a.HandleOpen("GET /login.css", u.with(open, serveFile("web/static/login.css")))
	a.HandleOpen("GET /favicon.svg", u.with(open, serveFile("web/static/favicon.svg")))
	a.HandleOpen("POST /logout", u.with(signedIn, u.logout))
	a.HandleOpen("GET /{$}", u.with(page, serveFile("web/static/index.html")))
	a.HandleOpen("GET /static/", u.with(signedIn, serveDir("/static/", "web/static")))
	a.HandleOpen("GET /vendor/novnc/", u.with(signedIn, serveDir("/vendor/novnc/", novncDir, "core/", "vendor/")))
	a.HandleOpen("GET /vendor/uplot/", u.with(signedIn, serveDir("/vendor/uplot/", uplotDir)))
	a.HandleOpen("GET /ui/session", u.with(signedIn, u.sessionInfo))
	a.HandleOpen("GET /ui/events", u.with(signedIn, u.events))
	a.HandleOpen("POST /ui/console/{vm}", u.with(signedIn, u.openConsole))
	a.HandleOpen("GET /ui/console/{ticket}/ws", u.with(signedIn, u.bridgeConsole))
	a.HandleOpen("/api/", u.with(signedIn, u.relay))
	return nil
}

// Login issues a login link: it signs one browser in, once, within Options.LoginTTL. The node
// must be started.
func (u *UI) Login() LoginLink {
	t, exp := u.sess.issue()
	return LoginLink{URL: "http://" + u.api.Addr() + "/login?token=" + t, Expires: exp}
}

// Close ends the console bridges.
func (u *UI) Close() error {
	u.cancel()
	u.bridges.Wait()
	return nil
}

// with wraps h in the checks of g.
func (u *UI) with(g guard, h func(http.ResponseWriter, *http.Request, *session)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		securityHeaders(w.Header())
		if !loopbackHost(r.Host) {
			node.WriteError(w, errHost)
			return
		}
		if !sameOrigin(r) {
			node.WriteError(w, errOrigin)
			return
		}
		if g == open {
			h(w, r, nil)
			return
		}
		sess := u.current(r)
		switch {
		case sess == nil && g == page:
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		case sess == nil:
			node.WriteError(w, errNoSession)
			return
		case r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodPost:
			node.WriteError(w, errMethod)
			return
		case r.Method == http.MethodPost && !csrfOK(r, sess):
			node.WriteError(w, errCSRF)
			return
		}
		h(w, r, sess)
	})
}

// current is the request's live session, if any.
func (u *UI) current(r *http.Request) *session {
	c, err := r.Cookie(u.cookie)
	if err != nil {
		return nil
	}
	sess, _ := u.sess.lookup(c.Value)
	return sess
}

// login spends a login link's token and sets the session cookie; without a token it says how
// to get one. A GET is enough: the link's host is this machine's loopback, so nothing but the
// owner's own programs can follow it, and the token is good once.
func (u *UI) login(w http.ResponseWriter, r *http.Request, _ *session) {
	w.Header().Set("Cache-Control", "no-store")
	token := r.URL.Query().Get("token")
	if token == "" {
		if u.current(r) != nil {
			http.Redirect(w, r, "/", http.StatusSeeOther)
			return
		}
		u.loginPage(w, http.StatusOK, loginView{Message: "Sign in with a login link from your node."})
		return
	}
	id, sess, ok := u.sess.redeem(token)
	if !ok {
		u.loginPage(w, http.StatusForbidden, loginView{Failed: true,
			Message: "This login link was used already or has expired: each link signs in once."})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: u.cookie, Value: id, Path: "/", Expires: sess.expires,
		MaxAge: int(u.opts.SessionTTL / time.Second), HttpOnly: true, SameSite: http.SameSiteStrictMode})
	// A page that moves on rather than a redirect: a redirect would carry the site of the
	// navigation that brought the link, and a strict cookie is not sent after a cross-site one.
	u.loginPage(w, http.StatusOK, loginView{SignedIn: true, Message: "Signed in."})
}

type loginView struct {
	Message          string
	Failed, SignedIn bool
}

func (u *UI) loginPage(w http.ResponseWriter, status int, v loginView) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	u.pages.ExecuteTemplate(w, "login.html", v)
}

func (u *UI) logout(w http.ResponseWriter, r *http.Request, _ *session) {
	if c, err := r.Cookie(u.cookie); err == nil {
		u.sess.end(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: u.cookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	node.WriteJSON(w, http.StatusOK, map[string]bool{"signed_out": true})
}

// SessionInfo is what GET /ui/session answers the pages: the token to send with every POST.
type SessionInfo struct {
	CSRF     string    `json:"csrf"`
	Peer     string    `json:"peer"`
	Expires  time.Time `json:"expires"`
	Packages bool      `json:"packages"`
}

func (u *UI) sessionInfo(w http.ResponseWriter, _ *http.Request, sess *session) {
	w.Header().Set("Cache-Control", "no-store")
	node.WriteJSON(w, http.StatusOK, SessionInfo{CSRF: sess.csrf, Peer: u.peer, Expires: sess.expires, Packages: PackagesInstalled()})
}

// relay answers /api/v1/... with the API's /v1/...: the browser reaches the node's API through
// its session, the UI adds the bearer token.
func (u *UI) relay(w http.ResponseWriter, r *http.Request, _ *session) {
	path := strings.TrimPrefix(r.URL.EscapedPath(), "/api")
	if !strings.HasPrefix(path, "/v1/") || strings.HasPrefix(path, "/v1/ui/") {
		node.WriteError(w, node.WithStatus(http.StatusNotFound, fmt.Errorf("no API route %s", r.URL.Path)))
		return
	}
	if r.Method == http.MethodPost && migrateRoute.MatchString(path) {
		// A migration goes on when its page is closed or reloaded (the page finds it again
		// in /v1/market/migrations); it stops with the UI.
		ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
		defer cancel()
		defer context.AfterFunc(u.ctx, cancel)()
		r = r.WithContext(ctx)
	}
	u.api.ServeHTTP(w, u.internal(r, r.Method, path))
}

// migrateRoute is the API's path of a migration, which outlives the request that asked for it.
var migrateRoute = regexp.MustCompile(`^/v1/market/vms/[^/]+/migrate$`)

// internal is r as a request of the API's own, at the escaped path, with the bearer token and
// without the browser's credentials. The path stays escaped: an id with an escaped slash stays
// one path segment.
func (u *UI) internal(r *http.Request, method, escaped string) *http.Request {
	in := r.Clone(r.Context())
	in.Method = method
	in.URL.RawPath, in.RequestURI = escaped, ""
	in.URL.Path, _ = url.PathUnescape(escaped) // escaped came from a parsed URL or PathEscape
	for _, h := range []string{"Cookie", csrfHeader, "Origin"} {
		in.Header.Del(h)
	}
	in.Header.Set("Authorization", "Bearer "+u.token)
	return in
}

// call makes an API call of the node's own, at the escaped path, and decodes its answer into out; an error answer is
// returned as it came, to be written on.
func (u *UI) call(r *http.Request, method, path string, out any) *captured {
	rec := &captured{header: http.Header{}, status: http.StatusOK}
	u.api.ServeHTTP(rec, u.internal(r, method, path))
	if rec.status == http.StatusOK {
		if err := json.Unmarshal(rec.body.Bytes(), out); err != nil {
			rec.status = http.StatusBadGateway
			rec.body.Reset()
			json.NewEncoder(&rec.body).Encode(node.ErrorBody{Code: "internal", Message: "the API's answer does not decode: " + err.Error()})
		}
	}
	return rec
}

// serveFile serves one embedded file.
func serveFile(name string) func(http.ResponseWriter, *http.Request, *session) {
	return func(w http.ResponseWriter, r *http.Request, _ *session) {
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, web, name)
	}
}

// serveDir serves the embedded directory dir under prefix; with only given, only the paths
// under those subdirectories.
func serveDir(prefix, dir string, only ...string) func(http.ResponseWriter, *http.Request, *session) {
	sub, err := fs.Sub(web, dir)
	if err != nil {
		panic(err) // dir is a constant path inside web
	}
	files := http.StripPrefix(prefix, http.FileServerFS(sub))
	return func(w http.ResponseWriter, r *http.Request, _ *session) {
		rest := strings.TrimPrefix(r.URL.Path, prefix)
		allowed := len(only) == 0
		for _, o := range only {
			allowed = allowed || strings.HasPrefix(rest, o)
		}
		if _, err := fs.Stat(sub, rest); !allowed || err != nil || strings.HasSuffix(rest, "/") || rest == "" {
			msg := fmt.Sprintf("no file %s", r.URL.Path)
			if strings.HasPrefix(prefix, "/vendor/") && !PackagesInstalled() {
				msg += ": this binary was built without the front-end packages; run `make build` (it runs npm ci in webui/web first)"
			}
			node.WriteError(w, node.WithStatus(http.StatusNotFound, errors.New(msg)))
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}
}
