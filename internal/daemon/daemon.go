// Package daemon assembles a full node from its configuration: the network core from package
// node, plus the services each role switched on brings (provider, coordinator, the buyer's
// market view). The CLI and the demo build nodes only through it.
package daemon

import (
	"errors"
	"fmt"
	"slices"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Options tune a node beyond its config.
type Options struct {
	node.Options
	// Images are OS images a provider offers for preconfigured VMs, besides those described in
	// its home's images/ directory.
	Images []market.Image
}

// Node is a node with the services of its roles.
type Node struct {
	*node.Node
	// Provider is the VM stack of a provider node; nil on other nodes.
	Provider *Provider
	// Market is the marketplace: every node's offer book and search, a provider's machines.
	Market *market.Service
}

// New builds the node of home with the services of its roles; Start it to run it.
func New(home node.Home, cfg node.Config, opts Options) (*Node, error) {
	nopts := opts.Options
	nopts.Protocols = slices.Concat(nopts.Protocols, market.Protocols())
	n, err := node.New(home, cfg, nopts)
	if err != nil {
		return nil, err
	}
	d := &Node{Node: n}
	images := opts.Images
	if cfg.Roles.Provider {
		d.Provider = &Provider{}
		n.Attach(d.Provider)
		own, err := market.ScanImages(home.Path("images"))
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("provider images: %w", err)
		}
		images = append(own, images...)
	}
	// The market starts after the provider's VM stack, whose manager it stores VMs with.
	d.Market = market.New(market.Options{
		Logger:   opts.Logger,
		Provider: cfg.Roles.Provider,
		Images:   images,
		Manager: func(*node.Node) (*vm.Manager, error) {
			if d.Provider == nil || d.Provider.Manager() == nil {
				return nil, errors.New("the provider's VM stack is not started")
			}
			return d.Provider.Manager(), nil
		},
	})
	n.Attach(d.Market)
	return d, nil
}
