package market

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Lease states on the buyer.
const (
	// LeasePending: the store request got no clear answer; the node asks the provider again
	// until it answers with the lease (then active) or without it (then the record goes).
	LeasePending = "pending"
	LeaseActive  = "active"
	LeaseEnded   = "ended"
)

// buyerLease is the buyer's record of a lease, under lease/<vm id>.
type buyerLease struct {
	Raw     []byte    `json:"raw"`
	State   string    `json:"state"`
	VM      vm.State  `json:"vm_state"`
	Note    string    `json:"note,omitempty"`
	Addrs   []string  `json:"addrs,omitempty"` // the provider's addresses from its offer
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Tried   time.Time `json:"tried,omitzero"` // last recovery attempt of a pending lease
}

// VM is one of the buyer's VMs, wherever it is stored.
type VM struct {
	ID         vm.ID         `json:"id"`
	Lease      LeaseID       `json:"lease"`
	Provider   peer.ID       `json:"provider"`
	Machine    MachineID     `json:"machine"`
	Config     Configuration `json:"config"`
	Terms      Terms         `json:"terms"`
	Quote      Quote         `json:"quote"`
	LeaseState string        `json:"lease_state"`
	State      vm.State      `json:"state"`
	Actions    []string      `json:"actions"` // control actions the status allows
	Note       string        `json:"note,omitempty"`
	Created    time.Time     `json:"created"`
	Updated    time.Time     `json:"updated"`
}

func (bl buyerLease) view() (VM, error) {
	sl, err := DecodeLease(bl.Raw)
	if err != nil {
		return VM{}, err
	}
	v := VM{ID: sl.VM, Lease: sl.ID, Provider: sl.Provider, Machine: sl.Machine, Config: sl.Config, Terms: sl.Terms,
		Quote: sl.Quote, LeaseState: bl.State, State: bl.VM, Note: bl.Note, Created: bl.Created, Updated: bl.Updated, Actions: []string{}}
	if bl.State == LeaseActive {
		v.Actions = controlActionsIn(bl.VM.Status)
	}
	return v, nil
}

