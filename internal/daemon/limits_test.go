package daemon_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/virtuoso-market/virtuoso/internal/daemon"
	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
)

// TestStreamLimitsAreConfig: [market] streams_per_peer is the number of streams of each
// market protocol a peer may hold open at a node, whatever the default.
func TestStreamLimitsAreConfig(t *testing.T) {
	const perPeer = 2
	target := startNode(t, func(cfg *node.Config) {
		cfg.Roles.Provider, cfg.Provider.Accel = true, "tcg"
		cfg.Market.StreamsPerPeer = perPeer
	}, daemon.Options{})
	stranger := startNode(t, nil, daemon.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	to, h := target.Host(), stranger.Host()
	if err := h.Connect(ctx, peer.AddrInfo{ID: to.ID(), Addrs: to.Addrs()}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []protocol.ID{market.ControlID, market.StoreID, market.ConsoleID} {
		var held []network.Stream
		for i := range perPeer + 1 {
			st, err := h.NewStream(ctx, to.ID(), id)
			if err == nil {
				// Streams open lazily: a write and a read make the far end accept or reset it.
				// The byte starts a frame length and never ends it, so the handler waits.
				st.SetDeadline(time.Now().Add(2 * time.Second))
				_, err = st.Write([]byte{0x80})
				if err == nil {
					_, err = st.Read(make([]byte, 1))
					if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
						err = nil // accepted, waiting for the rest of the frame
					}
				}
			}
			switch {
			case i < perPeer && err != nil:
				t.Fatalf("%s stream %d of %d allowed: %v", id, i+1, perPeer, err)
			case i == perPeer && err == nil:
				t.Fatalf("%s stream %d accepted past streams_per_peer = %d", id, i+1, perPeer)
			}
			if st != nil {
				held = append(held, st)
			}
		}
		for _, st := range held {
			st.Reset()
		}
	}
}
