package market

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp"
)

// Hypervisor is the VM stack a Provider sells from: vm.Manager, which checks every action
// against the VM's status.
type Hypervisor interface {
	Create(ctx context.Context, req vm.CreateRequest) (vm.Record, error)
	Get(id vm.ID) (vm.Record, error)
	// Do performs a user action (start, stop, suspend, resume, delete, view).
	Do(ctx context.Context, id vm.ID, a vm.Action) (vm.Record, error)
	ResumeFresh(ctx context.Context, id vm.ID) (vm.Record, error)
	Console(ctx context.Context, id vm.ID) (vm.Record, vm.Console, error)
	Delete(ctx context.Context, id vm.ID) (vm.Record, error)
	DescribeHost(ctx context.Context) (vm.Host, error)
	// BeginMigration and FinishMigration bracket a VM's move away; Driver lists its files.
	BeginMigration(ctx context.Context, id vm.ID) (vm.Record, error)
	FinishMigration(ctx context.Context, id vm.ID, moved bool) (vm.Record, error)
	Driver() vm.Driver
}

// ProviderOptions configure the Provider. The zero value takes the defaults below.
type ProviderOptions struct {
	Logger *slog.Logger
	StreamOptions
	// Settled reports whether the ledger settled the migration that ended lease (the VM
	// moved away); the lease holds its capacity until then. Nil: no ledger, at once.
	Settled func(ctx context.Context, lease LeaseID) (bool, error)
	// Images are the OS images the provider holds for preconfigured VMs.
	Images []Image
	// Republish is how often the provider publishes its offers again (default 2m); OfferTTL
	// how long each stays valid (default 10m, at most MaxOfferTTL).
	Republish time.Duration
	OfferTTL  time.Duration
	// StoreTimeout bounds a store request, VM creation included (default 5m); ControlTimeout
	// a control request (default 2m: a stop waits for the guest).
	StoreTimeout   time.Duration
	ControlTimeout time.Duration
	// MaxLeasesPerBuyer (default 8) and BuyerSharePercent (default 50) bound what one buyer
	// holds here until the ledger settles what it can pay: VMs stored, and the share of any
	// one machine's capacity.
	MaxLeasesPerBuyer int
	BuyerSharePercent int
	// LeaseRetention is how long the record of an ended lease is kept (default 24h); the
	// ledger keeps its history.
	LeaseRetention time.Duration
	// Grants, if set, is where the provider grants a migration's destination its VM's files
	// (the transfer server's authorisation); without it, VMs do not migrate away from here.
	Grants *vmmp.Grants
	// ImageGrants, if set, is where the provider grants a peer an OS image it agreed to deliver
	// (the transfer server's authorisation, beside Grants); without it, it delivers none.
	ImageGrants *vmmp.ImageGrants
	// ImageDir, if set, is where the provider keeps OS images it fetches from other providers
	// to store a preconfigured VM whose image it lacks (a directory its hypervisor takes base
	// images from); without it, such a store fails with ErrImageMissing.
	ImageDir string
	// MaxImageMB caps an image fetched from another provider (default 65536); a store's disk
	// size caps it too. ImageTimeout bounds one fetch (default the StoreTimeout, within which
	// the VM must also be created); ImageIdle how long a source may send nothing (default 30s)
	// before the next source is tried.
	MaxImageMB   int64
	ImageTimeout time.Duration
	ImageIdle    time.Duration
	// Admit, if set, is asked before any capacity is reserved whether buyer can pay a lease
	// of quote q (the ledger's answer); an error refuses the store with it.
	Admit func(ctx context.Context, buyer peer.ID, q Quote) error
}

func (o *ProviderOptions) fill() {
	o.Republish = cmpOr(o.Republish, 2*time.Minute)
	o.OfferTTL = min(cmpOr(o.OfferTTL, 10*time.Minute), MaxOfferTTL)
	o.StoreTimeout = cmpOr(o.StoreTimeout, 5*time.Minute)
	o.ControlTimeout = cmpOr(o.ControlTimeout, 2*time.Minute)
	o.LeaseRetention = cmpOr(o.LeaseRetention, 24*time.Hour)
	o.MaxImageMB = cmp.Or(o.MaxImageMB, 65536)
	o.ImageTimeout = cmpOr(o.ImageTimeout, o.StoreTimeout)
	o.ImageIdle = cmpOr(o.ImageIdle, 30*time.Second)
	if o.MaxLeasesPerBuyer <= 0 {
		o.MaxLeasesPerBuyer = 8
	}
	if o.BuyerSharePercent <= 0 || o.BuyerSharePercent > 100 {
		o.BuyerSharePercent = 50
	}
}

