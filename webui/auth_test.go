package webui_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/cli"
	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/daemon/daemontest"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/webui"
)

// startNode starts a whole node on loopback for the test (daemontest.Start).
func startNode(t testing.TB, edit func(*node.Config), opts daemon.Options) *daemon.Node {
	t.Helper()
	return daemontest.Start(t, edit, opts)
}

// clock is a settable clock for sessions.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// uiNode is a node under test with its API client.
type uiNode struct {
	*daemon.Node
	t     testing.TB
	base  string // http://127.0.0.1:PORT
	api   *node.Client
	clock *clock
}

func startUI(t testing.TB) *uiNode {
	t.Helper()
	c := &clock{now: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
	u := startUIWith(t, nil, daemon.Options{UI: webui.Options{Now: c.Now}})
	u.clock = c
	return u
}

// startUIWith starts a node as startNode does, with its API client.
func startUIWith(t testing.TB, edit func(*node.Config), opts daemon.Options) *uiNode {
	t.Helper()
	n := startNode(t, edit, opts)
	api, err := node.Dial(n.Home())
	if err != nil {
		t.Fatal(err)
	}
	return &uiNode{Node: n, t: t, base: "http://" + n.API().Addr(), api: api}
}

// link asks the node for a login link, as `virtuoso ui` does.
func (n *uiNode) link() string {
	n.t.Helper()
	var l webui.LoginLink
	if err := n.api.Post(context.Background(), "/v1/ui/login", struct{}{}, &l); err != nil {
		n.t.Fatal(err)
	}
	if !strings.HasPrefix(l.URL, n.base+"/login?token=") {
		n.t.Fatalf("login link %q is not on the node's address %s", l.URL, n.base)
	}
	return l.URL
}

// browser is an HTTP client that keeps cookies and does not follow redirects, like a page's
// fetches from the UI's own origin.
type browser struct {
	t    testing.TB
	n    *uiNode
	c    *http.Client
	csrf string
}

func (n *uiNode) browser() *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: n.t, n: n, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

// signIn follows a fresh login link and reads the session's CSRF token.
func (b *browser) signIn() {
	b.t.Helper()
	if resp := b.do("GET", b.n.link(), nil, nil); resp.status != http.StatusOK || !strings.Contains(resp.body, "Signed in") {
		b.t.Fatalf("login: %d %s", resp.status, resp.body)
	}
	resp := b.do("GET", "/ui/session", nil, nil)
	var s webui.SessionInfo
	if err := json.Unmarshal([]byte(resp.body), &s); err != nil || s.CSRF == "" {
		b.t.Fatalf("session: %d %s (%v)", resp.status, resp.body, err)
	}
	b.csrf = s.CSRF
}

type answer struct {
	status int
	header http.Header
	body   string
	code   string // the error body's code, if any
}

// do sends a request from the UI's own page: path relative to the node's address, the Origin
// of the UI on POST; hdr adds or (empty value) removes headers.
func (b *browser) do(method, path string, body any, hdr map[string]string) answer {
	b.t.Helper()
	if strings.HasPrefix(path, "/") {
		path = b.n.base + path
	}
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = strings.NewReader(string(raw))
	}
	req, err := http.NewRequest(method, path, rd)
	if err != nil {
		b.t.Fatal(err)
	}
	if method != "GET" {
		req.Header.Set("Origin", b.n.base)
		if b.csrf != "" {
			req.Header.Set("X-CSRF-Token", b.csrf)
		}
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
		} else if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(raw)}
	var eb node.ErrorBody
	if json.Unmarshal(raw, &eb) == nil {
		a.code = eb.Code
	}
	return a
}

