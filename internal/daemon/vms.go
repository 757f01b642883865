package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/vsphere"
)

// VMs is a provider node's VM stack (a node.Service): the hypervisor driver its config names
// (QEMU on this machine, whose VMs outlive the node and are re-attached at start, or vSphere),
// the inventory in the node's store, the Manager that enforces the statuses and publishes their
// changes on the node's event stream, and the Manager's local /v1/vms API through which the
// provider tries its hypervisor.
type VMs struct {
	drv     vm.Driver
	close   func() error
	mgr     *vm.Manager
	stop    context.CancelFunc
	stopped chan struct{}
}

// powerCheckInterval is how often the provider looks for VMs whose hypervisor process died, so
// that a crashed VM is recorded stopped (and no longer billed as running) without waiting for
// its owner's next action.
const powerCheckInterval = 5 * time.Second

// newVMs builds the stack of node n from its config; nothing runs until Start.
func newVMs(n *node.Node) (*VMs, error) {
	s := &VMs{}
	var err error
	switch cfg := n.Config().Provider; cfg.Driver {
	case node.DriverVSphere:
		err = s.openVSphere(n, cfg)
	default:
		err = s.openQEMU(n, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("provider: %w", err)
	}
	inv, err := vm.OpenInventory(n.Store().Space("vm/inventory/"))
	if err == nil {
		s.mgr, err = vm.NewManager(vm.ManagerConfig{Driver: s.drv, Inventory: inv, Logger: n.Logger(), Events: n.Events(),
			CacheMB: cacheMB(n.Config().Provider.CacheMB)})
	}
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// cacheMB is the Manager's CacheMB of the config's cache_mb, where 0 keeps no copies.
func cacheMB(mb int64) int64 {
	if mb == 0 {
		return -1
	}
	return mb
}

func (s *VMs) openQEMU(n *node.Node, cfg node.ProviderConfig) error {
	home := n.Home()
	images := home.Path("images")
	if err := os.MkdirAll(images, 0o700); err != nil {
		return fmt.Errorf("images dir: %w", err)
	}
	qc := qemu.DefaultConfig(home.Path("vms"))
	qc.Detach = true // a restarted node re-attaches to its running VMs
	qc.Accel = cfg.Accel
	qc.VNCPorts = qemu.PortRange{First: cfg.VNCPorts[0], Last: cfg.VNCPorts[1]}
	qc.MaxConsoles = cfg.MaxConsoles
	qc.ImageDirs = append([]string{images}, cfg.ImageDirs...)
	qc.Logger = n.Logger()
	drv, err := qemu.New(qc)
	if err != nil {
		return err
	}
	s.drv, s.close = drv, drv.Close
	return nil
}

// vsphereLogin bounds the login to vSphere when the node is built.
const vsphereLogin = 30 * time.Second

func (s *VMs) openVSphere(n *node.Node, cfg node.ProviderConfig) error {
	vc := cfg.VSphere
	u, err := url.Parse(vc.URL)
	if err != nil {
		return fmt.Errorf("provider.vsphere.url: %w", err)
	}
	pw, err := os.ReadFile(vc.PasswordFile)
	if err != nil {
		return fmt.Errorf("vsphere password: %w", err)
	}
	u.User = url.UserPassword(vc.Username, strings.TrimRight(string(pw), "\r\n"))
	c := vsphere.Default()
	c.URL, c.Insecure = u, vc.Insecure
	c.Datacenter, c.Datastore, c.ResourcePool, c.Folder, c.Network = vc.Datacenter, vc.Datastore, vc.ResourcePool, vc.Folder, vc.Network
	c.ConsolePorts = cfg.VNCPorts
	c.Logger = n.Logger()
	ctx, cancel := context.WithTimeout(context.Background(), vsphereLogin)
	defer cancel()
	drv, err := vsphere.New(ctx, c)
	if err != nil {
		return err
	}
	s.drv = drv
	s.close = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return drv.Close(ctx)
	}
	return nil
}

// Driver is the provider's hypervisor driver.
func (s *VMs) Driver() vm.Driver { return s.drv }

// Manager is the provider's VM manager.
func (s *VMs) Manager() *vm.Manager { return s.mgr }

// Start re-attaches to the VMs of the inventory, adds the /v1/vms API and watches the VMs'
// power.
func (s *VMs) Start(ctx context.Context, n *node.Node) error {
	if recs, err := s.mgr.Reconcile(ctx); err != nil {
		n.Logger().Warn("re-attaching VMs", "err", err)
	} else if len(recs) > 0 {
		n.Logger().Info("re-attached VMs", "count", len(recs))
	}
	s.mgr.Routes(n.API())
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop, s.stopped = stop, make(chan struct{})
	go s.watchPower(wctx, n)
	return nil
}

func (s *VMs) watchPower(ctx context.Context, n *node.Node) {
	defer close(s.stopped)
	t := time.NewTicker(powerCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := s.mgr.CheckPower(ctx)
		if err != nil && ctx.Err() == nil {
			n.Logger().Warn("checking VM power", "err", err)
		}
		for _, r := range changed {
			n.Logger().Warn("vm found off: its hypervisor process is gone", "vm", r.ID, "status", r.State.Status)
		}
	}
}

// StopAll stops every running VM; a provider leaving the marketplace for good (the demo) calls
// it before Close.
func (s *VMs) StopAll(ctx context.Context) error {
	var errs []error
	for _, r := range s.mgr.List() {
		if r.State.Status == vm.StatusStarted {
			if _, err := s.mgr.Stop(ctx, r.ID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Close leaves the VMs running (they are re-attached at the next start) and releases the
// driver.
func (s *VMs) Close() error {
	if s.stop != nil {
		s.stop()
		<-s.stopped
	}
	return s.close()
}
