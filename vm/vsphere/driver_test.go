package vsphere

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/virtuoso-market/virtuoso/vm"
)

// TestLifecycle runs the report's whole life of a VM on both kinds of vSphere and checks the
// power state vSphere reports after every step.
func TestLifecycle(t *testing.T) {
	for _, tt := range []struct {
		name string
		vpx  bool
	}{
		{"ESXi host", false},
		{"vCenter", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := startSim(t, tt.vpx)
			d, _ := newDriver(t, s, nil)
			ctx := context.Background()
			cfg := testConfig()
			id := cfg.ID

			create(t, d, cfg)
			wantPower(t, d, id, vm.PowerOff)
			if err := d.Register(ctx, id); err != nil {
				t.Fatalf("Register after Create: %v", err)
			}
			steps := []struct {
				name string
				do   func(context.Context, vm.ID) error
				want vm.PowerState
			}{
				{"start", d.Start, vm.PowerRunning},
				{"suspend", d.Suspend, vm.PowerSuspended},
				{"resume", d.Resume, vm.PowerRunning},
				{"stop", d.Stop, vm.PowerOff},
				{"start again", d.Start, vm.PowerRunning},
				{"stop again", d.Stop, vm.PowerOff},
			}
			for _, step := range steps {
				if err := step.do(ctx, id); err != nil {
					t.Fatalf("%s: %v", step.name, err)
				}
				wantPower(t, d, id, step.want)
			}
			if err := d.Delete(ctx, id); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := d.Power(ctx, id); !errors.Is(err, vm.ErrNotFound) {
				t.Fatalf("Power after Delete: %v, want ErrNotFound", err)
			}
			if err := d.Delete(ctx, id); !errors.Is(err, vm.ErrNotFound) {
				t.Fatalf("second Delete: %v, want ErrNotFound (directory gone too)", err)
			}
		})
	}
}

// TestCreateSetsIdentityAndHardware checks what the marketplace issued ends up in the VM.
func TestCreateSetsIdentityAndHardware(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, nil)
	cfg := testConfig()
	cfg.SpeedBogomips = 6000 // more than one 2294 MHz core (4588 bogomips): two vCPUs
	create(t, d, cfg)

	m := vmProps(t, d, cfg.ID, "name", "config")
	c := m.Config
	if m.Name != "virtuoso-"+cfg.ID.String() {
		t.Errorf("name %q", m.Name)
	}
	if c.Uuid != cfg.ID.String() || c.InstanceUuid != cfg.ID.String() {
		t.Errorf("uuid %s, instanceUuid %s; want %s", c.Uuid, c.InstanceUuid, cfg.ID)
	}
	if c.Hardware.MemoryMB != 256 || c.Hardware.NumCPU != 2 {
		t.Errorf("memory %d MB, %d vCPUs; want 256 MB, 2", c.Hardware.MemoryMB, c.Hardware.NumCPU)
	}
	if c.CpuAllocation == nil || c.CpuAllocation.Limit == nil || *c.CpuAllocation.Limit != 3000 {
		t.Errorf("cpu allocation %+v, want a limit of 3000 MHz", c.CpuAllocation)
	}
	if want := "[LocalDS_0] virtuoso-" + cfg.ID.String() + "/virtuoso-" + cfg.ID.String() + ".vmx"; c.Files.VmPathName != want {
		t.Errorf("vmx %q, want %q", c.Files.VmPathName, want)
	}
	ec := extraConfig(c.ExtraConfig)
	if ec[keyID] != cfg.ID.String() || ec["uuid.action"] != "keep" || !strings.Contains(ec[keyConfig], `"memory_mb":256`) {
		t.Errorf("extraConfig %v", ec)
	}
	devices := object.VirtualDeviceList(c.Hardware.Device)
	nics := devices.SelectByType((*types.VirtualEthernetCard)(nil))
	if len(nics) != 1 {
		t.Fatalf("%d network cards, want 1", len(nics))
	}
	card := nics[0].(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
	if card.MacAddress != cfg.MAC.String() || card.AddressType != string(types.VirtualEthernetCardMacTypeManual) {
		t.Errorf("nic mac %s (%s), want %s (manual)", card.MacAddress, card.AddressType, cfg.MAC)
	}
	disks := devices.SelectByType((*types.VirtualDisk)(nil))
	if len(disks) != 1 {
		t.Fatalf("%d disks, want 1", len(disks))
	}
	if kb := disks[0].(*types.VirtualDisk).CapacityInKB; kb != 1024*1024 {
		t.Errorf("disk %d KB, want 1 GiB", kb)
	}
}

