package vsphere

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/virtuoso-market/virtuoso/vm"
)

// bogomipsPerMHz is what Linux reports per core on x86: twice the clock in MHz.
const bogomipsPerMHz = 2

// cleanupTimeout bounds the undoing of a failed Create.
const cleanupTimeout = time.Minute

// Create builds the VM in its own datastore directory and registers it (vSphere creates and
// registers in one step; Register afterwards is harmless). On failure nothing is left: neither
// the VM nor its directory.
func (d *Driver) Create(ctx context.Context, cfg vm.Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("create vm %s: %w", cfg.ID, err)
	}
	if cfg.Boot != nil {
		return fmt.Errorf("create vm %s: direct kernel boot: %w", cfg.ID, vm.ErrUnsupported)
	}
	if cfg.BaseImage != "" && !isDatastorePath(cfg.BaseImage) {
		return fmt.Errorf("create vm %s: base image %q is not a datastore path like \"[datastore1] images/debian.vmdk\": %w", cfg.ID, cfg.BaseImage, vm.ErrUnsupported)
	}
	if _, err := d.find(ctx, cfg.ID); err == nil {
		return fmt.Errorf("create vm %s: %w", cfg.ID, vm.ErrExists)
	} else if !errors.Is(err, vm.ErrNotFound) {
		return fmt.Errorf("create vm %s: %w", cfg.ID, err)
	}
	hw, err := d.fit(ctx, cfg)
	if err != nil {
		return fmt.Errorf("create vm %s: %w", cfg.ID, err)
	}
	dir := d.vmDir(cfg.ID)
	if err := d.files.MakeDirectory(ctx, dir, d.dc, false); err != nil {
		if isFault(err, &types.FileAlreadyExists{}) {
			return fmt.Errorf("create vm %s: directory %s holds a VM's files already (register or delete it): %w", cfg.ID, dir, vm.ErrExists)
		}
		return fmt.Errorf("create vm %s: make directory %s: %w: %w", cfg.ID, dir, vm.ErrHypervisor, err)
	}
	if err := d.create(ctx, cfg, hw); err != nil {
		// Undo with a context of its own: ctx may be what ended the creation.
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if v, ferr := d.find(cleanup, cfg.ID); ferr == nil {
			if derr := destroy(cleanup, v); derr != nil {
				d.log.Warn("remove half-created vm", "vm", cfg.ID, "err", derr)
			}
		}
		if derr := d.deleteDir(cleanup, dir); derr != nil && !errors.Is(derr, vm.ErrNotFound) {
			d.log.Warn("remove directory of half-created vm", "vm", cfg.ID, "err", derr)
		}
		return fmt.Errorf("create vm %s: %w", cfg.ID, ctxErr(ctx, err))
	}
	d.log.Info("created vm", "vm", cfg.ID, "cpus", hw.cpus, "memory_mb", cfg.MemoryMB, "disk_mb", cfg.DiskMB, "dir", dir)
	return nil
}

// hardware is what a configuration becomes on this host.
type hardware struct {
	cpus     int32
	limitMHz int64 // -1: unlimited
}

