package cli

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/virtuoso-market/virtuoso/ledger"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/vm"
)

func ledgerCommands() []command {
	return []command{
		{"account", "[statement] [PEER] [--vm ID] [--json]", "your balance and what each VM costs or earns; statement: every charge, deposit and transfer", runAccount},
		{"ledger", "status | join ADDR | leave | deposit PEER AMOUNT | transfer PEER AMOUNT | proofs  [--memo TEXT] [--json]", "the coordinators that settle the ledger, and money", runLedger},
	}
}

const accountSummary = `Show an account as the coordinators settled it: the balance, what was deposited, spent and
earned, and for every VM bought or sold what its storage and running time have cost so far.
With a PEER, that peer's settled account. "statement" lists every charge, deposit and transfer.
A buyer whose balance will not pay the coming periods is warned: its VMs are stopped (never
deleted) when a running period cannot be paid.`

func runAccount(ctx context.Context, env Env, args []string) error {
	statement := len(args) > 0 && args[0] == "statement"
	if statement {
		args = args[1:]
	}
	f := newFlags(env, "account")
	asJSON := f.Bool("json", false, "print JSON")
	vmID := f.String("vm", "", "only this VM's lines (statement)")
	pos, err := f.parseArgs(args, accountSummary)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		fmt.Fprintf(env.Stderr, "virtuoso account: unexpected argument %q; usage: virtuoso account [statement] [PEER]\n", pos[1])
		return errUsage
	}
	path := "/v1/ledger/account"
	if len(pos) == 1 {
		path += "/" + pos[0]
	}
	var a ledger.AccountAnswer
	if printed, err := f.call(ctx, http.MethodGet, path, nil, &a, *asJSON); printed || err != nil {
		return err
	}
	v := a.View
	if *vmID != "" {
		id, err := vm.ParseID(*vmID)
		if err != nil {
			fmt.Fprintf(env.Stderr, "virtuoso account: --vm %q: %v\n", *vmID, err)
			return errUsage
		}
		v.Leases = slicesFilter(v.Leases, func(l ledger.LeaseState) bool { return l.VM == id })
		v.Lines = nil
	}
	if statement {
		return printStatement(env, v)
	}
	acct := v.Account
	fmt.Fprintf(env.Stdout, "account    %s\nbalance    %s\n", acct.Peer, acct.Balance)
	fmt.Fprintf(env.Stdout, "deposited  %s   spent %s   earned %s   sent %s   received %s\n", acct.Deposited, acct.Spent, acct.Earned, acct.Sent, acct.Received)
	if v.Upcoming > 0 {
		fmt.Fprintf(env.Stdout, "next periods cost %s\n", v.Upcoming)
	}
	if v.Low {
		fmt.Fprintf(env.Stdout, "WARNING: the balance will not pay the coming periods for long: running VMs are stopped (never deleted) when a running period cannot be paid; ask a coordinator's operator for a deposit\n")
	}
	if a.Pending > 0 {
		fmt.Fprintf(env.Stdout, "%d of this node's ledger entries are not settled yet\n", a.Pending)
	}
	if a.Checkpoint != nil {
		fmt.Fprintf(env.Stdout, "settled by %s at height %d\n", market.Short(a.Checkpoint.Coordinator), a.Checkpoint.Height)
	}
	for _, e := range a.Evidence {
		fmt.Fprintf(env.Stdout, "EVIDENCE against a coordinator: %s (kept in this node's store)\n", e.Why)
	}
	if len(v.Leases) == 0 {
		fmt.Fprintln(env.Stdout, "\nno VMs bought or sold yet")
		return nil
	}
	fmt.Fprintln(env.Stdout)
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tAS\tMACHINE\tSTATUS\tSTORAGE\tRUNNING\tTOTAL")
	byMachine := map[string]market.Money{}
	for _, l := range v.Leases {
		role := "buyer"
		if l.Provider == acct.Peer {
			role = "provider"
			byMachine[l.Machine.String()[:8]] += l.Storage + l.Running
		}
		status := l.Status.String()
		if !l.Active() {
			status = "ended"
		} else if l.Unpaid {
			status += " (unpaid: to be stopped)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.VM.String()[:8], role, l.Machine.String()[:8], status, l.Storage, l.Running, l.Storage+l.Running)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(byMachine) > 0 {
		fmt.Fprintln(env.Stdout, "\nincome per machine:")
		ms := make([]string, 0, len(byMachine))
		for m := range byMachine {
			ms = append(ms, m)
		}
		sort.Strings(ms)
		for _, m := range ms {
			fmt.Fprintf(env.Stdout, "  %s  %s\n", m, byMachine[m])
		}
	}
	return nil
}

