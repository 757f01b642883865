package daemon

import (
	"context"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// Migrations is a provider's side of VMMP (a node.Service): as an origin it serves the files
// and state of the VMs it granted to their destinations (transfer server, back-end queries);
// as a destination it runs the migration server, which admits a REQ only for a VM whose
// incoming lease its buyer agreed here, and activates that lease once the VM is adopted.
type Migrations struct {
	Grants   *vmmp.Grants
	Images   *vmmp.ImageGrants // image deliveries, served by the same transfer server
	vms      *VMs
	provider func() *market.Provider // set after the Provider is built
	transfer *transfer.Server
	server   *vmmp.Server
}

// Start serves the protocols on n's host.
func (m *Migrations) Start(_ context.Context, n *node.Node) error {
	if err := vmmp.SweepStaging(m.vms.Manager()); err != nil {
		n.Logger().Warn("tidy the staging directories of migrations", "err", err)
	}
	var err error
	served := func(from peer.ID, req transfer.Request) {
		if id, ok := m.Grants.Covers(from, req); ok {
			m.provider().Fetched(id, from)
		}
	}
	opts := []transfer.Option{transfer.WithLogger(n.Logger())}
	// A hypervisor that tracks what its VMs write (QEMU's dirty bitmaps) spares a VM that
	// ran the scan of its disk, as an origin; as a destination it starts counting from what
	// arrived.
	if t, ok := m.vms.Manager().Driver().(transfer.ChangeTracker); ok {
		opts = append(opts, transfer.WithChangeTracker(t))
	}
	if m.transfer, err = transfer.NewServer(n.Host(), vmmp.Authorize(m.Grants, m.Images), append(opts, transfer.WithServed(served))...); err != nil {
		return err
	}
	m.Grants.ServeOrigin(n.Host())
	m.server = vmmp.NewServer(n.Host(), m.vms.Manager(), vmmp.ServerOptions{
		Methods: func(vm.ID) []string { return []string{"blockdiff", "full"} },
		Admit: func(_ context.Context, agent peer.ID, req vmmp.Message) (vmmp.Admission, error) {
			l, err := m.provider().Incoming(req.VM, agent)
			if err != nil {
				return vmmp.Admission{}, err
			}
			return vmmp.Admission{Owner: l.Buyer.String(), Lease: l.Lease.String()}, nil
		},
		Arrived:  func(_ context.Context, rec vm.Record) error { return m.provider().Arrived(rec.ID, rec.Lease) },
		Transfer: opts,
		Log:      n.Logger(),
	})
	return nil
}

// Close stops serving.
func (m *Migrations) Close() error {
	var errs []error
	if m.server != nil {
		errs = append(errs, m.server.Close())
	}
	if m.transfer != nil {
		errs = append(errs, m.transfer.Close())
	}
	for _, err := range errs {
		if err != nil {
			return fmt.Errorf("migrations: %w", err)
		}
	}
	return nil
}
