package vsphere

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/vim25/mo"

	"github.com/virtuoso-market/virtuoso/vm"
)

// DescribeHost adds up the hosts of the resource pool's cluster (or the one host): cores,
// bogomips (twice the clock in MHz per core), memory, and the datastore's capacity.
func (d *Driver) DescribeHost(ctx context.Context) (vm.Host, error) {
	hosts, err := d.hosts(ctx)
	if err != nil {
		return vm.Host{}, fmt.Errorf("describe host: %w", err)
	}
	var h vm.Host
	for _, host := range hosts {
		hw := host.Summary.Hardware
		if hw == nil {
			continue
		}
		h.CPUs += int(hw.NumCpuCores)
		h.SpeedBogomips += int64(hw.CpuMhz) * int64(hw.NumCpuCores) * bogomipsPerMHz
		h.MemoryMB += hw.MemorySize >> 20
	}
	var ds mo.Datastore
	if err := d.ds.Properties(ctx, d.ds.Reference(), []string{"summary.capacity"}, &ds); err != nil {
		return vm.Host{}, fmt.Errorf("describe host: datastore: %w: %w", vm.ErrHypervisor, err)
	}
	h.DiskMB = ds.Summary.Capacity >> 20
	return h, nil
}

// Reattach takes control of a VM again after the node restarted: it reports the VM's power
// state and takes back the console port recorded in the VM's configuration.
func (d *Driver) Reattach(ctx context.Context, id vm.ID) (vm.PowerState, error) {
	v, err := d.find(ctx, id)
	if err != nil {
		return vm.PowerUnknown, fmt.Errorf("reattach vm %s: %w", id, err)
	}
	m, err := d.props(ctx, v, "runtime.powerState", "config.extraConfig")
	if err != nil {
		return vm.PowerUnknown, fmt.Errorf("reattach vm %s: %w", id, err)
	}
	if m.Config != nil {
		ec := extraConfig(m.Config.ExtraConfig)
		if port, ok := parsePort(ec[keyVNCPort]); ok && ec[keyVNCEnabled] == "true" {
			if !d.consoles.claim(id, port) {
				d.log.Warn("console port of reattached vm is taken or out of range", "vm", id, "port", port)
			}
		}
	}
	return powerState(m.Runtime.PowerState), nil
}
