// Package demo runs a whole Virtuoso marketplace on one machine, on loopback only: a
// coordinator, two providers and a buyer, each a full node with its own home, in one process.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/node"
)

// Role names one demo node.
type Role struct {
	Name        string
	Provider    bool
	Coordinator bool
}

// Roles are the demo's nodes; the first is every other's bootstrap peer.
var Roles = []Role{
	{Name: "coordinator", Coordinator: true},
	{Name: "provider-1", Provider: true},
	{Name: "provider-2", Provider: true},
	{Name: "buyer"},
}

// Marketplace is a running demo.
type Marketplace struct {
	Dir   string
	Nodes []*node.Node
}

// Start starts the demo's nodes with homes under dir (created if missing; homes already
// there are reused, so peer IDs and data survive a restart of the demo).
func Start(ctx context.Context, dir, version string, log *slog.Logger) (m *Marketplace, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("demo dir: %w", err)
	}
	m = &Marketplace{Dir: dir}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	for i, r := range Roles {
		home := node.Home{Dir: filepath.Join(dir, r.Name)}
		cfg := node.DefaultConfig(node.ProfileLocal)
		cfg.Roles.Provider, cfg.Roles.Coordinator = r.Provider, r.Coordinator
		cfg.Network.DiscoveryInterval = 2 * time.Second
		if _, err := os.Stat(home.KeyPath()); errors.Is(err, os.ErrNotExist) {
			if err := home.Init(cfg, false); err != nil {
				return nil, err
			}
		} else if cfg, err = home.Config(); err != nil {
			return nil, err
		}
		if i > 0 {
			// Ports are picked afresh at every start, so the bootstrap address is too.
			first := m.Nodes[0]
			cfg.Network.Bootstrap = slices.Collect(func(yield func(string) bool) {
				for _, a := range first.Host().Addrs() {
					if !yield(fmt.Sprintf("%s/p2p/%s", a, first.ID())) {
						return
					}
				}
			})
		}
		n, err := daemon.New(home, cfg, daemon.Options{Options: node.Options{
			Logger: log.With("node", r.Name), Version: version,
		}})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.Name, err)
		}
		if err := n.Start(ctx); err != nil {
			n.Close()
			return nil, fmt.Errorf("start %s: %w", r.Name, err)
		}
		m.Nodes = append(m.Nodes, n)
	}
	return m, nil
}

// Print writes the table of nodes and what to try.
func (m *Marketplace) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tPEER ID\tAPI\tHOME")
	for i, n := range m.Nodes {
		fmt.Fprintf(tw, "%s\t%s\thttp://%s\t%s\n", Roles[i].Name, n.ID(), n.API().Addr(), n.Home().Dir)
	}
	tw.Flush()
	buyer := m.Nodes[len(m.Nodes)-1].Home().Dir
	fmt.Fprintf(w, "\nTry, in another terminal:\n  virtuoso peers --home %s\n  virtuoso id --home %s\n\nCtrl-C stops the marketplace.\n", buyer, buyer)
}

// Close stops every node, last started first.
func (m *Marketplace) Close() error {
	var errs []error
	for _, n := range slices.Backward(m.Nodes) {
		errs = append(errs, n.Close())
	}
	m.Nodes = nil
	return errors.Join(errs...)
}
