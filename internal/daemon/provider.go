package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
)

// Provider is a provider node's VM stack: the QEMU driver (its VMs outlive the node and are
// re-attached at start), the inventory in the node's store, the Manager that enforces the
// statuses, and the local /v1/vms API through which the provider tries its hypervisor.
type Provider struct {
	drv     *qemu.Driver
	mgr     *vm.Manager
	stop    context.CancelFunc
	stopped chan struct{}
}

// powerCheckInterval is how often the provider looks for VMs whose hypervisor process died, so
// that a crashed VM is recorded stopped (and no longer billed as running) without waiting for
// its owner's next action.
const powerCheckInterval = 5 * time.Second

// Driver is the provider's hypervisor driver; nil before Start.
func (p *Provider) Driver() *qemu.Driver { return p.drv }

// Manager is the provider's VM manager; nil before Start.
func (p *Provider) Manager() *vm.Manager { return p.mgr }

// Start opens the stack and re-attaches to the VMs of the inventory.
func (p *Provider) Start(ctx context.Context, n *node.Node) error {
	home, cfg := n.Home(), n.Config().Provider
	images := home.Path("images")
	if err := os.MkdirAll(images, 0o700); err != nil {
		return fmt.Errorf("provider images dir: %w", err)
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
		return fmt.Errorf("provider: %w", err)
	}
	inv, err := vm.OpenInventory(n.Store().Space("vm/inventory/"))
	if err != nil {
		drv.Close()
		return err
	}
	mgr, err := vm.NewManager(vm.ManagerConfig{Driver: drv, Inventory: inv, Logger: n.Logger()})
	if err != nil {
		drv.Close()
		return err
	}
	p.drv, p.mgr = drv, mgr
	if recs, err := mgr.Reconcile(ctx); err != nil {
		n.Logger().Warn("re-attaching VMs", "err", err)
	} else if len(recs) > 0 {
		n.Logger().Info("re-attached VMs", "count", len(recs))
	}
	api := n.API()
	api.Route("GET /v1/vms", func(*http.Request) (any, error) { return mgr.List(), nil })
	api.Route("POST /v1/vms", p.create)
	api.Route("GET /v1/vms/{id}", func(r *http.Request) (any, error) {
		id, err := pathID(r)
		if err != nil {
			return nil, err
		}
		return answer(mgr.Get(id))
	})
	api.Route("POST /v1/vms/{id}/{action}", p.act)

	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	p.stop, p.stopped = stop, make(chan struct{})
	go p.watchPower(wctx, n)
	return nil
}

func (p *Provider) watchPower(ctx context.Context, n *node.Node) {
	defer close(p.stopped)
	t := time.NewTicker(powerCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := p.mgr.CheckPower(ctx)
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
func (p *Provider) StopAll(ctx context.Context) error {
	if p.mgr == nil {
		return nil
	}
	var errs []error
	for _, r := range p.mgr.List() {
		if r.State.Status == vm.StatusStarted {
			if _, err := p.mgr.Stop(ctx, r.ID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Close leaves the VMs running (they are re-attached at the next start) and releases the
// driver.
func (p *Provider) Close() error {
	if p.drv == nil {
		return nil
	}
	if p.stop != nil {
		p.stop()
		<-p.stopped
	}
	return p.drv.Close()
}

// CreateVM is the body of POST /v1/vms: a configuration to try on this provider. The node
// issues the VM's ID and MAC address.
type CreateVM struct {
	Name          string `json:"name"`
	SpeedBogomips int64  `json:"speed_bogomips"`
	MemoryMB      int64  `json:"memory_mb"`
	DiskMB        int64  `json:"disk_mb"`
	OS            string `json:"os"`
	Image         string `json:"image"`  // base disk image, under an allowed image dir
	Kernel        string `json:"kernel"` // boot this kernel directly, if set
	Initrd        string `json:"initrd"`
	Cmdline       string `json:"cmdline"`
}

func (p *Provider) create(r *http.Request) (any, error) {
	var req CreateVM
	if err := node.DecodeJSON(r, &req); err != nil {
		return nil, err
	}
	id := vm.NewID()
	cfg := vm.Config{ID: id, Name: req.Name, SpeedBogomips: req.SpeedBogomips, MemoryMB: req.MemoryMB,
		DiskMB: req.DiskMB, Processor: "x86_64", OS: req.OS, BaseImage: req.Image, MAC: vm.MACFor(id)}
	if req.Kernel != "" {
		cfg.Boot = &vm.KernelBoot{Kernel: req.Kernel, Initrd: req.Initrd, Cmdline: req.Cmdline}
	}
	rec, err := p.mgr.Create(r.Context(), vm.CreateRequest{Config: cfg})
	return answer(rec, err)
}

// ConsoleAnswer is what POST /v1/vms/{id}/console answers.
type ConsoleAnswer struct {
	vm.Record
	Console vm.Console `json:"console"`
}

func (p *Provider) act(r *http.Request) (any, error) {
	id, err := pathID(r)
	if err != nil {
		return nil, err
	}
	if r.PathValue("action") == "resume-fresh" {
		// The saved memory state is lost or damaged: boot the VM from its disk instead.
		return answer(p.mgr.ResumeFresh(r.Context(), id))
	}
	a, err := vm.ParseAction(r.PathValue("action"))
	if err != nil {
		return nil, node.WithStatus(http.StatusBadRequest, err)
	}
	if a == vm.ActionView {
		rec, con, err := p.mgr.Console(r.Context(), id)
		if err != nil {
			return nil, vmError(err)
		}
		return ConsoleAnswer{Record: rec, Console: con}, nil
	}
	return answer(p.mgr.Do(r.Context(), id, a))
}

func pathID(r *http.Request) (vm.ID, error) {
	id, err := vm.ParseID(r.PathValue("id"))
	if err != nil {
		return vm.ID{}, node.WithStatus(http.StatusBadRequest, err)
	}
	return id, nil
}

// answer is a route's result: v, or err with its HTTP status.
func answer[T any](v T, err error) (any, error) {
	if err != nil {
		return nil, vmError(err)
	}
	return v, nil
}

// vmError gives the vm package's errors their HTTP statuses.
func vmError(err error) error {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, vm.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, qemu.ErrNotInstalled):
		status = http.StatusServiceUnavailable
	case errors.Is(err, vm.ErrIllegalAction), errors.Is(err, vm.ErrRunning), errors.Is(err, vm.ErrNotRunning),
		errors.Is(err, vm.ErrConsoleBusy), errors.Is(err, vm.ErrExists), errors.Is(err, vm.ErrMissingFile),
		errors.Is(err, vm.ErrStateUnusable):
		status = http.StatusConflict
	case errors.Is(err, vm.ErrInvalidConfig), errors.Is(err, vm.ErrTooLarge), errors.Is(err, vm.ErrUnknownAction),
		errors.Is(err, vm.ErrUnsupported):
		status = http.StatusBadRequest
	}
	return node.WithStatus(status, err)
}
