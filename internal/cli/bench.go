package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/bench"
)

const benchSummary = `Measure Virtuoso side by side with the tools a user would otherwise use, in one run.

  virtuoso bench transfer [--size 4GiB] [--changed 1%] [--write-size 64KiB|4KiB] [--zero 0%] [--links loopback,100mbit+20ms]
  virtuoso bench market [--nodes 30] [--rounds 20] [--offers 10000] [--searches 300]
  virtuoso bench ledger [--pushers 8] [--entries 5000] [--checkpoints 200] [--leases 100000]
  virtuoso bench migrate [--disk 1GiB] [--memory 256MiB] [--run 1m] [--links loopback,100mbit,1gbit]`

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
		case "migrate":
			return benchMigrate(ctx, env, args[1:])
		case "migrate-side":
			return benchMigrateSide(ctx, env, args[1:])
		case "transfer-side":
			return benchTransferSide(ctx, env, args[1:])
		case "transfer-dest":
			return benchTransferDest(ctx, env, args[1:])
		}
	}
	f := newFlags(env, "bench")
	pos, err := f.parseArgs(args, benchSummary, "transfer|market|ledger|migrate")
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stderr, "virtuoso bench: unknown benchmark %q; use transfer, market, ledger or migrate\n", pos[0])
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
	image := f.String("image", "random", "random (a ChaCha8 stream; --zero of it zeros, --changed of it rewritten in --write-size writes) or ext4 (a filesystem half full of this machine's files; --changed is the share of it a guest writes as new files, beside files removed and touched) or debian (a VM's disk of --size, at least the Debian guest's, from the Debian guest of make guest, changed by the real guest as it runs once under QEMU: boot, a library tree installed, docs removed, /etc touched)")
	files := f.String("files", "", "with --image ext4: how much of this machine's files the filesystem holds (default: half of --size)")
	format := f.String("format", "raw", "the file that moves: raw, or qcow2 (the image converted by qemu-img and changed through QEMU's block layer)")
	dir := f.String("dir", "", "where to make the images (default: the system temp dir); needs four times --size free")
	links := f.String("links", "loopback", "links to measure over, comma-separated: loopback, and links emulated between two network namespaces (these need root) at a rate such as 100mbit or 1gbit, with a round-trip delay added as in 100mbit+20ms")
	if err := f.parse(args, "Time a VM image's first transfer, re-transfer after a change and unchanged re-transfer with blockdiff (compressing as it pays, always, never; and from a QEMU VM's disk whose dirty bitmap tells what changed), full, the raw libp2p stream, rsync --no-whole-file --inplace and rsync -W (to an rsync daemon and over ssh) between two nodes, and print one table per link with the time, the bytes on the wire and the CPU-seconds of both ends."); err != nil {
		return err
	}
	opts := bench.TransferOptions{Dir: *dir, Image: *image, Format: *format}
	for _, l := range strings.Split(*links, ",") {
		if l = strings.TrimSpace(l); l != "" {
			opts.Links = append(opts.Links, l)
		}
	}
	var err error
	if opts.Size, err = bench.ParseSize(*size); err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	if *files != "" {
		if opts.Files, err = bench.ParseSize(*files); err != nil {
			return fmt.Errorf("--files: %w", err)
		}
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

func benchMigrate(ctx context.Context, env Env, args []string) error {
	f := newFlags(env, "bench migrate")
	disk := f.String("disk", "1GiB", "the VM's disk size")
	memory := f.String("memory", "256MiB", "the VM's memory")
	run := f.Duration("run", time.Minute, "how long the guest runs at the destination before it is moved back")
	fill := f.String("fill", "100%", "share of the disk (beyond the guest's own image) written with random data before the first move, as a used disk; 0% keeps it sparse")
	fillWith := f.String("fill-with", "random", "what --fill writes: random data, or files (an ext4 filesystem over the disk, this machine's files filling --fill of it)")
	links := f.String("links", "loopback,100mbit,1gbit", "links to measure over, comma-separated: loopback, and links emulated between two network namespaces (these need root) at a rate such as 100mbit or 1gbit, with a round-trip delay added as in 100mbit+20ms")
	accel := f.String("accel", "auto", "the providers' accelerator: auto (probe KVM, else TCG), kvm or tcg")
	guest := f.String("guest", "", "the busybox test guest's directory (default: where 'make guest' caches it)")
	dir := f.String("dir", "", "where the nodes' homes are made (default: the system temp dir); needs about 6x --disk free")
	if err := f.parse(args, "Migrate a suspended VM cold to a provider without a copy, back after its guest ran, and again unchanged, and copy the same files with rsync and scp over ssh, over each link; print the time of every protocol step, the bytes on the wire and the files' sizes, one table per link."); err != nil {
		return err
	}
	opts := bench.MigrateOptions{Dir: *dir, Run: *run, Accel: *accel, Guest: *guest, FillWith: *fillWith, Progress: env.Stderr}
	var err error
	if opts.Disk, err = bench.ParseSize(*disk); err != nil {
		return fmt.Errorf("--disk: %w", err)
	}
	if opts.Memory, err = bench.ParseSize(*memory); err != nil {
		return fmt.Errorf("--memory: %w", err)
	}
	if opts.Fill, err = bench.ParsePercent(*fill); err != nil {
		return fmt.Errorf("--fill: %w", err)
	}
	for _, l := range strings.Split(*links, ",") {
		if l = strings.TrimSpace(l); l != "" {
			opts.Links = append(opts.Links, l)
		}
	}
	if opts.Log, err = f.logger(defaultLog); err != nil {
		return err
	}
	return bench.Migrate(ctx, opts, env.Stdout)
}

// benchInternal runs one of the commands a benchmark starts inside a network namespace of
// its own: name takes one argument, the SPEC its starter wrote, and fn runs it.
func benchInternal(ctx context.Context, env Env, args []string, name, summary string,
	fn func(ctx context.Context, spec string, log *slog.Logger) error) error {
	f := newFlags(env, "bench "+name)
	pos, err := f.parseArgs(args, summary, "SPEC")
	if err != nil {
		return err
	}
	log, err := f.logger(defaultLog)
	if err != nil {
		return err
	}
	return fn(ctx, pos[0], log)
}

// benchMigrateSide is the side of one emulated link of `bench migrate`.
func benchMigrateSide(ctx context.Context, env Env, args []string) error {
	return benchInternal(ctx, env, args, "migrate-side", "Internal to `virtuoso bench migrate`: run one emulated link's side in this network namespace.",
		func(ctx context.Context, spec string, log *slog.Logger) error {
			return bench.MigrateSideMain(ctx, spec, log, env.Stderr, env.Stdout)
		})
}

// benchTransferSide is the side of one emulated link of `bench transfer`.
func benchTransferSide(ctx context.Context, env Env, args []string) error {
	return benchInternal(ctx, env, args, "transfer-side", "Internal to `virtuoso bench transfer`: run one emulated link's side in this network namespace.",
		func(ctx context.Context, spec string, log *slog.Logger) error {
			return bench.TransferSideMain(ctx, spec, log, env.Stderr, env.Stdout)
		})
}

// benchTransferDest is the receiving node of one emulated link of `bench transfer`, ordered
// on its standard input.
func benchTransferDest(ctx context.Context, env Env, args []string) error {
	return benchInternal(ctx, env, args, "transfer-dest", "Internal to `virtuoso bench transfer`: the receiving node of one emulated link, ordered on standard input.",
		func(ctx context.Context, spec string, log *slog.Logger) error {
			return bench.TransferDestMain(ctx, spec, log, os.Stdin, env.Stdout)
		})
}
