package webui_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// chrome is a headless Chromium (Debian's chromium) at 1280×800, closed at the end of the
// test. JavaScript exceptions and Content-Security-Policy violations of its pages are
// collected: a page that throws or breaks the policy fails the test.
type chrome struct {
	t   *testing.T
	ctx context.Context
	dir string // where the screenshots go

	mu     sync.Mutex
	faults []string
	shots  *atomic.Int32 // shared by a browser's tabs
}

func newChrome(t *testing.T) *chrome {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("the web UI's browser tests drive Debian's chromium: install it (scripts/deps.sh does as root: apt-get install chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.WindowSize(1280, 800),
		chromedp.UserDataDir(t.TempDir()), chromedp.DisableGPU)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	c := &chrome{t: t, ctx: ctx, dir: t.ArtifactDir(), shots: new(atomic.Int32)}
	done, err := c.listen()
	if err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		<-done
	})
	t.Logf("screenshots in %s", c.dir)
	return c
}

// listen starts c's tab and collects its pages' faults until it closes (done).
func (c *chrome) listen() (done chan struct{}, err error) {
	if err := chromedp.Do(c.ctx); err != nil {
		return nil, err
	}
	console := chromedp.Console(c.ctx)
	done = make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range console {
			if err != nil {
				return
			}
			if (m.IsException() || m.Type == "error") && !expectedRefusal(m.Text) {
				c.fault(fmt.Sprintf("%s %s:%d: %s", m.Type, m.URL, m.Line, m.Text))
			}
		}
	}()
	return done, nil
}

// expectedRefusal is the browser's log line of an API answer that refuses a request, which
// the page shows (a form's wrong fields: 400; an action the VM's status no longer allows: 409;
// no coordinator answers: 502): the test checks the page, not the log. A missing file (404)
// stays a fault.
func expectedRefusal(text string) bool {
	// noVNC logs a console session that closed while it connected (the VM was suspended or
	// moved meanwhile); the page reconnects, and the test waits for the screen all the same.
	if strings.Contains(text, "Failed when connecting: Connection closed") {
		return true
	}
	for _, status := range []string{"400", "409", "502"} {
		if strings.HasPrefix(text, "Failed to load resource: the server responded with a status of "+status) {
			return true
		}
	}
	return false
}

// tab opens another tab of the browser, closed by the function returned (and at the end of
// the test); its screenshots are numbered with c's.
func (c *chrome) tab() (*chrome, func()) {
	c.t.Helper()
	ctx, cancel := chromedp.NewContext(c.ctx)
	t := &chrome{t: c.t, ctx: ctx, dir: c.dir, shots: c.shots}
	done, err := t.listen()
	if err != nil {
		cancel()
		c.t.Fatalf("open a tab: %v", err)
	}
	var once sync.Once
	closeTab := func() { once.Do(func() { cancel(); <-done }) }
	c.t.Cleanup(closeTab)
	return t, closeTab
}

func (c *chrome) fault(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = append(c.faults, s)
}

// run runs actions, with a deadline; on failure it saves a screenshot first.
func (c *chrome) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, 90*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		c.shot("failed-" + what)
		c.t.Fatalf("%s: %v%s", what, err, c.faultText())
	}
	if f := c.faultText(); f != "" {
		c.shot("failed-" + what)
		c.t.Fatalf("%s: the page failed:%s", what, f)
	}
}

func (c *chrome) faultText() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.faults) == 0 {
		return ""
	}
	return "\n\t" + strings.Join(c.faults, "\n\t")
}

// shot saves a full-page screenshot as NN-name.png in the artifact directory.
func (c *chrome) shot(name string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		c.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	file := filepath.Join(c.dir, fmt.Sprintf("%02d-%s.png", c.shots.Add(1), name))
	if err := os.WriteFile(file, png, 0o644); err != nil {
		c.t.Error(err)
	}
}

// canvasLit counts the pixels of the console's canvas that are not black.
const canvasLit = `(() => {
  const c = document.querySelector('#screen canvas');
  if (!c || !c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] || d[i + 1] || d[i + 2]) n++;
  return n;
})()`

