package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/progress"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/vm"
)

// marketCommands are the marketplace commands: the buyer's catalog, offers, averages, search,
// store and leased VMs, and the provider's machines.
func marketCommands() []command {
	return []command{
		{"configs", "[add --from NAME --name NEW [edits]] [--json]", "list the configurations catalog with market averages, or add an edited one", runConfigs},
		{"offers", "[--json]", "list the live offers in this node's offer book", runOffers},
		{"market", "[--history CONFIG] [--json]", "show the market's average prices", runMarket},
		{"search", "--config NAME [edits] [--sort total|storage|running] [--days N] [--hours H] [filters] [--json]", "find the providers that can host a configuration, cheapest first", runSearch},
		{"store", "--config NAME [edits] --machine ID [--provider PEER] [--running-price P --storage-price P] [--json]", "store a configuration on a provider's machine", runStore},
		{"vm", "ls|status|start|stop|suspend|resume|console|rm [ID] [--json]; create|--local … for this provider's hypervisor", "act on your leased VMs wherever they are stored", runMarketVM},
		{"machine", "add|edit|ls|rm [ID] [flags]", "sell this provider's machines: describe, price, remove", runMachine},
		{"migrate", "VM [--to PEER] [--machine ID] [--method blockdiff|full] [--status] [--json]", "move a VM to another provider's machine, atomically, billing handed over; without a destination, list where it can go", runMigrate},
	}
}

// configEditFlags adds the flags that edit a configuration.
func configEditFlags(f *flags) *market.ConfigEdit {
	var e market.ConfigEdit
	f.Int64Var(&e.SpeedBogomips, "speed", 0, "processor speed in bogomips (default: the configuration's)")
	f.Int64Var(&e.MemoryMB, "memory", 0, "memory in MB (default: the configuration's)")
	f.Int64Var(&e.DiskMB, "disk", 0, "disk in MB (default: the configuration's)")
	f.StringVar(&e.OS, "os", "", "operating system (default: the configuration's)")
	f.StringVar(&e.Processor, "processor", "", "processor type (default: the configuration's)")
	return &e
}

