package vsphere

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path"
	"sync"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/session/keepalive"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/virtuoso-market/virtuoso/vm"
)

// Name is the driver's name in configuration and logs.
const Name = "vsphere"

// ExtraConfig keys the driver writes into each VM.
const (
	keyID     = "virtuoso.id"
	keyConfig = "virtuoso.config"
)

var (
	_ vm.Driver        = (*Driver)(nil)
	_ vm.Reattacher    = (*Driver)(nil)
	_ vm.HostDescriber = (*Driver)(nil)
)

// Driver runs VMs on vSphere. Create it with New and Close it when done.
type Driver struct {
	cfg    Config
	log    *slog.Logger
	client *vim25.Client
	keep   *keepalive.HandlerSOAP
	sm     *session.Manager

	dc     *object.Datacenter
	ds     *object.Datastore
	pool   *object.ResourcePool
	folder *object.Folder
	net    object.NetworkReference
	search *object.SearchIndex
	files  *object.FileManager

	consoles consoleSlots
}

// New logs in to vSphere and finds the inventory objects cfg names. Unset settings take their
// defaults (see Default).
func New(ctx context.Context, cfg Config) (*Driver, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ConsoleHost == "" {
		cfg.ConsoleHost = cfg.URL.Hostname()
	}
	d := &Driver{cfg: cfg, log: cfg.Logger.With("driver", Name)}
	d.consoles.init(cfg.ConsolePorts[0], cfg.ConsolePorts[1])

	soapClient := soap.NewClient(cfg.URL, cfg.Insecure)
	c, err := vim25.NewClient(ctx, soapClient)
	if err != nil {
		return nil, fmt.Errorf("connect to vsphere at %s: %w: %w", redact(cfg.URL), vm.ErrHypervisor, err)
	}
	// Keep the session alive between a node's rare calls; the keep-alive goroutine stops on
	// Logout, which Close does.
	d.keep = keepalive.NewHandlerSOAP(c.RoundTripper, 0, nil)
	c.RoundTripper = d.keep
	d.client = c
	d.sm = session.NewManager(c)
	if err := d.sm.Login(ctx, cfg.URL.User); err != nil {
		return nil, fmt.Errorf("log in to vsphere at %s: %w: %w", redact(cfg.URL), vm.ErrHypervisor, err)
	}
	if err := d.resolve(ctx); err != nil {
		d.Close(ctx)
		return nil, err
	}
	return d, nil
}

// Close logs out, which also stops the session keep-alive.
func (d *Driver) Close(ctx context.Context) error {
	err := d.sm.Logout(ctx)
	d.keep.Stop()
	if err != nil {
		return fmt.Errorf("log out of vsphere: %w", err)
	}
	return nil
}

// Name is "vsphere".
func (d *Driver) Name() string { return Name }

// resolve finds the datacenter, datastore, pool, folder and network once, so that every later
// call works on references instead of inventory paths.
func (d *Driver) resolve(ctx context.Context) error {
	f := find.NewFinder(d.client, false)
	var err error
	if d.dc, err = f.DatacenterOrDefault(ctx, d.cfg.Datacenter); err != nil {
		return inventoryError("datacenter", d.cfg.Datacenter, err)
	}
	f.SetDatacenter(d.dc)
	if d.ds, err = f.DatastoreOrDefault(ctx, d.cfg.Datastore); err != nil {
		return inventoryError("datastore", d.cfg.Datastore, err)
	}
	if d.pool, err = d.resourcePool(ctx, f); err != nil {
		return err
	}
	if d.cfg.Folder != "" {
		d.folder, err = f.Folder(ctx, d.cfg.Folder)
	} else {
		var folders *object.DatacenterFolders
		if folders, err = d.dc.Folders(ctx); err == nil {
			d.folder = folders.VmFolder
		}
	}
	if err != nil {
		return inventoryError("folder", d.cfg.Folder, err)
	}
	if d.net, err = f.Network(ctx, d.cfg.Network); err != nil {
		return inventoryError("network", d.cfg.Network, err)
	}
	d.search = object.NewSearchIndex(d.client)
	d.files = object.NewFileManager(d.client)
	return nil
}

// resourcePool takes the configured pool, else the only root pool ("*/Resources"): a vCenter
// with standalone hosts and clusters has several, and then the operator has to choose.
func (d *Driver) resourcePool(ctx context.Context, f *find.Finder) (*object.ResourcePool, error) {
	if d.cfg.ResourcePool != "" {
		p, err := f.ResourcePool(ctx, d.cfg.ResourcePool)
		if err != nil {
			return nil, inventoryError("resource pool", d.cfg.ResourcePool, err)
		}
		return p, nil
	}
	pools, err := f.ResourcePoolList(ctx, "*/Resources")
	if err != nil {
		return nil, inventoryError("resource pool", "*/Resources", err)
	}
	if len(pools) != 1 {
		var names []string
		for _, p := range pools {
			names = append(names, p.InventoryPath)
		}
		return nil, fmt.Errorf("vsphere resource pool: %d candidates %v: set ResourcePool to one of them", len(pools), names)
	}
	return pools[0], nil
}