// fit turns the configuration into hardware and checks that one host of the pool can run it
// and the datastore can hold its disk.
func (d *Driver) fit(ctx context.Context, cfg vm.Config) (hardware, error) {
	hosts, err := d.hosts(ctx)
	if err != nil {
		return hardware{}, err
	}
	var mhz int64
	var cores int16
	var memMB int64
	for _, h := range hosts {
		if h.Summary.Hardware == nil {
			continue
		}
		mhz = max(mhz, int64(h.Summary.Hardware.CpuMhz))
		cores = max(cores, h.Summary.Hardware.NumCpuCores)
		memMB = max(memMB, h.Summary.Hardware.MemorySize>>20)
	}
	if mhz <= 0 || cores <= 0 {
		return hardware{}, fmt.Errorf("%w: the pool's hosts report no processor", vm.ErrHypervisor)
	}
	hw := hardware{cpus: 1, limitMHz: -1}
	if cfg.SpeedBogomips > 0 {
		perCore := mhz * bogomipsPerMHz
		n := (cfg.SpeedBogomips + perCore - 1) / perCore
		if n > int64(cores) {
			return hardware{}, fmt.Errorf("%w: %d bogomips need %d cores of %d MHz, the largest host has %d", vm.ErrTooLarge, cfg.SpeedBogomips, n, mhz, cores)
		}
		hw.cpus = int32(n)
		hw.limitMHz = (cfg.SpeedBogomips + bogomipsPerMHz - 1) / bogomipsPerMHz
	}
	if cfg.MemoryMB > memMB {
		return hardware{}, fmt.Errorf("%w: %d MB of memory, the largest host has %d MB", vm.ErrTooLarge, cfg.MemoryMB, memMB)
	}
	var ds mo.Datastore
	if err := d.ds.Properties(ctx, d.ds.Reference(), []string{"summary.freeSpace"}, &ds); err != nil {
		return hardware{}, fmt.Errorf("datastore free space: %w: %w", vm.ErrHypervisor, err)
	}
	if free := ds.Summary.FreeSpace >> 20; cfg.DiskMB > free {
		return hardware{}, fmt.Errorf("%w: a %d MB disk, the datastore has %d MB free", vm.ErrTooLarge, cfg.DiskMB, free)
	}
	return hw, nil
}

// hosts returns the hosts of the compute resource that owns the pool.
func (d *Driver) hosts(ctx context.Context) ([]mo.HostSystem, error) {
	owner, err := d.pool.Owner(ctx)
	if err != nil {
		return nil, fmt.Errorf("owner of resource pool: %w: %w", vm.ErrHypervisor, err)
	}
	var cr mo.ComputeResource
	pc := property.DefaultCollector(d.client)
	if err := pc.RetrieveOne(ctx, owner.Reference(), []string{"host"}, &cr); err != nil {
		return nil, fmt.Errorf("hosts of %s: %w: %w", owner.Reference(), vm.ErrHypervisor, err)
	}
	if len(cr.Host) == 0 {
		return nil, fmt.Errorf("%w: no host in %s", vm.ErrHypervisor, owner.Reference())
	}
	var hosts []mo.HostSystem
	if err := pc.Retrieve(ctx, cr.Host, []string{"name", "summary.hardware"}, &hosts); err != nil {
		return nil, fmt.Errorf("hosts of %s: %w: %w", owner.Reference(), vm.ErrHypervisor, err)
	}
	return hosts, nil
}

// create makes the VM in the directory that Create made.
func (d *Driver) create(ctx context.Context, cfg vm.Config, hw hardware) error {
	name := d.vmName(cfg.ID)
	diskPath := d.ds.Path(name + "/" + name + ".vmdk")
	if cfg.BaseImage != "" {
		vdm := object.NewVirtualDiskManager(d.client)
		task, err := vdm.CopyVirtualDisk(ctx, cfg.BaseImage, d.dc, diskPath, d.dc, nil, false)
		if _, err := runTask(ctx, "copy base image "+cfg.BaseImage, task, err); err != nil {
			return err
		}
		task, err = vdm.ExtendVirtualDisk(ctx, diskPath, d.dc, cfg.DiskMB<<10, nil)
		if _, err := runTask(ctx, "grow disk", task, err); err != nil {
			return err
		}
	}
	spec, err := d.configSpec(ctx, cfg, hw, diskPath)
	if err != nil {
		return err
	}
	task, err := d.folder.CreateVM(ctx, spec, d.pool, nil)
	_, err = runTask(ctx, "create vm", task, err)
	return err
}