func runConfigs(ctx context.Context, env Env, args []string) error {
	if len(args) > 0 && args[0] == "add" {
		f := newFlags(env, "configs add")
		from := f.String("from", "", "the configuration to start from (see `virtuoso configs`)")
		name := f.String("name", "", "the new configuration's name")
		edit := configEditFlags(f)
		if _, err := f.parseArgs(args[1:], "Keep an edited configuration in your catalog under its own name."); err != nil {
			return err
		}
		if *from == "" || *name == "" {
			fmt.Fprintln(env.Stderr, "virtuoso configs add: --from and --name are required")
			return errUsage
		}
		c, err := f.client()
		if err != nil {
			return err
		}
		var views []market.ConfigView
		if err := c.Get(ctx, "/v1/market/configs", &views); err != nil {
			return err
		}
		for _, v := range views {
			if v.Name == *from {
				cfg := edit.Apply(v.Configuration)
				cfg.Name = *name
				if err := c.Post(ctx, "/v1/market/configs", cfg, &cfg); err != nil {
					return err
				}
				fmt.Fprintf(env.Stdout, "added %s: %d bogomips, %d MB memory, %d MB disk\n", cfg.Name, cfg.SpeedBogomips, cfg.MemoryMB, cfg.DiskMB)
				return nil
			}
		}
		return fmt.Errorf("no configuration %q; `virtuoso configs` lists them", *from)
	}
	f := newFlags(env, "configs")
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.parse(args, "List the configurations catalog: standard ones, preconfigured ones with an OS image, and yours, each with the market's average price."); err != nil {
		return err
	}
	var views []market.ConfigView
	if printed, err := f.call(ctx, http.MethodGet, "/v1/market/configs", nil, &views, *asJSON); printed || err != nil {
		return err
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tOS\tSPEED\tMEMORY\tDISK\tAVG RUNNING/H\tAVG STORAGE/DAY\tPROVIDERS")
	for _, v := range views {
		kind := "bare"
		if v.Preconfigured {
			kind = "preconfigured"
		}
		if v.Own {
			kind += ", yours"
		}
		run, store, n := "-", "-", "0"
		if a := v.Average; a != nil && !a.Updated.IsZero() {
			run, store, n = a.RunningPerHour.String(), a.StoragePerDay.String(), strconv.Itoa(a.Providers)
			if a.Stale {
				n = "0 (last known)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MB\t%d MB\t%s\t%s\t%s\n", v.Name, kind, orDash(v.OS), v.SpeedBogomips, v.MemoryMB, v.DiskMB, run, store, n)
	}
	return tw.Flush()
}

func runOffers(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "offers")
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.parse(args, "List the live offers of this node's offer book: each provider machine's free capacity, chunks and prices."); err != nil {
		return err
	}
	var offers []market.Offer
	if printed, err := f.call(ctx, http.MethodGet, "/v1/market/offers", nil, &offers, *asJSON); printed || err != nil {
		return err
	}
	if len(offers) == 0 {
		fmt.Fprintln(env.Stdout, "no offers yet (providers publish every few minutes; is the node connected? `virtuoso peers`)")
		return nil
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROVIDER\tMACHINE\tNAME\tFREE SPEED/MEMORY/STORAGE\tSPEED\tMEMORY\tSTORAGE\tPERIODS\tNETWORK")
	for _, o := range offers {
		t := o.Terms
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d / %d MB / %d MB\t%s per %d\t%s per %d MB\t%s per %d MB\t%s run, %s store\t%d Mbps\n",
			market.Short(o.Provider), o.Machine.String()[:8], o.Name, o.Free.SpeedBogomips, o.Free.MemoryMB, o.Free.StorageMB,
			t.SpeedPrice, t.SpeedUnit, t.MemoryPrice, t.MemoryUnit, t.StoragePrice, t.StorageUnit,
			secs(t.RunningSecs), secs(t.StorageSecs), o.NetworkMbps)
	}
	return tw.Flush()
}

func runMarket(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "market")
	asJSON := f.Bool("json", false, "print JSON")
	history := f.String("history", "", "print this configuration's price history instead")
	if err := f.parse(args, "Show the market: the average asked price of each configuration over the providers that can host it, and the average price of each resource (recomputed every minute)."); err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	if *history != "" {
		var hist []market.Sample
		if err := c.Get(ctx, "/v1/market/averages/history?config="+url.QueryEscape(*history), &hist); err != nil {
			return err
		}
		if *asJSON {
			return printJSON(env, hist)
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tRUNNING/H\tSTORAGE/DAY\tPROVIDERS")
		for _, s := range hist {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", s.Time.Local().Format(time.DateTime), s.RunningPerHour, s.StoragePerDay, s.Providers)
		}
		return tw.Flush()
	}
	var avg market.Averages
	if err := c.Get(ctx, "/v1/market/averages", &avg); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(env, avg)
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONFIGURATION\tRUNNING/H\tSTORAGE/DAY\tPROVIDERS")
	for _, a := range avg.Configs {
		run, store, n := a.RunningPerHour.String(), a.StoragePerDay.String(), strconv.Itoa(a.Providers)
		switch {
		case a.Updated.IsZero():
			run, store, n = "-", "-", "none yet"
		case a.Stale:
			n = "none now (last known values)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Config, run, store, n)
	}
	tw.Flush()
	r := avg.Resources
	fmt.Fprintf(env.Stdout, "\nResources over %d offers: speed %s per 1000 bogomips·hour, memory %s per GB·hour, storage %s per GB·day\n",
		r.Providers, r.SpeedPer1000BogomipsHour, r.MemoryPerGBHour, r.StoragePerGBDay)
	return nil
}

func runSearch(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "search")
	var q market.SearchQuery
	f.StringVar(&q.ConfigName, "config", "", "configuration to host (see `virtuoso configs`)")
	edit := configEditFlags(f)
	f.StringVar(&q.Sort, "sort", "total", "rank by total, storage or running cost of the usage profile")
	days := f.Int64("days", 30, "usage profile: days the VM stays stored")
	hours := f.Float64("hours", 8, "usage profile: hours it runs per day")
	maxTotal := f.String("max-total", "", "most the profile may cost in all")
	maxStorage := f.String("max-storage", "", "most its storage may cost")
	maxRunning := f.String("max-running", "", "most its running may cost")
	f.StringVar(&q.Processor, "require-processor", "", "only machines with this processor (default: the configuration's)")
	f.Int64Var(&q.MinNetworkMbps, "min-network", 0, "only machines with at least this network speed, Mbps")
	var methods multiFlag
	f.Var(&methods, "method", "only machines accepting this migration method (repeatable)")
	f.IntVar(&q.Limit, "limit", 20, "most results")
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.parse(args, "Find the providers that can host a configuration (free capacity, processor, image), priced exactly as each provider's chunks and prices say, cheapest first for a usage profile."); err != nil {
		return err
	}
	if q.ConfigName == "" {
		fmt.Fprintln(env.Stderr, "virtuoso search: --config is required; `virtuoso configs` lists them")
		return errUsage
	}
	if *hours < 0 || *hours > 24 {
		return fmt.Errorf("--hours %v: give 0 to 24", *hours)
	}
	q.Edit, q.Methods = *edit, methods
	q.Usage = market.Usage{Days: *days, RunSecondsPerDay: int64(*hours * 3600)}
	for _, m := range []struct {
		flag string
		text string
		dst  *market.Money
	}{{"--max-total", *maxTotal, &q.MaxTotal}, {"--max-storage", *maxStorage, &q.MaxStorage}, {"--max-running", *maxRunning, &q.MaxRunning}} {
		if m.text == "" {
			continue
		}
		v, err := market.ParseMoney(m.text)
		if err != nil {
			return fmt.Errorf("%s: %w", m.flag, err)
		}
		*m.dst = v
	}
	var matches []market.Match
	if printed, err := f.call(ctx, http.MethodPost, "/v1/market/search", q, &matches, *asJSON); printed || err != nil {
		return err
	}
	if len(matches) == 0 {
		fmt.Fprintln(env.Stdout, "no provider can host it with these filters (`virtuoso offers` shows what is offered)")
		return nil
	}
	fmt.Fprintf(env.Stdout, "Usage profile: stored %d days, running %.1f h a day.\n\n", *days, *hours)
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tPROVIDER\tMACHINE\tNAME\tRUNNING\tSTORAGE\tPROFILE STORAGE\tPROFILE RUNNING\tPROFILE TOTAL")
	for i, m := range matches {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s per %s\t%s per %s\t%s\t%s\t%s\n", i+1, market.Short(m.Provider), m.Machine.String()[:8], m.Name,
			m.Quote.RunningPrice, secs(m.Quote.RunningSecs), m.Quote.StoragePrice, secs(m.Quote.StorageSecs),
			m.Cost.Storage, m.Cost.Running, m.Cost.Total)
	}
	tw.Flush()
	best := matches[0]
	fmt.Fprintf(env.Stdout, "\nStore on the first at these prices:\n  virtuoso store --config %s%s --provider %s --machine %s --running-price %s --storage-price %s\n",
		q.ConfigName, editArgs(q.Edit), best.Provider, best.Machine, best.Quote.RunningPrice, best.Quote.StoragePrice)
	return nil
}