// watchConsole wraps the page's fetch and event stream: it counts the console's session
// requests in flight (most: the largest number at once), holds them while hold is on, and
// counts the records of the VM starting again that the page's own handlers have taken.
const watchConsole = `(() => {
  const c = { inflight: 0, most: 0, started: 0, held: false, waiters: [] };
  c.hold = () => { c.held = true; c.most = 0; c.started = 0; };
  c.release = () => { c.held = false; c.waiters.splice(0).forEach((r) => r()); };
  const fetch = window.fetch;
  window.fetch = async (path, opts) => {
    if (opts?.method !== 'POST' || !String(path).startsWith('/ui/console/')) return fetch(path, opts);
    c.inflight++;
    c.most = Math.max(c.most, c.inflight);
    try {
      while (c.held) await new Promise((r) => c.waiters.push(r));
      return await fetch(path, opts);
    } finally {
      c.inflight--;
    }
  };
  const add = EventSource.prototype.addEventListener;
  EventSource.prototype.addEventListener = function (type, fn, o) {
    if (type !== 'record') return add.call(this, type, fn, o);
    return add.call(this, type, (ev) => {
      fn(ev);
      const rec = JSON.parse(ev.data);
      if (rec.kind === 'vm.changed' && rec.data?.state?.status === 'started') c.started++;
    }, o);
  };
  window.__console = c;
  return true;
})()`

// waitJS polls the expression until it is true.
func waitJS(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Poll[bool](expr, chromedp.WithPollingInterval(200*time.Millisecond))(ctx, t)
		return err
	})
}

// value runs a valued action.
func value[T any](c *chrome, what string, a chromedp.Action[T]) T {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, 90*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		c.shot("failed-" + what)
		c.t.Fatalf("%s: %v%s", what, err, c.faultText())
	}
	return v
}

