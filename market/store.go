package market

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// The store protocol, /virtuoso/store/1.0.0 (report §6.3.1): the buyer proposes a lease it
// signed, the provider checks it, creates the VM and answers with the countersigned lease.

// storeRequest carries the buyer-signed lease proposal.
type storeRequest struct {
	Lease []byte `json:"lease"`
	// Incoming proposes the lease of a VM that is to migrate here: capacity is reserved and
	// the lease countersigned, but the VM comes later, by migration (Provider.Incoming).
	Incoming bool `json:"incoming,omitempty"`
}

// storeResponse carries the countersigned lease and the new VM's state, or an error.
type storeResponse struct {
	Lease []byte     `json:"lease,omitempty"`
	State vm.State   `json:"state"`
	Error *WireError `json:"error,omitempty"`
}

// decodeStoreRequest decodes a store request: the lease proposal and whether it is of an
// incoming migration.
func decodeStoreRequest(b []byte) (SignedLease, bool, error) {
	var r storeRequest
	if err := DecodeStrict(b, &r); err != nil {
		return SignedLease{}, false, err
	}
	sl, err := DecodeLease(r.Lease)
	return sl, r.Incoming, err
}

func decodeStoreResponse(b []byte) (storeResponse, error) {
	var r storeResponse
	if err := DecodeStrict(b, &r); err != nil {
		return r, err
	}
	return r, nil
}

// StoreRequest asks the buyer's node to store a configuration on a provider's machine.
type StoreRequest struct {
	// Config is the configuration to store, or ConfigName one from the catalog; Edit then
	// changes fields of it (report: editconfiguration before registering).
	Config     *Configuration `json:"config,omitempty"`
	ConfigName string         `json:"config_name,omitempty"`
	Edit       ConfigEdit     `json:"edit"`
	// Provider may be left empty when the machine ID is unique in the book.
	Provider string    `json:"provider,omitempty"`
	Machine  MachineID `json:"machine"`
	// Terms are the terms the buyer agrees to, typically from its search result; empty means
	// the terms of the provider's offer in this node's book. If the provider's current terms
	// differ, it refuses with ErrStale.
	Terms *Terms `json:"terms,omitempty"`
	// ExpectRunning and ExpectStorage, when set, are the prices per period the buyer saw (in
	// a search); if the quote under the terms differs, the store fails with ErrStale before
	// anything is sent.
	ExpectRunning *Money `json:"expect_running,omitempty"`
	ExpectStorage *Money `json:"expect_storage,omitempty"`
}

// findOffer returns the live offer of a machine.
func (b *Buyer) findOffer(provider string, machine MachineID) (SignedOffer, error) {
	now := b.now()
	if provider != "" {
		p, err := peer.Decode(provider)
		if err != nil {
			return SignedOffer{}, fmt.Errorf("%w: provider %q is not a peer id", ErrInvalid, truncate(provider))
		}
		if so, ok := b.book.offers.Get(p, machine, now); ok {
			return so, nil
		}
		return SignedOffer{}, fmt.Errorf("%w: no live offer of machine %s from %s; search again", ErrNotFound, machine, Short(p))
	}
	var found []SignedOffer
	for _, so := range b.book.offers.Signed(now, 1<<30) {
		if so.Machine == machine {
			found = append(found, so)
		}
	}
	switch len(found) {
	case 0:
		return SignedOffer{}, fmt.Errorf("%w: no live offer of machine %s; search again", ErrNotFound, machine)
	case 1:
		return found[0], nil
	}
	return SignedOffer{}, fmt.Errorf("%w: machine %s is offered by %d providers; name the provider", ErrInvalid, machine, len(found))
}