func editArgs(e market.ConfigEdit) string {
	var b strings.Builder
	if e.SpeedBogomips != 0 {
		fmt.Fprintf(&b, " --speed %d", e.SpeedBogomips)
	}
	if e.MemoryMB != 0 {
		fmt.Fprintf(&b, " --memory %d", e.MemoryMB)
	}
	if e.DiskMB != 0 {
		fmt.Fprintf(&b, " --disk %d", e.DiskMB)
	}
	if e.OS != "" {
		fmt.Fprintf(&b, " --os %q", e.OS)
	}
	if e.Processor != "" {
		fmt.Fprintf(&b, " --processor %q", e.Processor)
	}
	return b.String()
}

const migrateSummary = `Move one of your VMs to another provider's machine, atomically: the destination takes a
new lease at its current terms, the origin suspends the VM if it runs, the destination copies it
(only what differs, if it held an older copy) and adopts it, the origin confirms it sent it, and
the ledger moves the lease; the VM runs again at the destination if it ran. If anything fails
before the destination commits, the VM stays where it is, in its status, under its old lease; a
node stopped in the middle finishes or reverts the move when it starts again.

Without --machine or --to it lists where the VM can go and what it would cost there.`

func runMigrate(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "migrate")
	var req market.MigrateRequest
	machine := f.String("machine", "", "the destination machine's ID or its start (from the list or `virtuoso search`)")
	f.StringVar(&req.Provider, "to", "", "the destination's peer ID (the cheapest of its machines unless --machine names one)")
	f.StringVar(&req.Provider, "provider", "", "the same as --to")
	f.StringVar(&req.Method, "method", "blockdiff", "how the files travel: blockdiff (only what differs) or full")
	days := f.Int64("days", 30, "usage profile of the cost comparison: days the VM stays stored")
	hours := f.Float64("hours", 8, "usage profile of the cost comparison: hours it runs per day")
	status := f.Bool("status", false, "show the VM's migration under way or the last one, and do nothing")
	asJSON := f.Bool("json", false, "print JSON")
	pos, err := f.parseArgs(args, migrateSummary, "VM")
	if err != nil {
		return err
	}
	id := url.PathEscape(pos[0])
	if *status {
		var m market.Migration
		if printed, err := f.call(ctx, http.MethodGet, "/v1/market/migrations/"+id, nil, &m, *asJSON); printed || err != nil {
			return err
		}
		printMigration(env.Stdout, m)
		return nil
	}
	if req.Method != "blockdiff" && req.Method != "full" {
		fmt.Fprintf(env.Stderr, "virtuoso migrate: --method %q: use blockdiff or full\n", req.Method)
		return errUsage
	}
	if *hours < 0 || *hours > 24 {
		return fmt.Errorf("--hours %v: give 0 to 24", *hours)
	}
	if *machine == "" {
		var d market.Destinations
		path := fmt.Sprintf("/v1/market/vms/%s/destinations?days=%d&hours=%g", id, *days, *hours)
		if printed, err := f.call(ctx, http.MethodGet, path, nil, &d, *asJSON && req.Provider == ""); printed || err != nil {
			return err
		}
		if req.Provider == "" {
			printDestinations(env.Stdout, d, *days, *hours)
			return nil
		}
		for _, m := range d.Matches { // cheapest first
			if m.Provider.String() == req.Provider {
				req.Machine = m.Machine
				break
			}
		}
		if req.Machine.IsZero() {
			return fmt.Errorf("--to %s: that provider offers no machine that can host the vm now (`virtuoso migrate %s` lists those that can)", req.Provider, pos[0])
		}
	} else if req.Machine, err = machineByPrefix(ctx, f, *machine, &req.Provider); err != nil {
		return fmt.Errorf("--machine: %w", err)
	}

	// The move runs in the node; this shows its steps and the copy's progress as it goes.
	type answer struct {
		v   market.VM
		err error
	}
	done := make(chan answer, 1)
	go func() {
		var a answer
		_, a.err = f.call(ctx, http.MethodPost, "/v1/market/vms/"+id+"/migrate", req, &a.v, false)
		done <- a
	}()
	bar := progress.New(env.Stderr, "copy")
	step := ""
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var a answer
	for waiting := true; waiting; {
		select {
		case a = <-done:
			waiting = false
		case <-tick.C:
		}
		var m market.Migration
		if _, err := f.call(ctx, http.MethodGet, "/v1/market/migrations/"+id, nil, &m, false); err != nil || m.Started.IsZero() {
			continue
		}
		if s := migrationStep(m); s != step {
			step = s
			bar.Status(s)
			if !progress.IsTerminal(env.Stderr) || m.Step != market.StepCopy {
				fmt.Fprintf(env.Stderr, "%s  %s\n", m.Updated.Local().Format("15:04:05"), s)
			}
		}
		if m.Step == market.StepCopy && m.Total > 0 {
			var eta time.Duration
			if r := m.Rate(); r > 0 {
				eta = time.Duration(float64(m.Total-m.Done) / r * float64(time.Second))
			}
			bar.Update(m.Done, m.Total, m.Rate(), eta)
		}
	}
	var m market.Migration
	if _, err := f.call(ctx, http.MethodGet, "/v1/market/migrations/"+id, nil, &m, false); err == nil && m.Total > 0 {
		bar.Finish(fmt.Sprintf("copied %s of %s with %s on the wire", progress.FormatSize(m.Done), progress.FormatSize(m.Total), progress.FormatSize(m.Wire)))
	} else {
		bar.Finish("")
	}
	if a.err != nil {
		return a.err
	}
	if *asJSON {
		return printJSON(env, a.v)
	}
	v := a.v
	fmt.Fprintf(env.Stdout, "vm %s is on %s (machine %s) now, %s, version %d, lease %s\n", v.ID, market.Short(v.Provider), v.Machine.String()[:8], v.State.Status, v.State.Version, v.Lease)
	fmt.Fprintf(env.Stdout, "charged %s per %s while running, %s per %s while stored from now on\n",
		v.Quote.RunningPrice, secs(v.Quote.RunningSecs), v.Quote.StoragePrice, secs(v.Quote.StorageSecs))
	return nil
}