// TestUILogin: a login link signs a browser in once; the cookie is HttpOnly, SameSite=Strict
// and expires with the session; the pages and the API are then reachable, and the link is
// spent.
func TestUILogin(t *testing.T) {
	n := startUI(t)
	b := n.browser()
	link := n.link()
	resp := b.do("GET", link, nil, nil)
	if resp.status != http.StatusOK {
		t.Fatalf("login: %d %s", resp.status, resp.body)
	}
	cookies := (&http.Response{Header: resp.header}).Cookies()
	if len(cookies) != 1 {
		t.Fatalf("login set %d cookies: %v", len(cookies), resp.header["Set-Cookie"])
	}
	c := cookies[0]
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.MaxAge != int(webui.DefaultSessionTTL/time.Second) ||
		!c.Expires.Equal(n.clock.Now().Add(webui.DefaultSessionTTL).Truncate(time.Second)) {
		t.Fatalf("session cookie %s: want HttpOnly, SameSite=Strict, Path=/, expiring with the session", c)
	}
	if !strings.Contains(c.Name, n.ID().String()) {
		t.Fatalf("cookie name %q does not name the node, so two nodes on this machine would share it", c.Name)
	}
	if got := b.do("GET", "/", nil, nil); got.status != http.StatusOK || !strings.Contains(got.body, "/static/app.js") {
		t.Fatalf("the app after login: %d %s", got.status, got.body)
	}
	if got := b.do("GET", "/api/v1/id", nil, nil); got.status != http.StatusOK || !strings.Contains(got.body, n.ID().String()) {
		t.Fatalf("the API through the session: %d %s", got.status, got.body)
	}

	// The link is spent: another browser cannot use it.
	other := n.browser()
	if got := other.do("GET", link, nil, nil); got.status != http.StatusForbidden || !strings.Contains(got.body, "used already or has expired") ||
		len(got.header["Set-Cookie"]) != 0 {
		t.Fatalf("a second use of the link: %d %v %s", got.status, got.header["Set-Cookie"], got.body)
	}
	if got := other.do("GET", "/api/v1/id", nil, nil); got.status != http.StatusUnauthorized || got.code != webui.CodeNoSession {
		t.Fatalf("the API for the other browser: %d %s", got.status, got.body)
	}
	// A forged token signs nobody in.
	if got := other.do("GET", "/login?token=AAAA", nil, nil); got.status != http.StatusForbidden || len(got.header["Set-Cookie"]) != 0 {
		t.Fatalf("a forged token: %d %s", got.status, got.body)
	}

	// Signing out ends the session.
	b.signIn()
	if got := b.do("POST", "/logout", nil, nil); got.status != http.StatusOK {
		t.Fatalf("logout: %d %s", got.status, got.body)
	}
	if got := b.do("GET", "/api/v1/id", nil, nil); got.status != http.StatusUnauthorized {
		t.Fatalf("the API after logout: %d %s", got.status, got.body)
	}
}

// TestUIOnlyLoginWithoutSession: without a session, nothing but the login page answers: pages
// redirect to it, everything else is a 401 with code no_session.
func TestUIOnlyLoginWithoutSession(t *testing.T) {
	n := startUI(t)
	b := n.browser()
	if got := b.do("GET", "/login", nil, nil); got.status != http.StatusOK || !strings.Contains(got.body, "virtuoso ui") {
		t.Fatalf("the login page: %d %s", got.status, got.body)
	}
	if got := b.do("GET", "/", nil, nil); got.status != http.StatusSeeOther || got.header.Get("Location") != "/login" {
		t.Fatalf("GET / without a session: %d %v", got.status, got.header)
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/static/app.js"},
		{"GET", "/static/index.html"},
		{"GET", "/vendor/novnc/core/rfb.js"},
		{"GET", "/vendor/uplot/uPlot.esm.js"},
		{"GET", "/ui/session"},
		{"GET", "/ui/events"},
		{"POST", "/ui/console/00000000000000000000000000000000"},
		{"GET", "/ui/console/ticket/ws"},
		{"GET", "/api/v1/id"},
		{"GET", "/api/v1/market/vms"},
		{"POST", "/api/v1/market/configs"},
		{"POST", "/logout"},
	} {
		if got := b.do(c.method, c.path, nil, nil); got.status != http.StatusUnauthorized || got.code != webui.CodeNoSession {
			t.Errorf("%s %s without a session: %d %s", c.method, c.path, got.status, got.body)
		}
	}
}