func TestCreateRejects(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, nil)
	existing := testConfig()
	create(t, d, existing)
	tests := []struct {
		name   string
		change func(*vm.Config)
		want   error
	}{
		{"existing id", func(c *vm.Config) { *c = existing }, vm.ErrExists},
		{"no mac", func(c *vm.Config) { c.MAC = vm.MAC{} }, vm.ErrInvalidConfig},
		{"zero memory", func(c *vm.Config) { c.MemoryMB = 0 }, vm.ErrInvalidConfig},
		{"more memory than the host", func(c *vm.Config) { c.MemoryMB = 64 << 10 }, vm.ErrTooLarge},
		{"more speed than the host", func(c *vm.Config) { c.SpeedBogomips = 20000 }, vm.ErrTooLarge},
		{"disk larger than the datastore", func(c *vm.Config) { c.DiskMB = vm.MaxDiskMB }, vm.ErrTooLarge},
		{"kernel boot", func(c *vm.Config) { c.Boot = &vm.KernelBoot{Kernel: "/boot/vmlinuz"} }, vm.ErrUnsupported},
		{"local base image", func(c *vm.Config) { c.BaseImage = "/var/lib/images/debian.qcow2" }, vm.ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.change(&cfg)
			if err := d.Create(context.Background(), cfg); !errors.Is(err, tt.want) {
				t.Fatalf("Create: %v, want %v", err, tt.want)
			}
		})
	}
}

// TestCreateAllOrNothing makes vSphere fail the creation and checks that no directory is
// left: the same VM can then be created.
func TestCreateAllOrNothing(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, nil)
	s.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName: "CreateVM_Task", ObjectType: "*", ObjectName: "*",
		Probability: 1, FaultType: simulator.FaultTypeInsufficientResourcesFault,
		Message: "out of licences", MaxCount: 1, Enabled: true,
	})
	cfg := testConfig()
	if err := d.Create(context.Background(), cfg); !errors.Is(err, vm.ErrHypervisor) {
		t.Fatalf("Create with a failing vSphere: %v, want ErrHypervisor", err)
	}
	if _, err := d.Power(context.Background(), cfg.ID); !errors.Is(err, vm.ErrNotFound) {
		t.Fatalf("Power after a failed Create: %v, want ErrNotFound", err)
	}
	create(t, d, cfg) // fails with ErrExists if the directory had stayed
	wantPower(t, d, cfg.ID, vm.PowerOff)
}

func TestCreateFromBaseImage(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, nil)
	ctx := context.Background()
	if err := d.files.MakeDirectory(ctx, "[LocalDS_0] images", d.dc, false); err != nil {
		t.Fatal(err)
	}
	vdm := object.NewVirtualDiskManager(d.client)
	task, err := vdm.CreateVirtualDisk(ctx, "[LocalDS_0] images/base.vmdk", d.dc, &types.FileBackedVirtualDiskSpec{
		VirtualDiskSpec: types.VirtualDiskSpec{DiskType: "thin", AdapterType: "lsiLogic"},
		CapacityKb:      512 << 10,
	})
	if _, err := runTask(ctx, "create base disk", task, err); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.BaseImage = "[LocalDS_0] images/base.vmdk"
	create(t, d, cfg)
	files, err := d.Files(ctx, cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	name := "virtuoso-" + cfg.ID.String()
	if len(files.Names) == 0 || files.Names[0] != name+".vmdk" {
		t.Fatalf("files %v: want the copied disk first", files.Names)
	}
	// The copy was grown to the size bought; the base image is left as it was.
	m := vmProps(t, d, cfg.ID, "config.hardware.device")
	disks := object.VirtualDeviceList(m.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil))
	if len(disks) != 1 || disks[0].(*types.VirtualDisk).CapacityInKB != 1024*1024 {
		t.Fatalf("disks %v, want one of 1 GiB", disks)
	}
	if _, err := d.ds.Stat(ctx, "images/base.vmdk"); err != nil {
		t.Fatalf("base image: %v", err)
	}
}

