// Package daemon assembles a full node from its configuration: the network core from package
// node, plus the services each role switched on brings (provider, coordinator, the buyer's
// market view). The CLI and the demo build nodes only through it.
package daemon

import (
	"github.com/virtuoso-market/virtuoso/node"
)

// Options tune a node beyond its config.
type Options struct {
	node.Options
}

// Node is a node with the services of its roles.
type Node struct {
	*node.Node
	// Provider is the VM stack of a provider node; nil on other nodes.
	Provider *Provider
}

// New builds the node of home with the services of its roles; Start it to run it.
func New(home node.Home, cfg node.Config, opts Options) (*Node, error) {
	n, err := node.New(home, cfg, opts.Options)
	if err != nil {
		return nil, err
	}
	d := &Node{Node: n}
	if cfg.Roles.Provider {
		d.Provider = &Provider{}
		n.Attach(d.Provider)
	}
	return d, nil
}