// Store stores a configuration on a provider's machine (report §6.3.1): the node proposes a
// lease at the agreed terms, signs it, and sends it over /virtuoso/store/1.0.0; the provider
// checks it, creates the VM and countersigns. On success the VM is stored and the lease kept.
func (b *Buyer) Store(ctx context.Context, req StoreRequest) (VM, error) {
	cfg, err := b.book.resolve(req.Config, req.ConfigName, req.Edit)
	if err != nil {
		return VM{}, err
	}
	offer, err := b.findOffer(req.Provider, req.Machine)
	if err != nil {
		return VM{}, err
	}
	if offer.Provider == b.n.ID() {
		return VM{}, fmt.Errorf("%w: a node cannot buy from itself", ErrInvalid)
	}
	// A provider without the image of a preconfigured configuration fetches it from one whose
	// offer lists it; meanwhile the VM is migrating.
	fetch := false
	if bare := cfg; !Hosts(offer.Offer, cfg, cfg.Processor) && cfg.Preconfigured() {
		bare.Image = ""
		if Hosts(offer.Offer, bare, cfg.Processor) {
			if len(imageSources(b.book.offers.Signed(b.now(), 1<<30), cfg.Image, offer.Provider)) == 0 {
				return VM{}, fmt.Errorf("%w: machine %q's provider does not hold image %s and no provider in this node's book offers it; search again", ErrImageMissing, offer.Name, cfg.Image)
			}
			fetch = true
		}
	}
	if !fetch && !Hosts(offer.Offer, cfg, cfg.Processor) {
		return VM{}, fmt.Errorf("%w: machine %q offers %s free (processor %s); the configuration needs %s (processor %s)",
			ErrNoCapacity, offer.Name, offer.Free, offer.Processor, cfg.Resources(), cfg.Processor)
	}
	terms := offer.Terms
	if req.Terms != nil {
		terms = *req.Terms
	}
	q, err := terms.Quote(cfg.Resources())
	if err != nil {
		return VM{}, err
	}
	if req.ExpectRunning != nil && *req.ExpectRunning != q.RunningPrice || req.ExpectStorage != nil && *req.ExpectStorage != q.StoragePrice {
		return VM{}, fmt.Errorf("%w: machine %q now asks %s per running period and %s per storage period; search again", ErrStale, offer.Name, q.RunningPrice, q.StoragePrice)
	}
	sl, err := ProposeLease(Lease{ID: NewLeaseID(), VM: vm.NewID(), Buyer: b.n.ID(), Provider: offer.Provider,
		Machine: offer.Machine, Config: cfg, Terms: terms, Quote: q, Created: b.now().Truncate(time.Millisecond)}, b.n.PrivKey())
	if err != nil {
		return VM{}, err
	}
	key := leaseKey(sl.VM)
	b.mu.Lock()
	b.storing[sl.VM] = true
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.storing, sl.VM)
		b.mu.Unlock()
	}()
	st := vm.State{Status: vm.StatusRegistered}
	if fetch {
		st = FetchingState
	}
	bl := buyerLease{Raw: sl.Encode(), State: LeaseStatePending, VM: st,
		Addrs: offer.Addrs, Created: b.now(), Updated: b.now()}
	if err := b.put(bl); err != nil {
		return VM{}, err
	}
	p := peerAddr{offer.Provider, offer.Addrs}
	var resp storeResponse
	err = b.request(ctx, p, StoreID, b.opts.StoreTimeout, storeRequest{Lease: sl.Encode()}, &resp)
	if err != nil {
		// No clear answer: the provider may or may not have stored the VM. Ask once now; the
		// housekeeping loop keeps asking while the lease stays pending.
		if v, rerr := b.recoverLease(ctx, sl.VM); rerr == nil {
			return v, nil
		}
		b.notePending(key, err)
		return VM{}, fmt.Errorf("store on %s: %w (the store is pending: `virtuoso vm ls` shows whether the provider stored it)", Short(p.id), err)
	}
	if resp.Error != nil {
		b.forget(sl.VM)
		return VM{}, fmt.Errorf("provider %s refused the store: %w", Short(p.id), resp.Error.err())
	}
	full, err := DecodeLease(resp.Lease)
	if err == nil && (!full.Complete() || !bytes.Equal(full.Body, sl.Body)) {
		err = fmt.Errorf("%w: the provider answered with another lease", ErrForged)
	}
	if err != nil {
		b.notePending(key, err)
		return VM{}, fmt.Errorf("store on %s: bad answer: %w", Short(p.id), err)
	}
	b.log.Info("vm stored", "vm", sl.VM, "lease", sl.ID, "peer", p.id, "machine", sl.Machine)
	return b.activate(bl, full, resp.State)
}

// activate records the countersigned lease full of bl and publishes LeaseCreated.
func (b *Buyer) activate(bl buyerLease, full SignedLease, st vm.State) (VM, error) {
	bl.Raw, bl.State, bl.VM, bl.Note, bl.Updated = full.Encode(), LeaseStateActive, st, "", b.now()
	if err := b.put(bl); err != nil {
		return VM{}, err
	}
	b.n.Events().Publish(LeaseCreated{Lease: full, Time: bl.Updated})
	return bl.view()
}

// forget drops the record of a store that did not happen.
func (b *Buyer) forget(id vm.ID) {
	if err := b.space.Delete(leaseKey(id)); err != nil {
		b.log.Warn("drop the record of a store that did not happen", "vm", id, "err", err)
	}
}