func TestRegister(t *testing.T) {
	s := startSim(t, true)
	d, _ := newDriver(t, s, nil)
	ctx := context.Background()
	cfg := testConfig()
	create(t, d, cfg)
	if err := d.Unregister(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Power(ctx, cfg.ID); !errors.Is(err, vm.ErrNotFound) {
		t.Fatalf("Power of an unregistered VM: %v, want ErrNotFound", err)
	}
	// Its files stay; registering them brings the VM back under the marketplace's ID.
	if err := d.Register(ctx, cfg.ID); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if err := d.Register(ctx, cfg.ID); err != nil {
		t.Fatalf("second Register: %v", err)
	}
	m := vmProps(t, d, cfg.ID, "config.uuid", "config.instanceUuid")
	if m.Config.Uuid != cfg.ID.String() || m.Config.InstanceUuid != cfg.ID.String() {
		t.Fatalf("registered VM has uuid %s, instanceUuid %s; want %s", m.Config.Uuid, m.Config.InstanceUuid, cfg.ID)
	}
	if err := d.Start(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	wantPower(t, d, cfg.ID, vm.PowerRunning)

	if err := d.Register(ctx, vm.NewID()); !errors.Is(err, vm.ErrNotFound) {
		t.Fatalf("Register without files: %v, want ErrNotFound", err)
	}
}

func TestUnknownVM(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, nil)
	ctx := context.Background()
	id := vm.NewID()
	for name, op := range map[string]func(context.Context, vm.ID) error{
		"start": d.Start, "stop": d.Stop, "suspend": d.Suspend, "resume": d.Resume,
		"delete": d.Delete, "close console": d.CloseConsole,
	} {
		if err := op(ctx, id); !errors.Is(err, vm.ErrNotFound) {
			t.Errorf("%s of an unknown VM: %v, want ErrNotFound", name, err)
		}
	}
	if _, err := d.Files(ctx, id); !errors.Is(err, vm.ErrNotFound) {
		t.Errorf("Files of an unknown VM: %v, want ErrNotFound", err)
	}
}

func TestWrongPowerState(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, nil)
	ctx := context.Background()
	cfg := testConfig()
	create(t, d, cfg)
	if err := d.Suspend(ctx, cfg.ID); !errors.Is(err, vm.ErrNotRunning) {
		t.Errorf("Suspend of an off VM: %v, want ErrNotRunning", err)
	}
	if err := d.Resume(ctx, cfg.ID); !errors.Is(err, vm.ErrNotRunning) {
		t.Errorf("Resume of an off VM: %v, want ErrNotRunning", err)
	}
	if _, err := d.OpenConsole(ctx, cfg.ID); !errors.Is(err, vm.ErrNotRunning) {
		t.Errorf("OpenConsole of an off VM: %v, want ErrNotRunning", err)
	}
	if err := d.Stop(ctx, cfg.ID); err != nil {
		t.Errorf("Stop of an off VM: %v", err)
	}
	if err := d.Start(ctx, cfg.ID); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, cfg.ID); err != nil {
		t.Errorf("Start of a running VM: %v", err)
	}
	if err := d.Delete(ctx, cfg.ID); !errors.Is(err, vm.ErrRunning) {
		t.Errorf("Delete of a running VM: %v, want ErrRunning", err)
	}
	wantPower(t, d, cfg.ID, vm.PowerRunning)
}

func TestFiles(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, nil)
	cfg := testConfig()
	create(t, d, cfg)
	files, err := d.Files(context.Background(), cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	name := "virtuoso-" + cfg.ID.String()
	if files.Dir != "[LocalDS_0] "+name {
		t.Errorf("dir %q", files.Dir)
	}
	want := map[string]bool{name + ".vmdk": true, name + ".vmx": true, name + ".nvram": true}
	for _, n := range files.Names {
		if strings.HasSuffix(n, ".log") || strings.Contains(n, "/") {
			t.Errorf("file %q should not be listed", n)
		}
		delete(want, n)
	}
	if len(want) > 0 {
		t.Errorf("files %v lack %v", files.Names, want)
	}
	if files.Names[0] != name+".vmdk" {
		t.Errorf("files %v: disk not first", files.Names)
	}
}

func TestNewInventory(t *testing.T) {
	s := startSim(t, true)
	tests := []struct {
		name    string
		pool    string
		wantErr string
	}{
		{"vCenter with a standalone host and a cluster needs a pool", "", "set ResourcePool"},
		{"unknown pool", "/DC0/host/nowhere/Resources", "resource pool"},
		{"cluster pool", "/DC0/host/DC0_C0/Resources", ""},
		{"standalone host pool", "/DC0/host/DC0_H0/Resources", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := New(context.Background(), Config{URL: s.url, Insecure: true, ResourcePool: tt.pool})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				d.Close(context.Background())
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New: %v, want an error about %q", err, tt.wantErr)
			}
		})
	}
}

func TestDescribeHost(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, nil)
	h, err := d.DescribeHost(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// vcsim's host: 2 cores of 2294 MHz, 4 GiB less a little.
	if h.CPUs != 2 || h.SpeedBogomips != 2*2294*2 || h.MemoryMB != 4095 || h.DiskMB <= 0 {
		t.Fatalf("DescribeHost = %+v", h)
	}
}