// TestUIBearerAPI: API clients keep the bearer token; the token does not open the UI's routes,
// which need a session.
func TestUIBearerAPI(t *testing.T) {
	n := startUI(t)
	var id node.Identity
	if err := n.api.Get(context.Background(), "/v1/id", &id); err != nil || id.PeerID != n.ID().String() {
		t.Fatalf("GET /v1/id with the token: %+v, %v", id, err)
	}
	b := n.browser()
	if got := b.do("GET", "/v1/id", nil, nil); got.status != http.StatusUnauthorized {
		t.Fatalf("GET /v1/id with neither token nor session: %d", got.status)
	}
	token, err := n.Home().Token()
	if err != nil {
		t.Fatal(err)
	}
	if got := b.do("GET", "/api/v1/id", nil, map[string]string{"Authorization": "Bearer " + token}); got.status != http.StatusUnauthorized || got.code != webui.CodeNoSession {
		t.Fatalf("the UI's relay with the bearer token and no session: %d %s", got.status, got.body)
	}
	// A session opens the UI, not the bearer routes.
	b.signIn()
	if got := b.do("GET", "/v1/id", nil, nil); got.status != http.StatusUnauthorized {
		t.Fatalf("GET /v1/id with a session cookie only: %d", got.status)
	}
	// The relay does not mint login links.
	if got := b.do("POST", "/api/v1/ui/login", struct{}{}, nil); got.status != http.StatusNotFound {
		t.Fatalf("a login link through the session: %d %s", got.status, got.body)
	}
}

// TestUISessionExpiry: a session ends at its expiry, a login link at its own.
func TestUISessionExpiry(t *testing.T) {
	n := startUI(t)
	b := n.browser()
	b.signIn()
	n.clock.advance(webui.DefaultSessionTTL - time.Second)
	if got := b.do("GET", "/api/v1/id", nil, nil); got.status != http.StatusOK {
		t.Fatalf("just before expiry: %d %s", got.status, got.body)
	}
	n.clock.advance(time.Second)
	if got := b.do("GET", "/api/v1/id", nil, nil); got.status != http.StatusUnauthorized || got.code != webui.CodeNoSession ||
		!strings.Contains(got.body, "virtuoso ui") {
		t.Fatalf("at expiry: %d %s", got.status, got.body)
	}
	if got := b.do("GET", "/", nil, nil); got.status != http.StatusSeeOther {
		t.Fatalf("the app at expiry: %d", got.status)
	}

	link := n.link()
	n.clock.advance(webui.DefaultLoginTTL)
	if got := b.do("GET", link, nil, nil); got.status != http.StatusForbidden || len(got.header["Set-Cookie"]) != 0 {
		t.Fatalf("an expired login link: %d %s", got.status, got.body)
	}
}

