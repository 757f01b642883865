// Package cli is the virtuoso command line: it parses flags, builds what a command needs and
// prints its results. Commands that act on a running node go through its local API.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"

	"github.com/virtuoso-market/virtuoso/node"
)

// Env is what a command runs with.
type Env struct {
	Stdout, Stderr io.Writer
	Version        string
}

// defaultLog is the logging of commands that run no node: warnings and errors only.
var defaultLog = node.LogConfig{Level: "warn", Format: "text"}

// errUsage marks a command-line mistake; the usage text has been printed already.
var errUsage = errors.New("usage")

type command struct {
	name, args, summary string
	run                 func(ctx context.Context, env Env, args []string) error
}

func commands() []command {
	return append(append(marketCommands(), ledgerCommands()...), []command{
		{"init", "[--home DIR] [--profile local|public] [--bootstrap ADDR]… [--provider] [--coordinator] [--force]", "create a node's home: identity, API token and config", runInit},
		{"node", "[--home DIR] [--bootstrap ADDR]… [--api ADDR] [--provider] [--coordinator]", "run the node until Ctrl-C", runNode},
		{"id", "[--home DIR] [--json]", "print the node's peer ID and addresses (configured ones when it is stopped)", runID},
		{"peers", "[--home DIR] [--json]", "list connected peers with addresses and latency", runPeers},
		{"events", "[--home DIR] [--follow] [--vm ID] [--kind KIND] [-n N] [--json]", "print what happened on the node, in order; --follow for what happens next", runEvents},
		{"ui", "[--home DIR] [--open] [--json]", "print a one-time login link to the node's web UI", runUI},
		{"demo", "[--dir DIR]", "run a whole local marketplace on loopback until Ctrl-C", runDemo},
		{"bench", "transfer [flags]", "measure against the tools a user would otherwise use", runBench},
		{"version", "", "print the version", runVersion},
	}...)
}

// Run runs the command line args and returns the process exit code: 0 on success, 1 on
// failure, 2 on a usage mistake.
func Run(args []string, env Env) int {
	ctx := context.Background()
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			args = []string{args[1], "--help"}
		} else {
			usage(env.Stdout)
			return 0
		}
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, env, args[1:])
			switch {
			case err == nil, errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				return 2
			default:
				printFailure(env, c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintf(env.Stderr, "virtuoso: unknown command %q; run `virtuoso help` for the list\n", args[0])
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "virtuoso — a peer-to-peer marketplace for raw virtual machines\n\nUsage: virtuoso COMMAND [flags]\n\nCommands:\n")
	cs := commands()
	sort.Slice(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	for _, c := range cs {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun `virtuoso COMMAND --help` for a command's flags. Every command takes --home DIR\n(default $VIRTUOSO_HOME or ~/.virtuoso); several nodes share a machine through distinct homes.\n")
}

// flags is a command's flag set with the flags every command shares.
type flags struct {
	*flag.FlagSet
	home      string
	logLevel  string
	logFormat string
	env       Env
	name      string
}

func newFlags(env Env, name string) *flags {
	f := &flags{FlagSet: flag.NewFlagSet("virtuoso "+name, flag.ContinueOnError), env: env, name: name}
	f.StringVar(&f.home, "home", node.DefaultHomeDir(), "the node's home directory (env VIRTUOSO_HOME)")
	f.StringVar(&f.logLevel, "log-level", "", "log level: debug, info, warn, error (default from config)")
	f.StringVar(&f.logFormat, "log-format", "", "log format: text or json (default from config)")
	return f
}

// parse parses args of a command that takes no positional arguments.
func (f *flags) parse(args []string, summary string) error {
	_, err := f.parseArgs(args, summary)
	return err
}

// parseArgs parses flags and returns the positional arguments named in the usage line, which may
// stand before or after the flags. --help prints the usage to stdout; a mistake is one line on
// stderr, returned as errUsage.
func (f *flags) parseArgs(args []string, summary string, names ...string) ([]string, error) {
	var pos []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		pos, args = append(pos, args[0]), args[1:]
	}
	f.SetOutput(io.Discard) // errors are reported below, in one line
	err := f.Parse(args)
	pos = append(pos, f.Args()...)
	usageLine := strings.TrimSpace(f.name + " " + strings.Join(names, " "))
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.SetOutput(f.env.Stdout)
		fmt.Fprintf(f.env.Stdout, "Usage: virtuoso %s [flags]\n\n%s\n\nFlags:\n", usageLine, summary)
		f.PrintDefaults()
		return nil, err
	case err != nil:
		fmt.Fprintf(f.env.Stderr, "virtuoso %s: %v; run `virtuoso %s --help` for the flags\n", f.name, err, f.name)
		return nil, errUsage
	case len(pos) > len(names):
		fmt.Fprintf(f.env.Stderr, "virtuoso %s: unexpected argument %q; usage: virtuoso %s [flags]\n", f.name, pos[len(names)], usageLine)
		return nil, errUsage
	case len(pos) < len(names):
		fmt.Fprintf(f.env.Stderr, "virtuoso %s: missing %s; usage: virtuoso %s [flags]\n", f.name, names[len(pos)], usageLine)
		return nil, errUsage
	}
	return pos, nil
}

func (f *flags) homeDir() node.Home { return node.Home{Dir: f.home} }

// logger builds the logger from flags, falling back to the config's settings.
func (f *flags) logger(cfg node.LogConfig) (*slog.Logger, error) {
	level, format := cfg.Level, cfg.Format
	if f.logLevel != "" {
		level = f.logLevel
	}
	if f.logFormat != "" {
		format = f.logFormat
	}
	lv, err := node.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(f.env.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(f.env.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q is unknown: use text or json", format)
	}
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// client dials the node running on the flags' home.
func (f *flags) client() (*node.Client, error) {
	return node.Dial(f.homeDir())
}

func runVersion(_ context.Context, env Env, args []string) error {
	f := newFlags(env, "version")
	if err := f.parse(args, "Print the version."); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "virtuoso %s\n", env.Version)
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// call makes one API call of the node on the flags' home and decodes its answer into out; with
// asJSON it prints the answer as JSON too and reports printed, so the caller prints nothing more.
func (f *flags) call(ctx context.Context, method, path string, in, out any, asJSON bool) (printed bool, err error) {
	c, err := f.client()
	if err != nil {
		return false, err
	}
	if err := c.Do(ctx, method, path, in, out); err != nil {
		return false, err
	}
	if asJSON {
		return true, printJSON(f.env, out)
	}
	return false, nil
}