// migrationStep names a migration's step for people: the destination's inside the copy.
func migrationStep(m market.Migration) string {
	s := m.Step
	if m.Step == market.StepCopy && m.DestStep != "" {
		s += " (destination: " + m.DestStep + ")"
	}
	if m.Waiting != "" {
		s += ": " + m.Waiting
	}
	return s
}

func printMigration(w io.Writer, m market.Migration) {
	fmt.Fprintf(w, "vm %s: from %s to %s (machine %s, %s)\n", m.VM, market.Short(m.Origin), market.Short(m.To), m.Machine.String()[:8], m.Method)
	fmt.Fprintf(w, "step      %s\n", migrationStep(m))
	fmt.Fprintf(w, "started   %s, last step %s\n", m.Started.Local().Format(time.DateTime), m.Updated.Local().Format(time.TimeOnly))
	if m.Total > 0 {
		fmt.Fprintf(w, "copied    %s of %s, %s on the wire\n", progress.FormatSize(m.Done), progress.FormatSize(m.Total), progress.FormatSize(m.Wire))
	}
	if m.Error != "" {
		fmt.Fprintf(w, "why       %s\n", m.Error)
	}
}

func printDestinations(w io.Writer, d market.Destinations, days int64, hours float64) {
	c := d.Current
	fmt.Fprintf(w, "vm %s is on %s, machine %s: %s per %s running, %s per %s stored; %s for the profile (stored %d days, running %.1f h a day)\n\n",
		d.VM, market.Short(c.Provider), c.Machine.String()[:8], c.Quote.RunningPrice, secs(c.Quote.RunningSecs),
		c.Quote.StoragePrice, secs(c.Quote.StorageSecs), c.Cost.Total, days, hours)
	if len(d.Matches) == 0 {
		fmt.Fprintln(w, "no other provider can host it now (`virtuoso offers` shows what is offered)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tPROVIDER\tMACHINE\tNAME\tMETHODS\tRUNNING\tSTORAGE\tPROFILE TOTAL\tVS NOW")
	for i, m := range d.Matches {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s per %s\t%s per %s\t%s\t%s\n", i+1, market.Short(m.Provider), m.Machine.String()[:8], m.Name,
			strings.Join(m.Methods, ","), m.Quote.RunningPrice, secs(m.Quote.RunningSecs), m.Quote.StoragePrice, secs(m.Quote.StorageSecs),
			m.Cost.Total, signed(m.Cost.Total-c.Cost.Total))
	}
	tw.Flush()
	best := d.Matches[0]
	fmt.Fprintf(w, "\nMove it to the first:\n  virtuoso migrate %s --to %s --machine %s\n", d.VM, best.Provider, best.Machine.String()[:8])
}

