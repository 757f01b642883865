package vsphere_test

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/simulator"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/vsphere"
)

// A VM's whole life on an ESXi host, simulated in-process by vcsim: create it with the ID and
// MAC the marketplace issued, start, suspend, resume, stop and delete it.
func Example() {
	ctx := context.Background()
	model := simulator.ESX()
	model.Machine = 0
	if err := model.Create(); err != nil {
		fmt.Println(err)
		return
	}
	defer model.Remove()
	server := model.Service.NewServer() // on 127.0.0.1
	defer server.Close()

	d, err := vsphere.New(ctx, vsphere.Config{URL: server.URL, Insecure: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer d.Close(ctx)

	id := vm.NewID()
	cfg := vm.Config{ID: id, MAC: vm.MACFor(id), SpeedBogomips: 2000, MemoryMB: 256, DiskMB: 1024}
	if err := d.Create(ctx, cfg); err != nil {
		fmt.Println(err)
		return
	}
	show := func(step string) {
		p, err := d.Power(ctx, id)
		fmt.Println(step+":", p, err)
	}
	show("created")
	for _, step := range []struct {
		name string
		do   func(context.Context, vm.ID) error
	}{
		{"started", d.Start}, {"suspended", d.Suspend}, {"resumed", d.Resume}, {"stopped", d.Stop},
	} {
		if err := step.do(ctx, id); err != nil {
			fmt.Println(step.name, err)
			return
		}
		show(step.name)
	}
	files, _ := d.Files(ctx, id)
	fmt.Println("first file:", files.Names[0] == "virtuoso-"+id.String()+".vmdk")
	fmt.Println("deleted:", d.Delete(ctx, id))
	// Output:
	// created: off <nil>
	// started: running <nil>
	// suspended: suspended <nil>
	// resumed: running <nil>
	// stopped: off <nil>
	// first file: true
	// deleted: <nil>
}
