package cli

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/vm"
)

const vmSummary = `Act on the VMs of this provider node's hypervisor, to try it before selling anything.

  virtuoso vm create [--memory MB] [--disk MB] [--speed BOGOMIPS] [--image PATH] [--kernel PATH --initrd PATH --cmdline ARGS]
  virtuoso vm --local ls
  virtuoso vm --local start|stop|suspend|resume|rm ID
  virtuoso vm --local resume --fresh ID   # saved state lost: boot from the disk
  virtuoso vm --local console ID          # VNC address and one-time password`

func runVM(ctx context.Context, env Env, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		f := newFlags(env, "vm")
		if err := f.parse(args, vmSummary); err != nil {
			return err
		}
		fmt.Fprintf(env.Stderr, "virtuoso vm: say what to do; run `virtuoso vm --help`\n")
		return errUsage
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "create":
		return vmCreate(ctx, env, args)
	case "ls", "list":
		return vmList(ctx, env, args)
	}
	action, err := vmAction(env, sub)
	if err != nil {
		return err
	}
	return vmAct(ctx, env, sub, action, args)
}

// vmAction is the action of a `virtuoso vm` subcommand, in the vm package's vocabulary; 0 is
// status.
func vmAction(env Env, sub string) (vm.Action, error) {
	if sub == "status" {
		return 0, nil
	}
	a, err := vm.ParseAction(sub)
	if err == nil && slices.Contains(market.ControlActions(), a) {
		return a, nil
	}
	fmt.Fprintf(env.Stderr, "virtuoso vm: unknown action %q; use ls, status, %s\n", sub, verbs(market.ControlActions()))
	return 0, errUsage
}

// verbs are the actions' CLI words.
func verbs(as []vm.Action) string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.Verb()
	}
	return strings.Join(out, " ")
}

// freshFlag is resume's --fresh; nil for other actions.
func freshFlag(f *flags, a vm.Action) *bool {
	if a != vm.ActionResume {
		return nil
	}
	return f.Bool("fresh", false, "the saved memory state is lost or damaged: boot the VM from its disk instead (what was in its memory is lost)")
}

func printVMState(env Env, id vm.ID, st vm.State, health string) {
	fmt.Fprintf(env.Stdout, "%s %s (version %d)\n", id, st.Status, st.Version)
	if health != "" {
		fmt.Fprintf(env.Stdout, "warning: %s\n", health)
	}
}

func vmCreate(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "vm create")
	var req vm.CreateVM
	f.StringVar(&req.Name, "name", "", "a name for the VM")
	f.Int64Var(&req.MemoryMB, "memory", 256, "memory in MB")
	f.Int64Var(&req.DiskMB, "disk", 1024, "disk size in MB")
	f.Int64Var(&req.SpeedBogomips, "speed", 1000, "processor speed in bogomips")
	f.StringVar(&req.OS, "os", "", "operating system of the image")
	f.StringVar(&req.Image, "image", "", "base disk image (raw or qcow2) the disk starts as; under the provider's image dirs")
	f.StringVar(&req.Kernel, "kernel", "", "boot this Linux kernel directly")
	f.StringVar(&req.Initrd, "initrd", "", "initramfs for --kernel")
	f.StringVar(&req.Cmdline, "cmdline", "", "kernel command line for --kernel")
	if err := f.parse(args, "Create a VM on this provider's hypervisor; it starts in status stored."); err != nil {
		return err
	}
	for _, p := range []*string{&req.Image, &req.Kernel, &req.Initrd} {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return err
			}
			*p = abs
		}
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	var rec vm.Record
	if err := c.Post(ctx, "/v1/vms", req, &rec); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s %s (version %d)\n", rec.ID, rec.State.Status, rec.State.Version)
	return nil
}

func vmList(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "vm ls")
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.parse(args, "List the VMs of this provider."); err != nil {
		return err
	}
	var recs []vm.Record
	if printed, err := f.call(ctx, http.MethodGet, "/v1/vms", nil, &recs, *asJSON); printed || err != nil {
		return err
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tVERSION\tMEMORY\tDISK\tNAME\tACTIONS")
	for _, r := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%dMB\t%dMB\t%s\t%s\n", r.ID, r.State.Status, r.State.Version,
			r.Config.MemoryMB, r.Config.DiskMB, r.Config.Name, verbs(vm.Actions(r.State.Status)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range recs {
		if r.Health != "" {
			fmt.Fprintf(env.Stdout, "warning: vm %s: %s\n", r.ID, r.Health)
		}
	}
	return nil
}

func vmAct(ctx context.Context, env Env, name string, action vm.Action, args []string) error {
	f := newFlags(env, "vm "+name)
	fresh := freshFlag(f, action)
	pos, err := f.parseArgs(args, fmt.Sprintf("%s the VM; the provider refuses what its status does not allow.", name), "ID")
	if err != nil {
		return err
	}
	id := pos[0]
	c, err := f.client()
	if err != nil {
		return err
	}
	path := "/v1/vms/" + url.PathEscape(id)
	var rec vm.Record
	switch {
	case action == 0:
		err = c.Get(ctx, path, &rec)
	case action == vm.ActionView:
		var ans vm.ConsoleAnswer
		if err := c.Post(ctx, path+"/console", nil, &ans); err != nil {
			return localVMFailed(id, err)
		}
		fmt.Fprintf(env.Stdout, "VNC %s password %s\n", ans.Console.Addr, ans.Console.Password)
		return nil
	case fresh != nil && *fresh:
		err = c.Post(ctx, path+"/resume?fresh=true", nil, &rec)
	default:
		err = c.Post(ctx, path+"/"+action.Verb(), nil, &rec)
	}
	if err != nil {
		return localVMFailed(id, err)
	}
	printVMState(env, rec.ID, rec.State, rec.Health)
	return nil
}