// Provider sells a node's machines (a node.Service): it keeps the machines and their lease
// records (market/provider/), publishes one signed offer per machine through the Book, and
// answers store, control and console requests with its Hypervisor.
type Provider struct {
	base
	opts ProviderOptions
	book *Book
	vms  Hypervisor

	space, hashSpace *node.Space

	imgMu    sync.Mutex
	images   []Image // with hashes: configured ones, then those fetched
	fetches  map[string]*imageFetch
	fetching map[vm.ID]vm.State // VMs whose image is being fetched: migrating

	// pubMu serialises machine changes and offer publishing (sequence numbers).
	pubMu   sync.Mutex
	lastSeq uint64
	publish chan struct{} // a change to publish soon

	mu       sync.Mutex
	consoles map[vm.ID]string // VNC address of each open console session
}

// NewProvider returns the provider of a node whose offers go through book and whose VMs run
// on vms; attach it to the node after book.
func NewProvider(book *Book, vms Hypervisor, opts ProviderOptions) *Provider {
	opts.fill()
	return &Provider{opts: opts, book: book, vms: vms, publish: make(chan struct{}, 1), consoles: map[vm.ID]string{},
		fetches: map[string]*imageFetch{}, fetching: map[vm.ID]vm.State{}}
}

// Start implements node.Service: it hashes the images, undoes stores a crash interrupted,
// serves the store, control and console protocols, adds its API routes and publishes.
func (p *Provider) Start(ctx context.Context, n *node.Node) error {
	p.begin(ctx, n, p.opts.Logger, "provider", p.opts.StreamOptions)
	p.space, p.hashSpace = n.Store().Space("market/provider/"), n.Store().Space("market/imagehash/")
	if err := p.loadImages(ctx); err != nil {
		return err
	}
	if err := p.recoverPending(ctx); err != nil {
		return err
	}
	if leases, err := p.Leases(); err == nil {
		p.restoreMigrations(ctx, leases)
	}
	p.removeFetchLeftovers()
	p.serve(StoreID, maxFrameBytes, 256<<10, p.opts.StoreTimeout, p.handleStore)
	p.serve(ControlID, maxFrameBytes, 128<<10, p.opts.ControlTimeout, p.handleControl)
	p.serve(ConsoleID, 4096, 256<<10, 0, p.handleConsole)
	p.serve(MigrateID, maxFrameBytes, 128<<10, p.opts.ControlTimeout, p.handleMigrate)
	p.serve(ImageID, maxFrameBytes, 128<<10, time.Minute, p.handleImage)
	p.routes(n.API())
	p.group.Go(p.publishLoop)
	p.group.Go(p.every(min(p.opts.LeaseRetention, time.Minute), p.compactLeases))
	p.group.Go(p.every(settleEvery, func() { p.settleMoves(p.ctx) }))
	return nil
}

// Close implements node.Service.
func (p *Provider) Close() error { return p.stop() }

// evict stops and deletes VM id, whose machine is going.
func (p *Provider) evict(ctx context.Context, id vm.ID) error {
	rec, err := p.vms.Get(id)
	if errors.Is(err, vm.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("evict vm %s: %w", id, err)
	}
	p.dropConsole(id)
	if rec.State.Status == vm.StatusStarted {
		if _, err := p.vms.Do(ctx, id, vm.ActionStop); err != nil {
			return fmt.Errorf("evict vm %s: %w", id, err)
		}
	}
	if _, err := p.vms.Delete(ctx, id); err != nil && !errors.Is(err, vm.ErrNotFound) {
		return fmt.Errorf("evict vm %s: %w", id, err)
	}
	return nil
}

