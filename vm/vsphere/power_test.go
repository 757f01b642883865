package vsphere

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/virtuoso-market/virtuoso/vm"
)

// startedVM creates and starts a VM and returns its configuration.
func startedVM(t testing.TB, d *Driver) vm.Config {
	t.Helper()
	cfg := testConfig()
	create(t, d, cfg)
	if err := d.Start(context.Background(), cfg.ID); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return cfg
}

// TestSuspendRetries makes vSphere refuse to suspend, at the call (vcsim's fault rules) and
// in the task (as vSphere reports a refusal), and checks the retries and the clean failure.
func TestSuspendRetries(t *testing.T) {
	tests := []struct {
		name      string
		attempts  int
		refusals  int  // how often vSphere refuses; -1: always
		inTask    bool // refuse in the task instead of at the call
		fault     simulator.FaultType
		wantErr   error // nil: suspended in the end
		wantCalls int   // suspend requests that reached vSphere and were refused
		wantPower vm.PowerState
	}{
		{"refused 3 times then suspended", 10, 3, false, simulator.FaultTypeInvalidState, nil, 3, vm.PowerSuspended},
		{"refused in the task 4 times then suspended", 10, 4, true, 0, nil, 4, vm.PowerSuspended},
		{"refused every time", 5, -1, false, simulator.FaultTypeInvalidState, vm.ErrSuspendRefused, 5, vm.PowerRunning},
		{"refused in the task every time", 5, -1, true, 0, vm.ErrSuspendRefused, 5, vm.PowerRunning},
		{"refused as often as allowed", 4, 4, false, simulator.FaultTypeResourceInUse, vm.ErrSuspendRefused, 4, vm.PowerRunning},
		{"no permission is not retried", 10, -1, false, simulator.FaultTypeNoPermission, vm.ErrHypervisor, 1, vm.PowerRunning},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startSim(t, false)
			d, logs := newDriver(t, s, func(c *Config) { c.SuspendAttempts = tt.attempts })
			cfg := startedVM(t, d)

			limit := tt.refusals
			if limit < 0 {
				limit = 1 << 30
			}
			var calls *int
			if tt.inTask {
				calls = new(int)
				s.model.Map().Put(&refusingVM{VirtualMachine: s.vm(t, d, cfg.ID), refusals: limit, calls: calls})
			} else {
				s.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
					MethodName: "SuspendVM_Task", ObjectType: "VirtualMachine", ObjectName: "virtuoso-" + cfg.ID.String(),
					Probability: 1, FaultType: tt.fault, Message: "the guest operating system is starting",
					MaxCount: max(tt.refusals, 0), Enabled: true,
				})
			}

			err := d.Suspend(context.Background(), cfg.ID)
			if tt.wantErr == nil && err != nil {
				t.Fatalf("Suspend: %v", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Suspend: %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != vm.ErrSuspendRefused && errors.Is(err, vm.ErrSuspendRefused) {
				t.Fatalf("Suspend: %v, should not count as a refusal", err)
			}
			var refused int
			if calls != nil {
				refused = min(*calls, limit)
			} else {
				refused = int(s.model.Service.GetFaultStats()["rule_0_count"].(int64))
			}
			if refused != tt.wantCalls {
				t.Fatalf("vSphere refused %d suspend requests, want %d", refused, tt.wantCalls)
			}
			if got, want := logs.count("suspend refused"), min(tt.wantCalls, tt.attempts); tt.wantErr != vm.ErrHypervisor && got != want {
				t.Fatalf("logged %d refusals, want %d", got, want)
			}
			wantPower(t, d, cfg.ID, tt.wantPower)
		})
	}
}

// TestSuspendCancelled checks that a retrying Suspend ends when its context does.
func TestSuspendCancelled(t *testing.T) {
	s := startSim(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, logs := newDriver(t, s, func(c *Config) { c.SuspendRetryDelay = time.Hour })
	logs.on = func(line string) {
		if strings.Contains(line, `msg="suspend refused"`) {
			cancel()
		}
	}
	cfg := startedVM(t, d)
	s.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName: "SuspendVM_Task", ObjectType: "*", ObjectName: "*",
		Probability: 1, FaultType: simulator.FaultTypeInvalidState, Enabled: true,
	})
	if err := d.Suspend(ctx, cfg.ID); !errors.Is(err, context.Canceled) {
		t.Fatalf("Suspend: %v, want context.Canceled", err)
	}
	wantPower(t, d, cfg.ID, vm.PowerRunning)
}

