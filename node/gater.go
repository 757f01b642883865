package node

import (
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
