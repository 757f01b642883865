package vm_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
)

// How a provider node wires its VM stack: the QEMU driver (VMs outlive the node), the
// inventory in the node's store, and the Manager the local API calls.
func ExampleManager() {
	ctx := context.Background()
	log := slog.Default()
	store, err := node.OpenStore("/var/lib/virtuoso/db", log)
	if err != nil {
		panic(err)
	}
	defer store.Close()

	cfg := qemu.DefaultConfig("/var/lib/virtuoso/vms")
	cfg.Detach = true // a restarted node re-attaches to running VMs
	cfg.ImageDirs = []string{"/var/lib/virtuoso/images"}
	cfg.VNCPorts = qemu.PortRange{First: 5910, Last: 5949}
	cfg.MaxConsoles = 4
	cfg.Logger = log
	drv, err := qemu.New(cfg)
	if err != nil {
		panic(err)
	}
	defer drv.Close()

	inv, err := vm.OpenInventory(store.Space("vm/inventory/"))
	if err != nil {
		panic(err)
	}
	mgr, err := vm.NewManager(vm.ManagerConfig{Driver: drv, Inventory: inv, Logger: log})
	if err != nil {
		panic(err)
	}
	if _, err := mgr.Reconcile(ctx); err != nil { // after a restart
		log.Warn("reconcile", "err", err)
	}

	id := vm.NewID()
	rec, err := mgr.Create(ctx, vm.CreateRequest{Config: vm.Config{
		ID: id, SpeedBogomips: 2000, MemoryMB: 512, DiskMB: 4096, MAC: vm.MACFor(id),
	}, Owner: "12D3KooW...buyer"})
	if err != nil {
		panic(err)
	}
	act, err := vm.ParseAction("start") // from the CLI or the JSON API
	if err != nil {
		panic(err)
	}
	if rec, err = mgr.Do(ctx, id, act); err != nil {
		panic(err)
	}
	_, con, err := mgr.Console(ctx, id)
	if err != nil {
		panic(err)
	}
	fmt.Println(rec.State.Status, rec.State.Version, con.Addr, vm.Actions(rec.State.Status))
}

// A status change as the node's event log records it.
func ExampleStatusChanged_LogRecord() {
	id, _ := vm.ParseID("3f2a1b2c-0000-4000-8000-000000000001")
	ev := vm.StatusChanged{VM: id, State: vm.State{Status: vm.StatusStarted, Version: 4}, Cause: vm.ActionStart,
		Time: time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)}
	r := ev.LogRecord()
	fmt.Println(r.Kind, r.VM)
	fmt.Println(r.Message)
	fmt.Println(string(r.Data))
	// Output:
	// vm.status 3f2a1b2c-0000-4000-8000-000000000001
	// vm 3f2a1b2c started (version 4)
	// {"vm":"3f2a1b2c-0000-4000-8000-000000000001","state":{"status":"started","version":4},"cause":"startmachine","time":"2025-11-25T12:00:00Z"}
}