// configs is the names of the node's configurations.
func (n *uiNode) configs() []string {
	n.t.Helper()
	var cs []market.Configuration
	if err := n.api.Get(context.Background(), "/v1/market/configs", &cs); err != nil {
		n.t.Fatal(err)
	}
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

// TestUIRefusesForgedRequests: a POST without the session's CSRF token, a request from another
// origin, one to a Host that is not loopback, one with a method other than GET and POST: each
// is refused with its code, and changes nothing.
func TestUIRefusesForgedRequests(t *testing.T) {
	n := startUI(t)
	b := n.browser()
	b.signIn()
	before := n.configs()
	cfg := market.Configuration{Name: "ui-test", Processor: "x86_64", SpeedBogomips: 1000, MemoryMB: 256, DiskMB: 1024}
	for _, c := range []struct {
		name         string
		method, path string
		hdr          map[string]string
		status       int
		code         string
	}{
		{"no csrf token", "POST", "/api/v1/market/configs", map[string]string{"X-CSRF-Token": ""}, 403, webui.CodeCSRF},
		{"wrong csrf token", "POST", "/api/v1/market/configs", map[string]string{"X-CSRF-Token": "x" + b.csrf[1:]}, 403, webui.CodeCSRF},
		{"csrf token as a query", "POST", "/api/v1/market/configs?csrf=" + b.csrf, map[string]string{"X-CSRF-Token": ""}, 403, webui.CodeCSRF},
		{"other origin", "POST", "/api/v1/market/configs", map[string]string{"Origin": "http://evil.example"}, 403, webui.CodeOrigin},
		{"other loopback port", "POST", "/api/v1/market/configs", map[string]string{"Origin": "http://127.0.0.1:1"}, 403, webui.CodeOrigin},
		{"https origin", "POST", "/api/v1/market/configs", map[string]string{"Origin": strings.Replace(n.base, "http:", "https:", 1)}, 403, webui.CodeOrigin},
		{"null origin", "POST", "/api/v1/market/configs", map[string]string{"Origin": "null"}, 403, webui.CodeOrigin},
		{"cross-site fetch without origin", "POST", "/api/v1/market/configs", map[string]string{"Origin": "", "Sec-Fetch-Site": "same-site"}, 403, webui.CodeOrigin},
		{"other origin reading", "GET", "/api/v1/market/vms", map[string]string{"Origin": "http://evil.example"}, 403, webui.CodeOrigin},
		{"rebound host", "POST", "/api/v1/market/configs", map[string]string{"Host": "evil.example:" + port(n.base)}, 403, webui.CodeHost},
		{"rebound host reading", "GET", "/api/v1/market/vms", map[string]string{"Host": "evil.example"}, 403, webui.CodeHost},
		{"rebound host login", "GET", "/login", map[string]string{"Host": "127.0.0.1.evil.example"}, 403, webui.CodeHost},
		{"put", "PUT", "/api/v1/market/configs", nil, 405, webui.CodeMethod},
		{"delete", "DELETE", "/api/v1/market/machines/1", nil, 405, webui.CodeMethod},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := b.do(c.method, c.path, cfg, c.hdr)
			if got.status != c.status || got.code != c.code {
				t.Fatalf("%d %s, want %d %s", got.status, got.body, c.status, c.code)
			}
			if after := n.configs(); len(after) != len(before) {
				t.Fatalf("the configurations changed: %v → %v", before, after)
			}
		})
	}
	// The loopback names and addresses are the UI's.
	for _, host := range []string{"localhost:" + port(n.base), "LOCALHOST", "127.0.0.2:" + port(n.base), "[::1]:" + port(n.base), "ui.localhost"} {
		if got := b.do("GET", "/login", nil, map[string]string{"Host": host}); got.status != http.StatusOK {
			t.Errorf("Host %s: %d %s", host, got.status, got.body)
		}
	}
	// The same request with the token and from the UI's page is taken.
	if got := b.do("POST", "/api/v1/market/configs", cfg, nil); got.status != http.StatusOK {
		t.Fatalf("the genuine request: %d %s", got.status, got.body)
	}
	if after := n.configs(); len(after) != len(before)+1 {
		t.Fatalf("the genuine request added no configuration: %v", after)
	}
}

func port(base string) string {
	u, _ := url.Parse(base)
	return u.Port()
}

// TestUISecurityHeaders: every answer of the UI, the login page too, forbids framing and
// sniffing and carries a Content-Security-Policy without inline script or style.
func TestUISecurityHeaders(t *testing.T) {
	n := startUI(t)
	b := n.browser()
	check := func(what string, h http.Header) {
		t.Helper()
		csp := h.Get("Content-Security-Policy")
		if h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" ||
			!strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") ||
			strings.Contains(csp, "unsafe") || h.Get("Referrer-Policy") != "no-referrer" {
			t.Errorf("%s: headers %v", what, h)
		}
	}
	check("login page", b.do("GET", "/login", nil, nil).header)
	check("refusal", b.do("GET", "/api/v1/id", nil, nil).header)
	b.signIn()
	for _, p := range []string{"/", "/static/app.js", "/static/style.css", "/api/v1/id", "/ui/session"} {
		got := b.do("GET", p, nil, nil)
		if got.status != http.StatusOK {
			t.Errorf("GET %s: %d %s", p, got.status, got.body)
		}
		check(p, got.header)
	}
	if ct := b.do("GET", "/static/app.js", nil, nil).header.Get("Content-Type"); !strings.HasPrefix(ct, "text/javascript") {
		t.Errorf("app.js is served as %q", ct)
	}
}

// requirePackages fails the test unless the binary holds the front-end packages.
func requirePackages(t testing.TB) {
	t.Helper()
	if !webui.PackagesInstalled() {
		t.Fatal("the web UI's npm packages are not in webui/web/node_modules: run scripts/deps.sh (npm ci in webui/web) and test again")
	}
}