func inventoryError(kind, name string, err error) error {
	if name == "" {
		name = "(default)"
	}
	return fmt.Errorf("vsphere %s %s: %w: %w", kind, name, vm.ErrHypervisor, err)
}

// redact drops the password from a URL for messages.
func redact(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

// vmName is the VM's name and the name of its datastore directory.
func (d *Driver) vmName(id vm.ID) string { return d.cfg.NamePrefix + id.String() }

// vmDir is the datastore path of the VM's directory.
func (d *Driver) vmDir(id vm.ID) string { return d.ds.Path(d.vmName(id)) }

// vmxPath is the datastore path of the VM's configuration file.
func (d *Driver) vmxPath(id vm.ID) string {
	return d.ds.Path(path.Join(d.vmName(id), d.vmName(id)+".vmx"))
}

// find returns the registered VM with the marketplace ID: by instanceUuid, else by the path of
// its configuration file (a VM registered by hand gets a new instanceUuid).
func (d *Driver) find(ctx context.Context, id vm.ID) (*object.VirtualMachine, error) {
	instance := true
	ref, err := d.search.FindByUuid(ctx, d.dc, id.String(), true, &instance)
	if err == nil && ref == nil {
		ref, err = d.search.FindByDatastorePath(ctx, d.dc, d.vmxPath(id))
	}
	if err != nil {
		return nil, fmt.Errorf("find vm %s: %w: %w", id, vm.ErrHypervisor, err)
	}
	if ref == nil {
		return nil, fmt.Errorf("vm %s: %w on vsphere", id, vm.ErrNotFound)
	}
	v, ok := ref.(*object.VirtualMachine)
	if !ok {
		return nil, fmt.Errorf("vm %s: %w: found a %T", id, vm.ErrHypervisor, ref)
	}
	return v, nil
}

// props reads the named properties of a VM.
func (d *Driver) props(ctx context.Context, v *object.VirtualMachine, names ...string) (mo.VirtualMachine, error) {
	var m mo.VirtualMachine
	if err := v.Properties(ctx, v.Reference(), names, &m); err != nil {
		return m, fmt.Errorf("read %v of %s: %w: %w", names, v.Reference().Value, vm.ErrHypervisor, err)
	}
	return m, nil
}

// runTask waits for a task and wraps its failure.
func runTask(ctx context.Context, what string, task *object.Task, err error) (types.AnyType, error) {
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", what, vm.ErrHypervisor, err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		// A task's fault says only its type; the file a file fault is about helps an operator.
		var ff types.BaseFileFault
		if _, ok := fault.As(err, &ff); ok && ff.GetFileFault().File != "" {
			return nil, fmt.Errorf("%s: %w: %w (%s)", what, vm.ErrHypervisor, err, ff.GetFileFault().File)
		}
		return nil, fmt.Errorf("%s: %w: %w", what, vm.ErrHypervisor, err)
	}
	return info.Result, nil
}

// isFault reports whether err carries a vSphere fault of target's type.
func isFault(err error, target types.BaseMethodFault) bool {
	return err != nil && fault.Is(err, target)
}

// extraConfig turns ExtraConfig options into a map.
func extraConfig(opts []types.BaseOptionValue) map[string]string {
	m := make(map[string]string, len(opts))
	for _, o := range opts {
		if v := o.GetOptionValue(); v != nil {
			if s, ok := v.Value.(string); ok {
				m[v.Key] = s
			}
		}
	}
	return m
}

// ctxErr puts the context's error first when the context ended, so that callers can test for
// context.Canceled or context.DeadlineExceeded.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}

// consoleSlots hands out VNC ports, one per VM with an open console (the report's
// vm_port_list).
type consoleSlots struct {
	mu     sync.Mutex
	lo, hi int
	byVM   map[vm.ID]int
	used   map[int]vm.ID
}

func (s *consoleSlots) init(lo, hi int) {
	s.lo, s.hi = lo, hi
	s.byVM = map[vm.ID]int{}
	s.used = map[int]vm.ID{}
}

// acquire returns the VM's port, taking the lowest free one if it has none; fresh says whether
// it was taken now.
func (s *consoleSlots) acquire(id vm.ID) (port int, fresh bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.byVM[id]; ok {
		return p, false, nil
	}
	for p := s.lo; p <= s.hi; p++ {
		if _, taken := s.used[p]; !taken {
			s.byVM[id], s.used[p] = p, id
			return p, true, nil
		}
	}
	return 0, false, fmt.Errorf("console for vm %s: %w (ports %d-%d)", id, vm.ErrConsoleBusy, s.lo, s.hi)
}

// claim records a port found in a VM's configuration after a restart; false if another VM
// holds it already.
func (s *consoleSlots) claim(id vm.ID, port int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if port < s.lo || port > s.hi {
		return false
	}
	if other, taken := s.used[port]; taken {
		return other == id
	}
	if old, ok := s.byVM[id]; ok {
		delete(s.used, old)
	}
	s.byVM[id], s.used[port] = port, id
	return true
}

func (s *consoleSlots) release(id vm.ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.byVM[id]; ok {
		delete(s.used, p)
		delete(s.byVM, id)
	}
}
