// Package demo runs a whole Virtuoso marketplace on one machine, on loopback only: a
// coordinator, two providers and a buyer, each a full node with its own home, in one process.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/ledger"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/webui"
)

// Role names one demo node.
type Role struct {
	Name        string
	Provider    bool
	Coordinator bool
}

// Roles are the demo's nodes; the first is every other's bootstrap peer.
var Roles = []Role{
	{Name: "coordinator", Coordinator: true},
	{Name: "provider-1", Provider: true},
	{Name: "provider-2", Provider: true},
	{Name: "buyer"},
}

// Marketplace is a running demo.
type Marketplace struct {
	Dir   string
	Nodes []*daemon.Node
}

// Start starts the demo's nodes with homes under dir (created if missing; homes already
// there are reused, so peer IDs and data survive a restart of the demo).
func Start(ctx context.Context, dir, version string, log *slog.Logger) (m *Marketplace, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("demo dir: %w", err)
	}
	m = &Marketplace{Dir: dir}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	guest, guestErr := findGuest()
	if guestErr != nil {
		log.Warn("no test guest: providers start without a bootable image", "err", guestErr)
	}
	for i, r := range Roles {
		home := node.Home{Dir: filepath.Join(dir, r.Name)}
		cfg := node.DefaultConfig(node.ProfileLocal)
		cfg.Roles.Provider, cfg.Roles.Coordinator = r.Provider, r.Coordinator
		cfg.Network.DiscoveryInterval = 2 * time.Second
		// Providers share the machine: each gets its own console ports.
		cfg.Provider.VNCPorts = [2]int{5910 + 20*i, 5929 + 20*i}
		if guestErr == nil {
			cfg.Provider.ImageDirs = []string{guest.Dir}
		}
		if _, err := os.Stat(home.KeyPath()); errors.Is(err, os.ErrNotExist) {
			if err := home.Init(cfg, false); err != nil {
				return nil, err
			}
		} else if cfg, err = home.Config(); err != nil {
			return nil, err
		} else if guestErr == nil && !slices.Contains(cfg.Provider.ImageDirs, guest.Dir) {
			// The guest may have been built after this home was made.
			cfg.Provider.ImageDirs = append(cfg.Provider.ImageDirs, guest.Dir)
		}
		if i > 0 {
			// Ports are picked afresh at every start, so the bootstrap address is too.
			first := m.Nodes[0]
			cfg.Network.Bootstrap = slices.Collect(func(yield func(string) bool) {
				for _, a := range first.Host().Addrs() {
					if !yield(fmt.Sprintf("%s/p2p/%s", a, first.ID())) {
						return
					}
				}
			})
			// The first node is the demo's coordinator: every node settles with it.
			cfg.Ledger.Coordinators = cfg.Network.Bootstrap
		}
		// Demo periods are seconds: ticks must keep up.
		cfg.Ledger.TickInterval, cfg.Ledger.SyncInterval = 2*time.Second, 2*time.Second
		opts := daemon.Options{Options: node.Options{Logger: log.With("node", r.Name), Version: version}}
		if r.Provider && guestErr == nil {
			opts.Images = []market.Image{guestImage(guest)}
			if deb, err := qemu.LoadDebian(guest.Dir); err == nil { // make guest builds it there too
				opts.Images = append(opts.Images, debianImage(deb))
			}
		}
		n, err := daemon.New(home, cfg, opts)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.Name, err)
		}
		if err := n.Start(ctx); err != nil {
			n.Close()
			return nil, fmt.Errorf("start %s: %w", r.Name, err)
		}
		m.Nodes = append(m.Nodes, n)
	}
	// Two providers with opposite price profiles, as in the report: one cheap to store, one
	// cheap to run. A restarted demo keeps the machines it already has.
	provider := 0
	for i, r := range Roles {
		if !r.Provider {
			continue
		}
		if _, err := m.Nodes[i].Provider.EnsureMachine(ctx, market.DemoMachine(provider)); err != nil {
			return nil, fmt.Errorf("%s machine: %w", r.Name, err)
		}
		provider++
	}
	// The buyer starts with money, deposited by the coordinator's operator (once per demo
	// home: a restarted demo keeps its balances).
	if err := m.seed(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// DemoDeposit is what the demo's buyer starts with.
const DemoDeposit = 100 * market.Unit

// seed deposits DemoDeposit to the buyer if it never had a deposit.
func (m *Marketplace) seed(ctx context.Context) error {
	coord, buyer := m.Nodes[0], m.Nodes[len(m.Nodes)-1]
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		if cs, err := coord.Coordinator.State().Coordinators(); err == nil && len(cs) > 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the demo's coordinator did not start its ledger: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	a, err := coord.Coordinator.State().Account(buyer.ID())
	if err != nil || a.Deposited > 0 {
		return err
	}
	if _, err := coord.Ledger.Own().Append(time.Now(), ledger.TypeDeposit, &ledger.DepositBody{To: buyer.ID(), Amount: DemoDeposit, Memo: "demo"}); err != nil {
		return err
	}
	_, err = coord.Ledger.Sync(ctx)
	return err
}

// guestImage is the guest as a preconfigured OS image a provider offers.
func guestImage(g qemu.Guest) market.Image {
	return market.Image{Name: "busybox", OS: "linux", Disk: g.Disk, MemoryMB: 128,
		Boot: &vm.KernelBoot{Kernel: g.Kernel, Initrd: g.Initrd, Cmdline: g.Cmdline}}
}

// debianImage is the Debian guest (systemd, a root shell on the VNC console) as an OS image.
func debianImage(g qemu.Guest) market.Image {
	return market.Image{Name: "debian", OS: "debian", Disk: g.Disk, MemoryMB: 512,
		Boot: &vm.KernelBoot{Kernel: g.Kernel, Initrd: g.Initrd, Cmdline: g.Cmdline}}
}

// Print writes the table of nodes and what to try.
func (m *Marketplace) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tPEER ID\tAPI\tHOME")
	for i, n := range m.Nodes {
		fmt.Fprintf(tw, "%s\t%s\thttp://%s\t%s\n", Roles[i].Name, n.ID(), n.API().Addr(), n.Home().Dir)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nEach node's web UI (a link signs one browser in, once, within %s; `virtuoso ui --home HOME` prints a new one):\n", webui.DefaultLoginTTL)
	for i, n := range m.Nodes {
		fmt.Fprintf(w, "  %-12s %s\n", Roles[i].Name, n.UI.Login().URL)
	}
	buyer := m.Nodes[len(m.Nodes)-1].Home().Dir
	fmt.Fprintf(w, "\nOpen the buyer's link in a browser: Configurations → debian → Search providers → Store here,\n"+
		"then Start and Console (a root shell, in the page), Migrate, My accounts; a provider's link shows My machines.\n")
	fmt.Fprintf(w, "\nOr, as the buyer, in another terminal:\n"+
		"  export VIRTUOSO_HOME=%s\n"+
		"  virtuoso peers                                  # the other nodes\n"+
		"  virtuoso configs                                # standard and preconfigured configurations\n"+
		"  virtuoso market                                 # average asked prices\n"+
		"  virtuoso search --config debian --sort storage  # a Debian machine; cheapest to keep (--sort running: to run)\n"+
		"  virtuoso store --config debian --machine MACHINE   (search prints the exact command)\n"+
		"  virtuoso vm start ID; virtuoso vm ls              # it boots to a root shell (under TCG in under a minute)\n"+
		"  virtuoso vm console ID                            # a VNC address and password: open it with a VNC viewer\n"+
		"  virtuoso account                                # the buyer's 100 and what each VM has cost (10 s running, 1 m storage periods)\n"+
		"  virtuoso migrate ID                             # where it can go and what it would cost there\n"+
		"  virtuoso migrate ID --to PEER                   # move it (running or not), with progress; billing follows\n"+
		"  virtuoso vm stop ID\n"+
		"  virtuoso events --follow                        # what happens on the buyer's node, as it happens\n"+
		"  (busybox is a tiny guest for quick tries: it counts on its serial port and has a shell on its screen)\n", buyer)
	fmt.Fprintf(w, "\nCtrl-C stops the marketplace.\n")
}

// Close stops the providers' VMs and every node, last started first.
func (m *Marketplace) Close() error { return m.Stop(io.Discard) }

// Stop is Close telling w which VMs it waits for. The providers stop their VMs side by side;
// a guest that does not act on the ACPI power button (one still booting) holds its VM's stop
// until the driver gives up on it and quits QEMU.
func (m *Marketplace) Stop(w io.Writer) error {
	errs := make([]error, len(m.Nodes))
	var wg sync.WaitGroup
	for i, n := range m.Nodes {
		if n.VMs == nil {
			continue
		}
		var started []string
		for _, r := range n.VMs.Manager().List() {
			if r.State.Status == vm.StatusStarted {
				started = append(started, r.ID.String())
			}
		}
		if len(started) == 0 {
			continue
		}
		what := "VM " + started[0] + ", waiting for its guest"
		if len(started) > 1 {
			what = "VMs " + strings.Join(started, ", ") + ", waiting for their guests"
		}
		fmt.Fprintf(w, "%s: stopping %s to power off…\n", Roles[i].Name, what)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			errs[i] = n.VMs.StopAll(ctx)
		})
	}
	wg.Wait()
	for _, n := range slices.Backward(m.Nodes) {
		errs = append(errs, n.Close())
	}
	m.Nodes = nil
	return errors.Join(errs...)
}

// findGuest loads the guest that `make guest` cached.
func findGuest() (qemu.Guest, error) {
	dir, err := qemu.GuestCacheDir()
	if err != nil {
		return qemu.Guest{}, err
	}
	return qemu.LoadGuest(dir)
}