// MachineSpec describes a machine to add. Zero fields take their value from CopyFrom (an
// existing machine of this provider, report §6.1.1 addmachineprovider) or the defaults:
// capacity measured on the host, DefaultTerms, processor x86_64, DefaultMethods.
type MachineSpec struct {
	CopyFrom    *MachineID `json:"copy_from,omitempty"`
	Name        string     `json:"name,omitempty"`
	Processor   string     `json:"processor,omitempty"`
	Capacity    Resources  `json:"capacity"`
	Terms       Terms      `json:"terms"`
	NetworkMbps int64      `json:"network_mbps,omitempty"`
	Methods     []string   `json:"methods,omitempty"`
}

// DefaultTerms are the chunks, prices and periods a machine gets when none are given.
func DefaultTerms() Terms {
	return Terms{
		SpeedUnit: 500, MemoryUnit: 256, StorageUnit: 1024,
		SpeedPrice: 2_000, MemoryPrice: 1_000, StoragePrice: 5_000,
		RunningSecs: defaultRunningS, StorageSecs: defaultStorageS,
	}
}

// fillTerms fills t's zero fields from base.
func fillTerms(t, base Terms) Terms {
	pick := func(v, b int64) int64 { return cmp.Or(v, b) }
	pickM := func(v, b Money) Money { return cmp.Or(v, b) }
	return Terms{
		SpeedUnit: pick(t.SpeedUnit, base.SpeedUnit), MemoryUnit: pick(t.MemoryUnit, base.MemoryUnit),
		StorageUnit: pick(t.StorageUnit, base.StorageUnit),
		SpeedPrice:  pickM(t.SpeedPrice, base.SpeedPrice), MemoryPrice: pickM(t.MemoryPrice, base.MemoryPrice),
		StoragePrice: pickM(t.StoragePrice, base.StoragePrice),
		RunningSecs:  pick(t.RunningSecs, base.RunningSecs), StorageSecs: pick(t.StorageSecs, base.StorageSecs),
	}
}

// HostDefaults measures what this provider's host can give (bogomips, memory, free disk): the
// defaults of a new machine's capacity.
func (p *Provider) HostDefaults(ctx context.Context) (Resources, error) {
	h, err := p.vms.DescribeHost(ctx)
	if err != nil {
		return Resources{}, fmt.Errorf("measure the host (give the capacity explicitly): %w", err)
	}
	return Resources{SpeedBogomips: h.SpeedBogomips, MemoryMB: h.MemoryMB, StorageMB: h.DiskMB}, nil
}

// AddMachine adds a machine and publishes its offer.
func (p *Provider) AddMachine(ctx context.Context, spec MachineSpec) (Machine, error) {
	base := Machine{Processor: defaultProcessor, Terms: DefaultTerms(), Methods: DefaultMethods()}
	if spec.CopyFrom != nil {
		m, err := p.machine(*spec.CopyFrom)
		if err != nil {
			return Machine{}, err
		}
		base = m
		base.Name = m.Name + " (copy)"
	}
	m := Machine{
		ID:          NewMachineID(),
		Name:        cmp.Or(spec.Name, base.Name),
		Processor:   cmp.Or(spec.Processor, base.Processor),
		Capacity:    spec.Capacity,
		Terms:       fillTerms(spec.Terms, base.Terms),
		NetworkMbps: cmp.Or(spec.NetworkMbps, base.NetworkMbps),
		Methods:     spec.Methods,
	}
	if len(m.Methods) == 0 {
		m.Methods = base.Methods
	}
	if c := m.Capacity; c.SpeedBogomips == 0 || c.MemoryMB == 0 || c.StorageMB == 0 {
		def := base.Capacity
		if spec.CopyFrom == nil {
			var err error
			if def, err = p.HostDefaults(ctx); err != nil {
				return Machine{}, fmt.Errorf("capacity not given and %w", err)
			}
		}
		m.Capacity = Resources{cmp.Or(c.SpeedBogomips, def.SpeedBogomips), cmp.Or(c.MemoryMB, def.MemoryMB), cmp.Or(c.StorageMB, def.StorageMB)}
	}
	m.Added = p.now()
	m.Updated = m.Added
	if err := m.Validate(); err != nil {
		return Machine{}, err
	}
	if ms, err := p.machines(); err != nil {
		return Machine{}, err
	} else if limit := p.book.opts.MaxOffersPerProvider; len(ms) >= limit {
		return Machine{}, fmt.Errorf("%w: this provider already sells %d machines, as many as books keep of one provider (market.max_offers_per_provider)", ErrInvalid, len(ms))
	}
	p.pubMu.Lock()
	err := node.PutJSON(p.space, "machine/"+m.ID.String(), m)
	p.pubMu.Unlock()
	if err != nil {
		return Machine{}, err
	}
	p.log.Info("machine added", "machine", m.ID, "name", m.Name, "capacity", m.Capacity.String())
	p.n.Events().Publish(MachineChanged{Machine: m, Change: MachineAdded, Time: m.Added})
	p.changed()
	return m, nil
}

