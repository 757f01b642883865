// Package daemon assembles a full node from its configuration: the network core from package
// node and its event log, then, in dependency order, the VM stack of a provider, the market's
// Book, Buyer and Provider, each handed what it consumes, and last the web UI. The CLI and the
// demo build nodes only through it.
package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/ledger"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp"
	"github.com/virtuoso-market/virtuoso/webui"
)

// Options tune a node beyond its config.
type Options struct {
	node.Options
	// Images are OS images a provider offers for preconfigured VMs, besides those described in
	// its home's images/ directory.
	Images []market.Image
	// Book, Buyer and Provider tune the market's services (timings; a nil logger is the
	// node's).
	Book     market.BookOptions
	Buyer    market.BuyerOptions
	Provider market.ProviderOptions
	// UI tunes the web UI (its event log is the node's).
	UI webui.Options
}

// Node is a node with the services of its roles.
type Node struct {
	*node.Node
	// EventLog is every node's record of what happened on it, in order.
	EventLog *node.EventLog
	// Book is every node's offer book, catalog, search and averages.
	Book *market.Book
	// Buyer is every node's side of the VMs it bought.
	Buyer *market.Buyer
	// VMs is a provider's VM stack; nil on other nodes.
	VMs *VMs
	// Provider sells a provider's machines; nil on other nodes.
	Provider *market.Provider
	// Ledger pushes the node's ledger log to the coordinators and reads its account.
	Ledger *ledger.Mirror
	// Coordinator settles the ledger with the other coordinators; nil on other nodes.
	Coordinator *ledger.Coordinator
	// UI is every node's web UI for its owner, on the API's listener.
	UI *webui.UI
}

// New builds the node of home with the services of its roles; Start it to run it.
func New(home node.Home, cfg node.Config, opts Options) (d *Node, err error) {
	nopts := opts.Options
	nopts.Protocols = slices.Concat(nopts.Protocols, market.Protocols(cfg.Market), ledger.Protocols())
	n, err := node.New(home, cfg, nopts)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	// The log starts first, so that it records what the other services publish from their start.
	d = &Node{Node: n, EventLog: node.NewEventLog(node.EventLogOptions{MaxRecords: cfg.Events.MaxRecords})}
	n.Attach(d.EventLog)
	// So does the ledger's recorder; the mirror pushes what it records.
	if err := d.attachLedger(cfg.Ledger, cfg.Roles.Coordinator); err != nil {
		return nil, err
	}
	if cfg.Roles.Provider {
		if d.VMs, err = newVMs(n); err != nil {
			return nil, err
		}
		n.Attach(d.VMs)
	}
	streams := market.StreamOptions{FirstFrame: cfg.Market.FirstFrameTimeout}
	opts.Book.StreamOptions = cmp.Or(opts.Book.StreamOptions, streams)
	opts.Buyer.StreamOptions = cmp.Or(opts.Buyer.StreamOptions, streams)
	opts.Provider.StreamOptions = cmp.Or(opts.Provider.StreamOptions, streams)
	opts.Book.MaxOffersPerProvider = cmp.Or(opts.Book.MaxOffersPerProvider, cfg.Market.MaxOffersPerProvider)
	opts.Book.MaxOffers = cmp.Or(opts.Book.MaxOffers, cfg.Market.MaxOffers)
	d.Book = market.NewBook(opts.Book)
	n.Attach(d.Book)
	d.Buyer = market.NewBuyer(d.Book, opts.Buyer)
	n.Attach(d.Buyer)
	if cfg.Roles.Provider {
		own, err := market.ScanImages(home.Path("images"))
		if err != nil {
			return nil, fmt.Errorf("provider images: %w", err)
		}
		popts := opts.Provider
		popts.Images = slices.Concat(own, opts.Images, popts.Images)
		popts.MaxLeasesPerBuyer = cmp.Or(popts.MaxLeasesPerBuyer, cfg.Provider.MaxLeasesPerBuyer)
		popts.BuyerSharePercent = cmp.Or(popts.BuyerSharePercent, cfg.Provider.BuyerSharePercent)
		if popts.Admit == nil {
			popts.Admit = d.admit
		}
		if popts.Settled == nil {
			popts.Settled = d.settled
		}
		mig := &Migrations{Grants: vmmp.NewGrants(), Images: vmmp.NewImageGrants(), vms: d.VMs, provider: func() *market.Provider { return d.Provider }}
		popts.Grants, popts.ImageGrants = mig.Grants, mig.Images
		if cfg.Provider.Driver != node.DriverVSphere {
			// Images fetched from other providers go where QEMU takes base images from.
			popts.ImageDir = cmp.Or(popts.ImageDir, home.Path("images"))
		}
		d.Provider = market.NewProvider(d.Book, d.VMs.Manager(), popts)
		n.Attach(d.Provider)
		n.Attach(mig)
	} else {
		n.Attach(market.NotSelling{})
	}
	uopts := opts.UI
	uopts.EventLog = d.EventLog
	d.UI = webui.New(uopts)
	n.Attach(d.UI)
	return d, nil
}

