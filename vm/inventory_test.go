package vm_test

import (
	"encoding/json"
	"errors"
	"log/slog"
	"testing"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

func openStore(t *testing.T, dir string) *node.Store {
	t.Helper()
	st, err := node.OpenStore(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestInventoryPersists(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	inv, err := vm.OpenInventory(st.Space("vm/inventory/"))
	if err != nil {
		t.Fatal(err)
	}
	ids := []vm.ID{vm.NewID(), vm.NewID(), vm.NewID()}
	for i, id := range ids {
		cfg := vm.Config{ID: id, MemoryMB: 256, DiskMB: 1024, MAC: vm.MACFor(id)}
		if _, err := inv.Put(vm.Record{ID: id, Config: cfg, State: vm.State{Status: vm.StatusStored, Version: uint64(i)}, Driver: "qemu", Origin: "peer-x"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := inv.Delete(ids[1]); err != nil {
		t.Fatal(err)
	}
	if err := inv.Delete(vm.NewID()); err != nil {
		t.Fatalf("deleting a missing record: %v", err)
	}
	st.Close()

	st = openStore(t, dir)
	defer st.Close()
	inv, err = vm.OpenInventory(st.Space("vm/inventory/"))
	if err != nil {
		t.Fatal(err)
	}
	list := inv.List()
	if len(list) != 2 || list[0].ID != ids[0] || list[1].ID != ids[2] {
		t.Fatalf("after reopen: %v", list)
	}
	rec, err := inv.Get(ids[2])
	if err != nil || rec.State.Version != 2 || rec.Origin != "peer-x" || rec.Config.MAC != vm.MACFor(ids[2]) || rec.Created.IsZero() {
		t.Fatalf("record %+v, %v", rec, err)
	}
	if _, err := inv.Get(ids[1]); !errors.Is(err, vm.ErrNotFound) {
		t.Fatalf("deleted record: err = %v, want ErrNotFound", err)
	}
}

func TestInventoryRejectsBadRecords(t *testing.T) {
	id := vm.NewID()
	good, _ := json.Marshal(vm.Record{ID: id, State: vm.State{Status: vm.StatusStopped}})
	tests := []struct {
		name, key string
		val       []byte
	}{
		{"key not an id", "nonsense", good},
		{"record for another id", vm.NewID().String(), good},
		{"not json", id.String(), []byte("{")},
		{"unknown status", id.String(), []byte(`{"id":"` + id.String() + `","state":{"status":"exploded"}}`)},
		{"no status", id.String(), []byte(`{"id":"` + id.String() + `"}`)},
		{"oversized", id.String(), append(append([]byte(`{"id":"`+id.String()+`","state":{"status":"stopped"},"owner":"`), make([]byte, 70<<10)...), `"}`...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := openStore(t, t.TempDir())
			defer st.Close()
			sp := st.Space("vm/inventory/")
			if err := sp.Put(tt.key, tt.val); err != nil {
				t.Fatal(err)
			}
			if _, err := vm.OpenInventory(sp); err == nil {
				t.Fatal("inventory accepted a bad record")
			}
		})
	}
	t.Run("good", func(t *testing.T) {
		st := openStore(t, t.TempDir())
		defer st.Close()
		sp := st.Space("vm/inventory/")
		sp.Put(id.String(), good)
		if _, err := vm.OpenInventory(sp); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzConfigJSON(f *testing.F) {
	id := vm.NewID()
	b, _ := json.Marshal(vm.Config{ID: id, MemoryMB: 256, DiskMB: 1024, MAC: vm.MACFor(id), Boot: &vm.KernelBoot{Kernel: "k"}})
	f.Add(b)
	f.Add([]byte(`{"id":"00000000000000000000000000000000","memory_mb":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c vm.Config
		if json.Unmarshal(b, &c) != nil || c.Validate() != nil {
			return
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var back vm.Config
		if err := json.Unmarshal(out, &back); err != nil || back.Validate() != nil || back.ID != c.ID || back.MAC != c.MAC {
			t.Fatalf("round trip of a valid config failed: %s -> %v", out, err)
		}
	})
}
