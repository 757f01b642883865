package cli

import (
	"context"
	"fmt"
	"os/exec"
	"time"

	"github.com/virtuoso-market/virtuoso/webui"
)

func runUI(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "ui")
	open := f.Bool("open", false, "open the link in the desktop's browser (xdg-open)")
	asJSON := f.Bool("json", false, "print the link as JSON")
	if err := f.parse(args, "Print a login link to the node's web UI: it signs one browser in, once, within a few minutes. The UI is on the node's API address, loopback only."); err != nil {
		return err
	}
	var link webui.LoginLink
	if printed, err := f.call(ctx, "POST", "/v1/ui/login", struct{}{}, &link, *asJSON); err != nil || printed {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s\n(signs one browser in, once, until %s)\n", link.URL, link.Expires.Local().Format(time.TimeOnly))
	if *open {
		browser, err := exec.LookPath("xdg-open")
		if err != nil {
			return fmt.Errorf("--open: no xdg-open on this machine: open the link above in a browser")
		}
		if err := exec.Command(browser, link.URL).Start(); err != nil {
			return fmt.Errorf("--open: %w: open the link above in a browser", err)
		}
	}
	return nil
}