// TestStopAnswersQuestion has the VM ask a question when powered off; Stop answers yes and
// the VM goes off.
func TestStopAnswersQuestion(t *testing.T) {
	s := startSim(t, false)
	d, logs := newDriver(t, s, nil)
	cfg := startedVM(t, d)
	asking := &askingVM{
		VirtualMachine: s.vm(t, d, cfg.ID),
		answers:        make(chan string, 1),
		question: &types.VirtualMachineQuestionInfo{
			Id:   "q-42",
			Text: "Would you like to commit the changes of the undoable disk?",
			Choice: types.ChoiceOption{
				ChoiceInfo: []types.BaseElementDescription{
					&types.ElementDescription{Key: "0", Description: types.Description{Label: "_No", Summary: "No"}},
					&types.ElementDescription{Key: "1", Description: types.Description{Label: "_Yes", Summary: "Yes"}},
				},
				DefaultIndex: 0,
			},
		},
	}
	s.model.Map().Put(asking)

	if err := d.Stop(context.Background(), cfg.ID); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	wantPower(t, d, cfg.ID, vm.PowerOff)
	if n := logs.count("answered question"); n != 1 {
		t.Fatalf("answered %d questions, want 1", n)
	}
	if !strings.Contains(logs.buf.String(), "answer=_Yes") {
		t.Fatalf("answer was not yes:\n%s", logs.buf.String())
	}
	if m := vmProps(t, d, cfg.ID, "runtime.question"); m.Runtime.Question != nil {
		t.Fatalf("question still pending: %+v", m.Runtime.Question)
	}
}

// TestStopGuestShutdown checks that a VM whose VMware Tools run is shut down by its guest.
func TestStopGuestShutdown(t *testing.T) {
	s := startSim(t, false)
	d, logs := newDriver(t, s, nil)
	cfg := startedVM(t, d)
	s.update(s.vm(t, d, cfg.ID), types.PropertyChange{
		Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsRunning),
	})
	if err := d.Stop(context.Background(), cfg.ID); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	wantPower(t, d, cfg.ID, vm.PowerOff)
	if !strings.Contains(logs.buf.String(), `how="guest shutdown"`) {
		t.Fatalf("not stopped by a guest shutdown:\n%s", logs.buf.String())
	}
}

func TestChooseAnswer(t *testing.T) {
	choice := func(key, label string) types.BaseElementDescription {
		return &types.ElementDescription{Key: key, Description: types.Description{Label: label}}
	}
	tests := []struct {
		name    string
		choices []types.BaseElementDescription
		def     int32
		want    string
	}{
		{"moved or copied keeps the identity", []types.BaseElementDescription{
			choice("button.uuid.cancel", "Cancel"), choice("button.uuid.moveit", "I _Moved It"), choice("button.uuid.copyit", "I _Copied It"),
		}, 2, "button.uuid.moveit"},
		{"yes over the default no", []types.BaseElementDescription{choice("0", "_No"), choice("1", "_Yes")}, 0, "1"},
		{"ok", []types.BaseElementDescription{choice("button.abort", "Cancel"), choice("button.ok", "OK")}, 0, "button.ok"},
		{"a word that starts with yes is not yes", []types.BaseElementDescription{choice("a", "Yesterday's state"), choice("b", "Keep")}, 1, "b"},
		{"otherwise the default", []types.BaseElementDescription{choice("a", "Retry"), choice("b", "Abort")}, 1, "b"},
		{"default out of range", []types.BaseElementDescription{choice("a", "Retry"), choice("b", "Abort")}, 7, "a"},
		{"no choices", nil, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := &types.VirtualMachineQuestionInfo{Choice: types.ChoiceOption{ChoiceInfo: tt.choices, DefaultIndex: tt.def}}
			if key, _ := chooseAnswer(q); key != tt.want {
				t.Fatalf("chooseAnswer = %q, want %q", key, tt.want)
			}
		})
	}
}

func TestReattach(t *testing.T) {
	s := startSim(t, false)
	d, _ := newDriver(t, s, func(c *Config) { c.ConsolePorts = [2]int{5900, 5901} })
	ctx := context.Background()
	cfg := startedVM(t, d)
	c, err := d.OpenConsole(ctx, cfg.ID)
	if err != nil {
		t.Fatal(err)
	}

	// A new driver, as after a restart of the node, knows nothing of the console port until
	// it reattaches the VM.
	d2, _ := newDriver(t, s, func(c *Config) { c.ConsolePorts = [2]int{5900, 5901} })
	state, err := d2.Reattach(ctx, cfg.ID)
	if err != nil || state != vm.PowerRunning {
		t.Fatalf("Reattach = %v, %v; want running", state, err)
	}
	other := startedVM(t, d2)
	c2, err := d2.OpenConsole(ctx, other.ID)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Addr == c.Addr {
		t.Fatalf("second VM got the reattached VM's console %s", c.Addr)
	}
	again, err := d2.OpenConsole(ctx, cfg.ID)
	if err != nil || again.Addr != c.Addr {
		t.Fatalf("reopened console %v, %v; want the same address %s", again, err, c.Addr)
	}
}
