// Package vm is everything a node knows about virtual machines, independent of the hypervisor.
//
// It holds the marketplace's view of a VM (the report's statusrelations table): the statuses a VM
// goes through (registered, stored, started, stopped, suspended, migrating), the actions legal in
// each, and the version that every status change increments. That table is data (see Actions and
// State.Apply) so that the provider, the buyer's node and the coordinator all enforce the same
// rules; a provider executes an action only if the VM's status allows it.
//
// It also holds the hypervisor driver contract (Driver, plus optional capability interfaces such
// as Reattacher and Importer) that vm/qemu and vm/vsphere implement, the 128-bit VM identifier and
// the MAC address the marketplace issues, the local inventory of VMs kept in the node's store, and
// Manager, which ties a driver, the inventory and the status rules together for the node's API.
//
// Failures are typed (ErrMissingFile, ErrStateUnusable, ErrHypervisor...) and leave a VM's status,
// version and files as they were. The one change the Manager records on its own is a started VM
// that the driver finds powered off (its guest shut down, its hypervisor process died): it
// becomes stopped, one version up, at Reconcile, CheckPower, or the next action on it. A VM whose
// saved memory state is lost can be resumed fresh (Manager.ResumeFresh), booting from its disk.
//
// A started VM can also run while its guest does not (a broken accelerator, nothing to boot):
// drivers that can tell (ProgressReporter) let Manager.CheckHealth, and CheckPower for every
// started VM, put a sentence for the owner in Record.Health once the guest has shown no sign of
// running for ManagerConfig.StallAfter.
//
// Wire and CLI forms: statuses and actions travel as their lower-case report names
// ("started", "suspendmachine"); IDs as UUID text; MAC addresses as colon-separated hex.
package vm