// TestUIVendorPackages: the npm packages are served from the binary, only the parts the pages
// load.
func TestUIVendorPackages(t *testing.T) {
	requirePackages(t)
	n := startUI(t)
	b := n.browser()
	b.signIn()
	for path, status := range map[string]int{
		"/vendor/novnc/core/rfb.js":                     200,
		"/vendor/novnc/vendor/pako/lib/zlib/inflate.js": 200,
		"/vendor/uplot/uPlot.esm.js":                    200,
		"/vendor/uplot/uPlot.min.css":                   200,
		"/vendor/novnc/package.json":                    404,
		"/vendor/novnc/docs/API.md":                     404,
		"/vendor/novnc/core/":                           404,
	} {
		if got := b.do("GET", path, nil, nil); got.status != status {
			t.Errorf("GET %s: %d, want %d", path, got.status, status)
		}
	}
}

// TestUICommand: `virtuoso ui` prints a login link of the node on its home, which signs a
// browser in.
func TestUICommand(t *testing.T) {
	n := startUI(t)
	var out, errOut strings.Builder
	if code := cli.Run([]string{"ui", "--home", n.Home().Dir}, cli.Env{Stdout: &out, Stderr: &errOut}); code != 0 {
		t.Fatalf("virtuoso ui: exit %d: %s", code, errOut.String())
	}
	link, _, _ := strings.Cut(out.String(), "\n")
	if !strings.HasPrefix(link, n.base+"/login?token=") {
		t.Fatalf("virtuoso ui printed %q", out.String())
	}
	b := n.browser()
	if got := b.do("GET", link, nil, nil); got.status != http.StatusOK || len(got.header["Set-Cookie"]) != 1 {
		t.Fatalf("the printed link: %d %s", got.status, got.body)
	}
}

// TestUITamperedRequests: a VM id that is not one of the buyer's, an unknown action, a
// configuration out of range: each is a clear message with its code, never a 500, and changes
// nothing; a form's wrong fields are named in the answer's fields, each with its problem.
func TestUITamperedRequests(t *testing.T) {
	n := startUI(t)
	b := n.browser()
	b.signIn()
	before := n.configs()
	for _, c := range []struct {
		name, method, path string
		body               any
		status             int
		code, says         string
	}{
		{"someone else's vm", "POST", "/api/v1/market/vms/0123456789abcdef0123456789abcdef/start", nil, 404, "not_found", ""},
		{"not a vm id", "POST", "/api/v1/market/vms/..%2f..%2fetc/start", nil, 0, "", ""},
		{"unknown action", "POST", "/api/v1/market/vms/0123456789abcdef0123456789abcdef/explode", nil, 0, "", ""},
		{"console of someone else's vm", "POST", "/ui/console/0123456789abcdef0123456789abcdef", nil, 404, "not_found", ""},
		{"forged console ticket", "GET", "/ui/console/AAAA/ws", nil, 403, "ticket", "open the console again"},
		{"memory out of range", "POST", "/api/v1/market/configs", market.Configuration{Name: "big", Processor: "x86_64", SpeedBogomips: 1000, MemoryMB: 1 << 40, DiskMB: 1024}, 400, "invalid", `"memory_mb": "1099511627776 out of range 1..`},
		{"negative speed", "POST", "/api/v1/market/configs", market.Configuration{Name: "neg", Processor: "x86_64", SpeedBogomips: -1, MemoryMB: 256, DiskMB: 1024}, 400, "invalid", `"speed_bogomips": "-1 out of range 0..`},
		{"memory not a number", "POST", "/api/v1/market/configs", map[string]any{"name": "x", "memory_mb": "lots", "disk_mb": 1}, 400, "invalid", `"memory_mb": "got string, want a whole number"`},
		{"unknown field", "POST", "/api/v1/market/configs", map[string]any{"name": "x", "memory_mb": 256, "disk_mb": 1, "colour": "red"}, 400, "malformed", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := b.do(c.method, c.path, c.body, nil)
			if got.status >= 500 || got.status < 400 || got.code == "" || (c.status != 0 && got.status != c.status) ||
				(c.code != "" && got.code != c.code) || !strings.Contains(got.body, c.says) {
				t.Fatalf("%d %s, want %d %q saying %q", got.status, got.body, c.status, c.code, c.says)
			}
			if after := n.configs(); len(after) != len(before) {
				t.Fatalf("the configurations changed: %v → %v", before, after)
			}
		})
	}
}
