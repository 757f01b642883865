package ledger

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/market"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
)

// Lease records are the state's hot records (a tick's sweep reads and writes one per lease
// charged), so they are kept in a fixed binary form rather than JSON: version 1, then the
// fields in order; IDs as their bytes, peer IDs length-prefixed, times as Unix nanoseconds
// (0 for the zero time), amounts and counts as 64-bit big-endian.
const leaseRecordVersion = 1

func encodeLeaseState(l LeaseState) []byte {
	b := make([]byte, 0, 256)
	b = append(b, leaseRecordVersion)
	b = append(b, l.ID[:]...)
	b = append(b, l.VM[:]...)
	for _, p := range []peer.ID{l.Buyer, l.Provider} {
		b = append(b, byte(len(p)))
		b = append(b, p...)
	}
	b = append(b, l.Machine[:]...)
	q := l.Quote
	for _, v := range []int64{q.SpeedChunks, q.MemoryChunks, q.StorageChunks, int64(q.RunningPrice), int64(q.StoragePrice), q.RunningSecs, q.StorageSecs,
		nanos(l.Created), int64(l.Status), int64(l.Version), nanos(l.StorageDue), nanos(l.RunningDue), int64(l.Storage), int64(l.Running), bit(l.Unpaid), nanos(l.Ended)} {
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	return append(b, l.Next[:]...)
}

func decodeLeaseState(b []byte) (LeaseState, error) {
	var l LeaseState
	bad := fmt.Errorf("%w: lease record of %d bytes", ErrMalformed, len(b))
	if len(b) < 1 || b[0] != leaseRecordVersion {
		return l, bad
	}
	b = b[1:]
	take := func(n int) []byte {
		if len(b) < n {
			return nil
		}
		out := b[:n]
		b = b[n:]
		return out
	}
	fixed := func(dst []byte) bool {
		src := take(len(dst))
		copy(dst, src)
		return src != nil
	}
	if !fixed(l.ID[:]) || !fixed(l.VM[:]) {
		return l, bad
	}
	for _, p := range []*peer.ID{&l.Buyer, &l.Provider} {
		n := take(1)
		if n == nil {
			return l, bad
		}
		id := take(int(n[0]))
		if id == nil {
			return l, bad
		}
		*p = peer.ID(id)
	}
	if !fixed(l.Machine[:]) {
		return l, bad
	}
	var v [16]int64
	for i := range v {
		x := take(8)
		if x == nil {
			return l, bad
		}
		v[i] = int64(binary.BigEndian.Uint64(x))
	}
	if !fixed(l.Next[:]) || len(b) != 0 {
		return l, bad
	}
	l.Quote = market.Quote{SpeedChunks: v[0], MemoryChunks: v[1], StorageChunks: v[2], RunningPrice: market.Money(v[3]),
		StoragePrice: market.Money(v[4]), RunningSecs: v[5], StorageSecs: v[6]}
	l.Created, l.Status, l.Version = unnanos(v[7]), vm.Status(v[8]), uint64(v[9])
	l.StorageDue, l.RunningDue, l.Storage, l.Running = unnanos(v[10]), unnanos(v[11]), market.Money(v[12]), market.Money(v[13])
	l.Unpaid, l.Ended = v[14] != 0, unnanos(v[15])
	return l, nil
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func unnanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func bit(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// getLease reads a lease record.
func getLease(tx *node.Txn, id market.LeaseID) (LeaseState, error) {
	b, err := tx.Get(leaseKey(id))
	if err != nil {
		return LeaseState{}, err
	}
	return decodeLeaseState(b)
}
