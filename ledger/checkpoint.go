package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
)

// A Checkpoint is a coordinator's signed word to one node of where the ledger stands: its
// height and state hash, and the node's balance and last entry taken. A node verifies and
// keeps it; two checkpoints that cannot both be true are evidence against their signers.
type Checkpoint struct {
	Coordinator peer.ID      `json:"coordinator"`
	Height      uint64       `json:"height"`
	Hash        Hash         `json:"hash"`
	Tick        time.Time    `json:"tick"`
	Node        peer.ID      `json:"node"`
	Balance     market.Money `json:"balance"`
	Seq         uint64       `json:"seq"`
	Head        Hash         `json:"head"`
	Signed      time.Time    `json:"signed"`
}

// Validate checks the checkpoint's fields.
func (c Checkpoint) Validate() error {
	if c.Coordinator.Validate() != nil || c.Node.Validate() != nil {
		return fmt.Errorf("%w: checkpoint without a coordinator or node", ErrMalformed)
	}
	if c.Signed.IsZero() {
		return fmt.Errorf("%w: checkpoint without a time", ErrMalformed)
	}
	return nil
}

var checkpointMagic = [3]byte{'V', 'C', 1}

const (
	checkpointDomain   = "virtuoso/ledger-checkpoint/1\n"
	maxCheckpointBytes = 2 << 10
)

// SignCheckpoint encodes c and signs it with key, the coordinator's.
func SignCheckpoint(c Checkpoint, key crypto.PrivKey) ([]byte, error) {
	if id, err := peer.IDFromPrivateKey(key); err != nil || id != c.Coordinator {
		return nil, fmt.Errorf("sign checkpoint: not the key of %s", c.Coordinator)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	body, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	sig, err := key.Sign(append([]byte(checkpointDomain), body...))
	if err != nil {
		return nil, err
	}
	return market.EncodeEnvelope(checkpointMagic, body, sig), nil
}

// DecodeCheckpoint reads a checkpoint from untrusted bytes and verifies its signature.
func DecodeCheckpoint(raw []byte) (Checkpoint, error) {
	f, err := market.DecodeEnvelope(raw, checkpointMagic, maxCheckpointBytes, maxCheckpointBytes, maxSigBytes)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint: %w", ErrMalformed, err)
	}
	var c Checkpoint
	if err := market.DecodeStrict(f[0], &c); err != nil {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint: %w", ErrMalformed, err)
	}
	if err := c.Validate(); err != nil {
		return Checkpoint{}, err
	}
	if !signedBy(c.Coordinator, checkpointDomain, f[0], f[1]) {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint of %s", ErrForged, market.Short(c.Coordinator))
	}
	return c, nil
}

// Conflict tells why two checkpoints for one node cannot both be true, or "" if they can:
// one height with two state hashes, or a later checkpoint that forgets entries an earlier one
// took.
func Conflict(a, b Checkpoint) string {
	if a.Node != b.Node {
		return ""
	}
	if a.Height > b.Height {
		a, b = b, a
	}
	switch {
	case a.Height == b.Height && a.Hash != b.Hash:
		return fmt.Sprintf("two state hashes at height %d", a.Height)
	case b.Seq < a.Seq:
		return fmt.Sprintf("height %d took entries up to %d, the later height %d only up to %d", a.Height, a.Seq, b.Height, b.Seq)
	case a.Seq == b.Seq && a.Head != b.Head:
		return fmt.Sprintf("two different entries %d of the node taken", a.Seq)
	}
	return ""
}

// Evidence is a pair of checkpoints that cannot both be true, kept by the node shown them.
type Evidence struct {
	Why string `json:"why"`
	A   []byte `json:"a"`
	B   []byte `json:"b"`
}

// Checkpoints keeps a node's latest checkpoint and the evidence of conflicting ones.
type Checkpoints struct {
	sp *node.Space
}

// NewCheckpoints returns the checkpoints kept in sp.
func NewCheckpoints(sp *node.Space) *Checkpoints { return &Checkpoints{sp: sp} }

// Keep verifies raw, a checkpoint for self, checks it against the latest kept, keeps
// evidence if they conflict, and makes it the latest if it is newer.
func (c *Checkpoints) Keep(self peer.ID, raw []byte) (Checkpoint, error) {
	cp, err := DecodeCheckpoint(raw)
	if err != nil {
		return Checkpoint{}, err
	}
	if cp.Node != self {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint for %s, not this node", ErrMalformed, market.Short(cp.Node))
	}
	err = c.sp.Update(func(tx *node.Txn) error {
		old, err := tx.Get("latest")
		if errors.Is(err, node.ErrNotFound) {
			return tx.Put("latest", raw)
		}
		if err != nil {
			return err
		}
		prev, err := DecodeCheckpoint(old)
		if err != nil {
			return tx.Put("latest", raw)
		}
		if why := Conflict(prev, cp); why != "" {
			ev, _ := json.Marshal(Evidence{Why: why, A: old, B: raw})
			if err := tx.Put(fmt.Sprintf("evidence/%020d", time.Now().UnixNano()), ev); err != nil {
				return err
			}
		}
		if cp.Height >= prev.Height {
			return tx.Put("latest", raw)
		}
		return nil
	})
	return cp, err
}

// Latest returns the newest checkpoint kept, if any.
func (c *Checkpoints) Latest() (Checkpoint, bool, error) {
	raw, err := c.sp.Get("latest")
	if errors.Is(err, node.ErrNotFound) {
		return Checkpoint{}, false, nil
	}
	if err != nil {
		return Checkpoint{}, false, err
	}
	cp, err := DecodeCheckpoint(raw)
	return cp, err == nil, err
}

// Evidence returns every conflicting pair kept.
func (c *Checkpoints) Evidence() ([]Evidence, error) {
	var out []Evidence
	err := c.sp.View(func(tx *node.Txn) error {
		return tx.Scan("evidence/", "evidence/~", false, func(_ string, v []byte) error {
			var e Evidence
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
			return nil
		})
	})
	return slices.Clip(out), err
}
