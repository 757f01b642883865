package market

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// TestEventLogRecords: every market event is Loggable, of a kind the log lists, naming its
// VM, lease and peer, with a message a user reads and its details as JSON.
func TestEventLogRecords(t *testing.T) {
	_, buyer := testKey(t, 2)
	_, provider := testKey(t, 3)
	lease := testLease(t, buyer, provider)
	lease.ID, lease.VM, lease.Machine = LeaseID{0x9c, 0x0d, 0x1e, 0x2f}, vm.ID{0x3f, 0x2a, 0x1b, 0x2c}, MachineID{0x7a, 0x8b, 0x9c, 0x0d}
	machine := Machine{ID: lease.Machine, Name: "rack-1", Capacity: Resources{4000, 2048, 8192}}
	view := VM{ID: lease.VM, Lease: lease.ID, Provider: provider, LeaseState: LeaseStateActive,
		State: vm.State{Status: vm.StatusStarted, Version: 2}}
	warned := view
	warned.Health, warned.Note = "the guest shows no sign of running", "refreshed"
	for _, tc := range []struct {
		name            string
		ev              node.Loggable
		kind, msg       string
		vm, lease, peer string
		dataHas         string
	}{
		{"lease created", LeaseCreated{Lease: SignedLease{Lease: lease}, Time: goldenTime}, node.KindLeaseCreated,
			"lease 9c0d1e2f created: vm 3f2a1b2c, buyer " + Short(buyer) + ", provider " + Short(provider) + ", machine 7a8b9c0d",
			lease.VM.String(), lease.ID.String(), buyer.String(), `"quote"`},
		{"lease ended", LeaseEnded{Lease: lease.ID, VM: lease.VM, Buyer: buyer, Provider: provider, Reason: "deleted by its owner", Time: goldenTime},
			node.KindLeaseEnded, "lease 9c0d1e2f of vm 3f2a1b2c ended: deleted by its owner",
			lease.VM.String(), lease.ID.String(), buyer.String(), `"reason":"deleted by its owner"`},
		{"machine added", MachineChanged{Machine: machine, Change: MachineAdded, Time: goldenTime}, node.KindMachineAdded,
			`machine 7a8b9c0d "rack-1" added: 4000 bogomips, 2048 MB memory, 8192 MB storage`, "", "", "", `"name":"rack-1"`},
		{"machine edited", MachineChanged{Machine: machine, Change: MachineEdited, Time: goldenTime}, node.KindMachineEdited,
			`machine 7a8b9c0d "rack-1" edited`, "", "", "", `"change":"edited"`},
		{"machine removed", MachineChanged{Machine: machine, Change: MachineRemoved, Time: goldenTime}, node.KindMachineRemoved,
			`machine 7a8b9c0d "rack-1" removed`, "", "", "", `"change":"removed"`},
		{"vm changed", VMChanged{VM: view, Time: goldenTime}, node.KindVMChanged,
			"vm 3f2a1b2c started (version 2), lease active, on " + Short(provider),
			lease.VM.String(), lease.ID.String(), provider.String(), `"lease_state":"active"`},
		{"vm changed, with a note and a warning", VMChanged{VM: warned, Time: goldenTime}, node.KindVMChanged,
			"vm 3f2a1b2c started (version 2), lease active, on " + Short(provider) + ": refreshed; warning: the guest shows no sign of running",
			lease.VM.String(), lease.ID.String(), provider.String(), `"health"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.ev.LogRecord()
			if !slices.Contains(node.EventKinds(), r.Kind) || r.Kind != tc.kind {
				t.Errorf("kind %q, want %q (listed in node.EventKinds)", r.Kind, tc.kind)
			}
			if r.Message != tc.msg {
				t.Errorf("message\n got %q\nwant %q", r.Message, tc.msg)
			}
			if r.VM != tc.vm || r.Lease != tc.lease || r.Peer != tc.peer || !r.Time.Equal(goldenTime) || r.Seq != 0 {
				t.Errorf("record %+v; want vm %q, lease %q, peer %q, the event's time and no seq", r, tc.vm, tc.lease, tc.peer)
			}
			if !json.Valid(r.Data) || !strings.Contains(string(r.Data), tc.dataHas) {
				t.Errorf("data %s; want JSON holding %s", r.Data, tc.dataHas)
			}
		})
	}
}