// notePending records why a store is still pending.
func (b *Buyer) notePending(key string, cause error) {
	err := b.space.Update(func(tx *node.Txn) error {
		bl, err := node.GetJSON[buyerLease](tx, key)
		if err != nil {
			return err
		}
		bl.Note = "no clear answer from the provider: " + cause.Error()
		bl.Updated, bl.Tried = b.now(), b.now()
		return node.PutJSON(tx, key, bl)
	})
	if err != nil {
		b.log.Warn("note a pending store", "key", key, "err", err)
	}
}

// recoverLease asks the provider of a pending lease whether it stored the VM: if it answers
// with the countersigned lease, the lease becomes active; if it does not know the VM, the
// pending record goes.
func (b *Buyer) recoverLease(ctx context.Context, id vm.ID) (VM, error) {
	bl, err := node.GetJSON[buyerLease](b.space, leaseKey(id))
	if err != nil {
		return VM{}, err
	}
	if bl.State != LeaseStatePending {
		return bl.view() // its store was answered meanwhile
	}
	sl, err := DecodeLease(bl.Raw)
	if err != nil {
		return VM{}, err
	}
	var resp controlResponse
	err = b.request(ctx, peerAddr{sl.Provider, bl.Addrs}, ControlID, 15*time.Second, controlRequest{VM: id}, &resp)
	if err == nil && resp.Error != nil {
		err = resp.Error.err()
	}
	if errors.Is(err, ErrNotFound) {
		b.forget(id)
		return VM{}, fmt.Errorf("provider %s did not store vm %s: %w", Short(sl.Provider), id, err)
	}
	if err != nil {
		return VM{}, err
	}
	full, err := DecodeLease(resp.Lease)
	if err != nil || !full.Complete() || !bytes.Equal(full.Body, sl.Body) {
		return VM{}, fmt.Errorf("%w: provider answered with another lease", ErrForged)
	}
	b.log.Info("pending store confirmed by the provider", "vm", id, "lease", sl.ID)
	return b.activate(bl, full, resp.State)
}

// pendingGiveUp is how long a pending store is retried before it is dropped.
const pendingGiveUp = time.Hour

// retryPending asks again about pending stores, at most once a minute each.
func (b *Buyer) retryPending(ctx context.Context) {
	var pending []buyerLease
	err := b.space.List(func(_ string, val []byte) error {
		var bl buyerLease
		if json.Unmarshal(val, &bl) == nil && bl.State == LeaseStatePending && time.Since(bl.Tried) > time.Minute {
			pending = append(pending, bl)
		}
		return nil
	})
	if err != nil {
		b.log.Warn("list pending stores", "err", err)
	}
	for _, bl := range pending {
		sl, err := DecodeLease(bl.Raw)
		if err != nil {
			continue
		}
		b.mu.Lock()
		inFlight := b.storing[sl.VM]
		b.mu.Unlock()
		if inFlight {
			continue // its Store is still waiting for the provider's answer
		}
		if _, err := b.recoverLease(ctx, sl.VM); err != nil && !errors.Is(err, ErrNotFound) {
			if time.Since(bl.Created) > pendingGiveUp {
				b.log.Warn("giving up on a store the provider never confirmed", "vm", sl.VM, "peer", sl.Provider)
				b.forget(sl.VM)
				continue
			}
			b.notePending(leaseKey(sl.VM), err)
		}
	}
}

// handleStore answers a store request (report §6.3.1): it checks the buyer's lease proposal
// against the machine's current terms, reserves the capacity atomically, creates the VM, and
// countersigns the lease. Whatever fails, nothing stays reserved or created.
func (p *Provider) handleStore(ctx context.Context, st network.Stream, frame []byte, _ *bufio.Reader) error {
	resp := storeResponse{}
	sl, incoming, err := decodeStoreRequest(frame)
	switch {
	case err == nil && incoming:
		sl, err = p.acceptIncoming(ctx, st.Conn().RemotePeer(), sl)
		resp.Lease = sl.Encode()
	case err == nil:
		var rec vm.Record
		rec, sl, err = p.store(ctx, st.Conn().RemotePeer(), sl)
		resp.State, resp.Lease = rec.State, sl.Encode()
	}
	if err != nil {
		p.log.Info("store refused", "from", st.Conn().RemotePeer(), "err", err)
		resp = storeResponse{Error: toWire(err)}
	}
	return WriteJSON(st, resp)
}

// reserve checks a lease proposal of from against this provider (its machine, current terms,
// processor, image, the buyer's admission) and reserves its capacity, recording the lease in
// state; it returns the VM's configuration. One transaction checks the free capacity and
// records the lease, so two buyers racing for the last capacity cannot both pass.
func (p *Provider) reserve(ctx context.Context, from peer.ID, sl SignedLease, state string) (vm.Config, error) {
	return p.reserveFor(ctx, from, sl, state, false)
}

