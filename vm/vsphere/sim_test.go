package vsphere

import (
	"bytes"
	"context"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/virtuoso-market/virtuoso/vm"
)

// sim is a vcsim instance serving on loopback for one test.
type sim struct {
	model *simulator.Model
	url   *url.URL
	pool  string // resource pool to configure, "" where there is one
}

// startSim runs vcsim in-process with an ESX (one host) or VPX (vCenter) inventory.
func startSim(t testing.TB, vpx bool) *sim {
	t.Helper()
	model := simulator.ESX()
	s := &sim{model: model}
	if vpx {
		model = simulator.VPX()
		s.model, s.pool = model, "/DC0/host/DC0_C0/Resources"
	}
	model.Machine = 0 // no sample VMs: every VM in a test is the test's own
	if err := model.Create(); err != nil {
		t.Fatalf("vcsim: %v", err)
	}
	server := model.Service.NewServer()
	t.Cleanup(func() {
		server.Close()
		model.Remove()
	})
	s.url = server.URL
	return s
}

// logBuffer collects a driver's log lines for tests that count what it did.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	on  func(line string) // called for each line, may be nil
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	n, err := l.buf.Write(p)
	on := l.on
	l.mu.Unlock()
	if on != nil {
		on(string(p))
	}
	return n, err
}

// count returns how many log lines have msg="<msg>".
func (l *logBuffer) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), `msg="`+msg+`"`)
}

// newDriver connects a driver to s, with short retry and poll intervals.
func newDriver(t testing.TB, s *sim, change func(*Config)) (*Driver, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg := Config{
		URL:               s.url,
		Insecure:          true,
		ResourcePool:      s.pool,
		SuspendRetryDelay: time.Millisecond,
		PollInterval:      10 * time.Millisecond,
		StopTimeout:       5 * time.Second,
		Logger:            slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if change != nil {
		change(&cfg)
	}
	ctx := context.Background()
	d, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close(context.Background()) })
	return d, logs
}

// testConfig is a small VM that fits vcsim's host (2 cores of 2294 MHz, 4 GiB).
func testConfig() vm.Config {
	id := vm.NewID()
	return vm.Config{ID: id, Name: "test", SpeedBogomips: 3000, MemoryMB: 256, DiskMB: 1024, MAC: vm.MACFor(id)}
}

func create(t testing.TB, d *Driver, cfg vm.Config) {
	t.Helper()
	if err := d.Create(context.Background(), cfg); err != nil {
		t.Fatalf("Create: %v", err)
	}
}

func wantPower(t testing.TB, d *Driver, id vm.ID, want vm.PowerState) {
	t.Helper()
	got, err := d.Power(context.Background(), id)
	if err != nil {
		t.Fatalf("Power: %v", err)
	}
	if got != want {
		t.Fatalf("power state %v, want %v", got, want)
	}
}

