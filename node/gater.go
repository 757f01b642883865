package node

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// loopbackGater keeps a node of the local profile on loopback whatever addresses it learns
// from the DHT or from peers: it neither dials nor accepts any other address.
type loopbackGater struct{}

func (loopbackGater) InterceptPeerDial(peer.ID) bool { return true }

func (loopbackGater) InterceptAddrDial(_ peer.ID, a ma.Multiaddr) bool { return manet.IsIPLoopback(a) }

func (loopbackGater) InterceptAccept(c network.ConnMultiaddrs) bool {
	return manet.IsIPLoopback(c.RemoteMultiaddr())
}

func (loopbackGater) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}

func (loopbackGater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// gater refuses connections with peers banned for a while (gossip peers scored below the
// graylist threshold), and in the local profile every address but loopback.
type gater struct {
	loopback loopbackGater
	local    bool

	mu     sync.Mutex
	banned map[peer.ID]time.Time // until when
}

func newGater(local bool) *gater { return &gater{local: local, banned: map[peer.ID]time.Time{}} }

// ban refuses p until the given time; it reports whether p was not banned already.
func (g *gater) ban(p peer.ID, until time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, was := g.banned[p]
	g.banned[p] = until
	return !was
}

func (g *gater) allowed(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	until, ok := g.banned[p]
	if ok && time.Now().After(until) {
		delete(g.banned, p)
		return true
	}
	return !ok
}

func (g *gater) InterceptPeerDial(p peer.ID) bool { return g.allowed(p) }

func (g *gater) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool {
	return !g.local || g.loopback.InterceptAddrDial(p, a)
}

func (g *gater) InterceptAccept(c network.ConnMultiaddrs) bool {
	return !g.local || g.loopback.InterceptAccept(c)
}

func (g *gater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.allowed(p)
}

func (g *gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
