package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/virtuoso-market/virtuoso/internal/bench"
)

const benchSummary = `Measure Virtuoso side by side with the tools a user would otherwise use, in one run.

  virtuoso bench transfer [--size 4GiB] [--changed 1%] [--write-size 64KiB|4KiB] [--zero 0%]
  virtuoso bench market [--nodes 30] [--rounds 20] [--offers 10000] [--searches 300]
  virtuoso bench ledger [--pushers 8] [--entries 5000] [--checkpoints 200] [--leases 100000]`

func runBench(ctx context.Context, env Env, args []string) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	if len(args) > 0 {
		switch args[0] {
		case "transfer":
			return benchTransfer(ctx, env, args[1:])
		case "market":
			return benchMarket(ctx, env, args[1:])
		case "ledger":
			return benchLedger(ctx, env, args[1:])
		}
	}
	f := newFlags(env, "bench")
	pos, err := f.parseArgs(args, benchSummary, "transfer|market|ledger")
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stderr, "virtuoso bench: unknown benchmark %q; use transfer, market or ledger\n", pos[0])
	return errUsage
}

func benchMarket(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "bench market")
	opts := bench.MarketOptions{}
	f.IntVar(&opts.Nodes, "nodes", 30, "nodes on loopback for offer propagation")
	f.IntVar(&opts.Rounds, "rounds", 20, "offers published one after the other")
	f.IntVar(&opts.Offers, "offers", 10000, "offers in the book that is searched")
	f.IntVar(&opts.Searches, "searches", 300, "searches timed")
	f.StringVar(&opts.Dir, "dir", "", "where the nodes' homes are made (default: the system temp dir)")
	if err := f.parse(args, "Time offer propagation (p50/p99) over loopback nodes, a joining node's catch-up, and search over a large offer book."); err != nil {
		return err
	}
	var err error
	if opts.Log, err = f.logger(defaultLog); err != nil {
		return err
	}
	return bench.Market(ctx, opts, env.Stdout)
}

func benchLedger(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "bench ledger")
	opts := bench.LedgerOptions{}
	f.IntVar(&opts.Pushers, "pushers", 8, "nodes pushing entries at once")
	f.IntVar(&opts.Entries, "entries", 5000, "entries each pusher pushes")
	f.IntVar(&opts.Checkpoints, "checkpoints", 200, "single entries timed from append to signed checkpoint")
	f.IntVar(&opts.Leases, "leases", 100_000, "leases charged by one billing sweep")
	f.StringVar(&opts.Dir, "dir", "", "where the nodes' homes are made (default: the system temp dir)")
	if err := f.parse(args, "Time a three-coordinator ledger on loopback: entries verified and applied per second, append-to-checkpoint latency, failover after the leader goes, and one billing sweep over many leases."); err != nil {
		return err
	}
	var err error
	if opts.Log, err = f.logger(defaultLog); err != nil {
		return err
	}
	return bench.Ledger(ctx, opts, env.Stdout)
}

func benchTransfer(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "bench transfer")
	size := f.String("size", "4GiB", "image size")
	changed := f.String("changed", "1%", "share of the image rewritten between transfers")
	writeSize := f.String("write-size", "64KiB", "size of each rewrite (64KiB: whole blocks; 4KiB: scattered small writes)")
	zero := f.String("zero", "0%", "share of the image that is zeros (half holes, half written zeros)")
	blockSize := f.String("block-size", "64KiB", "blockdiff block size")
	dir := f.String("dir", "", "where to make the images (default: the system temp dir); needs twice --size free")
	if err := f.parse(args, "Time a VM image's first transfer, re-transfer after a change and unchanged re-transfer with blockdiff, full, rsync --no-whole-file --inplace and rsync -W between two nodes on loopback, and print one table."); err != nil {
		return err
	}
	opts := bench.TransferOptions{Dir: *dir}
	var err error
	if opts.Size, err = bench.ParseSize(*size); err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	if opts.Changed, err = bench.ParsePercent(*changed); err != nil {
		return fmt.Errorf("--changed: %w", err)
	}
	if opts.WriteSize, err = bench.ParseSize(*writeSize); err != nil {
		return fmt.Errorf("--write-size: %w", err)
	}
	if opts.Zero, err = bench.ParsePercent(*zero); err != nil {
		return fmt.Errorf("--zero: %w", err)
	}
	bs, err := bench.ParseSize(*blockSize)
	if err != nil {
		return fmt.Errorf("--block-size: %w", err)
	}
	opts.BlockSize = int(bs)
	if opts.Log, err = f.logger(defaultLog); err != nil {
		return err
	}
	opts.Progress = env.Stderr
	return bench.Transfer(ctx, opts, env.Stdout)
}