// signed is a difference of money with its sign.
func signed(m market.Money) string {
	if m > 0 {
		return "+" + m.String()
	}
	if m < 0 {
		return "-" + (-m).String()
	}
	return "same"
}

// machineByPrefix resolves a machine ID, or the start of one as `virtuoso search` prints it,
// from the node's offer book; an ambiguous prefix is refused.
func machineByPrefix(ctx context.Context, f *flags, text string, provider *string) (market.MachineID, error) {
	if id, err := market.ParseMachineID(text); err == nil {
		return id, nil
	}
	var offers []market.Offer
	if _, err := f.call(ctx, http.MethodGet, "/v1/market/offers", nil, &offers, false); err != nil {
		return market.MachineID{}, err
	}
	var found []market.Offer
	for _, o := range offers {
		if strings.HasPrefix(o.Machine.String(), strings.ToLower(text)) && (*provider == "" || o.Provider.String() == *provider) {
			found = append(found, o)
		}
	}
	switch len(found) {
	case 0:
		return market.MachineID{}, fmt.Errorf("no machine %q in the offer book (`virtuoso search --config NAME` lists them)", text)
	case 1:
		*provider = found[0].Provider.String()
		return found[0].Machine, nil
	}
	return market.MachineID{}, fmt.Errorf("%q is the start of %d machines' IDs: give more of it", text, len(found))
}

func runStore(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "store")
	var req market.StoreRequest
	f.StringVar(&req.ConfigName, "config", "", "configuration to store (see `virtuoso configs`)")
	edit := configEditFlags(f)
	machine := f.String("machine", "", "the provider's machine ID or its start (from `virtuoso search`)")
	f.StringVar(&req.Provider, "provider", "", "the provider's peer ID (needed only if the machine ID's start is ambiguous)")
	running := f.String("running-price", "", "the running price per period you agree to; refused if the provider's differs")
	storage := f.String("storage-price", "", "the storage price per period you agree to; refused if the provider's differs")
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.parse(args, "Store a configuration on a provider's machine: your node proposes a signed lease at the offer's terms, the provider creates the VM and countersigns. The VM is then yours to start (`virtuoso vm start ID`)."); err != nil {
		return err
	}
	if req.ConfigName == "" || *machine == "" {
		fmt.Fprintln(env.Stderr, "virtuoso store: --config and --machine are required; `virtuoso search --config NAME` finds machines")
		return errUsage
	}
	var err error
	if req.Machine, err = machineByPrefix(ctx, f, *machine, &req.Provider); err != nil {
		return fmt.Errorf("--machine: %w", err)
	}
	req.Edit = *edit
	for _, p := range []struct {
		flag, text string
		dst        **market.Money
	}{{"--running-price", *running, &req.ExpectRunning}, {"--storage-price", *storage, &req.ExpectStorage}} {
		if p.text == "" {
			continue
		}
		v, err := market.ParseMoney(p.text)
		if err != nil {
			return fmt.Errorf("%s: %w", p.flag, err)
		}
		*p.dst = &v
	}
	var v market.VM
	if printed, err := f.call(ctx, http.MethodPost, "/v1/market/store", req, &v, *asJSON); printed || err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "stored vm %s on %s (machine %s), lease %s\n", v.ID, market.Short(v.Provider), v.Machine.String()[:8], v.Lease)
	fmt.Fprintf(env.Stdout, "charged %s per %s while running, %s per %s while stored; these prices are frozen in the lease\n",
		v.Quote.RunningPrice, secs(v.Quote.RunningSecs), v.Quote.StoragePrice, secs(v.Quote.StorageSecs))
	fmt.Fprintf(env.Stdout, "start it: virtuoso vm start %s\n", v.ID.String()[:8])
	return nil
}

