package market

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// The notice protocol, /virtuoso/notice/1.0.0: a provider tells a buyer that its lease ended
// (the machine was removed): {"lease", "vm", "reason"}, no answer. The buyer takes it only
// from the provider of that lease.

// notice tells a buyer its lease ended.
type notice struct {
	Lease  LeaseID `json:"lease"`
	VM     vm.ID   `json:"vm"`
	Reason string  `json:"reason"`
}

func decodeNotice(b []byte) (notice, error) {
	var n notice
	if err := DecodeStrict(b, &n); err != nil {
		return n, err
	}
	if n.VM.IsZero() || len(n.Reason) > maxErrorMessage {
		return n, fmt.Errorf("%w: notice", ErrMalformed)
	}
	return n, nil
}

// notify tells a lease's buyer, in the background, that the lease ended.
func (p *Provider) notify(l LeaseRecord, reason string) {
	sl, err := l.Signed()
	if err != nil {
		p.log.Warn("notify buyer: lease record does not verify", "vm", l.VM, "err", err)
		return
	}
	p.group.Go(func() error {
		ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
		defer cancel()
		st, err := p.open(ctx, peerAddr{id: l.Buyer}, NoticeID)
		if err != nil {
			p.log.Warn("notify buyer", "peer", l.Buyer, "vm", l.VM, "err", err)
			return nil
		}
		st.SetDeadline(time.Now().Add(30 * time.Second))
		if err := WriteJSON(st, notice{Lease: sl.ID, VM: l.VM, Reason: reason}); err != nil {
			st.Reset()
			return nil
		}
		st.CloseWrite()
		io.Copy(io.Discard, io.LimitReader(st, 1024))
		st.Close()
		return nil
	})
}

// handleNotice records a provider's notice that a lease ended.
func (b *Buyer) handleNotice(_ context.Context, st network.Stream, frame []byte, _ *bufio.Reader) error {
	n, err := decodeNotice(frame)
	if err != nil {
		return err
	}
	key := leaseKey(n.VM)
	from := st.Conn().RemotePeer()
	var ended buyerLease
	var lease SignedLease
	err = b.space.Update(func(tx *node.Txn) error {
		bl, err := node.GetJSON[buyerLease](tx, key)
		if err != nil {
			return err
		}
		sl, err := DecodeLease(bl.Raw)
		if err != nil {
			return err
		}
		if sl.Provider != from || sl.ID != n.Lease {
			return fmt.Errorf("%w: notice about vm %s from %s, not its provider", ErrNotOwner, n.VM, from)
		}
		bl.State, bl.Note, bl.Updated = LeaseStateEnded, n.Reason, b.now()
		bl.VM = vm.State{Status: vm.StatusDeleted, Version: bl.VM.Version + 1}
		ended, lease = bl, sl
		return node.PutJSON(tx, key, bl)
	})
	if err != nil {
		return err
	}
	b.log.Warn("lease ended by the provider", "vm", n.VM, "lease", n.Lease, "peer", from, "reason", n.Reason)
	b.closeTunnel(n.VM)
	b.publishVM(ended)
	b.n.Events().Publish(LeaseEnded{Lease: lease.ID, VM: n.VM, Buyer: lease.Buyer, Provider: lease.Provider, Reason: n.Reason, Time: ended.Updated})
	return nil
}
