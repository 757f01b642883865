package ledger

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
)

// MirrorID is the protocol on which nodes push their new entries to the coordinator and ask
// it for their account: one request frame, one response frame.
const MirrorID protocol.ID = "/virtuoso/ledger/1.0.0"

// Caps of the mirror protocol's frames.
const (
	// MaxPushEntries is the most entries one push carries.
	MaxPushEntries = 256
	maxMirrorFrame = MaxPushEntries*(MaxEntryBytes+16) + 4096
	maxAnswerFrame = 4 << 20
)

// mirrorRequest pushes entries (the sender's own, in order) and asks for a view.
type mirrorRequest struct {
	Push [][]byte `json:"push,omitempty"`
	// View asks for the account view of Of (the sender when empty).
	View bool    `json:"view,omitempty"`
	Of   peer.ID `json:"of,omitempty"`
	// Status asks a coordinator for its group's status; Join and Leave ask the leader to add
	// the sender to the coordinators, or remove it.
	Status bool `json:"status,omitempty"`
	Join   bool `json:"join,omitempty"`
	Leave  bool `json:"leave,omitempty"`
	// Note asks what became of the sender's entry of this sequence number.
	Note uint64 `json:"note,omitempty"`
}

// mirrorAnswer is the coordinator's answer.
type mirrorAnswer struct {
	Results    []Result `json:"results,omitempty"`
	Checkpoint []byte   `json:"checkpoint,omitempty"`
	View       *View    `json:"view,omitempty"`
	// Leader is set by a coordinator that is not the leader: where to push instead.
	Leader *peer.AddrInfo     `json:"leader,omitempty"`
	Error  *market.WireError  `json:"error,omitempty"`
	Status *CoordinatorStatus `json:"status,omitempty"`
	Note   *Result            `json:"note,omitempty"`
}

// writeFrame writes v as one frame in the market's form (a uvarint length, then JSON), capped
// by the mirror's own limits rather than the market's smaller one.
func writeFrame(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(binary.AppendUvarint(nil, uint64(len(b))), b...))
	return err
}

// readFrame reads one request or answer frame of at most limit bytes into v, strictly (the
// market's frames: a uvarint length, then JSON).
func readFrame(r *bufio.Reader, limit int, v any) error {
	b, err := market.ReadFrame(r, limit)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := market.DecodeStrict(b, v); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}

// Protocols are the resource limits of the ledger's stream protocols, for node.Options.
func Protocols() []node.ProtocolLimit {
	return []node.ProtocolLimit{RaftLimit(), {Protocol: MirrorID, Streams: 512, StreamsPerPeer: 8, Memory: 64 << 20}}
}