// reserveFor is reserve; with fetch, a missing image is not refused: the store fetches it.
func (p *Provider) reserveFor(ctx context.Context, from peer.ID, sl SignedLease, state string, fetch bool) (vm.Config, error) {
	l := sl.Lease
	switch {
	case l.Provider != p.n.ID():
		return vm.Config{}, fmt.Errorf("%w: the lease names provider %s, this is %s", ErrInvalid, l.Provider, p.n.ID())
	case l.Buyer != from:
		return vm.Config{}, fmt.Errorf("%w: lease of buyer %s sent by %s", ErrForged, l.Buyer, from)
	case len(sl.ProviderSig) > 0:
		return vm.Config{}, fmt.Errorf("%w: a proposal carries no provider signature", ErrInvalid)
	}
	if d := p.now().Sub(l.Created); d > MaxClockSkew || d < -MaxClockSkew {
		return vm.Config{}, fmt.Errorf("%w: lease dated %s, %v from this provider's clock", ErrExpired, l.Created.Format(time.RFC3339), d.Round(time.Second))
	}
	m, err := p.machine(l.Machine)
	if err != nil {
		return vm.Config{}, err
	}
	if l.Terms != m.Terms {
		return vm.Config{}, fmt.Errorf("%w: machine %q now sells at %s per running period and %s per storage period for this configuration; search again and store at the current prices", ErrStale, m.Name, quoteText(m.Terms, l.Config), storageText(m.Terms, l.Config))
	}
	if proc := l.Config.Processor; proc != "" && !strings.EqualFold(proc, m.Processor) {
		return vm.Config{}, fmt.Errorf("%w: configuration wants processor %s, machine %q has %s", ErrInvalid, proc, m.Name, m.Processor)
	}
	cfg := vm.Config{ID: l.VM, Name: l.Config.Name, SpeedBogomips: l.Config.SpeedBogomips, MemoryMB: l.Config.MemoryMB,
		DiskMB: l.Config.DiskMB, Processor: l.Config.Processor, OS: l.Config.OS, MAC: vm.MACFor(l.VM)}
	if l.Config.Image != "" {
		img, ok := p.image(l.Config.Image)
		switch {
		case ok:
			if err := useImage(&cfg, l.Config, img); err != nil {
				return vm.Config{}, err
			}
		case !fetch:
			return vm.Config{}, fmt.Errorf("%w: %s", ErrImageMissing, l.Config.Image)
		}
	}

	if p.opts.Admit != nil {
		if err := p.opts.Admit(ctx, l.Buyer, l.Quote); err != nil {
			return vm.Config{}, err
		}
	}

	need := l.Config.Resources()
	key := leaseKey(l.VM)
	err = p.space.Update(func(tx *node.Txn) error {
		// The record of an ended lease of the VM gives way: a VM comes back after it moved.
		if prev, err := node.GetJSON[LeaseRecord](tx, key); err == nil && prev.State != LeaseStateEnded {
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
		used, mine, held := Resources{}, Resources{}, 0
		for _, pl := range leases {
			if pl.Machine == m.ID && pl.Holds() {
				used = used.Add(pl.Need)
				if pl.Buyer == l.Buyer {
					mine = mine.Add(pl.Need)
				}
			}
			if pl.Buyer == l.Buyer && pl.Holds() {
				held++
			}
			// A lease ID names one agreement: a second proposal under it, for another VM,
			// would make two leases that the ledger cannot tell apart.
			if pl.Lease == l.ID {
				return fmt.Errorf("%w: lease %s", ErrExists, l.ID)
			}
		}
		if free := m.Capacity.Sub(used); !need.Fits(free) {
			return fmt.Errorf("%w on machine %q: free %s, the configuration needs %s", ErrNoCapacity, m.Name, free, need)
		}
		if held >= p.opts.MaxLeasesPerBuyer {
			return fmt.Errorf("%w: it stores at most %d vms per buyer until payments settle", ErrBuyerLimit, p.opts.MaxLeasesPerBuyer)
		}
		if share := m.Capacity.Percent(p.opts.BuyerSharePercent); !mine.Add(need).Fits(share) {
			return fmt.Errorf("%w: one buyer may hold at most %d%% of machine %q (%s) until payments settle", ErrBuyerLimit, p.opts.BuyerSharePercent, m.Name, share)
		}
		return node.PutJSON(tx, key, LeaseRecord{Raw: sl.Encode(), Lease: l.ID, State: state, Machine: m.ID, VM: l.VM, Buyer: l.Buyer, Need: need, Created: p.now()})
	})
	if err != nil {
		return vm.Config{}, err
	}
	return cfg, nil
}

// useImage makes cfg, of configuration c, start from img.
func useImage(cfg *vm.Config, c Configuration, img Image) error {
	if c.DiskMB < img.sizeMB {
		return fmt.Errorf("%w: disk of %d MB smaller than the %d MB image", ErrInvalid, c.DiskMB, img.sizeMB)
	}
	cfg.BaseImage = img.Disk
	if img.Boot != nil {
		boot := *img.Boot
		cfg.Boot = &boot
	}
	return nil
}

// imageToFetch returns where the image of lease l can be fetched from when this provider does
// not hold it (nil when it does, or the configuration has none), or why it cannot be.
func (p *Provider) imageToFetch(l Lease) ([]imageSource, error) {
	if l.Config.Image == "" {
		return nil, nil
	}
	if _, ok := p.image(l.Config.Image); ok {
		return nil, nil
	}
	if p.opts.ImageDir == "" {
		return nil, fmt.Errorf("%w: %s (this provider fetches no images)", ErrImageMissing, l.Config.Image)
	}
	srcs := imageSources(p.book.offers.Signed(p.now(), 1<<30), l.Config.Image, p.n.ID())
	if len(srcs) == 0 {
		return nil, fmt.Errorf("%w: %s, and no provider this provider knows offers it", ErrImageMissing, l.Config.Image)
	}
	if size := srcs[0].info.SizeMB; l.Config.DiskMB < size {
		return nil, fmt.Errorf("%w: disk of %d MB smaller than the %d MB image", ErrInvalid, l.Config.DiskMB, size)
	}
	return srcs, nil
}

// FetchingState is the state of a VM while its provider fetches its OS image (report §6.3.1:
// the preconfigured machine is migrating while it is being stored): one version past
// registered, stored when the image has come.
var FetchingState = vm.State{Status: vm.StatusMigrating, Version: 1, Prior: vm.StatusStored}

func (p *Provider) store(ctx context.Context, from peer.ID, sl SignedLease) (vm.Record, SignedLease, error) {
	l := sl.Lease
	srcs, err := p.imageToFetch(l)
	if err != nil {
		return vm.Record{}, sl, err
	}
	cfg, err := p.reserveFor(ctx, from, sl, LeaseStatePending, srcs != nil)
	if err != nil {
		return vm.Record{}, sl, err
	}
	key := leaseKey(l.VM)
	need := l.Config.Resources()
	release := func() {
		if err := p.space.Delete(key); err != nil {
			p.log.Error("release reservation", "vm", l.VM, "err", err)
		}
	}
	var version uint64
	if srcs != nil {
		img, err := p.fetchImageFor(ctx, sl, srcs)
		if err == nil {
			err = useImage(&cfg, l.Config, img)
		}
		if err != nil {
			release()
			return vm.Record{}, sl, err
		}
		version = FetchingState.Version
	}
	rec, err := p.vms.Create(ctx, vm.CreateRequest{Config: cfg, Owner: l.Buyer.String(), Lease: l.ID.String(), Version: version})
	if err != nil {
		release()
		return vm.Record{}, sl, fmt.Errorf("create vm: %w", err)
	}
	full, err := sl.Countersign(p.n.PrivKey())
	if err == nil {
		err = p.space.Update(func(tx *node.Txn) error {
			// Still pending? A forced removal of the machine may have ended it meanwhile.
			if pl, err := node.GetJSON[LeaseRecord](tx, key); err != nil || pl.State != LeaseStatePending {
				return fmt.Errorf("%w: machine %s was removed while the vm was being created", ErrNotFound, l.Machine)
			}
			return node.PutJSON(tx, key, LeaseRecord{Raw: full.Encode(), Lease: l.ID, State: LeaseStateActive, Machine: l.Machine, VM: l.VM, Buyer: l.Buyer, Need: need, Created: p.now()})
		})
	}
	if err != nil {
		if _, derr := p.vms.Delete(context.WithoutCancel(ctx), l.VM); derr != nil {
			p.log.Error("delete the vm of a failed store", "vm", l.VM, "err", derr)
		}
		release()
		return vm.Record{}, sl, err
	}
	p.log.Info("vm stored", "vm", l.VM, "lease", l.ID, "machine", l.Machine, "buyer", l.Buyer)
	p.n.Events().Publish(LeaseCreated{Lease: full, Time: p.now()})
	p.changed()
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
