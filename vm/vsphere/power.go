package vsphere

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/virtuoso-market/virtuoso/vm"
)

// Power reports what vSphere observes. vSphere has no paused state, so PowerPaused never
// comes back.
func (d *Driver) Power(ctx context.Context, id vm.ID) (vm.PowerState, error) {
	v, err := d.find(ctx, id)
	if err != nil {
		return vm.PowerUnknown, fmt.Errorf("power state of vm %s: %w", id, err)
	}
	state, err := v.PowerState(ctx)
	if err != nil {
		return vm.PowerUnknown, fmt.Errorf("power state of vm %s: %w: %w", id, vm.ErrHypervisor, err)
	}
	return powerState(state), nil
}

func powerState(s types.VirtualMachinePowerState) vm.PowerState {
	switch s {
	case types.VirtualMachinePowerStatePoweredOn:
		return vm.PowerRunning
	case types.VirtualMachinePowerStatePoweredOff:
		return vm.PowerOff
	case types.VirtualMachinePowerStateSuspended:
		return vm.PowerSuspended
	}
	return vm.PowerUnknown
}

// Start powers the VM on. A running VM is left alone.
func (d *Driver) Start(ctx context.Context, id vm.ID) error {
	v, state, err := d.findState(ctx, id)
	if err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	if state == types.VirtualMachinePowerStatePoweredOn {
		return nil
	}
	if err := d.powerOn(ctx, id, v); err != nil {
		return fmt.Errorf("start vm %s: %w", id, err)
	}
	d.log.Info("started vm", "vm", id)
	return nil
}

// Resume powers a suspended VM on from its saved state; a running VM is left alone. A VM that is
// off has no state to resume: that is an error, Start it instead.
func (d *Driver) Resume(ctx context.Context, id vm.ID) error {
	v, state, err := d.findState(ctx, id)
	if err != nil {
		return fmt.Errorf("resume vm %s: %w", id, err)
	}
	switch state {
	case types.VirtualMachinePowerStatePoweredOn:
		return nil
	case types.VirtualMachinePowerStatePoweredOff:
		return fmt.Errorf("resume vm %s: %w: it is off, not suspended", id, vm.ErrNotRunning)
	}
	if err := d.powerOn(ctx, id, v); err != nil {
		return fmt.Errorf("resume vm %s: %w", id, err)
	}
	d.log.Info("resumed vm", "vm", id)
	return nil
}

func (d *Driver) powerOn(ctx context.Context, id vm.ID, v *object.VirtualMachine) error {
	task, err := v.PowerOn(ctx)
	if err != nil {
		return fmt.Errorf("power on: %w: %w", vm.ErrHypervisor, err)
	}
	if err := d.waitAnswering(ctx, id, v, task); err != nil {
		return fmt.Errorf("power on: %w: %w", vm.ErrHypervisor, ctxErr(ctx, err))
	}
	return nil
}

// Stop shuts the guest down through VMware Tools when they run, waiting up to StopTimeout,
// and otherwise (or then) powers the VM off, answering any question on the way. A suspended
// VM is powered off too, which discards its saved state; a VM that is off is left alone.
func (d *Driver) Stop(ctx context.Context, id vm.ID) error {
	v, state, err := d.findState(ctx, id)
	if err != nil {
		return fmt.Errorf("stop vm %s: %w", id, err)
	}
	if state == types.VirtualMachinePowerStatePoweredOff {
		return nil
	}
	if state == types.VirtualMachinePowerStatePoweredOn && d.cfg.StopTimeout > 0 && d.toolsRunning(ctx, v) {
		if err := v.ShutdownGuest(ctx); err != nil {
			d.log.Info("guest shutdown refused, powering off", "vm", id, "err", err)
		} else if d.waitOff(ctx, id, v) {
			d.afterRun(ctx, id, v)
			d.log.Info("stopped vm", "vm", id, "how", "guest shutdown")
			return nil
		}
	}
	task, err := v.PowerOff(ctx)
	if err == nil {
		err = d.waitAnswering(ctx, id, v, task)
	}
	if err != nil {
		// The guest may have finished its shutdown meanwhile.
		if s, serr := v.PowerState(ctx); serr != nil || s != types.VirtualMachinePowerStatePoweredOff {
			return fmt.Errorf("stop vm %s: power off: %w: %w", id, vm.ErrHypervisor, ctxErr(ctx, err))
		}
	}
	d.afterRun(ctx, id, v)
	d.log.Info("stopped vm", "vm", id, "how", "power off")
	return nil
}