// EditMachine changes a machine's terms, name, network speed or methods; capacity and
// processor are locked. Existing leases keep the terms they were made under.
func (p *Provider) EditMachine(_ context.Context, id MachineID, e MachineEdit) (Machine, error) {
	p.pubMu.Lock()
	var out Machine
	err := p.space.Update(func(tx *node.Txn) error {
		m, err := node.GetJSON[Machine](tx, "machine/"+id.String())
		if errors.Is(err, node.ErrNotFound) {
			return fmt.Errorf("machine %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if m, err = e.apply(m); err != nil {
			return err
		}
		m.Updated = p.now()
		out = m
		return node.PutJSON(tx, "machine/"+id.String(), m)
	})
	p.pubMu.Unlock()
	if err != nil {
		return Machine{}, err
	}
	p.log.Info("machine edited", "machine", id)
	p.n.Events().Publish(MachineChanged{Machine: out, Change: MachineEdited, Time: out.Updated})
	p.changed()
	return out, nil
}

// RemoveMachine removes a machine and withdraws its offer. While it stores VMs it refuses,
// unless force: then the VMs are stopped and deleted, their leases end, and their buyers are
// notified (report §6.1.1 deletemachineprovider).
func (p *Provider) RemoveMachine(ctx context.Context, id MachineID, force bool) error {
	// One transaction checks what the machine stores and deletes it, so that no store can
	// reserve on it in between: a store re-reads the machine in its own transaction.
	var m Machine
	var held []LeaseRecord
	err := p.space.Update(func(tx *node.Txn) error {
		var err error
		if m, err = node.GetJSON[Machine](tx, "machine/"+id.String()); errors.Is(err, node.ErrNotFound) {
			return fmt.Errorf("machine %s: %w", id, ErrNotFound)
		} else if err != nil {
			return err
		}
		leases, err := listLeases(tx.List)
		if err != nil {
			return err
		}
		for _, l := range leases {
			if l.Machine == id && l.Holds() {
				held = append(held, l)
			}
		}
		if len(held) > 0 && !force {
			return fmt.Errorf("%w: %s stores %d vm(s); remove it with force to stop and delete them (their owners are notified)", ErrMachineInUse, m.Name, len(held))
		}
		return tx.Delete("machine/" + id.String())
	})
	if err != nil {
		return err
	}
	p.pubMu.Lock()
	p.publishWithdrawal(m)
	p.pubMu.Unlock()
	p.n.Events().Publish(MachineChanged{Machine: m, Change: MachineRemoved, Time: p.now()})
	var errs []error
	for _, l := range held {
		if err := p.evict(ctx, l.VM); err != nil {
			errs = append(errs, err)
		}
		reason := fmt.Sprintf("provider %s removed machine %q; the vm was deleted", p.n.ID(), m.Name)
		if err := p.EndLease(l.VM, reason); err != nil {
			errs = append(errs, err)
			continue
		}
		if l.State == LeaseStateActive {
			p.notify(l, reason)
		}
	}
	p.log.Info("machine removed", "machine", id, "evicted", len(held))
	return errors.Join(errs...)
}

// MachineView is a machine with what it currently holds.
type MachineView struct {
	Machine
	Free Resources `json:"free"`
	VMs  int       `json:"vms"`
}

// Machines lists this provider's machines.
func (p *Provider) Machines() ([]MachineView, error) {
	ms, err := p.machines()
	if err != nil {
		return nil, err
	}
	leases, err := p.Leases()
	if err != nil {
		return nil, err
	}
	out := make([]MachineView, len(ms))
	for i, m := range ms {
		used := Resources{}
		n := 0
		for _, l := range leases {
			if l.Machine == m.ID && l.Holds() {
				used = used.Add(l.Need)
				n++
			}
		}
		out[i] = MachineView{Machine: m, Free: m.Capacity.Sub(used), VMs: n}
	}
	return out, nil
}

func (p *Provider) machine(id MachineID) (Machine, error) {
	m, err := node.GetJSON[Machine](p.space, "machine/"+id.String())
	if errors.Is(err, node.ErrNotFound) {
		return m, fmt.Errorf("machine %s: %w", id, ErrNotFound)
	}
	return m, err
}

func (p *Provider) machines() ([]Machine, error) {
	var out []Machine
	err := p.space.List(func(key string, val []byte) error {
		if !strings.HasPrefix(key, "machine/") {
			return nil
		}
		var m Machine
		if err := json.Unmarshal(val, &m); err != nil {
			return fmt.Errorf("machine record %s: %w", key, err)
		}
		out = append(out, m)
		return nil
	})
	slices.SortFunc(out, func(a, b Machine) int { return a.Added.Compare(b.Added) })
	return out, err
}

// changed asks the publish loop to publish the offers soon.
func (p *Provider) changed() { signal(p.publish) }

// publishLoop publishes the provider's offers periodically and at once after every change. It
// also publishes when a peer joins the topic, since a message published just before a peer's
// subscription reached us is lost to it (gossipsub is lossy right after peers join); joins
// are coalesced, at most one such publish per joinGap.
func (p *Provider) publishLoop() error {
	events, err := p.book.topicEvents()
	if err != nil {
		return fmt.Errorf("market: topic events: %w", err)
	}
	defer events.Cancel()
	joined := make(chan struct{}, 1)
	p.group.Go(func() error {
		for {
			ev, err := events.NextPeerEvent(p.ctx)
			if err != nil {
				return nil
			}
			if ev.Type == pubsub.PeerJoin {
				select {
				case joined <- struct{}{}:
				default:
				}
			}
		}
	})
	gap := min(p.opts.Republish, joinGap)
	t := time.NewTimer(0)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-p.ctx.Done():
			return nil
		case <-t.C:
		case <-p.publish:
		case <-joined:
			if wait := gap - time.Since(last); wait > 0 {
				select {
				case <-p.ctx.Done():
					return nil
				case <-time.After(wait):
				}
			}
		}
		last = time.Now()
		if err := p.publishAll(p.ctx); err != nil && p.ctx.Err() == nil {
			p.log.Warn("publish offers", "err", err)
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(p.opts.Republish)
	}
}

