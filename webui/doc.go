// Package webui is the node owner's local web interface: the buyer's, provider's and node's
// pages, the console websocket that noVNC connects to, and live updates from the event log. It
// is a node.Service that adds its routes to the node's local HTTP server, on the API's own
// loopback listener; internal/daemon attaches it to every node.
//
// # Signing in
//
// The recipe of Syncthing's GUI, with Kubo's origin rule:
//
//   - `virtuoso ui` asks the node, through the bearer-authenticated API (POST /v1/ui/login),
//     for a login link http://127.0.0.1:PORT/login?token=T. The token is random, good once and
//     for Options.LoginTTL; the node keeps only its SHA-256. A GET spends it: the link's host
//     is this machine's loopback, so only the owner's own programs can follow it.
//   - The login sets a session cookie: HttpOnly, SameSite=Strict, Path=/, expiring with the
//     session (Options.SessionTTL from the login). Cookies are not kept apart by port, so its
//     name carries the node's peer ID: the nodes of one machine do not sign each other out.
//     Sessions live in memory; a restarted node asks its owner to sign in again.
//   - Every route but /login (and its stylesheet and icon) needs a session: pages redirect to /login,
//     everything else answers 401 with code no_session.
//   - Reading is GET, changing is POST, any other method is refused (405, method_not_allowed),
//     and every POST carries the session's CSRF token in the X-CSRF-Token header (GET
//     /ui/session gives it to the page); without it, 403 csrf.
//   - The Host header must name the loopback (localhost, *.localhost, 127.0.0.0/8, ::1): a
//     rebound DNS name is refused (403 host_not_allowed). An Origin header must be the UI's own
//     (http://HOST as sent), and fetch metadata must not call a request cross-site: pages on
//     other loopback ports share the cookie jar but not the origin (403 origin_not_allowed).
//   - Every answer carries a Content-Security-Policy that allows the UI's own scripts, styles
//     and connections only (no inline script or style, no eval), X-Frame-Options: DENY,
//     X-Content-Type-Options: nosniff and Referrer-Policy: no-referrer.
//
// API clients (the CLI) keep the bearer token on /v1/...; a session does not open those routes.
// The pages reach the same API as /api/v1/...: the UI checks the session (and the CSRF token)
// and hands the request to the API with the bearer token, so the pages see the API's answers and
// error codes as they are.
//
// # Routes
//
//	GET  /login?token=T             spend a login link; without T, how to get one
//	POST /logout                    end the session
//	GET  /                          the application (web/static/index.html)
//	GET  /static/…                  the UI's own scripts and styles (web/static)
//	GET  /vendor/novnc/{core,vendor}/…, /vendor/uplot/…   the npm packages
//	GET  /ui/session                the CSRF token, the node's peer ID, the session's expiry
//	GET  /ui/events?…               the event log as server-sent events (parameters of /v1/events)
//	POST /ui/console/{vm}           a console session and a ticket for its websocket
//	GET  /ui/console/{ticket}/ws    the console: RFB over a websocket, subprotocol "binary"
//	GET|POST /api/v1/…              the node's API, through the session
//
// A POST of a migration (/api/v1/market/vms/{id}/migrate) outlives its request: closing or
// reloading the page does not revert the move (the migrate page finds it again in
// /v1/market/migrations); it stops with the UI.
//
// # Pages
//
// One page a module in web/static/pages, routed by the fragment (#/name/params): home (the
// market's averages per configuration and their history, uPlot), configs (browse, edit),
// search (providers for a configuration, store on one at the prices seen), computers (each
// VM's actions, live from the event log), console (noVNC; it waits out a migration and
// reconnects to the VM where it arrived), migrate (destinations with costs, the move's
// progress), accounts (balance, charges per VM, income per machine and VM, statement),
// machines (add, copy, edit, remove; the VMs stored on each), market (offers, per-resource
// averages), node (identity, peers, the ledger) and events (the event log, filtered, live).
// Forms send what was typed; the node checks it and names each wrong field in the error's
// fields (node.FieldError), which the page shows under the input of that name.
//
// # Front-end files and their packages
//
// The pages are plain ES modules in web/static, committed, with no build step. Their libraries
// come from the npm registry as dependencies, never copied into the repository:
// web/package.json pins them (@novnc/novnc, uplot) and the committed web/package-lock.json
// locks them; scripts/deps.sh (run by make deps, build, test and demo) runs `npm ci` there when
// the lock changed. go:embed takes the whole web directory, whatever it holds, so `go build`
// never depends on npm: a directory pattern matches even without node_modules, and with it
// embeds the installed packages (about 1.4 MB, dot files left out). A binary built without them
// still serves every page; PackagesInstalled reports it, the pages say so where the console or
// the price plot would be, and /vendor/ answers 404 with the remedy (`make build`).
package webui
