package market

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// benchOffers signs n offers of n providers with varied terms and free capacity.
func benchOffers(b *testing.B, n int) []SignedOffer {
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now().UTC().Truncate(time.Millisecond)
	out := make([]SignedOffer, 0, n)
	for i := range n {
		priv, _, _ := crypto.GenerateEd25519Key(nil)
		id, _ := peer.IDFromPrivateKey(priv)
		capacity := Resources{4000 + rng.Int64N(60000), 4096 + rng.Int64N(262144), 100_000 + rng.Int64N(10_000_000)}
		t := DefaultTerms()
		t.SpeedPrice, t.StoragePrice = Money(100+rng.Int64N(10_000)), Money(100+rng.Int64N(50_000))
		so, err := SignOffer(Offer{Provider: id, Machine: MachineID{byte(i >> 8), byte(i), 1}, Seq: 1, Issued: now,
			Expires: now.Add(MaxOfferTTL), Name: fmt.Sprintf("m%d", i), Processor: "x86_64", NetworkMbps: 1000,
			Methods: DefaultMethods(), Capacity: capacity,
			Free:  Resources{rng.Int64N(capacity.SpeedBogomips), rng.Int64N(capacity.MemoryMB), rng.Int64N(capacity.StorageMB)},
			Terms: t}, priv)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, so)
	}
	return out
}

func BenchmarkSearch10k(b *testing.B) {
	book := newOfferIndex(64, 1<<20)
	now := time.Now()
	for _, so := range benchOffers(b, 10_000) {
		book.Put(so, now)
	}
	req := SearchRequest{Config: StandardConfigs()[1], Limit: 20}
	b.ResetTimer()
	for b.Loop() {
		if _, err := book.Search(now, req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeOffer(b *testing.B) {
	offers := benchOffers(b, 256)
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if _, err := DecodeOffer(offers[i%len(offers)].Raw); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