func printStatement(env Env, v ledger.View) error {
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WHAT\tWITH\tAMOUNT\tDETAIL")
	for _, l := range v.Lines {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.Type, market.Short(l.Peer), l.Amount, l.Memo)
	}
	for _, l := range v.Leases {
		sign, with := "-", l.Provider
		if l.Provider == v.Account.Peer {
			sign, with = "+", l.Buyer
		}
		fmt.Fprintf(tw, "storage of vm %s\t%s\t%s%s\t%s per %ds from %s\n", l.VM.String()[:8], market.Short(with), sign, l.Storage, l.Quote.StoragePrice, l.Quote.StorageSecs, l.Created.Format("2006-01-02 15:04:05"))
		fmt.Fprintf(tw, "running of vm %s\t%s\t%s%s\t%s per %ds\n", l.VM.String()[:8], market.Short(with), sign, l.Running, l.Quote.RunningPrice, l.Quote.RunningSecs)
	}
	fmt.Fprintf(tw, "balance\t\t%s\t\n", v.Account.Balance)
	return tw.Flush()
}

func slicesFilter[T any](s []T, keep func(T) bool) []T {
	var out []T
	for _, v := range s {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
}

const ledgerSummary = `The coordinators settle who owes whom from every node's signed ledger log.
  status                 the coordinators, their leader, the ledger's height and state hash
  join ADDR              make this coordinator a member of the group one of whose coordinators
                         is at ADDR (a full address ending in /p2p/ID); set [ledger] bootstrap
                         = false in its config first, so it does not start a group of its own
  leave                  take this coordinator out of its group
  deposit PEER AMOUNT    create money in PEER's account (coordinators only), e.g. 25 or 0.5
  transfer PEER AMOUNT   send money from this node's account to PEER
  proofs                 the equivocations the ledger holds (two entries signed for one place)`

func runLedger(ctx context.Context, env Env, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		f := newFlags(env, "ledger")
		if err := f.parse(args, ledgerSummary); err != nil {
			return err
		}
		fmt.Fprintf(env.Stderr, "virtuoso ledger: say what to do; run `virtuoso ledger --help`\n")
		return errUsage
	}
	sub, args := args[0], args[1:]
	f := newFlags(env, "ledger "+sub)
	asJSON := f.Bool("json", false, "print JSON")
	memo := f.String("memo", "", "a note kept with a deposit or transfer")
	var names []string
	switch sub {
	case "status", "leave", "proofs":
	case "join":
		names = []string{"ADDR"}
	case "deposit", "transfer":
		names = []string{"PEER", "AMOUNT"}
	default:
		fmt.Fprintf(env.Stderr, "virtuoso ledger: unknown %q; use status, join, leave, deposit, transfer or proofs\n", sub)
		return errUsage
	}
	pos, err := f.parseArgs(args, ledgerSummary, names...)
	if err != nil {
		return err
	}
	switch sub {
	case "status", "join", "leave":
		var st ledger.CoordinatorStatus
		var printed bool
		switch sub {
		case "status":
			printed, err = f.call(ctx, http.MethodGet, "/v1/ledger/status", nil, &st, *asJSON)
		case "join":
			printed, err = f.call(ctx, http.MethodPost, "/v1/ledger/join", map[string]string{"addr": pos[0]}, &st, *asJSON)
		default:
			printed, err = f.call(ctx, http.MethodPost, "/v1/ledger/leave", nil, &st, *asJSON)
		}
		if printed || err != nil {
			return err
		}
		return printStatus(env, st)
	case "proofs":
		var ps []ledger.Proof
		if printed, err := f.call(ctx, http.MethodGet, "/v1/ledger/proofs", nil, &ps, *asJSON); printed || err != nil {
			return err
		}
		if len(ps) == 0 {
			fmt.Fprintln(env.Stdout, "no equivocation: every author signed one entry for each place in its log")
		}
		for _, p := range ps {
			fmt.Fprintf(env.Stdout, "%s signed two entries %d: its later entries are refused\n", p.Author, p.Seq)
		}
		return nil
	}
	amount, err := market.ParseMoney(pos[1])
	if err != nil {
		fmt.Fprintf(env.Stderr, "virtuoso ledger %s: amount %q: %v\n", sub, pos[1], err)
		return errUsage
	}
	var a ledger.AccountAnswer
	if printed, err := f.call(ctx, http.MethodPost, "/v1/ledger/"+sub, ledger.Payment{To: pos[0], Amount: amount, Memo: *memo}, &a, *asJSON); printed || err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s of %s to %s settled; ", sub, amount, pos[0])
	if sub == "deposit" {
		fmt.Fprintf(env.Stdout, "its balance is %s\n", a.View.Account.Balance)
	} else {
		fmt.Fprintf(env.Stdout, "this node's balance is %s\n", a.View.Account.Balance)
	}
	return nil
}

func printStatus(env Env, st ledger.CoordinatorStatus) error {
	fmt.Fprintf(env.Stdout, "leader   %s\n", orNone(st.Leader.String()))
	fmt.Fprintf(env.Stdout, "this     %s (%s)\n", st.Self, strings.ToLower(st.State))
	fmt.Fprintf(env.Stdout, "height   %d entries, state hash %s, last tick %s\n", st.Meta.Height, st.Meta.Hash.String()[:16], st.Meta.Tick.Format("15:04:05"))
	fmt.Fprintf(env.Stdout, "money    %s deposited in all\n", st.Meta.Supply)
	fmt.Fprintln(env.Stdout, "servers:")
	for _, s := range st.Servers {
		fmt.Fprintf(env.Stdout, "  %s\n", s)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(none known: an election may be under way)"
	}
	return s
}
