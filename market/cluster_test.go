package market

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/nodetest"
	"github.com/virtuoso-market/virtuoso/node"
)

// fastOptions are market options for tests on loopback: quick republish and housekeeping.
func fastOptions() Options {
	return Options{Republish: time.Second, OfferTTL: time.Minute, Housekeeping: 200 * time.Millisecond,
		AverageInterval: 500 * time.Millisecond, StoreTimeout: 2 * time.Minute, ControlTimeout: time.Minute}
}

// marketCluster starts n nodes; opts(i) gives node i's market options, nil for a node without
// the market (a bare node, e.g. an attacker).
func marketCluster(t *testing.T, n int, opts func(i int) *Options) ([]*node.Node, []*Service) {
	t.Helper()
	svcs := make([]*Service, n)
	nodes := nodetest.Cluster(t, n, nodetest.Options{
		Protocols: Protocols(),
		Services: func(i int) []node.Service {
			o := opts(i)
			if o == nil {
				return nil
			}
			svcs[i] = New(*o)
			return []node.Service{svcs[i]}
		},
	})
	return nodes, svcs
}

// waitFor polls cond until it holds, failing the test with what() after within.
func waitFor(t testing.TB, within time.Duration, what func() string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, what())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitOffer waits until every service's book holds a live offer of (p, m) with at least seq.
func waitOffer(t testing.TB, svcs []*Service, p peer.ID, m MachineID, seq uint64, within time.Duration) {
	t.Helper()
	missing := func() []int {
		var out []int
		for i, s := range svcs {
			if s == nil {
				continue
			}
			so, ok := s.book.Get(p, m, time.Now())
			if !ok || so.Seq < seq {
				out = append(out, i)
			}
		}
		return out
	}
	waitFor(t, within, func() string { return fmt.Sprintf("offer of machine %s missing on nodes %v", m, missing()) },
		func() bool { return len(missing()) == 0 })
}

func testSpec(name string, capacity Resources) MachineSpec {
	return MachineSpec{Name: name, Capacity: capacity, Terms: testTerms(), NetworkMbps: 1000}
}

