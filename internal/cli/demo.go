package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/virtuoso-market/virtuoso/internal/demo"
)

func runDemo(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "demo")
	dir := f.String("dir", filepath.Join(os.TempDir(), "virtuoso-demo"), "directory for the demo nodes' homes (reused across runs)")
	if err := f.parse(args, "Run a whole marketplace on this machine, loopback only: one coordinator, two providers and a buyer, each with its own home under --dir. Runs until Ctrl-C."); err != nil {
		return err
	}
	log, err := f.logger(defaultLog)
	if err != nil {
		return err
	}
	// Ctrl-C also ends a pager or `tee` the output goes through: the marketplace must still
	// stop its VMs, so a write to a closed pipe is an error it ignores, not SIGPIPE's death,
	// which would leave the providers' QEMU processes behind.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	m, err := demo.Start(ctx, *dir, env.Version, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "Virtuoso demo marketplace in %s\n\n", *dir)
	m.Print(env.Stdout)
	<-ctx.Done()
	stop() // a second Ctrl-C now ends the process at once
	fmt.Fprintln(env.Stdout, "stopping the marketplace… (Ctrl-C again to leave running VMs running; the next demo re-attaches them)")
	if err := m.Stop(env.Stdout); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "the marketplace stopped: its VMs powered off, its nodes closed; `virtuoso demo --dir %s` starts it again with what it holds\n", *dir)
	return nil
}
