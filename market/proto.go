package market

import (
	"errors"
	"io"

	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/virtuoso-market/virtuoso/node"
)

// Topic and stream protocols of the marketplace.
const (
	// OffersTopic is the gossipsub topic offers are published on.
	OffersTopic = "/virtuoso/offers/1"
	// OffersQueryID asks a node directly for the offers it holds (a joining node's catch-up:
	// gossip is lossy right after peers join).
	OffersQueryID protocol.ID = "/virtuoso/offers-query/1.0.0"
	// StoreID carries a store request (a lease proposal) to a provider.
	StoreID protocol.ID = "/virtuoso/store/1.0.0"
	// ControlID carries VM control requests from a buyer to the provider of its VM.
	ControlID protocol.ID = "/virtuoso/vm/1.0.0"
	// ConsoleID is a byte tunnel from a buyer's node to the provider's VNC server of a VM.
	ConsoleID protocol.ID = "/virtuoso/console/1.0.0"
	// NoticeID carries a provider's notice to a buyer that its lease ended (machine removed).
	NoticeID protocol.ID = "/virtuoso/notice/1.0.0"
	// ImageID asks a provider to deliver an OS image it offers to a provider storing a
	// preconfigured VM of it (images.go).
	ImageID protocol.ID = "/virtuoso/image/1.0.0"
)

// serviceName is the resource-manager service of every market stream.
const serviceName = "virtuoso.market"

// Protocols are the resource limits of the market's stream protocols, for node.Options, from
// the [market] section: a peer may hold only a few streams of each at once; the totals are
// far above what honest peers use, so that strangers holding all they may leave room for a
// VM's owner and a buyer (a stream that sends no request within StreamOptions.FirstFrame is
// reset).
func Protocols(c node.MarketConfig) []node.ProtocolLimit {
	limit := func(id protocol.ID, memory int64) node.ProtocolLimit {
		return node.ProtocolLimit{Protocol: id, Streams: c.MaxStreams, StreamsPerPeer: c.StreamsPerPeer, Memory: memory}
	}
	return []node.ProtocolLimit{
		limit(OffersQueryID, 64<<20), limit(StoreID, 64<<20), limit(ControlID, 64<<20),
		limit(ConsoleID, 64<<20), limit(NoticeID, 16<<20), limit(MigrateID, 16<<20), limit(ImageID, 16<<20),
	}
}

// errorReply is the answer to a request that could not be read: it decodes as any of the
// protocols' responses, all of which carry the error under "error".
type errorReply struct {
	Error *WireError `json:"error"`
}

// replyMalformed answers a malformed request with an error and lets the stream close; other
// read errors (the peer went away) are returned, and the stream is reset.
func replyMalformed(w io.Writer, err error) error {
	if errors.Is(err, ErrMalformed) {
		return WriteJSON(w, errorReply{Error: toWire(err)})
	}
	return err
}