// controlActionsIn lists the control actions legal in status st.
func controlActionsIn(st vm.Status) []string {
	out := []string{ActStatus}
	for _, a := range vm.Actions(st) {
		switch a {
		case vm.ActionStart:
			out = append(out, ActStart)
		case vm.ActionStop:
			out = append(out, ActStop)
		case vm.ActionSuspend:
			out = append(out, ActSuspend)
		case vm.ActionResume:
			out = append(out, ActResume)
		case vm.ActionView:
			out = append(out, ActConsole)
		case vm.ActionDelete:
			out = append(out, ActDelete)
		}
	}
	return out
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

// resolve returns the request's configuration.
func (s *Service) resolve(c *Configuration, name string, e ConfigEdit) (Configuration, error) {
	var cfg Configuration
	switch {
	case c != nil:
		cfg = *c
	case name != "":
		var err error
		if cfg, err = s.Config(name); err != nil {
			return cfg, err
		}
	default:
		return cfg, fmt.Errorf("%w: give a configuration or a configuration name (see `virtuoso configs`)", ErrInvalid)
	}
	cfg = e.Apply(cfg)
	if cfg.Processor == "" {
		cfg.Processor = defaultProcessor
	}
	return cfg, cfg.Validate()
}

// findOffer returns the live offer of a machine.
func (s *Service) findOffer(provider string, machine MachineID) (SignedOffer, error) {
	now := s.now()
	if provider != "" {
		p, err := peer.Decode(provider)
		if err != nil {
			return SignedOffer{}, fmt.Errorf("%w: provider %q is not a peer id", ErrInvalid, truncate(provider))
		}
		if so, ok := s.book.Get(p, machine, now); ok {
			return so, nil
		}
		return SignedOffer{}, fmt.Errorf("%w: no live offer of machine %s from %s; search again", ErrNotFound, machine, p.ShortString())
	}
	var found []SignedOffer
	for _, so := range s.book.Signed(now, 1<<30) {
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
func (s *Service) Store(ctx context.Context, req StoreRequest) (VM, error) {
	cfg, err := s.resolve(req.Config, req.ConfigName, req.Edit)
	if err != nil {
		return VM{}, err
	}
	offer, err := s.findOffer(req.Provider, req.Machine)
	if err != nil {
		return VM{}, err
	}
	if offer.Provider == s.n.ID() {
		return VM{}, fmt.Errorf("%w: a node cannot buy from itself", ErrInvalid)
	}
	if !Hosts(offer.Offer, cfg, cfg.Processor) {
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
	sl, err := ProposeLease(Lease{ID: NewLeaseID(), VM: vm.NewID(), Buyer: s.n.ID(), Provider: offer.Provider,
		Machine: offer.Machine, Config: cfg, Terms: terms, Quote: q, Created: s.now().Truncate(time.Millisecond)}, s.n.PrivKey())
	if err != nil {
		return VM{}, err
	}
	key := "lease/" + sl.VM.String()
	bl := buyerLease{Raw: sl.Encode(), State: LeasePending, Addrs: offer.Addrs, Created: s.now(), Updated: s.now()}
	if err := node.PutJSON(s.buyerSpace, key, bl); err != nil {
		return VM{}, err
	}
	p := peerAddr{offer.Provider, offer.Addrs}
	var resp storeResponse
	err = s.request(ctx, p, StoreID, s.opts.StoreTimeout, storeRequest{Lease: sl.Encode()}, &resp)
	if err != nil {
		// No clear answer: the provider may or may not have stored the VM. Ask once now; the
		// housekeeping loop keeps asking while the lease stays pending.
		if v, rerr := s.recoverLease(ctx, sl.VM); rerr == nil {
			return v, nil
		}
		s.notePending(key, err)
		return VM{}, fmt.Errorf("store on %s: %w (the store is pending: `virtuoso vm ls` shows whether the provider stored it)", p.id.ShortString(), err)
	}
	if resp.Error != nil {
		s.buyerSpace.Delete(key)
		return VM{}, fmt.Errorf("provider %s refused the store: %w", p.id.ShortString(), resp.Error.err())
	}
	full, err := DecodeLease(resp.Lease)
	if err == nil && (!full.Complete() || !bytes.Equal(full.Body, sl.Body)) {
		err = fmt.Errorf("%w: the provider answered with another lease", ErrForged)
	}
	if err != nil {
		s.notePending(key, err)
		return VM{}, fmt.Errorf("store on %s: bad answer: %w", p.id.ShortString(), err)
	}
	bl.Raw, bl.State, bl.VM, bl.Updated = full.Encode(), LeaseActive, resp.State, s.now()
	if err := node.PutJSON(s.buyerSpace, key, bl); err != nil {
		return VM{}, err
	}
	s.log.Info("vm stored", "vm", sl.VM, "lease", sl.ID, "peer", p.id, "machine", sl.Machine)
	return bl.view()
}

func (s *Service) notePending(key string, cause error) {
	s.buyerSpace.Update(func(tx *node.Txn) error {
		bl, err := node.GetJSON[buyerLease](tx, key)
		if err != nil {
			return err
		}
		bl.Note = "no clear answer from the provider: " + cause.Error()
		bl.Updated, bl.Tried = s.now(), s.now()
		return node.PutJSON(tx, key, bl)
	})
}

// recoverLease asks the provider of a pending lease whether it stored the VM: if it answers
// with the countersigned lease, the lease becomes active; if it does not know the VM, the
// pending record goes.
func (s *Service) recoverLease(ctx context.Context, id vm.ID) (VM, error) {
	key := "lease/" + id.String()
	bl, err := node.GetJSON[buyerLease](s.buyerSpace, key)
	if err != nil {
		return VM{}, err
	}
	sl, err := DecodeLease(bl.Raw)
	if err != nil {
		return VM{}, err
	}
	var resp controlResponse
	err = s.request(ctx, peerAddr{sl.Provider, bl.Addrs}, ControlID, 15*time.Second, controlRequest{VM: id, Action: ActStatus}, &resp)
	if err == nil && resp.Error != nil {
		err = resp.Error.err()
	}
	if errors.Is(err, ErrNotFound) {
		s.buyerSpace.Delete(key)
		return VM{}, fmt.Errorf("provider %s did not store vm %s: %w", sl.Provider.ShortString(), id, err)
	}
	if err != nil {
		return VM{}, err
	}
	full, err := DecodeLease(resp.Lease)
	if err != nil || !full.Complete() || !bytes.Equal(full.Body, sl.Body) {
		return VM{}, fmt.Errorf("%w: provider answered with another lease", ErrForged)
	}
	bl.Raw, bl.State, bl.VM, bl.Note, bl.Updated = full.Encode(), LeaseActive, resp.State, "", s.now()
	if err := node.PutJSON(s.buyerSpace, key, bl); err != nil {
		return VM{}, err
	}
	s.log.Info("pending store confirmed by the provider", "vm", id, "lease", sl.ID)
	return bl.view()
}

// pendingGiveUp is how long a pending store is retried before it is dropped.
const pendingGiveUp = time.Hour

// retryPending asks again about pending stores, at most once a minute each.
func (s *Service) retryPending(ctx context.Context) {
	var pending []buyerLease
	s.buyerSpace.List(func(_ string, val []byte) error {
		var bl buyerLease
		if json.Unmarshal(val, &bl) == nil && bl.State == LeasePending && time.Since(bl.Tried) > time.Minute {
			pending = append(pending, bl)
		}
		return nil
	})
	for _, bl := range pending {
		sl, err := DecodeLease(bl.Raw)
		if err != nil {
			continue
		}
		key := "lease/" + sl.VM.String()
		if _, err := s.recoverLease(ctx, sl.VM); err != nil && !errors.Is(err, ErrNotFound) {
			if time.Since(bl.Created) > pendingGiveUp {
				s.log.Warn("giving up on a store the provider never confirmed", "vm", sl.VM, "peer", sl.Provider)
				s.buyerSpace.Delete(key)
				continue
			}
			s.notePending(key, err)
		}
	}
}

// VMs lists the buyer's VMs. With refresh, each active one's status is asked of its provider
// first (in parallel, briefly); a provider that does not answer leaves the last known status.
func (s *Service) VMs(ctx context.Context, refresh bool) ([]VM, error) {
	var out []VM
	err := s.buyerSpace.List(func(key string, val []byte) error {
		var bl buyerLease
		if err := json.Unmarshal(val, &bl); err != nil {
			return fmt.Errorf("lease record %s: %w", key, err)
		}
		v, err := bl.view()
		if err != nil {
			return nil
		}
		out = append(out, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if refresh {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for i := range out {
			if out[i].LeaseState != LeaseActive {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if v, err := s.Control(ctx, out[i].ID, ActStatus); err == nil {
					out[i] = v
				}
			}()
		}
		wg.Wait()
	}
	slices.SortFunc(out, func(a, b VM) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// FindVM resolves a VM ID or a unique prefix of one among the buyer's VMs.
func (s *Service) FindVM(text string) (vm.ID, error) {
	if id, err := vm.ParseID(text); err == nil {
		return id, nil
	}
	prefix := strings.ToLower(strings.ReplaceAll(text, "-", ""))
	if prefix == "" {
		return vm.ID{}, fmt.Errorf("%w: empty vm id", ErrInvalid)
	}
	var found []vm.ID
	s.buyerSpace.List(func(key string, _ []byte) error {
		if id, err := vm.ParseID(strings.TrimPrefix(key, "lease/")); err == nil &&
			strings.HasPrefix(strings.ReplaceAll(id.String(), "-", ""), prefix) {
			found = append(found, id)
		}
		return nil
	})
	switch len(found) {
	case 0:
		return vm.ID{}, fmt.Errorf("%w: no vm of yours starts with %q (see `virtuoso vm ls`)", ErrNotFound, truncate(text))
	case 1:
		return found[0], nil
	}
	return vm.ID{}, fmt.Errorf("%w: %q matches %d of your vms; give more of the id", ErrInvalid, truncate(text), len(found))
}

// Control asks the provider of the buyer's VM id to perform action (start, stop, suspend,
// resume, status, delete; console through Console). The provider checks ownership and status.
func (s *Service) Control(ctx context.Context, id vm.ID, action string) (VM, error) {
	v, _, err := s.control(ctx, id, action)
	return v, err
}

func (s *Service) control(ctx context.Context, id vm.ID, action string) (VM, controlResponse, error) {
	if !slices.Contains(ControlActions(), action) {
		return VM{}, controlResponse{}, fmt.Errorf("%w: unknown action %q: use one of %s", ErrInvalid, truncate(action), strings.Join(ControlActions(), ", "))
	}
	key := "lease/" + id.String()
	bl, err := node.GetJSON[buyerLease](s.buyerSpace, key)
	if errors.Is(err, node.ErrNotFound) {
		return VM{}, controlResponse{}, fmt.Errorf("%w: you have no vm %s (see `virtuoso vm ls`)", ErrNotFound, id)
	}
	if err != nil {
		return VM{}, controlResponse{}, err
	}
	if bl.State != LeaseActive {
		v, _ := bl.view()
		return v, controlResponse{}, fmt.Errorf("%w: the lease of vm %s is %s %s", ErrNotFound, id, bl.State, bl.Note)
	}
	sl, err := DecodeLease(bl.Raw)
	if err != nil {
		return VM{}, controlResponse{}, err
	}
	var resp controlResponse
	err = s.request(ctx, peerAddr{sl.Provider, bl.Addrs}, ControlID, s.opts.ControlTimeout, controlRequest{VM: id, Action: action}, &resp)
	if err == nil && resp.Error != nil {
		err = resp.Error.err()
	}
	if resp.State.Status.Valid() {
		bl.VM = resp.State
	}
	if action == ActStop || action == ActSuspend || action == ActDelete {
		s.closeTunnel(id)
	}
	if err == nil && action == ActDelete {
		bl.State, bl.Note = LeaseEnded, "deleted"
	}
	if resp.State.Status.Valid() || err == nil {
		bl.Updated = s.now()
		node.PutJSON(s.buyerSpace, key, bl)
	}
	v, verr := bl.view()
	if err != nil {
		return v, resp, fmt.Errorf("%s vm %s on %s: %w", action, id, sl.Provider.ShortString(), err)
	}
	return v, resp, verr
}

// ConsoleSession is where the buyer's VNC viewer connects: a port on the buyer's own loopback
// that tunnels to the provider's console of the VM, and the session's one-time password.
type ConsoleSession struct {
	VM       VM     `json:"vm"`
	Addr     string `json:"addr"`
	Password string `json:"password"`
}

// Console opens a console session on the buyer's running VM: the provider sets a new
// one-time VNC password, and the node listens on a loopback port whose connections it tunnels
// over /virtuoso/console/1.0.0.
func (s *Service) Console(ctx context.Context, id vm.ID) (ConsoleSession, error) {
	v, resp, err := s.control(ctx, id, ActConsole)
	if err != nil {
		return ConsoleSession{}, err
	}
	bl, err := node.GetJSON[buyerLease](s.buyerSpace, "lease/"+id.String())
	if err != nil {
		return ConsoleSession{}, err
	}
	t, err := s.openTunnel(id, peerAddr{v.Provider, bl.Addrs})
	if err != nil {
		return ConsoleSession{}, err
	}
	return ConsoleSession{VM: v, Addr: t.ln.Addr().String(), Password: resp.Password}, nil
}

// tunnel is a buyer-side console listener of one VM.
type tunnel struct {
	ln       net.Listener
	vm       vm.ID
	provider peerAddr

	mu     sync.Mutex
	conns  map[net.Conn]bool
	last   time.Time
	closed bool
}

func (t *tunnel) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	t.ln.Close()
	for c := range t.conns {
		c.Close()
	}
}

func (s *Service) openTunnel(id vm.ID, p peerAddr) (*tunnel, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("console listener: %w", err)
	}
	t := &tunnel{ln: ln, vm: id, provider: p, conns: map[net.Conn]bool{}, last: time.Now()}
	s.mu.Lock()
	if old := s.tunnels[id]; old != nil {
		old.close()
	}
	s.tunnels[id] = t
	s.mu.Unlock()
	s.group.Go(func() error {
		for {
			c, err := ln.Accept()
			if err != nil {
				return nil
			}
			t.mu.Lock()
			if t.closed {
				t.mu.Unlock()
				c.Close()
				return nil
			}
			t.conns[c] = true
			t.last = time.Now()
			t.mu.Unlock()
			s.group.Go(func() error {
				defer func() {
					c.Close()
					t.mu.Lock()
					delete(t.conns, c)
					t.last = time.Now()
					t.mu.Unlock()
				}()
				if err := s.tunnelConn(t, c); err != nil {
					s.log.Debug("console tunnel", "vm", id, "err", err)
				}
				return nil
			})
		}
	})
	return t, nil
}

// tunnelConn carries one viewer connection to the provider.
func (s *Service) tunnelConn(t *tunnel, c net.Conn) error {
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	st, err := s.open(ctx, t.provider, ConsoleID)
	cancel()
	if err != nil {
		return err
	}
	st.SetDeadline(time.Now().Add(30 * time.Second))
	if err := writeJSON(st, consoleRequest{VM: t.vm}); err != nil {
		st.Reset()
		return err
	}
	r := bufio.NewReader(st)
	var resp consoleResponse
	if err := readJSON(r, &resp); err != nil {
		st.Reset()
		return err
	}
	if resp.Error != nil {
		st.Reset()
		return resp.Error.err()
	}
	if err := pipe(s.ctx, st, r, c); err != nil {
		st.Reset()
		return err
	}
	st.Close()
	return nil
}

func (s *Service) closeTunnel(id vm.ID) {
	s.mu.Lock()
	t := s.tunnels[id]
	delete(s.tunnels, id)
	s.mu.Unlock()
	if t != nil {
		t.close()
	}
}

// closeIdleTunnels closes tunnels nobody used for ConsoleIdle.
func (s *Service) closeIdleTunnels() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, t := range s.tunnels {
		t.mu.Lock()
		idle := len(t.conns) == 0 && time.Since(t.last) > s.opts.ConsoleIdle
		t.mu.Unlock()
		if idle {
			t.close()
			delete(s.tunnels, id)
		}
	}
}

// handleNotice records a provider's notice that a lease ended.
func (s *Service) handleNotice(_ context.Context, st network.Stream, r *bufio.Reader) error {
	b, err := readFrame(r, 4096)
	if err != nil {
		return err
	}
	n, err := decodeNotice(b)
	if err != nil {
		return err
	}
	key := "lease/" + n.VM.String()
	from := st.Conn().RemotePeer()
	return s.buyerSpace.Update(func(tx *node.Txn) error {
		bl, err := node.GetJSON[buyerLease](tx, key)
		if err != nil {
			return err
		}
		sl, err := DecodeLease(bl.Raw)
		if err != nil {
			return err
		}
		if sl.Provider != from || sl.ID != n.Lease {
			return fmt.Errorf("%w: notice about vm %s from %s, not its provider", ErrNotOwner, n.VM, from)
		}
		bl.State, bl.Note, bl.Updated = LeaseEnded, n.Reason, s.now()
		bl.VM = vm.State{Status: vm.StatusDeleted, Version: bl.VM.Version + 1}
		s.log.Warn("lease ended by the provider", "vm", n.VM, "lease", n.Lease, "peer", from, "reason", n.Reason)
		return node.PutJSON(tx, key, bl)
	})
}

// ConfigView is a catalog entry with its market average.
type ConfigView struct {
	Configuration
	Preconfigured bool           `json:"preconfigured"`
	Own           bool           `json:"own,omitempty"` // added by this buyer
	Average       *ConfigAverage `json:"average,omitempty"`
}

// Configs lists the catalog: standard configurations, the preconfigured ones of the images in
// live offers, and the buyer's own, each with its market average.
func (s *Service) Configs() ([]ConfigView, error) {
	own, err := s.ownConfigs()
	if err != nil {
		return nil, err
	}
	cat := catalog(own, s.book.Live(s.now()))
	out := make([]ConfigView, len(cat))
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, c := range cat {
		out[i] = ConfigView{Configuration: c, Preconfigured: c.Preconfigured(),
			Own: slices.ContainsFunc(own, func(o Configuration) bool { return o.Name == c.Name })}
		if a, ok := s.avgs[c.Name]; ok {
			out[i].Average = &a
		}
	}
	return out, nil
}

// Config returns the catalog's configuration called name.
func (s *Service) Config(name string) (Configuration, error) {
	own, err := s.ownConfigs()
	if err != nil {
		return Configuration{}, err
	}
	for _, c := range catalog(own, s.book.Live(s.now())) {
		if c.Name == name {
			return c, nil
		}
	}
	return Configuration{}, fmt.Errorf("%w: no configuration %q (see `virtuoso configs`)", ErrNotFound, truncate(name))
}

// AddConfig keeps an edited configuration in the buyer's catalog under its own name.
func (s *Service) AddConfig(c Configuration) (Configuration, error) {
	if c.Processor == "" {
		c.Processor = defaultProcessor
	}
	if err := c.Validate(); err != nil {
		return c, err
	}
	if slices.ContainsFunc(StandardConfigs(), func(sc Configuration) bool { return sc.Name == c.Name }) {
		return c, fmt.Errorf("%w: %q is a standard configuration; give the edited one another name", ErrExists, c.Name)
	}
	return c, node.PutJSON(s.cfgSpace, c.Name, c)
}

func (s *Service) ownConfigs() ([]Configuration, error) {
	var out []Configuration
	err := s.cfgSpace.List(func(key string, val []byte) error {
		var c Configuration
		if err := json.Unmarshal(val, &c); err != nil {
			return fmt.Errorf("configuration %s: %w", key, err)
		}
		out = append(out, c)
		return nil
	})
	return out, err
}

// Offers lists the live offers of the book.
func (s *Service) Offers() []Offer { return s.book.Live(s.now()) }

// SearchQuery is a search by configuration name (with edits) or by full configuration.
type SearchQuery struct {
	ConfigName string     `json:"config_name,omitempty"`
	Edit       ConfigEdit `json:"edit"`
	SearchRequest
}

// Search finds the providers that can host a configuration, cheapest first.
func (s *Service) Search(q SearchQuery) ([]Match, error) {
	req := q.SearchRequest
	var c *Configuration
	if q.ConfigName == "" {
		c = &req.Config
	}
	cfg, err := s.resolve(c, q.ConfigName, q.Edit)
	if err != nil {
		return nil, err
	}
	req.Config = cfg
	out, err := s.book.Search(s.now(), req)
	if err != nil {
		return nil, err
	}
	self := s.n.ID()
	return slices.DeleteFunc(out, func(m Match) bool { return m.Provider == self }), nil
}

// sortConfigs orders averages like the catalog.
func sortConfigs(cat []Configuration, avgs map[string]ConfigAverage) []ConfigAverage {
	out := make([]ConfigAverage, 0, len(cat))
	for _, c := range cat {
		if a, ok := avgs[c.Name]; ok {
			out = append(out, a)
		}
	}
	return out
}
