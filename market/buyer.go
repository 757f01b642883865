package market

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// BuyerOptions configure the Buyer. The zero value takes the defaults below.
type BuyerOptions struct {
	Logger *slog.Logger
	StreamOptions
	// StoreTimeout bounds a store request, VM creation on the provider included (default 5m);
	// ControlTimeout a control request (default 2m: a stop waits for the guest).
	StoreTimeout   time.Duration
	ControlTimeout time.Duration
	// ConsoleIdle closes a console tunnel nobody used for this long (default 10m).
	ConsoleIdle time.Duration
	// Housekeeping is how often idle tunnels are closed, pending stores retried and
	// migrations that could not be decided tried again (default 10s).
	Housekeeping time.Duration
}

func (o *BuyerOptions) fill() {
	o.StoreTimeout = cmpOr(o.StoreTimeout, 5*time.Minute)
	o.ControlTimeout = cmpOr(o.ControlTimeout, 2*time.Minute)
	o.ConsoleIdle = cmpOr(o.ConsoleIdle, 10*time.Minute)
	o.Housekeeping = cmpOr(o.Housekeeping, 10*time.Second)
}

// Buyer is a node's side of the VMs it bought (a node.Service; every node is a buyer): it
// stores configurations on providers found in the Book, keeps its leases (market/buyer/),
// controls its VMs and tunnels their consoles, and takes the providers' notices.
type Buyer struct {
	base
	opts  BuyerOptions
	book  *Book
	space *node.Space

	// migrations holds the migrations under way, each recorded before each of its steps.
	migrations *node.Space

	mu      sync.Mutex
	tunnels map[vm.ID]*tunnel
	storing map[vm.ID]bool      // stores in flight: not for the pending-store retry to recover
	moving  map[vm.ID]Migration // migrations driven now, with the copy's latest progress
	ended   map[vm.ID]Migration // migrations that ended in the last recentMigrations
}

// NewBuyer returns the buyer of a node that finds providers in book; attach it to the node
// after book.
func NewBuyer(book *Book, opts BuyerOptions) *Buyer {
	opts.fill()
	return &Buyer{opts: opts, book: book, tunnels: map[vm.ID]*tunnel{}, storing: map[vm.ID]bool{}, moving: map[vm.ID]Migration{},
		ended: map[vm.ID]Migration{}}
}

// Start implements node.Service.
func (b *Buyer) Start(ctx context.Context, n *node.Node) error {
	b.begin(ctx, n, b.opts.Logger, "buyer", b.opts.StreamOptions)
	b.space = n.Store().Space("market/buyer/")
	b.migrations = n.Store().Space("market/migrations/")
	b.serve(NoticeID, 4096, 64<<10, 30*time.Second, b.handleNotice)
	b.routes(n.API())
	b.group.Go(func() error {
		b.resumeMigrations(b.ctx) // those of a node that stopped in the middle, at once
		return b.every(b.opts.Housekeeping, b.housekeeping)()
	})
	return nil
}

// Close implements node.Service: it closes the console tunnels too.
func (b *Buyer) Close() error {
	b.mu.Lock()
	for id, t := range b.tunnels {
		t.close()
		delete(b.tunnels, id)
	}
	b.mu.Unlock()
	return b.stop()
}

// housekeeping closes idle console tunnels, retries pending stores and takes up migrations
// not driven to their end.
func (b *Buyer) housekeeping() {
	b.closeIdleTunnels()
	b.retryPending(b.ctx)
	b.resumeMigrations(b.ctx)
}