// joinGap keeps a burst of joining peers from flooding the topic with republished offers.
const joinGap = time.Second

// ownOffers signs a fresh offer for each of this provider's machines; called with provMu held.
func (p *Provider) ownOffers() ([]SignedOffer, error) {
	views, err := p.Machines()
	if err != nil {
		return nil, err
	}
	out := make([]SignedOffer, 0, len(views))
	for _, v := range views {
		so, err := p.signOffer(v.Machine, v.Free, false)
		if err != nil {
			return nil, err
		}
		out = append(out, so)
	}
	return out, nil
}

func (p *Provider) signOffer(m Machine, free Resources, withdrawn bool) (SignedOffer, error) {
	now := p.now().Truncate(time.Millisecond)
	seq := max(p.lastSeq+1, uint64(now.UnixNano()))
	p.lastSeq = seq
	o := Offer{
		Provider: p.n.ID(), Machine: m.ID, Seq: seq, Issued: now, Expires: now.Add(p.opts.OfferTTL),
		Withdrawn: withdrawn, Name: m.Name, Processor: m.Processor, NetworkMbps: m.NetworkMbps,
		Methods: m.Methods, Capacity: m.Capacity, Free: free, Terms: m.Terms,
	}
	if !withdrawn {
		p.imgMu.Lock()
		for _, img := range p.images {
			if len(o.Images) < maxImages {
				o.Images = append(o.Images, img.info())
			}
		}
		p.imgMu.Unlock()
	}
	for _, a := range p.n.Host().Addrs() {
		if len(o.Addrs) < maxAddrs && len(a.String()) <= maxAddrLen {
			o.Addrs = append(o.Addrs, a.String())
		}
	}
	return SignOffer(o, p.n.PrivKey())
}

