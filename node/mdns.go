package node

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// startMDNS finds marketplace nodes on the local network (public profile only).
func (n *Node) startMDNS() error {
	svc := mdns.NewMdnsService(n.host, n.cfg.Network.Rendezvous, mdnsNotifee{n})
	if err := svc.Start(); err != nil {
		return fmt.Errorf("start mDNS: %w", err)
	}
	n.started = append(n.started, closerService{svc.Close})
	return nil
}

type mdnsNotifee struct{ n *Node }

func (m mdnsNotifee) HandlePeerFound(info peer.AddrInfo) {
	if info.ID == m.n.id {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.n.host.Connect(ctx, info); err != nil {
		m.n.log.Debug("connect to mDNS peer", "to", info.ID, "err", err)
	}
}

// closerService lets a plain closer sit among the started services, closed in order.
type closerService struct{ close func() error }

func (closerService) Start(context.Context, *Node) error { return nil }
func (c closerService) Close() error                     { return c.close() }

func isNotLoopback(a ma.Multiaddr) bool { return !manet.IsIPLoopback(a) }
