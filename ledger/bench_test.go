package ledger

import (
	"testing"

	"github.com/virtuoso-market/virtuoso/market"
)

// BenchmarkApply: transfers applied by one replica, in raft commands of 1024 entries.
func BenchmarkApply(b *testing.B) {
	l := newLedger(b)
	coord, payer := newActor(b), newActor(b)
	l.apply(coord.sign(at(0), TypeCoordinator, &CoordinatorBody{Peer: coord.id}))
	l.apply(coord.sign(at(0), TypeDeposit, &DepositBody{To: payer.id, Amount: market.Unit}))
	raws := make([][]byte, b.N)
	for i := range raws {
		raws[i] = payer.sign(at(1), TypeTransfer, &TransferBody{To: coord.id, Amount: 1})
	}
	b.ResetTimer()
	for i := 0; i < len(raws); i += 1024 {
		l.index++
		if _, err := l.st.Apply(l.index, raws[i:min(len(raws), i+1024)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSweep: one tick charging b.N leases.
func BenchmarkSweep(b *testing.B) {
	l := newLedger(b)
	coord, buyer, prov := newActor(b), newActor(b), newActor(b)
	l.apply(coord.sign(at(0), TypeCoordinator, &CoordinatorBody{Peer: coord.id}))
	l.apply(coord.sign(at(0), TypeDeposit, &DepositBody{To: buyer.id, Amount: MaxAmount}))
	var batch [][]byte
	for i := range b.N {
		batch = append(batch, buyer.sign(at(0), TypeLease, &LeaseBody{Lease: lease(b, buyer, prov, at(0), terms()).Encode()}))
		if len(batch) == 256 || i == b.N-1 {
			l.index++
			if _, err := l.st.Apply(l.index, batch); err != nil {
				b.Fatal(err)
			}
			batch = nil
		}
	}
	b.ResetTimer()
	l.index++
	if _, err := l.st.Apply(l.index, [][]byte{coord.sign(at(61), TypeTick, &TickBody{})}); err != nil {
		b.Fatal(err)
	}
}