const marketVMSummary = `Act on your leased VMs, wherever they are stored; the provider executes only what the VM's
status allows, and only for you.

  virtuoso vm ls
  virtuoso vm status|start|stop|suspend|resume|rm ID     # ID or a unique prefix
  virtuoso vm resume --fresh ID   # the saved memory state is lost: boot from the disk
  virtuoso vm console ID     # a loopback VNC address tunnelled to the provider, and a one-time password

  virtuoso vm --local …      # this provider's own hypervisor (create, ls, start, …)`

func runMarketVM(ctx context.Context, env Env, args []string) error {
	if len(args) > 0 && (args[0] == "--local" || args[0] == "-local" || args[0] == "create") {
		if args[0] != "create" {
			args = args[1:]
		}
		return runVM(ctx, env, args)
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		f := newFlags(env, "vm")
		if err := f.parse(args, marketVMSummary); err != nil {
			return err
		}
		fmt.Fprintf(env.Stderr, "virtuoso vm: say what to do; run `virtuoso vm --help`\n")
		return errUsage
	}
	sub, args := args[0], args[1:]
	if sub == "ls" || sub == "list" {
		f := newFlags(env, "vm ls")
		asJSON := f.Bool("json", false, "print JSON")
		cached := f.Bool("cached", false, "show the last known statuses without asking the providers")
		if err := f.parse(args, "List your leased VMs with their status, asked of their providers."); err != nil {
			return err
		}
		var vms []market.VM
		if printed, err := f.call(ctx, http.MethodGet, "/v1/market/vms?refresh="+strconv.FormatBool(!*cached), nil, &vms, *asJSON); printed || err != nil {
			return err
		}
		if len(vms) == 0 {
			fmt.Fprintln(env.Stdout, "no vms yet: `virtuoso search --config NAME`, then `virtuoso store`")
			return nil
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VM\tCONFIG\tPROVIDER\tSTATUS\tVERSION\tLEASE\tRUNNING\tSTORAGE\tACTIONS")
		var warnings []string
		for _, v := range vms {
			lease := v.LeaseState
			if v.Note != "" {
				lease += ": " + v.Note
			}
			if v.Health != "" {
				warnings = append(warnings, fmt.Sprintf("vm %s: %s", v.ID, v.Health))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s/%s\t%s/%s\t%s\n", v.ID, v.Config.Name, market.Short(v.Provider),
				v.State.Status, v.State.Version, lease, v.Quote.RunningPrice, secs(v.Quote.RunningSecs),
				v.Quote.StoragePrice, secs(v.Quote.StorageSecs), verbs(v.Actions))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, w := range warnings {
			fmt.Fprintf(env.Stdout, "warning: %s\n", w)
		}
		return nil
	}
	action, err := vmAction(env, sub)
	if err != nil {
		return err
	}
	f := newFlags(env, "vm "+sub)
	asJSON := f.Bool("json", false, "print JSON")
	fresh := freshFlag(f, action)
	pos, err := f.parseArgs(args, fmt.Sprintf("%s your VM through its provider.", sub), "ID")
	if err != nil {
		return err
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	id := pos[0]
	path := "/v1/market/vms/" + url.PathEscape(id)
	if action == 0 { // status
		var v market.VM
		if err := c.Get(ctx, path, &v); err != nil {
			return vmFailed(id, err)
		}
		if *asJSON {
			return printJSON(env, v)
		}
		printVMState(env, v.ID, v.State, v.Health)
		return nil
	}
	path += "/" + action.Verb()
	if fresh != nil && *fresh {
		path += "?fresh=true"
	}
	if action == vm.ActionView {
		var s market.ConsoleSession
		if err := c.Post(ctx, path, nil, &s); err != nil {
			return vmFailed(id, err)
		}
		if *asJSON {
			return printJSON(env, s)
		}
		fmt.Fprintf(env.Stdout, "VNC %s password %s\n(a port on this machine tunnelled to the provider; the password is for this session only)\n", s.Addr, s.Password)
		return nil
	}
	var v market.VM
	if err := c.Post(ctx, path, nil, &v); err != nil {
		return vmFailed(id, err)
	}
	if *asJSON {
		return printJSON(env, v)
	}
	printVMState(env, v.ID, v.State, v.Health)
	return nil
}

const machineSummary = `Describe and price the machines this provider sells (the node runs with --provider).

  virtuoso machine add [--name N] [--copy-from ID] [capacity, chunk, price and period flags]
  virtuoso machine edit ID [chunk, price and period flags]   # capacity and processor are locked
  virtuoso machine ls
  virtuoso machine rm ID [--force]                          # --force evicts stored VMs, notifying their owners`

// machineFlags are the flags of machine add and edit.
type machineFlags struct {
	name, processor, methods               *string
	speed, memory, storage, network        *int64
	speedUnit, memoryUnit, storageUnit     *int64
	speedPrice, memoryPrice, storagePrice  *string
	runningPeriod, storagePeriod, copyFrom *string
}

func newMachineFlags(f *flags, add bool) *machineFlags {
	m := &machineFlags{
		name:          f.String("name", "", "a human-readable name"),
		network:       f.Int64("network", 0, "network speed in Mbps"),
		methods:       f.String("methods", "", "migration methods accepted, comma-separated (default blockdiff,full)"),
		speedUnit:     f.Int64("speed-unit", 0, "bogomips per speed chunk (default 500)"),
		memoryUnit:    f.Int64("memory-unit", 0, "MB per memory chunk (default 256)"),
		storageUnit:   f.Int64("storage-unit", 0, "MB per storage chunk (default 1024)"),
		speedPrice:    f.String("speed-price", "", "price per speed chunk per running period (default 0.002)"),
		memoryPrice:   f.String("memory-price", "", "price per memory chunk per running period (default 0.001)"),
		storagePrice:  f.String("storage-price", "", "price per storage chunk per storage period (default 0.005)"),
		runningPeriod: f.String("running-period", "", "running billing period, e.g. 1h (default 1h)"),
		storagePeriod: f.String("storage-period", "", "storage billing period, e.g. 24h (default 24h)"),
	}
	if add {
		m.speed = f.Int64("speed", 0, "capacity: speed in bogomips (default: measured)")
		m.memory = f.Int64("memory", 0, "capacity: memory in MB (default: measured)")
		m.storage = f.Int64("storage", 0, "capacity: storage in MB (default: measured free disk)")
		m.processor = f.String("processor", "", "processor type (default x86_64)")
		m.copyFrom = f.String("copy-from", "", "start from this machine's description (its ID)")
	}
	return m
}

// terms returns base with the chunk, price and period flags that were given applied.
func (m *machineFlags) terms(f *flags, base market.Terms) (market.Terms, error) {
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	t := base
	for _, u := range []struct {
		flag string
		v    int64
		dst  *int64
	}{{"speed-unit", *m.speedUnit, &t.SpeedUnit}, {"memory-unit", *m.memoryUnit, &t.MemoryUnit}, {"storage-unit", *m.storageUnit, &t.StorageUnit}} {
		if set[u.flag] {
			*u.dst = u.v
		}
	}
	for _, p := range []struct {
		flag, text string
		dst        *market.Money
	}{{"speed-price", *m.speedPrice, &t.SpeedPrice}, {"memory-price", *m.memoryPrice, &t.MemoryPrice}, {"storage-price", *m.storagePrice, &t.StoragePrice}} {
		if !set[p.flag] {
			continue
		}
		v, err := market.ParseMoney(p.text)
		if err != nil {
			return t, fmt.Errorf("--%s: %w", p.flag, err)
		}
		*p.dst = v
	}
	for _, p := range []struct {
		flag, text string
		dst        *int64
	}{{"running-period", *m.runningPeriod, &t.RunningSecs}, {"storage-period", *m.storagePeriod, &t.StorageSecs}} {
		if !set[p.flag] {
			continue
		}
		d, err := time.ParseDuration(p.text)
		if err != nil || d < time.Second || d%time.Second != 0 {
			return t, fmt.Errorf("--%s %q: give a whole number of seconds as a duration, e.g. 1h or 90s", p.flag, p.text)
		}
		*p.dst = int64(d / time.Second)
	}
	return t, nil
}

func (m *machineFlags) methodList() []string {
	if *m.methods == "" {
		return nil
	}
	var out []string
	for _, s := range strings.Split(*m.methods, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func runMachine(ctx context.Context, env Env, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		f := newFlags(env, "machine")
		if err := f.parse(args, machineSummary); err != nil {
			return err
		}
		fmt.Fprintf(env.Stderr, "virtuoso machine: say what to do; run `virtuoso machine --help`\n")
		return errUsage
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "add":
		f := newFlags(env, "machine add")
		mf := newMachineFlags(f, true)
		if _, err := f.parseArgs(args, "Add a machine to sell; its capacity and processor are locked once added. Unset capacity is measured on this host; unset chunks, prices and periods take the defaults (or the --copy-from machine's)."); err != nil {
			return err
		}
		// Unset terms stay zero: the node fills them from --copy-from or the defaults.
		terms, err := mf.terms(f, market.Terms{})
		if err != nil {
			return err
		}
		spec := market.MachineSpec{Name: *mf.name, Processor: *mf.processor, Terms: terms, NetworkMbps: *mf.network,
			Methods: mf.methodList(), Capacity: market.Resources{SpeedBogomips: *mf.speed, MemoryMB: *mf.memory, StorageMB: *mf.storage}}
		if *mf.copyFrom != "" {
			id, err := market.ParseMachineID(*mf.copyFrom)
			if err != nil {
				return fmt.Errorf("--copy-from: %w", err)
			}
			spec.CopyFrom = &id
		}
		if spec.Name == "" && spec.CopyFrom == nil {
			spec.Name = "machine"
		}
		c, err := f.client()
		if err != nil {
			return err
		}
		var m market.Machine
		if err := c.Post(ctx, "/v1/market/machines", spec, &m); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "added machine %s (%s): %s; its offer is published\n", m.ID, m.Name, m.Capacity)
		return nil
	case "edit":
		f := newFlags(env, "machine edit")
		mf := newMachineFlags(f, false)
		pos, err := f.parseArgs(args, "Change a machine's chunks, prices, periods, name, network speed or methods. Leases already made keep their terms.", "ID")
		if err != nil {
			return err
		}
		c, err := f.client()
		if err != nil {
			return err
		}
		var views []market.MachineView
		if err := c.Get(ctx, "/v1/market/machines", &views); err != nil {
			return err
		}
		var cur *market.Machine
		for i := range views {
			if strings.HasPrefix(views[i].ID.String(), strings.ToLower(pos[0])) {
				if cur != nil {
					return fmt.Errorf("%q matches several machines; give more of the ID", pos[0])
				}
				cur = &views[i].Machine
			}
		}
		if cur == nil {
			return fmt.Errorf("no machine %q here; `virtuoso machine ls` lists them", pos[0])
		}
		terms, err := mf.terms(f, cur.Terms)
		if err != nil {
			return err
		}
		e := market.MachineEdit{Terms: &terms}
		if *mf.name != "" {
			e.Name = mf.name
		}
		if *mf.network != 0 {
			e.NetworkMbps = mf.network
		}
		if ms := mf.methodList(); ms != nil {
			e.Methods = &ms
		}
		var m market.Machine
		if err := c.Post(ctx, "/v1/market/machines/"+cur.ID.String(), e, &m); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "machine %s now sells speed at %s per %d bogomips, memory at %s per %d MB per %s; storage at %s per %d MB per %s\n",
			m.ID.String()[:8], m.Terms.SpeedPrice, m.Terms.SpeedUnit, m.Terms.MemoryPrice, m.Terms.MemoryUnit, secs(m.Terms.RunningSecs),
			m.Terms.StoragePrice, m.Terms.StorageUnit, secs(m.Terms.StorageSecs))
		return nil
	case "ls", "list":
		f := newFlags(env, "machine ls")
		asJSON := f.Bool("json", false, "print JSON")
		if err := f.parse(args, "List this provider's machines with their free capacity and stored VMs."); err != nil {
			return err
		}
		var views []market.MachineView
		if printed, err := f.call(ctx, http.MethodGet, "/v1/market/machines", nil, &views, *asJSON); printed || err != nil {
			return err
		}
		if len(views) == 0 {
			fmt.Fprintln(env.Stdout, "no machines yet: `virtuoso machine add`")
			return nil
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "MACHINE\tNAME\tCAPACITY SPEED/MEMORY/STORAGE\tFREE\tVMS\tSPEED\tMEMORY\tSTORAGE\tPERIODS")
		for _, v := range views {
			t := v.Terms
			fmt.Fprintf(tw, "%s\t%s\t%d / %d MB / %d MB\t%d / %d MB / %d MB\t%d\t%s per %d\t%s per %d MB\t%s per %d MB\t%s run, %s store\n",
				v.ID, v.Name, v.Capacity.SpeedBogomips, v.Capacity.MemoryMB, v.Capacity.StorageMB,
				v.Free.SpeedBogomips, v.Free.MemoryMB, v.Free.StorageMB, v.VMs,
				t.SpeedPrice, t.SpeedUnit, t.MemoryPrice, t.MemoryUnit, t.StoragePrice, t.StorageUnit, secs(t.RunningSecs), secs(t.StorageSecs))
		}
		return tw.Flush()
	case "rm":
		f := newFlags(env, "machine rm")
		force := f.Bool("force", false, "also stop and delete the VMs it stores (their owners are notified)")
		pos, err := f.parseArgs(args, "Remove a machine and withdraw its offer. It refuses while the machine stores VMs, unless --force.", "ID")
		if err != nil {
			return err
		}
		c, err := f.client()
		if err != nil {
			return err
		}
		path := "/v1/market/machines/" + url.PathEscape(pos[0])
		if *force {
			path += "?force=true"
		}
		if err := c.Do(ctx, http.MethodDelete, path, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "removed machine %s; its offer is withdrawn\n", pos[0])
		return nil
	}
	fmt.Fprintf(env.Stderr, "virtuoso machine: unknown action %q; use add, edit, ls or rm\n", sub)
	return errUsage
}

// secs writes a period in seconds as a short duration ("1h", "24h", "90s").
func secs(s int64) string {
	d := time.Duration(s) * time.Second
	switch {
	case d%(24*time.Hour) == 0 && d >= 48*time.Hour:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