// TestOfferReachesEveryBook publishes an offer on one of 20 nodes and waits for it in every
// node's book; a price edit then replaces it everywhere.
func TestOfferReachesEveryBook(t *testing.T) {
	const n = 20
	const provider = 7
	start := time.Now()
	defer func() { t.Logf("whole test %v", time.Since(start)) }()
	_, svcs := marketCluster(t, n, func(i int) *Options {
		o := fastOptions()
		o.Provider = i == provider
		return &o
	})
	t.Logf("%d nodes started in %v", n, time.Since(start))
	p := svcs[provider]
	m, err := p.AddMachine(context.Background(), testSpec("rack-7", Resources{16000, 32768, 1 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	waitOffer(t, svcs, p.n.ID(), m.ID, 1, 60*time.Second)
	t.Logf("offer in every book after %v", time.Since(t0))

	terms := m.Terms
	terms.StoragePrice = 123_456
	if _, err := p.EditMachine(context.Background(), m.ID, MachineEdit{Terms: &terms}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() string { return "the edited offer did not reach every book" }, func() bool {
		for _, s := range svcs {
			so, ok := s.book.Get(p.n.ID(), m.ID, time.Now())
			if !ok || so.Terms.StoragePrice != 123_456 {
				return false
			}
		}
		return true
	})
}

// TestForgedOffersReachNoBook has a node without the market's validator publish forged,
// re-published and malformed offers: none enters any book, the nodes that received them
// count them against the sender, and an honest offer published after them still spreads.
func TestForgedOffersReachNoBook(t *testing.T) {
	const n = 6
	const attacker, victim = 5, 1
	nodes, svcs := marketCluster(t, n, func(i int) *Options {
		if i == attacker {
			return nil
		}
		o := fastOptions()
		o.Provider = i == victim
		o.RejectLimit = 1000 // keep the attacker connected: the test counts every rejection
		return &o
	})
	ctx := context.Background()
	honest := svcs[victim]
	m, err := honest.AddMachine(ctx, testSpec("victim", Resources{8000, 8192, 100000}))
	if err != nil {
		t.Fatal(err)
	}
	waitOffer(t, svcs, honest.n.ID(), m.ID, 1, 30*time.Second)
	genuine, _ := honest.book.Get(honest.n.ID(), m.ID, time.Now())

	att := nodes[attacker]
	topic, err := att.Topic(OffersTopic, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() string { return "the attacker never joined the topic's mesh" },
		func() bool { return len(topic.ListPeers()) > 0 })

	forgedMachine := MachineID{0xf0, 0x0f}
	// An offer in the victim's name, signed with the attacker's key.
	o := testOffer(honest.n.ID())
	o.Machine, o.Seq, o.Issued, o.Expires = forgedMachine, genuine.Seq+100, time.Now().UTC(), time.Now().UTC().Add(time.Minute)
	body, _ := jsonMarshalOffer(o)
	sig, _ := att.PrivKey().Sign(append([]byte(offerDomain), body...))
	wrongKey := encodeEnvelope(offerMagic, body, sig)
	// The attacker's own, validly signed offer that claims to be free of everything except a
	// free capacity above its capacity: out of range.
	own := testOffer(att.ID())
	own.Machine, own.Issued, own.Expires = MachineID{0xf1}, time.Now().UTC(), time.Now().UTC().Add(time.Minute)
	own.Free.MemoryMB = own.Capacity.MemoryMB * 2
	ownBody, _ := jsonMarshalOffer(own)
	ownSig, _ := att.PrivKey().Sign(append([]byte(offerDomain), ownBody...))
	outOfRange := encodeEnvelope(offerMagic, ownBody, ownSig)

	for round := range 5 {
		for _, raw := range [][]byte{
			wrongKey,
			genuine.Raw, // the victim's genuine offer, re-published under the attacker's name
			outOfRange,
			[]byte("VO\x01garbage"),
			append(append([]byte{}, genuine.Raw...), make([]byte, MaxOfferBytes)...), // oversized
		} {
			if err := topic.Publish(ctx, raw); err != nil {
				t.Fatalf("round %d: publish: %v", round, err)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	// An honest change after the attack must still reach every book: the attack did not cut
	// the victim off, and the forged offers had every chance to spread too.
	terms := m.Terms
	terms.SpeedPrice++
	if _, err := honest.EditMachine(ctx, m.ID, MachineEdit{Terms: &terms}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() string { return "the honest edit did not spread" }, func() bool {
		for _, s := range svcs {
			if s == nil {
				continue
			}
			if so, ok := s.book.Get(honest.n.ID(), m.ID, time.Now()); !ok || so.Terms.SpeedPrice != terms.SpeedPrice {
				return false
			}
		}
		return true
	})
	rejected := 0
	for i, s := range svcs {
		if s == nil {
			continue
		}
		for _, o := range s.Offers() {
			if o.Machine == forgedMachine || o.Provider == att.ID() {
				t.Errorf("node %d holds a forged offer: %+v", i, o)
			}
		}
		rejected += s.Rejected(att.ID())
	}
	if rejected == 0 {
		t.Fatal("no node ever received (and rejected) the attacker's offers: the test proved nothing")
	}
	t.Logf("%d rejections of the attacker's offers", rejected)
}

// TestJoiningNodeCatchesUp: a node that joins gets the offers already in its first peer's
// book through the direct offers query. The offer checked here was never gossiped at all (a
// relayed offer of a provider that is not online), so only the query can bring it.
func TestJoiningNodeCatchesUp(t *testing.T) {
	nodes, svcs := marketCluster(t, 2, func(i int) *Options {
		o := fastOptions()
		o.Republish = time.Hour
		return &o
	})
	key, absent := testKey(t, 9)
	o := testOffer(absent)
	o.Addrs = nil
	o.Issued, o.Expires = time.Now().UTC(), time.Now().UTC().Add(time.Minute)
	so, err := SignOffer(o, key)
	if err != nil {
		t.Fatal(err)
	}
	if !svcs[1].accept(so) {
		t.Fatal("offer not taken")
	}

	late := New(fastOptions())
	cfg := node.DefaultConfig(node.ProfileLocal)
	cfg.Network.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Network.DiscoveryInterval = 200 * time.Millisecond
	cfg.Network.Bootstrap = nodetest.Addrs(nodes[1])
	nodetest.Start(t, node.Home{Dir: t.TempDir()}, cfg, node.Options{Services: []node.Service{late}, Protocols: Protocols()})
	waitOffer(t, []*Service{late}, absent, o.Machine, o.Seq, 30*time.Second)
	if n, err := late.QueryOffers(context.Background(), nodes[1].ID()); err != nil || n != 0 {
		t.Fatalf("a second query brought %d new offers (%v); the first had them all", n, err)
	}
}

// TestAveragesFollowNewOffers: a node's market averages take in offers as they arrive, without
// waiting for the next averaging period (an hour here).
func TestAveragesFollowNewOffers(t *testing.T) {
	_, svcs := marketCluster(t, 2, func(i int) *Options {
		o := fastOptions()
		o.AverageInterval = time.Hour
		o.Provider = i == 0
		return &o
	})
	if _, err := svcs[0].AddMachine(context.Background(), testSpec("rack-1", Resources{16000, 32768, 1 << 20})); err != nil {
		t.Fatal(err)
	}
	providers := func() int {
		a, err := svcs[1].Averages()
		if err != nil {
			t.Fatal(err)
		}
		return a.Resources.Providers
	}
	waitFor(t, 20*time.Second, func() string { return fmt.Sprintf("averages over %d providers, want 1", providers()) },
		func() bool { return providers() == 1 })
}