// publishAll signs and publishes a fresh offer for every machine.
func (p *Provider) publishAll(ctx context.Context) error {
	p.pubMu.Lock()
	offers, err := p.ownOffers()
	p.pubMu.Unlock()
	if err != nil {
		return err
	}
	var errs []error
	for _, so := range offers {
		if err := p.book.publish(ctx, so.Raw); err != nil {
			errs = append(errs, fmt.Errorf("machine %s: %w", so.Machine, err))
		}
	}
	return errors.Join(errs...)
}

// publishWithdrawal publishes that machine m is gone; called with provMu held.
func (p *Provider) publishWithdrawal(m Machine) {
	so, err := p.signOffer(m, Resources{}, true)
	if err == nil {
		err = p.book.publish(p.ctx, so.Raw)
	}
	if err != nil {
		p.log.Warn("publish withdrawal", "machine", m.ID, "err", err)
	}
}

// loadImages hashes the provider's images (cached by size and time).
func (p *Provider) loadImages(ctx context.Context) error {
	for _, img := range p.opts.Images {
		if img.Name == "" || img.Disk == "" {
			return fmt.Errorf("market: image %+v needs a name and a disk", img)
		}
		hash, size, err := hashImage(ctx, p.hashSpace, img)
		if err != nil {
			return fmt.Errorf("market: %w", err)
		}
		img.Hash = hash
		if img.MemoryMB <= 0 {
			img.MemoryMB = 256
		}
		img.sizeMB = ceilDiv(size, 1<<20)
		p.images = append(p.images, img)
	}
	return nil
}

func (img Image) info() ImageInfo {
	return ImageInfo{Hash: img.Hash, Name: img.Name, OS: img.OS, SizeMB: max(1, img.sizeMB), MemoryMB: img.MemoryMB}
}

func (p *Provider) image(hash string) (Image, bool) {
	p.imgMu.Lock()
	defer p.imgMu.Unlock()
	return p.imageLocked(hash)
}

func (p *Provider) imageLocked(hash string) (Image, bool) {
	i := slices.IndexFunc(p.images, func(img Image) bool { return img.Hash == hash })
	if i < 0 {
		return Image{}, false
	}
	return p.images[i], true
}

// DemoMachine is what provider i (0 or 1) of `virtuoso demo` sells: the report's two kinds of
// provider (§5.2), one cheap to store and dear to run, one cheap to run and dear to store, so
// that a search sorted by storage and one sorted by running cost disagree. Its periods are
// short (10 s running, 60 s storage) so that a demo's VM visibly costs money within a minute.
func DemoMachine(i int) MachineSpec {
	t := Terms{SpeedUnit: 500, MemoryUnit: 256, StorageUnit: 1024, RunningSecs: 10, StorageSecs: 60}
	name := "cheap-to-store"
	if i%2 == 0 {
		t.SpeedPrice, t.MemoryPrice, t.StoragePrice = 2_000, 2_000, 100
	} else {
		name = "cheap-to-run"
		t.SpeedPrice, t.MemoryPrice, t.StoragePrice = 100, 100, 5_000
	}
	return MachineSpec{Name: name, Processor: defaultProcessor, Terms: t, NetworkMbps: 1000,
		Capacity: Resources{SpeedBogomips: 8000, MemoryMB: 4096, StorageMB: 65536}}
}

// EnsureMachine adds spec unless this provider already has a machine of that name, and
// returns the machine; for seeding (the demo) that must not add a copy at every restart.
func (p *Provider) EnsureMachine(ctx context.Context, spec MachineSpec) (Machine, error) {
	ms, err := p.machines()
	if err != nil {
		return Machine{}, err
	}
	for _, m := range ms {
		if m.Name == spec.Name {
			return m, nil
		}
	}
	return p.AddMachine(ctx, spec)
}