// attachLedger gives every node its own ledger log, the recorder of its events into it and
// the mirror that pushes it to the coordinators; a coordinator also runs its raft server.
func (d *Node) attachLedger(cfg node.LedgerConfig, coordinator bool) error {
	own, err := ledger.OpenLog(d.Store().Space("ledger/log/"), d.PrivKey())
	if err != nil {
		return err
	}
	var coords []peer.AddrInfo
	for _, s := range cfg.Coordinators {
		ai, err := node.ParseBootstrap(s, false)
		if err != nil {
			return err
		}
		coords = append(coords, ai)
	}
	if coordinator {
		d.Coordinator = ledger.NewCoordinator(d.Node, own, ledger.CoordinatorOptions{
			Bootstrap: cfg.Bootstrap, TickInterval: cfg.TickInterval, WarnPeriods: cfg.WarnPeriods,
			Resolve: func(ctx context.Context, p peer.ID) (peer.AddrInfo, error) { return d.DHT().FindPeer(ctx, p) },
		})
		d.Attach(d.Coordinator)
	}
	d.Attach(ledger.NewRecorder(own, nil))
	d.Ledger = ledger.NewMirror(d.Node, own, ledger.MirrorOptions{Coordinators: coords, Interval: cfg.SyncInterval,
		Local: d.Coordinator, OnView: d.settle})
	d.Attach(d.Ledger)
	return nil
}

// admit asks the ledger whether buyer can pay the first storage period of a lease of quote q:
// a store it cannot pay is refused before any capacity is reserved. A provider that settles
// with no coordinator ([ledger] coordinators empty) admits every buyer: nobody pays it.
func (d *Node) admit(ctx context.Context, buyer peer.ID, q market.Quote) error {
	if !d.Ledger.Settles() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := d.Ledger.View(ctx, buyer)
	if err != nil {
		return fmt.Errorf("%w: the ledger's coordinators did not say what the buyer can pay: %v", market.ErrUnavailable, err)
	}
	if v.Account.Balance < q.StoragePrice {
		return fmt.Errorf("%w: the buyer's settled balance %s does not pay the first storage period (%s)", market.ErrLowBalance, v.Account.Balance, q.StoragePrice)
	}
	return nil
}

// settled reports whether the ledger settled the migration that ended lease: the node's last
// view of it shows the lease ended and followed by another. Without coordinators, at once.
func (d *Node) settled(_ context.Context, lease market.LeaseID) (bool, error) {
	if !d.Ledger.Settles() {
		return true, nil
	}
	v, ok, _ := d.Ledger.Last() // a view of an earlier sync says so as well
	if !ok {
		return false, nil
	}
	for _, l := range v.Leases {
		if l.ID == lease {
			return !l.Active() && !l.Next.IsZero(), nil
		}
	}
	return false, nil
}

// settle acts on the node's view of the ledger: a provider stops (never deletes) the VMs
// whose buyers did not pay a running period.
func (d *Node) settle(v ledger.View) {
	if d.Provider == nil || len(v.Stop) == 0 {
		return
	}
	leases, err := d.Provider.Leases()
	if err != nil {
		d.Logger().Warn("leases", "err", err)
		return
	}
	for _, l := range leases {
		if !slices.Contains(v.Stop, l.Lease) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if _, err := d.VMs.Manager().Stop(ctx, l.VM); err != nil && !errors.Is(err, vm.ErrIllegalAction) {
			d.Logger().Warn("stop a vm whose running period went unpaid", "vm", l.VM, "err", err)
		}
		cancel()
	}
}