// configSpec describes the VM: identity, hardware, one SCSI disk and one NIC with the
// marketplace's MAC.
func (d *Driver) configSpec(ctx context.Context, cfg vm.Config, hw hardware, diskPath string) (types.VirtualMachineConfigSpec, error) {
	name := d.vmName(cfg.ID)
	saved, err := json.Marshal(cfg)
	if err != nil {
		return types.VirtualMachineConfigSpec{}, fmt.Errorf("encode config: %w", err)
	}
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return types.VirtualMachineConfigSpec{}, fmt.Errorf("scsi controller: %w", err)
	}
	devices = append(devices, scsi)
	disk := devices.CreateDisk(scsi.(types.BaseVirtualController), d.ds.Reference(), diskPath)
	disk.CapacityInKB = cfg.DiskMB << 10
	disk.CapacityInBytes = cfg.DiskMB << 20
	devices = append(devices, disk)

	backing, err := d.net.EthernetCardBackingInfo(ctx)
	if err != nil {
		return types.VirtualMachineConfigSpec{}, fmt.Errorf("network %s: %w: %w", d.cfg.Network, vm.ErrHypervisor, err)
	}
	nic, err := devices.CreateEthernetCard("vmxnet3", backing)
	if err != nil {
		return types.VirtualMachineConfigSpec{}, fmt.Errorf("network card: %w", err)
	}
	card := nic.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
	card.AddressType = string(types.VirtualEthernetCardMacTypeManual)
	card.MacAddress = cfg.MAC.String()
	devices = append(devices, nic)

	changes, err := devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return types.VirtualMachineConfigSpec{}, fmt.Errorf("devices: %w", err)
	}
	for _, c := range changes {
		if s := c.GetVirtualDeviceConfigSpec(); s.Device == types.BaseVirtualDevice(disk) {
			// A new disk is created; a copied base image is used as it is.
			s.FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
			if cfg.BaseImage != "" {
				s.FileOperation = ""
			}
		}
	}

	guest := string(types.VirtualMachineGuestOsIdentifierOtherGuest64)
	if p := strings.ToLower(cfg.Processor); p == "i386" || p == "i686" || p == "x86" {
		guest = string(types.VirtualMachineGuestOsIdentifierOtherGuest)
	}
	return types.VirtualMachineConfigSpec{
		Name:         name,
		GuestId:      guest,
		Uuid:         cfg.ID.String(),
		InstanceUuid: cfg.ID.String(),
		Annotation:   annotation(cfg),
		NumCPUs:      hw.cpus,
		MemoryMB:     cfg.MemoryMB,
		CpuAllocation: &types.ResourceAllocationInfo{
			Limit: types.NewInt64(hw.limitMHz),
		},
		Files:        &types.VirtualMachineFileInfo{VmPathName: d.vmxPath(cfg.ID)},
		DeviceChange: changes,
		ExtraConfig: []types.BaseOptionValue{
			&types.OptionValue{Key: keyID, Value: cfg.ID.String()},
			&types.OptionValue{Key: keyConfig, Value: string(saved)},
			// Keep the marketplace's uuid when the files were moved, without asking.
			&types.OptionValue{Key: "uuid.action", Value: "keep"},
			// Accept the marketplace's locally administered MAC.
			&types.OptionValue{Key: "ethernet0.checkMACAddress", Value: "false"},
		},
	}, nil
}

func annotation(cfg vm.Config) string {
	s := "Virtuoso VM " + cfg.ID.String()
	if cfg.Name != "" {
		s += " (" + cfg.Name + ")"
	}
	return s
}

// Register makes the VM whose files are in its datastore directory known to vSphere, for
// example at a migration destination. A VM registered already is left as it is. After
// registering, the VM's uuids are set to the marketplace's ID if vSphere gave it others.
func (d *Driver) Register(ctx context.Context, id vm.ID) error {
	if _, err := d.find(ctx, id); err == nil {
		return nil
	} else if !errors.Is(err, vm.ErrNotFound) {
		return fmt.Errorf("register vm %s: %w", id, err)
	}
	task, err := d.folder.RegisterVM(ctx, d.vmxPath(id), d.vmName(id), false, d.pool, nil)
	res, err := runTask(ctx, "register "+d.vmxPath(id), task, err)
	if err != nil {
		if isFault(err, &types.NotFound{}) || isFault(err, &types.FileNotFound{}) {
			return fmt.Errorf("register vm %s: no files at %s: %w", id, d.vmxPath(id), vm.ErrNotFound)
		}
		return fmt.Errorf("register vm %s: %w", id, err)
	}
	ref, ok := res.(types.ManagedObjectReference)
	if !ok {
		return fmt.Errorf("register vm %s: %w: result %T", id, vm.ErrHypervisor, res)
	}
	v := object.NewVirtualMachine(d.client, ref)
	m, err := d.props(ctx, v, "config.uuid", "config.instanceUuid")
	if err != nil {
		return fmt.Errorf("register vm %s: %w", id, err)
	}
	if m.Config == nil || m.Config.Uuid != id.String() || m.Config.InstanceUuid != id.String() {
		task, err := v.Reconfigure(ctx, types.VirtualMachineConfigSpec{
			Uuid:         id.String(),
			InstanceUuid: id.String(),
			ExtraConfig:  []types.BaseOptionValue{&types.OptionValue{Key: keyID, Value: id.String()}},
		})
		if _, err := runTask(ctx, "set uuid", task, err); err != nil {
			return fmt.Errorf("register vm %s: %w", id, err)
		}
	}
	d.log.Info("registered vm", "vm", id, "path", d.vmxPath(id))
	return nil
}

