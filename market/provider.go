package market

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Lease states on the provider.
const (
	leasePending = "pending" // capacity reserved, VM being created, not yet countersigned
	leaseActive  = "active"
	leaseEnded   = "ended"
)

// providerLease is the provider's record of a lease, under lease/<vm id>.
type providerLease struct {
	Raw     []byte    `json:"raw"` // the lease envelope
	State   string    `json:"state"`
	Machine MachineID `json:"machine"`
	VM      vm.ID     `json:"vm"`
	Buyer   peer.ID   `json:"buyer"`
	Need    Resources `json:"need"`
	Created time.Time `json:"created"`
	Ended   time.Time `json:"ended,omitzero"`
	Reason  string    `json:"reason,omitempty"`
}

func (p providerLease) holds() bool { return p.State == leasePending || p.State == leaseActive }

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

func (s *Service) provider() error {
	if !s.opts.Provider {
		return fmt.Errorf("%w: start the node with --provider (roles.provider in config.toml) to sell machines", ErrNotProvider)
	}
	return nil
}

// HostDefaults measures what this provider's host can give (bogomips, memory, free disk): the
// defaults of a new machine's capacity.
func (s *Service) HostDefaults(ctx context.Context) (Resources, error) {
	if err := s.provider(); err != nil {
		return Resources{}, err
	}
	if s.mgr == nil {
		return Resources{}, fmt.Errorf("%w: cannot measure the host; give the capacity explicitly", ErrNoHypervisor)
	}
	hd, ok := s.mgr.Driver().(vm.HostDescriber)
	if !ok {
		return Resources{}, fmt.Errorf("the %s driver cannot measure the host; give the capacity explicitly", s.mgr.Driver().Name())
	}
	h, err := hd.DescribeHost(ctx)
	if err != nil {
		return Resources{}, fmt.Errorf("measure host: %w", err)
	}
	return Resources{SpeedBogomips: h.SpeedBogomips, MemoryMB: h.MemoryMB, StorageMB: h.DiskMB}, nil
}

// AddMachine adds a machine and publishes its offer.
func (s *Service) AddMachine(ctx context.Context, spec MachineSpec) (Machine, error) {
	if err := s.provider(); err != nil {
		return Machine{}, err
	}
	base := Machine{Processor: defaultProcessor, Terms: DefaultTerms(), Methods: DefaultMethods()}
	if spec.CopyFrom != nil {
		m, err := s.machine(*spec.CopyFrom)
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
			if def, err = s.HostDefaults(ctx); err != nil {
				return Machine{}, fmt.Errorf("capacity not given and %w", err)
			}
		}
		m.Capacity = Resources{cmp.Or(c.SpeedBogomips, def.SpeedBogomips), cmp.Or(c.MemoryMB, def.MemoryMB), cmp.Or(c.StorageMB, def.StorageMB)}
	}
	m.Added = s.now()
	m.Updated = m.Added
	if err := m.Validate(); err != nil {
		return Machine{}, err
	}
	s.provMu.Lock()
	err := node.PutJSON(s.provSpace, "machine/"+m.ID.String(), m)
	s.provMu.Unlock()
	if err != nil {
		return Machine{}, err
	}
	s.log.Info("machine added", "machine", m.ID, "name", m.Name, "capacity", m.Capacity.String())
	s.changed()
	return m, nil
}

// EditMachine changes a machine's terms, name, network speed or methods; capacity and
// processor are locked. Existing leases keep the terms they were made under.
func (s *Service) EditMachine(_ context.Context, id MachineID, e MachineEdit) (Machine, error) {
	if err := s.provider(); err != nil {
		return Machine{}, err
	}
	s.provMu.Lock()
	var out Machine
	err := s.provSpace.Update(func(tx *node.Txn) error {
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
		m.Updated = s.now()
		out = m
		return node.PutJSON(tx, "machine/"+id.String(), m)
	})
	s.provMu.Unlock()
	if err != nil {
		return Machine{}, err
	}
	s.log.Info("machine edited", "machine", id)
	s.changed()
	return out, nil
}

