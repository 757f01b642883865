// Package vsphere is the hypervisor driver for VMware vSphere (an ESXi host or a vCenter),
// over the vSphere API with govmomi. It implements vm.Driver plus the optional vm.Reattacher and
// vm.HostDescriber, and is tested against govmomi's in-process simulator (vcsim), which only the
// tests import.
//
// How the report's provider maps onto vSphere (report §6.2.3–§6.2.5):
//
//   - Identity. The marketplace's VM ID becomes the VM's BIOS uuid and its instanceUuid, and the
//     ExtraConfig key "virtuoso.id"; the VM is named NamePrefix+ID and lives in the datastore
//     directory of that name ("[datastore1] virtuoso-<id>/virtuoso-<id>.vmx"), so the driver
//     finds its VMs without a lookup table of its own (the report's vm_lookup). ExtraConfig
//     "uuid.action = keep" stops ESXi asking "moved or copied?" after a migration, and
//     "virtuoso.config" keeps the configuration the VM was created from.
//   - Network. The MAC address the marketplace issued is set on the only NIC as a manual
//     address; "ethernet0.checkMACAddress = false" lets ESXi accept a locally administered one.
//   - Processor. The speed sold in bogomips becomes a vCPU count (a host core gives twice its
//     clock in MHz in bogomips, as Linux counts them on x86) and a CPU limit of half the
//     bogomips in MHz, so the VM gets what was sold and no more.
//   - Questions. While a power operation runs the driver answers any question the VM asks, as
//     the report's provider did ("answer yes to everything"): "I moved it" when asked about a
//     moved VM (the marketplace's identity stays), else yes or OK, else the default answer.
//   - Suspend is retried while vSphere refuses it, up to Config.SuspendAttempts times (100, as
//     in the report), then fails with vm.ErrSuspendRefused and leaves the VM running.
//   - Console. The VM's VNC server is enabled through ExtraConfig RemoteDisplay.vnc.* with a port
//     from Config.ConsolePorts and a fresh 8-character password each time it is opened; the
//     address is Config.ConsoleHost (default: the host of the vSphere URL). ESXi 7 and later
//     dropped this VNC server: there the WebMKS method gives a ticket for the browser console.
//   - Files. Driver.Files lists the VM's files from vSphere's file layout, relative to the VM's
//     datastore directory; Files.Dir is that directory as a datastore path, not a local one.
package vsphere