// TestUIBrowserConsole: in real headless Chromium against a buyer node and a QEMU provider,
// the buyer signs in through the login link, sees its stored VM, starts it with the button
// and opens the console, whose canvas shows the guest's screen; a status change made elsewhere
// shows on the list without a reload (server-sent events from the event log), what a stale
// page's button sends is refused and changes nothing, and the list
// works at a phone's width. A full-page screenshot of each step is an artifact.
func TestUIBrowserConsole(t *testing.T) {
	requirePackages(t)
	br := newChrome(t)
	guest := qemutest.BuildGuest(t)
	image := market.Image{Name: "busybox", OS: "linux", Disk: guest.Disk, MemoryMB: 128,
		Boot: &vm.KernelBoot{Kernel: guest.Kernel, Initrd: guest.Initrd, Cmdline: guest.Cmdline}}
	seller := startNode(t, func(cfg *node.Config) {
		cfg.Roles.Provider, cfg.Provider.Accel = true, "tcg"
		cfg.Provider.ImageDirs = []string{guest.Dir}
	}, daemon.Options{Images: []market.Image{image}})
	t.Cleanup(func() { seller.VMs.StopAll(context.Background()) })
	buyer := startUI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := buyer.Host().Connect(ctx, peer.AddrInfo{ID: seller.ID(), Addrs: seller.Host().Addrs()}); err != nil {
		t.Fatal(err)
	}
	m, err := seller.Provider.AddMachine(ctx, market.DemoMachine(0))
	if err != nil {
		t.Fatal(err)
	}
	var v market.VM
	testwait.Eventually(t, 30*time.Second, func() (err error) { // the offer and its image's name reach the buyer
		if _, ok := buyer.Book.Get(seller.ID(), m.ID); !ok {
			return errors.New("the offer did not reach the buyer")
		}
		v, err = buyer.Buyer.Store(ctx, market.StoreRequest{ConfigName: "busybox", Provider: seller.ID().String(), Machine: m.ID})
		return err
	})
	row := fmt.Sprintf(`tr[data-vm="%s"]`, v.ID)

	br.run("sign in", signIn(buyer, "computers"), chromedp.WaitVisible(row+`[data-status="stored"]`))
	br.shot("computers-stored")

	br.run("start", chromedp.Click(row+` button[data-action="startmachine"]`), chromedp.WaitVisible(row+`[data-status="started"]`))
	br.shot("computers-started")
	if got, err := buyer.Buyer.Status(ctx, v.ID); err != nil || got.State.Status != vm.StatusStarted {
		t.Fatalf("after the start button the vm is %+v, %v", got.State, err)
	}

	value(br, "watch the console's requests", chromedp.Evaluate[bool](watchConsole))
	br.run("console", chromedp.Click(row+` a[data-action="viewmachine"]`),
		chromedp.WaitVisible(`#screen[data-connected="true"] canvas`), waitJS(canvasLit+" > 1000"))
	lit := value(br, "read the canvas", chromedp.Evaluate[int](canvasLit))
	br.shot("console")
	t.Logf("the console's canvas has %d lit pixels", lit)

	// The VM is suspended under the open console, which asks again for a session; that request
	// is held while the VM resumes and the page hears of it. The page asks for one session at a
	// time (each sets a new one-time password, voiding the one before it), and once the held
	// request goes through the console is back, its password accepted.
	value(br, "hold the console's requests", chromedp.Evaluate[bool](`(window.__console.hold(), true)`))
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionSuspend); err != nil {
		t.Fatal(err)
	}
	br.run("the console asks again", waitJS(`window.__console.inflight > 0`))
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionResume); err != nil {
		t.Fatal(err)
	}
	br.run("the page hears of the resume", waitJS(`window.__console.started > 0`))
	if most := value(br, "count the session requests", chromedp.Evaluate[int](`window.__console.most`)); most != 1 {
		t.Fatalf("the console page had %d session requests in flight at once, want 1", most)
	}
	value(br, "release the held request", chromedp.Evaluate[bool](`(window.__console.release(), true)`))
	br.run("the console is back", chromedp.WaitVisible(`#screen[data-connected="true"] canvas`))

	// Back on the list, a change made elsewhere (here the CLI's API) shows without a reload:
	// the page follows the node's event stream.
	br.run("back to the list", chromedp.Navigate(buyer.base+"/#/computers"), chromedp.WaitVisible(row+`[data-status="started"]`))
	if _, err := buyer.Buyer.Control(ctx, v.ID, vm.ActionSuspend); err != nil {
		t.Fatal(err)
	}
	br.run("live status", chromedp.WaitVisible(row+`[data-status="suspended"] button[data-action="resumemachine"]`))
	br.shot("computers-suspended-live")
	// What a stale page's Suspend button sends, now that the VM is suspended: refused with
	// what the VM allows now, and nothing changes.
	stale := buyer.browser()
	stale.signIn()
	was, err := buyer.Buyer.Status(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := stale.do("POST", "/api/v1/market/vms/"+v.ID.String()+"/suspend", nil, nil); got.status != http.StatusConflict ||
		got.code != "illegal_action" || !strings.Contains(got.body, "resume") {
		t.Fatalf("a stale suspend: %d %s", got.status, got.body)
	}
	if now, err := buyer.Buyer.Status(ctx, v.ID); err != nil || now.State != was.State {
		t.Fatalf("a refused suspend changed the vm: %+v → %+v, %v", was.State, now.State, err)
	}
	br.run("phone width", chromedp.EmulateViewport(390, 844), chromedp.WaitVisible(`#menu`), chromedp.Click(`#menu`),
		chromedp.WaitVisible(`nav a[data-page="node"]`))
	br.shot("computers-phone")
	br.run("desktop width", chromedp.EmulateViewport(1280, 800))

	br.run("node page", chromedp.Navigate(buyer.base+"/#/node"), chromedp.WaitVisible(`#peer-id`))
	shown := value(br, "read the peer id", chromedp.Text(`#peer-id`))
	if shown != buyer.ID().String() {
		t.Fatalf("the node page shows peer %q, want %s", shown, buyer.ID())
	}
	br.shot("node")
}