// RemoveMachine removes a machine and withdraws its offer. While it stores VMs it refuses,
// unless force: then the VMs are stopped and deleted, their leases end, and their buyers are
// notified (report §6.1.1 deletemachineprovider).
func (s *Service) RemoveMachine(ctx context.Context, id MachineID, force bool) error {
	if err := s.provider(); err != nil {
		return err
	}
	// One transaction checks what the machine stores and deletes it, so that no store can
	// reserve on it in between: a store re-reads the machine in its own transaction.
	var m Machine
	var held []providerLease
	err := s.provSpace.Update(func(tx *node.Txn) error {
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
			if l.Machine == id && l.holds() {
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
	s.provMu.Lock()
	s.publishWithdrawal(m)
	s.provMu.Unlock()
	var errs []error
	for _, l := range held {
		if s.mgr != nil {
			if rec, err := s.mgr.Get(l.VM); err == nil {
				if rec.State.Status == vm.StatusStarted {
					s.mgr.Stop(ctx, l.VM)
				}
				if _, err := s.mgr.Delete(ctx, l.VM); err != nil && !errors.Is(err, vm.ErrNotFound) {
					errs = append(errs, fmt.Errorf("evict vm %s: %w", l.VM, err))
				}
			}
		}
		reason := fmt.Sprintf("provider %s removed machine %q; the vm was deleted", s.n.ID(), m.Name)
		if err := s.endLease(l.VM, reason); err != nil {
			errs = append(errs, err)
			continue
		}
		if l.State == leaseActive {
			s.notify(l, reason)
		}
	}
	s.log.Info("machine removed", "machine", id, "evicted", len(held))
	return errors.Join(errs...)
}

// MachineView is a machine with what it currently holds.
type MachineView struct {
	Machine
	Free Resources `json:"free"`
	VMs  int       `json:"vms"`
}

// Machines lists this provider's machines.
func (s *Service) Machines() ([]MachineView, error) {
	if err := s.provider(); err != nil {
		return nil, err
	}
	ms, err := s.machines()
	if err != nil {
		return nil, err
	}
	leases, err := s.providerLeases()
	if err != nil {
		return nil, err
	}
	out := make([]MachineView, len(ms))
	for i, m := range ms {
		used := Resources{}
		n := 0
		for _, l := range leases {
			if l.Machine == m.ID && l.holds() {
				used = used.Add(l.Need)
				n++
			}
		}
		out[i] = MachineView{Machine: m, Free: m.Capacity.Sub(used), VMs: n}
	}
	return out, nil
}

func (s *Service) machine(id MachineID) (Machine, error) {
	m, err := node.GetJSON[Machine](s.provSpace, "machine/"+id.String())
	if errors.Is(err, node.ErrNotFound) {
		return m, fmt.Errorf("machine %s: %w", id, ErrNotFound)
	}
	return m, err
}

func (s *Service) machines() ([]Machine, error) {
	var out []Machine
	err := s.provSpace.List(func(key string, val []byte) error {
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

func listLeases(list func(func(string, []byte) error) error) ([]providerLease, error) {
	var out []providerLease
	err := list(func(key string, val []byte) error {
		if !strings.HasPrefix(key, "lease/") {
			return nil
		}
		var l providerLease
		if err := json.Unmarshal(val, &l); err != nil {
			return fmt.Errorf("lease record %s: %w", key, err)
		}
		out = append(out, l)
		return nil
	})
	return out, err
}

func (s *Service) providerLeases() ([]providerLease, error) { return listLeases(s.provSpace.List) }

// ProviderLease is a lease as the provider sees it.
type ProviderLease struct {
	Lease  Lease     `json:"lease"`
	State  string    `json:"state"` // pending, active, ended
	VM     vm.State  `json:"vm_state"`
	Ended  time.Time `json:"ended,omitzero"`
	Reason string    `json:"reason,omitempty"`
}

// ProviderLeases lists the leases of this provider's VMs.
func (s *Service) ProviderLeases() ([]ProviderLease, error) {
	if err := s.provider(); err != nil {
		return nil, err
	}
	ls, err := s.providerLeases()
	if err != nil {
		return nil, err
	}
	out := make([]ProviderLease, 0, len(ls))
	for _, l := range ls {
		sl, err := DecodeLease(l.Raw)
		if err != nil {
			continue
		}
		pl := ProviderLease{Lease: sl.Lease, State: l.State, Ended: l.Ended, Reason: l.Reason}
		if s.mgr != nil {
			if rec, err := s.mgr.Get(l.VM); err == nil {
				pl.VM = rec.State
			}
		}
		out = append(out, pl)
	}
	slices.SortFunc(out, func(a, b ProviderLease) int { return a.Lease.Created.Compare(b.Lease.Created) })
	return out, nil
}

// changed asks the publish loop to publish the offers soon.
func (s *Service) changed() {
	select {
	case s.publish <- struct{}{}:
	default:
	}
}

// publishLoop publishes the provider's offers periodically and at once after every change. It
// also publishes when a peer joins the topic, since a message published just before a peer's
// subscription reached us is lost to it (gossipsub is lossy right after peers join); joins
// are coalesced, at most one such publish per joinGap.
func (s *Service) publishLoop() error {
	events, err := s.topic.EventHandler()
	if err != nil {
		return fmt.Errorf("market: topic events: %w", err)
	}
	defer events.Cancel()
	joined := make(chan struct{}, 1)
	s.group.Go(func() error {
		for {
			ev, err := events.NextPeerEvent(s.ctx)
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
	gap := min(s.opts.Republish, joinGap)
	t := time.NewTimer(0)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case <-t.C:
		case <-s.publish:
		case <-joined:
			if wait := gap - time.Since(last); wait > 0 {
				select {
				case <-s.ctx.Done():
					return nil
				case <-time.After(wait):
				}
			}
		}
		last = time.Now()
		if err := s.publishAll(s.ctx); err != nil && s.ctx.Err() == nil {
			s.log.Warn("publish offers", "err", err)
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(s.opts.Republish)
	}
}

// joinGap keeps a burst of joining peers from flooding the topic with republished offers.
const joinGap = time.Second

// ownOffers signs a fresh offer for each of this provider's machines; called with provMu held.
func (s *Service) ownOffers() ([]SignedOffer, error) {
	views, err := s.Machines()
	if err != nil {
		return nil, err
	}
	out := make([]SignedOffer, 0, len(views))
	for _, v := range views {
		so, err := s.signOffer(v.Machine, v.Free, false)
		if err != nil {
			return nil, err
		}
		out = append(out, so)
	}
	return out, nil
}

func (s *Service) signOffer(m Machine, free Resources, withdrawn bool) (SignedOffer, error) {
	now := s.now().Truncate(time.Millisecond)
	seq := max(s.lastSeq+1, uint64(now.UnixNano()))
	s.lastSeq = seq
	o := Offer{
		Provider: s.n.ID(), Machine: m.ID, Seq: seq, Issued: now, Expires: now.Add(s.opts.OfferTTL),
		Withdrawn: withdrawn, Name: m.Name, Processor: m.Processor, NetworkMbps: m.NetworkMbps,
		Methods: m.Methods, Capacity: m.Capacity, Free: free, Terms: m.Terms,
	}
	if !withdrawn {
		for _, img := range s.images {
			if len(o.Images) < maxImages {
				o.Images = append(o.Images, img.info())
			}
		}
	}
	for _, a := range s.n.Host().Addrs() {
		if len(o.Addrs) < maxAddrs && len(a.String()) <= maxAddrLen {
			o.Addrs = append(o.Addrs, a.String())
		}
	}
	return SignOffer(o, s.n.PrivKey())
}

// publishAll signs and publishes a fresh offer for every machine.
func (s *Service) publishAll(ctx context.Context) error {
	s.provMu.Lock()
	offers, err := s.ownOffers()
	s.provMu.Unlock()
	if err != nil {
		return err
	}
	var errs []error
	for _, so := range offers {
		if err := s.topic.Publish(ctx, so.Raw); err != nil {
			errs = append(errs, fmt.Errorf("machine %s: %w", so.Machine, err))
		}
	}
	return errors.Join(errs...)
}

// publishWithdrawal publishes that machine m is gone; called with provMu held.
func (s *Service) publishWithdrawal(m Machine) {
	so, err := s.signOffer(m, Resources{}, true)
	if err == nil {
		err = s.topic.Publish(s.ctx, so.Raw)
	}
	if err != nil {
		s.log.Warn("publish withdrawal", "machine", m.ID, "err", err)
	}
}

// loadImages hashes the provider's images (cached by size and time).
func (s *Service) loadImages(ctx context.Context) error {
	for _, img := range s.opts.Images {
		if img.Name == "" || img.Disk == "" {
			return fmt.Errorf("market: image %+v needs a name and a disk", img)
		}
		hash, size, err := hashImage(ctx, s.hashSpace, img.Disk)
		if err != nil {
			return fmt.Errorf("market: %w", err)
		}
		img.Hash = hash
		if img.MemoryMB <= 0 {
			img.MemoryMB = 256
		}
		img.sizeMB = ceilDiv(size, 1<<20)
		s.images = append(s.images, img)
	}
	return nil
}

func (img Image) info() ImageInfo {
	return ImageInfo{Hash: img.Hash, Name: img.Name, OS: img.OS, SizeMB: max(1, img.sizeMB), MemoryMB: img.MemoryMB}
}

func (s *Service) image(hash string) (Image, bool) {
	i := slices.IndexFunc(s.images, func(img Image) bool { return img.Hash == hash })
	if i < 0 {
		return Image{}, false
	}
	return s.images[i], true
}

// handleStore answers a store request (report §6.3.1): it checks the buyer's lease proposal
// against the machine's current terms, reserves the capacity atomically, creates the VM, and
// countersigns the lease. Whatever fails, nothing stays reserved or created.
func (s *Service) handleStore(ctx context.Context, st network.Stream, r *bufio.Reader) error {
	b, err := readFrame(r, maxFrameBytes)
	if err != nil {
		return replyMalformed(st, err)
	}
	resp := storeResponse{}
	sl, err := decodeStoreRequest(b)
	if err == nil {
		var rec vm.Record
		rec, sl, err = s.store(ctx, st.Conn().RemotePeer(), sl)
		resp.State, resp.Lease = rec.State, sl.Encode()
	}
	if err != nil {
		s.log.Info("store refused", "from", st.Conn().RemotePeer(), "err", err)
		resp = storeResponse{Error: toWire(err)}
	}
	return writeJSON(st, resp)
}

func (s *Service) store(ctx context.Context, from peer.ID, sl SignedLease) (vm.Record, SignedLease, error) {
	l := sl.Lease
	switch {
	case l.Provider != s.n.ID():
		return vm.Record{}, sl, fmt.Errorf("%w: the lease names provider %s, this is %s", ErrInvalid, l.Provider, s.n.ID())
	case l.Buyer != from:
		return vm.Record{}, sl, fmt.Errorf("%w: lease of buyer %s sent by %s", ErrForged, l.Buyer, from)
	case len(sl.ProviderSig) > 0:
		return vm.Record{}, sl, fmt.Errorf("%w: a proposal carries no provider signature", ErrInvalid)
	}
	if d := s.now().Sub(l.Created); d > MaxClockSkew || d < -MaxClockSkew {
		return vm.Record{}, sl, fmt.Errorf("%w: lease dated %s, %v from this provider's clock", ErrExpired, l.Created.Format(time.RFC3339), d.Round(time.Second))
	}
	m, err := s.machine(l.Machine)
	if err != nil {
		return vm.Record{}, sl, err
	}
	if l.Terms != m.Terms {
		return vm.Record{}, sl, fmt.Errorf("%w: machine %q now sells at %s per running period and %s per storage period for this configuration; search again and store at the current prices", ErrStale, m.Name, quoteText(m.Terms, l.Config), storageText(m.Terms, l.Config))
	}
	if p := l.Config.Processor; p != "" && !strings.EqualFold(p, m.Processor) {
		return vm.Record{}, sl, fmt.Errorf("%w: configuration wants processor %s, machine %q has %s", ErrInvalid, p, m.Name, m.Processor)
	}
	cfg := vm.Config{ID: l.VM, Name: l.Config.Name, SpeedBogomips: l.Config.SpeedBogomips, MemoryMB: l.Config.MemoryMB,
		DiskMB: l.Config.DiskMB, Processor: l.Config.Processor, OS: l.Config.OS, MAC: vm.MACFor(l.VM)}
	if l.Config.Image != "" {
		img, ok := s.image(l.Config.Image)
		if !ok {
			return vm.Record{}, sl, fmt.Errorf("%w: %s", ErrImageMissing, l.Config.Image)
		}
		if l.Config.DiskMB < img.sizeMB {
			return vm.Record{}, sl, fmt.Errorf("%w: disk of %d MB smaller than the %d MB image", ErrInvalid, l.Config.DiskMB, img.sizeMB)
		}
		cfg.BaseImage = img.Disk
		if img.Boot != nil {
			boot := *img.Boot
			cfg.Boot = &boot
		}
	}
	if s.mgr == nil {
		return vm.Record{}, sl, fmt.Errorf("%w: this provider cannot create vms", ErrNoHypervisor)
	}

	// Reserve: one transaction checks the free capacity and records the pending lease, so two
	// buyers racing for the last capacity cannot both pass.
	need := l.Config.Resources()
	key := "lease/" + l.VM.String()
	err = s.provSpace.Update(func(tx *node.Txn) error {
		if _, err := tx.Get(key); err == nil {
			return fmt.Errorf("%w: vm %s", ErrExists, l.VM)
		}
		// The machine again, inside the transaction: it may have been edited or removed
		// since the checks above.
		cur, err := node.GetJSON[Machine](tx, "machine/"+m.ID.String())
		if errors.Is(err, node.ErrNotFound) {
			return fmt.Errorf("machine %s: %w", m.ID, ErrNotFound)
		} else if err != nil {
			return err
		}
		if cur.Terms != l.Terms {
			return fmt.Errorf("%w: machine %q changed its terms just now; search again", ErrStale, cur.Name)
		}
		leases, err := listLeases(tx.List)
		if err != nil {
			return err
		}
		used := Resources{}
		for _, pl := range leases {
			if pl.Machine == m.ID && pl.holds() {
				used = used.Add(pl.Need)
			}
		}
		if free := m.Capacity.Sub(used); !need.Fits(free) {
			return fmt.Errorf("%w on machine %q: free %s, the configuration needs %s", ErrNoCapacity, m.Name, free, need)
		}
		return node.PutJSON(tx, key, providerLease{Raw: sl.Encode(), State: leasePending, Machine: m.ID, VM: l.VM, Buyer: l.Buyer, Need: need, Created: s.now()})
	})
	if err != nil {
		return vm.Record{}, sl, err
	}
	release := func() {
		if err := s.provSpace.Delete(key); err != nil {
			s.log.Error("release reservation", "vm", l.VM, "err", err)
		}
	}
	rec, err := s.mgr.Create(ctx, vm.CreateRequest{Config: cfg, Owner: l.Buyer.String(), Lease: l.ID.String()})
	if err != nil {
		release()
		return vm.Record{}, sl, fmt.Errorf("create vm: %w", err)
	}
	full, err := sl.Countersign(s.n.PrivKey())
	if err == nil {
		err = s.provSpace.Update(func(tx *node.Txn) error {
			// Still pending? A forced removal of the machine may have ended it meanwhile.
			if pl, err := node.GetJSON[providerLease](tx, key); err != nil || pl.State != leasePending {
				return fmt.Errorf("%w: machine %q was removed while the vm was being created", ErrNotFound, m.Name)
			}
			return node.PutJSON(tx, key, providerLease{Raw: full.Encode(), State: leaseActive, Machine: m.ID, VM: l.VM, Buyer: l.Buyer, Need: need, Created: s.now()})
		})
	}
	if err != nil {
		s.mgr.Delete(context.WithoutCancel(ctx), l.VM)
		release()
		return vm.Record{}, sl, err
	}
	s.log.Info("vm stored", "vm", l.VM, "lease", l.ID, "machine", m.ID, "buyer", l.Buyer)
	s.changed()
	return rec, full, nil
}

func quoteText(t Terms, c Configuration) string {
	q, err := t.Quote(c.Resources())
	if err != nil {
		return "?"
	}
	return q.RunningPrice.String()
}

func storageText(t Terms, c Configuration) string {
	q, err := t.Quote(c.Resources())
	if err != nil {
		return "?"
	}
	return q.StoragePrice.String()
}

// endLease marks the lease of vm id ended, freeing its capacity.
func (s *Service) endLease(id vm.ID, reason string) error {
	key := "lease/" + id.String()
	err := s.provSpace.Update(func(tx *node.Txn) error {
		pl, err := node.GetJSON[providerLease](tx, key)
		if err != nil {
			return err
		}
		pl.State, pl.Ended, pl.Reason = leaseEnded, s.now(), reason
		return node.PutJSON(tx, key, pl)
	})
	if err != nil {
		return fmt.Errorf("end lease of vm %s: %w", id, err)
	}
	s.changed()
	return nil
}

// recoverPending undoes reservations a crash left half-done: their VM is deleted and the
// capacity freed. The buyer never received a countersigned lease for them.
func (s *Service) recoverPending(ctx context.Context) error {
	leases, err := s.providerLeases()
	if err != nil {
		return fmt.Errorf("market: %w", err)
	}
	for _, l := range leases {
		if l.State != leasePending {
			continue
		}
		if s.mgr != nil {
			if _, err := s.mgr.Get(l.VM); err == nil {
				if _, err := s.mgr.Delete(ctx, l.VM); err != nil {
					return fmt.Errorf("market: undo half-stored vm %s: %w", l.VM, err)
				}
			}
		}
		if err := s.provSpace.Delete("lease/" + l.VM.String()); err != nil {
			return err
		}
		s.log.Warn("undid a store interrupted by a restart", "vm", l.VM)
	}
	return nil
}

// ownedLease returns the active lease of vm id if from is its buyer.
func (s *Service) ownedLease(id vm.ID, from peer.ID) (providerLease, error) {
	pl, err := node.GetJSON[providerLease](s.provSpace, "lease/"+id.String())
	switch {
	case errors.Is(err, node.ErrNotFound) || err == nil && pl.State == leaseEnded:
		return pl, fmt.Errorf("%w: no vm %s is stored here", ErrNotFound, id)
	case err != nil:
		return pl, err
	case pl.Buyer != from:
		return pl, fmt.Errorf("%w: vm %s belongs to another buyer", ErrNotOwner, id)
	case pl.State == leasePending:
		return pl, fmt.Errorf("%w: vm %s", ErrPending, id)
	}
	return pl, nil
}

// handleControl executes a buyer's action on its VM (report §6.3.2–6.3.4) if the requester
// is the lease's buyer and the VM's status allows the action (report §6.1.4, §6.1.7).
func (s *Service) handleControl(ctx context.Context, st network.Stream, r *bufio.Reader) error {
	b, err := readFrame(r, maxFrameBytes)
	if err != nil {
		return replyMalformed(st, err)
	}
	var resp controlResponse
	req, err := decodeControlRequest(b)
	if err == nil {
		resp, err = s.execute(ctx, st.Conn().RemotePeer(), req)
	}
	if err != nil {
		resp = controlResponse{State: resp.State, Error: toWire(err)}
	}
	return writeJSON(st, resp)
}

func (s *Service) execute(ctx context.Context, from peer.ID, req controlRequest) (controlResponse, error) {
	pl, err := s.ownedLease(req.VM, from)
	if err != nil {
		return controlResponse{}, err
	}
	if s.mgr == nil {
		return controlResponse{}, ErrNoHypervisor
	}
	id := req.VM
	var rec vm.Record
	resp := controlResponse{}
	switch req.Action {
	case ActStatus:
		rec, err = s.mgr.Get(id)
		resp.Lease = pl.Raw
	case ActStart:
		rec, err = s.mgr.Start(ctx, id)
	case ActStop:
		s.dropConsole(id)
		rec, err = s.mgr.Stop(ctx, id)
	case ActSuspend:
		s.dropConsole(id)
		rec, err = s.mgr.Suspend(ctx, id)
	case ActResume:
		rec, err = s.mgr.Resume(ctx, id)
	case ActConsole:
		var con vm.Console
		rec, con, err = s.mgr.Console(ctx, id)
		if err == nil {
			s.mu.Lock()
			s.consoles[id] = con.Addr
			s.mu.Unlock()
			resp.Password = con.Password
		}
	case ActDelete:
		s.dropConsole(id)
		rec, err = s.mgr.Delete(ctx, id)
		if err == nil {
			err = s.endLease(id, "deleted by its owner")
		}
	}
	resp.State = rec.State
	if err != nil {
		return resp, err
	}
	s.log.Info("vm control", "vm", id, "action", req.Action, "status", rec.State.Status.String(), "peer", from)
	return resp, nil
}

func (s *Service) dropConsole(id vm.ID) {
	s.mu.Lock()
	delete(s.consoles, id)
	s.mu.Unlock()
}

// handleConsole tunnels a buyer's VNC connection to its running VM's console: the provider
// dials its own VNC server on loopback, so no provider port is exposed.
func (s *Service) handleConsole(ctx context.Context, st network.Stream, r *bufio.Reader) error {
	b, err := readFrame(r, 4096)
	if err != nil {
		return replyMalformed(st, err)
	}
	req, err := decodeConsoleRequest(b)
	var conn net.Conn
	if err == nil {
		conn, err = s.dialConsole(ctx, st.Conn().RemotePeer(), req.VM)
	}
	if err != nil {
		writeJSON(st, consoleResponse{Error: toWire(err)})
		return nil
	}
	defer conn.Close()
	if err := writeJSON(st, consoleResponse{}); err != nil {
		return err
	}
	return pipe(ctx, st, r, conn)
}

func (s *Service) dialConsole(ctx context.Context, from peer.ID, id vm.ID) (net.Conn, error) {
	if _, err := s.ownedLease(id, from); err != nil {
		return nil, err
	}
	if s.mgr == nil {
		return nil, ErrNoHypervisor
	}
	rec, err := s.mgr.Get(id)
	if err != nil {
		return nil, err
	}
	if !vm.Allowed(rec.State.Status, vm.ActionView) {
		return nil, fmt.Errorf("vm %s: %w", id, &vm.IllegalActionError{Status: rec.State.Status, Action: vm.ActionView})
	}
	s.mu.Lock()
	addr := s.consoles[id]
	s.mu.Unlock()
	if addr == "" {
		return nil, fmt.Errorf("%w: no console session is open for vm %s; ask for the console first", ErrNotFound, id)
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: console of vm %s: %v", vm.ErrHypervisor, id, err)
	}
	return conn, nil
}

// pipe copies bytes both ways between a stream (whose reader may hold buffered bytes) and a
// connection until either side ends or ctx is done.
func pipe(ctx context.Context, st network.Stream, r io.Reader, conn net.Conn) error {
	st.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() {
		st.Reset()
		conn.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(conn, r)
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.CloseWrite()
		} else {
			conn.Close()
		}
	}()
	_, err := io.Copy(st, conn)
	st.CloseWrite()
	wg.Wait()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// notify tells a lease's buyer, in the background, that the lease ended.
func (s *Service) notify(l providerLease, reason string) {
	sl, err := DecodeLease(l.Raw)
	if err != nil {
		return
	}
	s.group.Go(func() error {
		ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
		defer cancel()
		st, err := s.open(ctx, peerAddr{id: l.Buyer}, NoticeID)
		if err != nil {
			s.log.Warn("notify buyer", "peer", l.Buyer, "vm", l.VM, "err", err)
			return nil
		}
		st.SetDeadline(time.Now().Add(30 * time.Second))
		if err := writeJSON(st, notice{Lease: sl.ID, VM: l.VM, Reason: reason}); err != nil {
			st.Reset()
			return nil
		}
		st.CloseWrite()
		io.Copy(io.Discard, io.LimitReader(st, 1024))
		st.Close()
		return nil
	})
}

// DemoMachine is what provider i (0 or 1) of `virtuoso demo` sells: the report's two kinds of
// provider (§5.2), one cheap to store and dear to run, one cheap to run and dear to store, so
// that a search sorted by storage and one sorted by running cost disagree.
func DemoMachine(i int) MachineSpec {
	t := Terms{SpeedUnit: 500, MemoryUnit: 256, StorageUnit: 1024, RunningSecs: 3600, StorageSecs: 86400}
	name := "cheap-to-store"
	if i%2 == 0 {
		t.SpeedPrice, t.MemoryPrice, t.StoragePrice = 20_000, 20_000, 500
	} else {
		name = "cheap-to-run"
		t.SpeedPrice, t.MemoryPrice, t.StoragePrice = 1_000, 1_000, 50_000
	}
	return MachineSpec{Name: name, Processor: defaultProcessor, Terms: t, NetworkMbps: 1000,
		Capacity: Resources{SpeedBogomips: 8000, MemoryMB: 4096, StorageMB: 65536}}
}

// EnsureMachine adds spec unless this provider already has a machine of that name, and
// returns the machine; for seeding (the demo) that must not add a copy at every restart.
func (s *Service) EnsureMachine(ctx context.Context, spec MachineSpec) (Machine, error) {
	if err := s.provider(); err != nil {
		return Machine{}, err
	}
	ms, err := s.machines()
	if err != nil {
		return Machine{}, err
	}
	for _, m := range ms {
		if m.Name == spec.Name {
			return m, nil
		}
	}
	return s.AddMachine(ctx, spec)
}