// afterRun ends the console session of a VM that stopped running. The VM did stop, so a
// failure here is only logged; the port is freed in any case.
func (d *Driver) afterRun(ctx context.Context, id vm.ID, v *object.VirtualMachine) {
	if err := d.endConsole(ctx, id, v); err != nil {
		d.consoles.release(id)
		d.log.Warn("disable console of a stopped vm", "vm", id, "err", err)
	}
}

// waitOff waits up to StopTimeout for the VM to be off, answering questions meanwhile.
func (d *Driver) waitOff(ctx context.Context, id vm.ID, v *object.VirtualMachine) bool {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.StopTimeout)
	defer cancel()
	t := time.NewTicker(d.cfg.PollInterval)
	defer t.Stop()
	for {
		if s, err := v.PowerState(ctx); err == nil && s == types.VirtualMachinePowerStatePoweredOff {
			return true
		}
		d.answer(ctx, id, v)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

func (d *Driver) toolsRunning(ctx context.Context, v *object.VirtualMachine) bool {
	m, err := d.props(ctx, v, "guest.toolsRunningStatus")
	return err == nil && m.Guest != nil &&
		m.Guest.ToolsRunningStatus == string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
}

// Suspend asks vSphere to suspend the VM and asks again while it refuses, up to
// SuspendAttempts times SuspendRetryDelay apart (the report's provider retried while a
// booting guest made VMware refuse). After the last refusal it fails with
// vm.ErrSuspendRefused and the VM keeps running.
func (d *Driver) Suspend(ctx context.Context, id vm.ID) error {
	v, err := d.find(ctx, id)
	if err != nil {
		return fmt.Errorf("suspend vm %s: %w", id, err)
	}
	var last error
	for attempt := 1; attempt <= d.cfg.SuspendAttempts; attempt++ {
		state, err := v.PowerState(ctx)
		if err != nil {
			return fmt.Errorf("suspend vm %s: %w: %w", id, vm.ErrHypervisor, ctxErr(ctx, err))
		}
		switch state {
		case types.VirtualMachinePowerStateSuspended:
			d.afterRun(ctx, id, v)
			d.log.Info("suspended vm", "vm", id, "attempts", attempt-1)
			return nil
		case types.VirtualMachinePowerStatePoweredOff:
			return fmt.Errorf("suspend vm %s: %w", id, vm.ErrNotRunning)
		}
		task, err := v.Suspend(ctx)
		if err == nil {
			err = d.waitAnswering(ctx, id, v, task)
		}
		if err == nil {
			d.afterRun(ctx, id, v)
			d.log.Info("suspended vm", "vm", id, "attempts", attempt)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("suspend vm %s: %w", id, ctxErr(ctx, err))
		}
		if !refusal(err) {
			return fmt.Errorf("suspend vm %s: %w: %w", id, vm.ErrHypervisor, err)
		}
		last = err
		d.log.Info("suspend refused", "vm", id, "attempt", attempt, "of", d.cfg.SuspendAttempts, "err", err)
		if attempt < d.cfg.SuspendAttempts {
			if err := sleep(ctx, d.cfg.SuspendRetryDelay); err != nil {
				return fmt.Errorf("suspend vm %s: %w", id, err)
			}
		}
	}
	return fmt.Errorf("suspend vm %s: %w %d times, it keeps running: %w", id, vm.ErrSuspendRefused, d.cfg.SuspendAttempts, last)
}

// refusal tells a refusal worth asking again from a failure that asking again cannot fix.
func refusal(err error) bool {
	for _, f := range []types.BaseMethodFault{
		&types.NotAuthenticated{}, &types.NoPermission{}, &types.ManagedObjectNotFound{},
		&types.InvalidPowerState{}, &types.MethodNotFound{}, &types.NotSupported{},
		&types.InvalidArgument{},
	} {
		if isFault(err, f) {
			return false
		}
	}
	return true
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (d *Driver) findState(ctx context.Context, id vm.ID) (*object.VirtualMachine, types.VirtualMachinePowerState, error) {
	v, err := d.find(ctx, id)
	if err != nil {
		return nil, "", err
	}
	state, err := v.PowerState(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", vm.ErrHypervisor, err)
	}
	return v, state, nil
}

// waitAnswering waits for a power task while answering the questions the VM asks, which
// would otherwise hold the task forever.
func (d *Driver) waitAnswering(ctx context.Context, id vm.ID, v *object.VirtualMachine, task *object.Task) error {
	g, gctx := errgroup.WithContext(ctx)
	done := make(chan struct{})
	g.Go(func() error {
		defer close(done)
		return task.Wait(gctx)
	})
	g.Go(func() error {
		t := time.NewTicker(d.cfg.PollInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return nil
			case <-gctx.Done():
				return nil
			case <-t.C:
				d.answer(gctx, id, v)
			}
		}
	})
	return g.Wait()
}

// answer answers the VM's pending question, if any. Failures are logged: the operation that
// waits for the answer reports its own failure.
func (d *Driver) answer(ctx context.Context, id vm.ID, v *object.VirtualMachine) {
	m, err := d.props(ctx, v, "runtime.question")
	if err != nil || m.Runtime.Question == nil {
		return
	}
	q := m.Runtime.Question
	key, label := chooseAnswer(q)
	if key == "" {
		d.log.Warn("question without choices", "vm", id, "question", q.Text)
		return
	}
	if err := v.Answer(ctx, q.Id, key); err != nil {
		d.log.Warn("answer question", "vm", id, "question", q.Text, "answer", label, "err", err)
		return
	}
	d.log.Info("answered question", "vm", id, "question", q.Text, "answer", label)
}

// chooseAnswer picks the answer the report's provider gave: "I moved it" when vSphere asks
// whether a VM was moved or copied (the VM keeps the identity the marketplace issued), else
// yes or OK, else vSphere's default. It returns the choice key and its label.
func chooseAnswer(q *types.VirtualMachineQuestionInfo) (key, label string) {
	choices := q.Choice.ChoiceInfo
	if len(choices) == 0 {
		return "", ""
	}
	norm := func(e types.BaseElementDescription) string {
		d := e.GetElementDescription()
		s := strings.ToLower(d.Label + " " + d.Key)
		return strings.NewReplacer("_", "", "&", "").Replace(s)
	}
	for _, want := range []func(string) bool{
		func(s string) bool { return strings.Contains(s, "moveit") || strings.Contains(s, "moved it") },
		func(s string) bool { return hasWord(s, "yes") },
		func(s string) bool { return hasWord(s, "ok") },
	} {
		for _, c := range choices {
			if want(norm(c)) {
				d := c.GetElementDescription()
				return d.Key, d.Label
			}
		}
	}
	i := 0
	if di := int(q.Choice.DefaultIndex); di >= 0 && di < len(choices) {
		i = di
	}
	d := choices[i].GetElementDescription()
	return d.Key, d.Label
}

// hasWord reports whether w appears in s as a word of its own ("button.yes" counts, "yesterday"
// does not).
func hasWord(s, w string) bool {
	return slices.Contains(strings.FieldsFunc(s, func(r rune) bool { return r < 'a' || r > 'z' }), w)
}
