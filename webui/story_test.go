package webui_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/ledger"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// TestUIStory is the report's whole story in real headless Chromium against a real local
// marketplace (a coordinator, two QEMU providers, a buyer, each node with its own UI): a
// provider adds a machine in its machines page (a form with an out-of-range period first, which
// the server refuses field by field); the buyer searches for the preconfigured busybox, stores
// it on that machine, starts it, opens the console and sees the guest's screen on the canvas,
// types a command there whose output reaches the guest's serial log, suspends and resumes it,
// migrates it to the other provider while the console stays open in another tab — the progress
// reaches 100% and the console reconnects to the VM where it now is (a command typed again
// reaches the new provider's serial log) — and stops it. The buyer's account page shows the
// charges of the VM, each provider's its income from it, and they agree with each other and
// with the coordinator's ledger. A full-page screenshot of each step is an artifact.
func TestUIStory(t *testing.T) {
	requirePackages(t)
	br := newChrome(t)
	guest := qemutest.BuildGuest(t)
	image := market.Image{Name: "busybox", OS: "linux", Disk: guest.Disk, MemoryMB: 128,
		Boot: &vm.KernelBoot{Kernel: guest.Kernel, Initrd: guest.Initrd, Cmdline: guest.Cmdline}}
	fast := func(cfg *node.Config) {
		cfg.Ledger.TickInterval, cfg.Ledger.SyncInterval = 200*time.Millisecond, 300*time.Millisecond
	}
	coord := startUIWith(t, func(cfg *node.Config) { fast(cfg); cfg.Roles.Coordinator = true }, daemon.Options{})
	addr := fmt.Sprintf("%s/p2p/%s", coord.Host().Addrs()[0], coord.ID())
	settles := func(cfg *node.Config) { fast(cfg); cfg.Ledger.Coordinators = []string{addr} }
	provider := func(cfg *node.Config) {
		settles(cfg)
		cfg.Roles.Provider, cfg.Provider.Accel = true, "tcg"
		cfg.Provider.ImageDirs = []string{guest.Dir}
	}
	a := startUIWith(t, provider, daemon.Options{Images: []market.Image{image}})
	b := startUIWith(t, provider, daemon.Options{Images: []market.Image{image}})
	for _, p := range []*uiNode{a, b} {
		t.Cleanup(func() { p.VMs.StopAll(context.Background()) })
	}
	// The buyer's averages are sampled every 2 s, so that its home page has a history to plot.
	buyer := startUIWith(t, settles, daemon.Options{Book: market.BookOptions{AverageInterval: 2 * time.Second}})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	for _, p := range []*uiNode{a, b, coord} {
		if err := buyer.Host().Connect(ctx, peer.AddrInfo{ID: p.ID(), Addrs: p.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	testwait.Eventually(t, 30*time.Second, func() error {
		if cs, err := coord.Coordinator.State().Coordinators(); err != nil || len(cs) == 0 {
			return fmt.Errorf("the coordinator has not started its ledger: %v", err)
		}
		return nil
	})
	if _, err := coord.Ledger.Own().Append(time.Now(), ledger.TypeDeposit, &ledger.DepositBody{To: buyer.ID(), Amount: 100 * market.Unit}); err != nil {
		t.Fatal(err)
	}
	coord.Ledger.Kick()

	// The provider adds a machine in its page: a storage period of -1 s is refused beside its
	// field and adds nothing; 3600 s is taken.
	add := `form#machine-add`
	br.run("provider signs in", signIn(a, "machines"), chromedp.WaitVisible(add+` button[type=submit]`))
	br.run("fill the machine form",
		chromedp.SetValue(add+` [name="name"]`, "story machine"),
		chromedp.SetValue(add+` [name="terms.running_period"]`, "30"),
		chromedp.SetValue(add+` [name="terms.storage_period"]`, "-1"),
		chromedp.Click(add+` button[type=submit]`),
		chromedp.WaitVisible(add+` .field-error[data-field="terms.storage_period"]`))
	br.shot("provider-machine-refused")
	if ms, _ := a.Provider.Machines(); len(ms) != 0 {
		t.Fatalf("a refused form added %d machines", len(ms))
	}
	br.run("add the machine", chromedp.SetValue(add+` [name="terms.storage_period"]`, "3600"),
		chromedp.Click(add+` button[type=submit]`), chromedp.WaitVisible(`section.machine[data-machine]`))
	ms, err := a.Provider.Machines()
	if err != nil || len(ms) != 1 || ms[0].Name != "story machine" || ms[0].Terms.RunningSecs != 30 || ms[0].Terms.StorageSecs != 3600 {
		t.Fatalf("the machine page added %+v, %v", ms, err)
	}
	ma := ms[0]
	br.run("the machine is listed", chromedp.WaitVisible(fmt.Sprintf(`section.machine[data-machine="%s"] input[disabled][name="capacity.memory_mb"]`, ma.ID)))
	br.shot("provider-machines")
	mb, err := b.Provider.AddMachine(ctx, market.DemoMachine(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		p  *uiNode
		id market.MachineID
	}{{a, ma.ID}, {b, mb.ID}} {
		testwait.Eventually(t, 30*time.Second, func() error {
			if _, ok := buyer.Book.Get(m.p.ID(), m.id); !ok {
				return errors.New("the offer did not reach the buyer")
			}
			return nil
		})
	}

	// The buyer: home, the configurations, a search, a store.
	testwait.Eventually(t, 30*time.Second, func() error {
		h, err := buyer.Book.History("small")
		if err != nil || len(h) < 3 || h[len(h)-1].Providers != 2 {
			return fmt.Errorf("the history of small: %+v, %v", h, err)
		}
		return nil
	})
	br.run("buyer signs in", signIn(buyer, "home"), chromedp.WaitVisible(`table#averages tr[data-config="small"]`),
		chromedp.WaitVisible(`#history canvas`))
	if n := value(br, "read the averages", chromedp.Text(`table#averages tr[data-config="small"] td[data-field="providers"]`)); !strings.HasPrefix(n, "2") {
		t.Fatalf("the home page says %q providers host small", n)
	}
	br.shot("buyer-home")
	br.run("configurations", chromedp.Navigate(buyer.base+"/#/configs"),
		chromedp.WaitVisible(`table#configs tr[data-config="busybox"] a[data-action="search"]`))
	br.shot("buyer-configs")
	result := fmt.Sprintf(`table#results tr[data-provider="%s"][data-machine="%s"]`, a.ID(), ma.ID)
	testwait.Eventually(t, 30*time.Second, func() error { // the image's name binds in the book
		ctx, cancel := context.WithTimeout(br.ctx, 5*time.Second)
		defer cancel()
		return chromedp.Do(ctx, chromedp.Click(`table#configs tr[data-config="busybox"] a[data-action="search"]`),
			chromedp.WaitVisible(`form#search-form button[type=submit]`), chromedp.Click(`form#search-form button[type=submit]`),
			chromedp.WaitVisible(result+` button[data-action="store"]`))
	})
	br.shot("buyer-search")
	br.run("store", chromedp.Click(result+` button[data-action="store"]`), chromedp.WaitVisible(`#vms tr[data-vm][data-status="stored"]`))
	vms, err := buyer.Buyer.VMs(ctx, false)
	if err != nil || len(vms) != 1 || vms[0].Provider != a.ID() || vms[0].Machine != ma.ID {
		t.Fatalf("after the store button the buyer has %+v, %v", vms, err)
	}
	v := vms[0]
	row := fmt.Sprintf(`tr[data-vm="%s"]`, v.ID)
	br.shot("buyer-stored")

	br.run("start", chromedp.Click(row+` button[data-action="startmachine"]`), chromedp.WaitVisible(row+`[data-status="started"]`))
	br.shot("buyer-started")

	// The console, in its own tab, stays open through the migration.
	con, closeTab := br.tab()
	con.run("console", chromedp.Navigate(buyer.base+"/#/console/"+v.ID.String()),
		chromedp.WaitVisible(`#screen[data-connected="true"] canvas`), waitJS(canvasLit+" > 1000"))
	// typed types a command on the console that prints word, once the guest's shell is up, and
	// waits for the word in the serial log, which repeats what the shell prints (typing again if
	// a key was lost meanwhile).
	typed := func(p *uiNode, word string) {
		t.Helper()
		d := p.VMs.Driver().(*qemu.Driver)
		sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		// The guest starts its shell before it counts: a tick means the shell is up (at the
		// destination, that the VM runs again).
		qemutest.WaitSerial(t, sctx, d, v.ID, "the guest's ticks", func(out string) bool { return strings.Contains(out, "virtuoso guest tick") })
		for try := 0; ; try++ {
			con.run("type "+word, chromedp.Click(`#screen canvas`), chromedp.KeyEvent("echo "+word+"\r"))
			wctx, cancel := context.WithTimeout(sctx, 15*time.Second)
			seen := false
			for !seen && wctx.Err() == nil {
				seen = strings.Contains(qemutest.Serial(t, d, v.ID), word)
				time.Sleep(200 * time.Millisecond)
			}
			cancel()
			if seen {
				return
			}
			if try == 2 {
				con.shot("failed-typing")
				t.Fatalf("%q typed on the console three times never reached the serial log:\n%s", word, qemutest.Serial(t, d, v.ID))
			}
		}
	}
	typed(a, "typed-at-the-first-provider")
	t.Logf("the console's canvas has %d lit pixels", value(con, "read the canvas", chromedp.Evaluate[int](canvasLit)))
	con.shot("console")

	br.run("suspend", chromedp.Navigate(buyer.base+"/#/computers"), chromedp.Click(row+` button[data-action="suspendmachine"]`),
		chromedp.WaitVisible(row+`[data-status="suspended"] button[data-action="resumemachine"]`))
	br.shot("buyer-suspended")
	br.run("resume", chromedp.Click(row+` button[data-action="resumemachine"]`), chromedp.WaitVisible(row+`[data-status="started"]`))
	br.shot("buyer-resumed")
	con.run("the console is back after the resume", chromedp.WaitVisible(`#screen[data-connected="true"] canvas`))

	// The migration, from the migrate page, to the other provider.
	dest := fmt.Sprintf(`table#destinations tr[data-provider="%s"][data-machine="%s"] button[data-action="migrate"]`, b.ID(), mb.ID)
	before := value(con, "count the console's connections", chromedp.Evaluate[int](connects))
	br.run("migrate page", chromedp.Click(row+` a[data-action="migrate"]`), chromedp.WaitVisible(dest))
	br.shot("buyer-destinations")
	br.run("migrate", chromedp.Click(dest), chromedp.WaitVisible(`#migration-state[data-step="done"]`))
	if p := value(br, "read the progress", chromedp.Text(`#migration-percent`)); p != "100%" {
		t.Fatalf("the finished migration shows %q", p)
	}
	br.shot("buyer-migrated")
	got, err := buyer.Buyer.Status(ctx, v.ID)
	if err != nil || got.Provider != b.ID() || got.Machine != mb.ID || got.State.Status != vm.StatusStarted {
		t.Fatalf("after the migrate button the vm is %+v, %v", got, err)
	}
	con.run("the console reconnects", waitJS(fmt.Sprintf(`(%s) > %d && document.querySelector('#screen').dataset.connected === 'true'`, connects, before)),
		waitJS(canvasLit+" > 1000"))
	typed(b, "typed-at-the-second-provider")
	con.shot("console-after-migration")
	closeTab()

	br.run("stop", chromedp.Navigate(buyer.base+"/#/computers"), chromedp.Click(row+` button[data-action="stopmachine"]`),
		chromedp.WaitVisible(row+`[data-status="stopped"]`))
	br.shot("buyer-stopped")

	br.run("the second provider signs in", signIn(b, "accounts"), chromedp.WaitVisible(`#balance`))
	// The accounts: what the buyer was charged for the VM is what the providers earned from
	// it, on the pages and in the coordinator's ledger.
	var charged market.Money
	testwait.Eventually(t, 60*time.Second, func() error {
		var want market.Money
		leases, err := coord.Coordinator.State().Leases(buyer.ID())
		if err != nil {
			return err
		}
		perProvider := map[peer.ID]market.Money{}
		for _, l := range leases {
			if l.VM == v.ID {
				want += l.Storage + l.Running
				perProvider[l.Provider] += l.Storage + l.Running
			}
		}
		if want == 0 || len(perProvider) != 2 {
			return fmt.Errorf("the ledger has charged %s for the vm, at %d providers", want, len(perProvider))
		}
		shown, err := pageMoney(br, buyer.base+"/#/accounts", fmt.Sprintf(`table#charges tr[data-vm="%s"] td[data-field="total"]`, v.ID))
		if err != nil || shown != want {
			return fmt.Errorf("the buyer's page shows %s for the vm (%v), the ledger %s", shown, err, want)
		}
		for _, p := range []*uiNode{a, b} {
			m := map[*uiNode]market.MachineID{a: ma.ID, b: mb.ID}[p]
			earned, err := pageMoney(br, p.base+"/#/accounts", fmt.Sprintf(`section#income [data-machine="%s"] tr[data-vm="%s"] td[data-field="total"]`, m, v.ID))
			if err != nil || earned != perProvider[p.ID()] {
				return fmt.Errorf("%s's page shows an income of %s from the vm (%v), the ledger %s", market.Short(p.ID()), earned, err, perProvider[p.ID()])
			}
		}
		charged = want
		return nil
	})
	t.Logf("the vm was charged %s in all", charged)
	br.run("buyer's accounts", chromedp.Navigate(buyer.base+"/#/accounts"), chromedp.WaitVisible(`#balance`))
	br.shot("buyer-accounts")
	for i, p := range []*uiNode{a, b} {
		br.run("provider's accounts", chromedp.Navigate(p.base+"/#/accounts"), chromedp.WaitVisible(`section#income`))
		br.shot(fmt.Sprintf("provider-%d-accounts", i+1))
	}
	br.run("coordinator's node page", signIn(coord, "node"), chromedp.WaitVisible(`#ledger-status`))
	br.shot("coordinator-node")
	br.run("buyer's event log", chromedp.Navigate(buyer.base+"/#/events"), chromedp.WaitVisible(`table#events tr[data-kind]`))
	br.shot("buyer-events")

	// At a phone's width every page still reads (a screenshot of each).
	br.run("phone width", chromedp.EmulateViewport(390, 844))
	for _, page := range []struct{ name, wait string }{
		{"home", `table#averages`}, {"configs", `table#configs`}, {"search/busybox", `form#search-form`},
		{"computers", row}, {"migrate/" + v.ID.String(), `table#destinations`}, {"accounts", `table#charges`}, {"market", `table#offers`},
		{"node", `#peer-id`}, {"events", `table#events`},
	} {
		br.run("phone "+page.name, chromedp.Navigate(buyer.base+"/#/"+page.name), chromedp.WaitVisible(page.wait))
		br.shot("phone-" + strings.SplitN(page.name, "/", 2)[0])
	}
	br.run("provider's machines at a phone's width", chromedp.Navigate(a.base+"/#/machines"), chromedp.WaitVisible(`section.machine[data-machine]`))
	br.shot("phone-provider-machines")
}

// connects is how many times the console page has connected.
const connects = `Number(document.querySelector('#screen')?.dataset.connects || 0)`

// signIn follows a login link of n, waits for its login page to move on to the UI by itself,
// then opens the page there (by its fragment: a navigation of the test's own would race with
// the login page's).
func signIn(n *uiNode, page string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		if err := chromedp.Do(ctx, chromedp.Navigate(n.link())); err != nil {
			return err
		}
		for {
			at, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`location.pathname === '/' && document.readyState === 'complete'`))
			if err == nil && at {
				break
			}
			select { // a page between documents does not evaluate: ask again
			case <-ctx.Done():
				return fmt.Errorf("the login page did not move on to the UI: %w", ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
		_, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.hash = '#/`+page+`'`))
		return err
	})
}

// pageMoney opens url and reads the amount in sel.
func pageMoney(c *chrome, url, sel string) (market.Money, error) {
	ctx, cancel := context.WithTimeout(c.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.Reload(), chromedp.WaitVisible(sel)); err != nil {
		return 0, err
	}
	text, err := chromedp.Run(ctx, chromedp.Text(sel))
	if err != nil {
		return 0, err
	}
	return market.ParseMoney(text)
}