// Unregister removes a VM that is not running from vSphere's inventory and keeps its files,
// so that they can be copied and registered elsewhere (the counterpart of Register; not part
// of vm.Driver).
func (d *Driver) Unregister(ctx context.Context, id vm.ID) error {
	v, err := d.find(ctx, id)
	if err != nil {
		return fmt.Errorf("unregister vm %s: %w", id, err)
	}
	if err := v.Unregister(ctx); err != nil {
		if isFault(err, &types.InvalidPowerState{}) {
			return fmt.Errorf("unregister vm %s: %w", id, vm.ErrRunning)
		}
		return fmt.Errorf("unregister vm %s: %w: %w", id, vm.ErrHypervisor, err)
	}
	d.consoles.release(id)
	d.log.Info("unregistered vm", "vm", id)
	return nil
}

// Delete destroys a VM that is not running together with its directory. Files left behind by
// an unregistered VM are removed too.
func (d *Driver) Delete(ctx context.Context, id vm.ID) error {
	v, err := d.find(ctx, id)
	switch {
	case errors.Is(err, vm.ErrNotFound):
		if err := d.deleteDir(ctx, d.vmDir(id)); err != nil {
			return fmt.Errorf("delete vm %s: %w", id, err)
		}
	case err != nil:
		return fmt.Errorf("delete vm %s: %w", id, err)
	default:
		state, err := v.PowerState(ctx)
		if err != nil {
			return fmt.Errorf("delete vm %s: %w: %w", id, vm.ErrHypervisor, err)
		}
		if state == types.VirtualMachinePowerStatePoweredOn {
			return fmt.Errorf("delete vm %s: %w", id, vm.ErrRunning)
		}
		if err := destroy(ctx, v); err != nil {
			if isFault(err, &types.InvalidPowerState{}) {
				return fmt.Errorf("delete vm %s: %w", id, vm.ErrRunning)
			}
			return fmt.Errorf("delete vm %s: %w: %w", id, vm.ErrHypervisor, err)
		}
		// Destroy removes the files vSphere knows of; anything else in the directory goes too.
		if err := d.deleteDir(ctx, d.vmDir(id)); err != nil && !errors.Is(err, vm.ErrNotFound) {
			return fmt.Errorf("delete vm %s: %w", id, err)
		}
	}
	d.consoles.release(id)
	d.log.Info("deleted vm", "vm", id)
	return nil
}

// destroy runs Destroy_Task to its end.
func destroy(ctx context.Context, v *object.VirtualMachine) error {
	task, err := v.Destroy(ctx)
	if err != nil {
		return err
	}
	return task.Wait(ctx)
}

func (d *Driver) deleteDir(ctx context.Context, dir string) error {
	task, err := d.files.DeleteDatastoreFile(ctx, dir, d.dc)
	if err == nil {
		err = task.Wait(ctx)
	}
	switch {
	case err == nil:
		return nil
	case isFault(err, &types.FileNotFound{}) || isFault(err, &types.NotFound{}):
		return fmt.Errorf("directory %s: %w", dir, vm.ErrNotFound)
	default:
		return fmt.Errorf("delete %s: %w: %w", dir, vm.ErrHypervisor, err)
	}
}

// isDatastorePath reports whether s looks like "[datastore] path".
func isDatastorePath(s string) bool {
	var p object.DatastorePath
	return p.FromString(s) && p.Datastore != "" && p.Path != ""
}

// parsePort reads a port number from ExtraConfig.
func parsePort(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	return n, err == nil && n > 0 && n < 65536
}