// simVM returns vcsim's own object for a VM of the driver.
func (s *sim) vm(t testing.TB, d *Driver, id vm.ID) *simulator.VirtualMachine {
	t.Helper()
	v, err := d.find(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	switch x := s.model.Map().Get(v.Reference()).(type) {
	case *simulator.VirtualMachine:
		return x
	case interface {
		inner() *simulator.VirtualMachine
	}:
		return x.inner()
	default:
		t.Fatalf("vcsim holds a %T for %s", x, v.Reference())
		return nil
	}
}

// update changes properties of a vcsim object the way vcsim itself does.
func (s *sim) update(obj mo.Reference, changes ...types.PropertyChange) {
	ctx := s.model.Service.Context
	ctx.WithLock(obj, func() { ctx.Update(obj, changes) })
}

// vmProps reads a VM's properties through the driver's client.
func vmProps(t testing.TB, d *Driver, id vm.ID, names ...string) mo.VirtualMachine {
	t.Helper()
	v, err := d.find(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	m, err := d.props(context.Background(), v, names...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// gate is a lock of its own for tasks that wait on the client: a vcsim task holds its
// entity's lock while it runs, and a task holding the VM's lock would block the very AnswerVM
// call it waits for.
type gate struct{ Self types.ManagedObjectReference }

func (g *gate) Reference() types.ManagedObjectReference { return g.Self }

// askingVM asks a question when it is told to power off, the way ESX asks about undoable disks,
// and powers off only once the question is answered.
type askingVM struct {
	*simulator.VirtualMachine
	question *types.VirtualMachineQuestionInfo
	answers  chan string
}

func (v *askingVM) inner() *simulator.VirtualMachine { return v.VirtualMachine }

func (v *askingVM) PowerOffVMTask(ctx *simulator.Context, req *types.PowerOffVM_Task) soap.HasFault {
	ctx.Update(v.VirtualMachine, []types.PropertyChange{{Name: "runtime.question", Val: v.question}})
	g := &gate{Self: types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Self.Value + "-question"}}
	task := simulator.CreateTask(g, "powerOff", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		select {
		case <-v.answers:
		case <-time.After(30 * time.Second):
			return nil, &types.Timedout{}
		}
		res := v.VirtualMachine.PowerOffVMTask(ctx, req).(*methods.PowerOffVM_TaskBody)
		inner := ctx.Map.Get(res.Res.Returnval).(*simulator.Task)
		inner.Wait()
		if inner.Info.Error != nil {
			return nil, inner.Info.Error.Fault
		}
		return nil, nil
	})
	return &methods.PowerOffVM_TaskBody{Res: &types.PowerOffVM_TaskResponse{Returnval: task.Run(ctx)}}
}

// AnswerVM is not in vcsim; this is how vSphere behaves: the question goes away and the
// operation waiting for it goes on.
func (v *askingVM) AnswerVM(ctx *simulator.Context, req *types.AnswerVM) soap.HasFault {
	body := &methods.AnswerVMBody{}
	q := v.Runtime.Question
	if q == nil || q.Id != req.QuestionId {
		body.Fault_ = simulator.Fault("no such question", &types.InvalidArgument{InvalidProperty: "questionId"})
		return body
	}
	v.Runtime.Question = nil // the call holds the VM's lock; a nil value cannot go through Update
	v.answers <- req.AnswerChoice
	body.Res = &types.AnswerVMResponse{}
	return body
}

// refusingVM fails its first refusals suspend tasks the way a guest that is still booting
// made VMware refuse (the fault comes in the task, as on vSphere).
type refusingVM struct {
	*simulator.VirtualMachine
	refusals int
	calls    *int // suspend calls seen; vcsim serialises calls on one VM
}

func (v *refusingVM) inner() *simulator.VirtualMachine { return v.VirtualMachine }

func (v *refusingVM) SuspendVMTask(ctx *simulator.Context, req *types.SuspendVM_Task) soap.HasFault {
	*v.calls++
	if *v.calls <= v.refusals {
		task := simulator.CreateTask(v.VirtualMachine, "suspend", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
			return nil, &types.InvalidState{}
		})
		return &methods.SuspendVM_TaskBody{Res: &types.SuspendVM_TaskResponse{Returnval: task.Run(ctx)}}
	}
	return v.VirtualMachine.SuspendVMTask(ctx, req)
}

// ticketVM answers AcquireTicket, which vcsim does not implement, as ESXi 7 does for webmks.
type ticketVM struct{ *simulator.VirtualMachine }

func (v *ticketVM) inner() *simulator.VirtualMachine { return v.VirtualMachine }

func (v *ticketVM) AcquireTicket(req *types.AcquireTicket) soap.HasFault {
	body := &methods.AcquireTicketBody{}
	if req.TicketType != "webmks" {
		body.Fault_ = simulator.Fault("", &types.InvalidArgument{InvalidProperty: "ticketType"})
		return body
	}
	body.Res = &types.AcquireTicketResponse{Returnval: types.VirtualMachineTicket{
		Ticket: "52a3b4c5", Host: "esx1.example", Port: 443, SslThumbprint: "AB:CD",
	}}
	return body
}
