package market

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/sync/errgroup"

	"github.com/virtuoso-market/virtuoso/internal/nodetest"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
)

// testNode is a node of a market test cluster with the services of its role, assembled as
// internal/daemon assembles them.
type testNode struct {
	*node.Node
	book  *Book
	buyer *Buyer
	prov  *Provider   // nil unless a provider
	mgr   *vm.Manager // the provider's VM stack
	drv   *qemu.Driver
}

// spec is what a test node runs. Provider nodes get a real QEMU VM stack (TCG); with Guest,
// their VMs are of the test guest, which they also offer as the preconfigured image busybox.
type spec struct {
	Provider bool
	Guest    *qemutest.Guest
	Book     BookOptions
	Buyer    BuyerOptions
	Seller   ProviderOptions
}

// fast is the spec of a buyer node with quick republishing and housekeeping for loopback.
func fast() *spec {
	return &spec{
		Book:   BookOptions{AverageInterval: 500 * time.Millisecond, Housekeeping: 200 * time.Millisecond},
		Buyer:  BuyerOptions{StoreTimeout: 2 * time.Minute, ControlTimeout: time.Minute, Housekeeping: 200 * time.Millisecond},
		Seller: ProviderOptions{Republish: time.Second, OfferTTL: time.Minute, StoreTimeout: 2 * time.Minute, ControlTimeout: time.Minute},
	}
}

// seller is fast() as a provider, its VMs of guest g when not nil.
func seller(g *qemutest.Guest) *spec {
	s := fast()
	s.Provider, s.Guest = true, g
	// The tests store many VMs per buyer; TestSquattingIsBounded checks the limits.
	s.Seller.MaxLeasesPerBuyer, s.Seller.BuyerSharePercent = 1000, 100
	if g != nil {
		s.Seller.Images = []Image{{Name: "busybox", OS: "linux", Disk: g.Disk, MemoryMB: 128,
			Boot: &vm.KernelBoot{Kernel: g.Kernel, Initrd: g.Initrd, Cmdline: g.Cmdline}}}
	}
	return s
}

// marketCluster starts n nodes; specOf(i) gives node i's spec, nil for a node without the
// market (a bare node, e.g. an attacker).
func marketCluster(t *testing.T, n int, specOf func(i int) *spec) []*testNode {
	t.Helper()
	out := make([]*testNode, n)
	nodetest.Cluster(t, n, nodetest.Options{
		Protocols: Protocols(node.DefaultMarketConfig()),
		Services: func(i int, n *node.Node) []node.Service {
			out[i] = &testNode{Node: n}
			if sp := specOf(i); sp != nil {
				return out[i].assemble(t, *sp)
			}
			return nil
		},
	})
	return out
}

// assemble builds the services of sp over tn's node, in the daemon's order.
func (tn *testNode) assemble(t *testing.T, sp spec) []node.Service {
	t.Helper()
	var svcs []node.Service
	tn.book = NewBook(sp.Book)
	tn.buyer = NewBuyer(tn.book, sp.Buyer)
	svcs = append(svcs, tn.book, tn.buyer)
	if sp.Provider {
		cfg := qemu.DefaultConfig(t.TempDir())
		cfg.Accel = qemu.AccelTCG
		if sp.Guest != nil {
			cfg = qemutest.DriverConfig(t, *sp.Guest)
		}
		if sp.Seller.ImageDir != "" { // where the provider keeps the images it fetches
			cfg.ImageDirs = append(cfg.ImageDirs, sp.Seller.ImageDir)
		}
		tn.drv = qemutest.NewDriver(t, cfg)
		inv, err := vm.OpenInventory(tn.Store().Space("vm/inventory/"))
		if err != nil {
			t.Fatal(err)
		}
		// A guest is reported stalled after 2 s without a sign of running, not 60.
		if tn.mgr, err = vm.NewManager(vm.ManagerConfig{Driver: tn.drv, Inventory: inv, Events: tn.Events(), StallAfter: 2 * time.Second}); err != nil {
			t.Fatal(err)
		}
		tn.prov = NewProvider(tn.book, tn.mgr, sp.Seller)
		svcs = append(svcs, tn.prov)
	} else {
		svcs = append(svcs, NotSelling{})
	}
	return svcs
}

// restart closes tn's node and starts a new one on its home with the services of sp, alone
// (no bootstrap peers) unless cfg says otherwise.
func (tn *testNode) restart(t *testing.T, sp spec, edit func(*node.Config)) *testNode {
	t.Helper()
	home, cfg := tn.Home(), tn.Config()
	if err := tn.Close(); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(&cfg)
	}
	n := nodetest.New(t, home, cfg, node.Options{Protocols: Protocols(node.DefaultMarketConfig())})
	fresh := &testNode{Node: n}
	for _, s := range fresh.assemble(t, sp) {
		n.Attach(s)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return fresh
}

// waitOffer waits until every node's book holds a live offer of (p, m) with at least seq.
func waitOffer(t testing.TB, nodes []*testNode, p peer.ID, m MachineID, seq uint64, within time.Duration) {
	t.Helper()
	testwait.Eventually(t, within, func() error {
		var missing []int
		for i, tn := range nodes {
			if tn == nil || tn.book == nil {
				continue
			}
			if so, ok := tn.book.Get(p, m); !ok || so.Seq < seq {
				missing = append(missing, i)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("offer of machine %s missing on nodes %v", m, missing)
		}
		return nil
	})
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
	nodes := marketCluster(t, n, func(i int) *spec {
		if i == provider {
			return seller(nil)
		}
		return fast()
	})
	t.Logf("%d nodes started in %v", n, time.Since(start))
	p := nodes[provider]
	m, err := p.prov.AddMachine(context.Background(), testSpec("rack-7", Resources{16000, 32768, 1 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	waitOffer(t, nodes, p.ID(), m.ID, 1, 60*time.Second)
	t.Logf("offer in every book after %v", time.Since(t0))

	terms := m.Terms
	terms.StoragePrice = 123_456
	if _, err := p.prov.EditMachine(context.Background(), m.ID, MachineEdit{Terms: &terms}); err != nil {
		t.Fatal(err)
	}
	testwait.Eventually(t, 60*time.Second, func() error {
		for i, tn := range nodes {
			if so, ok := tn.book.Get(p.ID(), m.ID); !ok || so.Terms.StoragePrice != 123_456 {
				return fmt.Errorf("node %d does not have the edited offer", i)
			}
		}
		return nil
	})
}

// TestForgedOffersReachNoBook has a node without the market's validator publish forged,
// re-published and malformed offers: none enters any book, the nodes that received them
// count them against the sender, and an honest offer published after them still spreads.
func TestForgedOffersReachNoBook(t *testing.T) {
	const n = 6
	const attacker, victim = 5, 1
	nodes := marketCluster(t, n, func(i int) *spec {
		if i == attacker {
			return nil
		}
		s := fast()
		s.Provider = i == victim
		return s
	})
	ctx := context.Background()
	honest := nodes[victim]
	m, err := honest.prov.AddMachine(ctx, testSpec("victim", Resources{8000, 8192, 100000}))
	if err != nil {
		t.Fatal(err)
	}
	waitOffer(t, nodes, honest.ID(), m.ID, 1, 30*time.Second)
	genuine, _ := honest.book.Get(honest.ID(), m.ID)

	att := nodes[attacker]
	topic := joinMesh(t, att.Node)

	forgedMachine := MachineID{0xf0, 0x0f}
	// An offer in the victim's name, signed with the attacker's key.
	o := testOffer(honest.ID())
	o.Machine, o.Seq, o.Issued, o.Expires = forgedMachine, genuine.Seq+100, time.Now().UTC(), time.Now().UTC().Add(time.Minute)
	body, _ := jsonMarshalOffer(o)
	sig, _ := att.PrivKey().Sign(append([]byte(offerDomain), body...))
	wrongKey := EncodeEnvelope(offerMagic, body, sig)
	// The attacker's own, validly signed offer that claims to be free of everything except a
	// free capacity above its capacity: out of range.
	own := testOffer(att.ID())
	own.Machine, own.Issued, own.Expires = MachineID{0xf1}, time.Now().UTC(), time.Now().UTC().Add(time.Minute)
	own.Free.MemoryMB = own.Capacity.MemoryMB * 2
	ownBody, _ := jsonMarshalOffer(own)
	ownSig, _ := att.PrivKey().Sign(append([]byte(offerDomain), ownBody...))
	outOfRange := EncodeEnvelope(offerMagic, ownBody, ownSig)
	// The attacker's offer whose body names the victim as provider, then itself: a decoder
	// that keeps the last member sees the attacker (the signer), one that keeps the first sees
	// the victim. Ambiguous: refused.
	dup := testOffer(att.ID())
	dup.Machine, dup.Issued, dup.Expires = MachineID{0xf2}, time.Now().UTC(), time.Now().UTC().Add(time.Minute)
	dupBody, _ := jsonMarshalOffer(dup)
	dupBody = bytes.Replace(dupBody, []byte(`{"provider":`), []byte(`{"provider":"`+honest.ID().String()+`","provider":`), 1)
	dupSig, _ := att.PrivKey().Sign(append([]byte(offerDomain), dupBody...))
	twoProviders := EncodeEnvelope(offerMagic, dupBody, dupSig)

	for round := range 5 {
		for _, raw := range [][]byte{
			wrongKey,
			genuine.Raw, // the victim's genuine offer, re-published under the attacker's name
			outOfRange,
			twoProviders,
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
	if _, err := honest.prov.EditMachine(ctx, m.ID, MachineEdit{Terms: &terms}); err != nil {
		t.Fatal(err)
	}
	testwait.Eventually(t, 30*time.Second, func() error {
		for i, tn := range nodes {
			if tn.book == nil {
				continue
			}
			if so, ok := tn.book.Get(honest.ID(), m.ID); !ok || so.Terms.SpeedPrice != terms.SpeedPrice {
				return fmt.Errorf("the honest edit did not reach node %d", i)
			}
		}
		return nil
	})
	rejected := 0
	for i, tn := range nodes {
		if tn.book == nil {
			continue
		}
		for _, o := range tn.book.Offers() {
			if o.Machine == forgedMachine || o.Machine == dup.Machine || o.Provider == att.ID() {
				t.Errorf("node %d holds a forged offer: %+v", i, o)
			}
		}
		rejected += tn.book.Rejected(att.ID())
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
	nodes := marketCluster(t, 2, func(int) *spec { return fast() })
	key, absent := testKey(t, 9)
	o := testOffer(absent)
	o.Addrs = nil
	o.Issued, o.Expires = time.Now().UTC(), time.Now().UTC().Add(time.Minute)
	so, err := SignOffer(o, key)
	if err != nil {
		t.Fatal(err)
	}
	if !nodes[1].book.accept(so) {
		t.Fatal("offer not taken")
	}

	cfg := node.DefaultConfig(node.ProfileLocal)
	cfg.Network.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.Network.DiscoveryInterval = 200 * time.Millisecond
	cfg.Network.Bootstrap = nodetest.Addrs(nodes[1].Node)
	late := &testNode{Node: nodetest.New(t, node.Home{Dir: t.TempDir()}, cfg, node.Options{Protocols: Protocols(node.DefaultMarketConfig())})}
	for _, s := range late.assemble(t, *fast()) {
		late.Attach(s)
	}
	if err := late.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitOffer(t, []*testNode{late}, absent, o.Machine, o.Seq, 30*time.Second)
	if n, err := late.book.QueryOffers(context.Background(), nodes[1].ID()); err != nil || n != 0 {
		t.Fatalf("a second query brought %d new offers (%v); the first had them all", n, err)
	}
}

// TestAveragesFollowNewOffers: a node's market averages take in offers as they arrive, without
// waiting for the next averaging period (an hour here).
func TestAveragesFollowNewOffers(t *testing.T) {
	nodes := marketCluster(t, 2, func(i int) *spec {
		s := fast()
		if i == 0 {
			s = seller(nil)
		}
		s.Book.AverageInterval = time.Hour
		return s
	})
	if _, err := nodes[0].prov.AddMachine(context.Background(), testSpec("rack-1", Resources{16000, 32768, 1 << 20})); err != nil {
		t.Fatal(err)
	}
	testwait.Eventually(t, 20*time.Second, func() error {
		a, err := nodes[1].book.Averages()
		if err != nil {
			return err
		}
		if a.Resources.Providers != 1 {
			return fmt.Errorf("averages over %d providers, want 1", a.Resources.Providers)
		}
		return nil
	})
}

// joinMesh joins the offers topic on a bare node n, without the market's validator, and
// waits until it has mesh peers: what an attacker's node does.
func joinMesh(t *testing.T, n *node.Node) *pubsub.Topic {
	t.Helper()
	topic, err := n.Topic(OffersTopic, nil)
	if err != nil {
		t.Fatal(err)
	}
	testwait.Eventually(t, 30*time.Second, func() error {
		if len(topic.ListPeers()) == 0 {
			return errors.New("the node never joined the topic's mesh")
		}
		return nil
	})
	return topic
}

// TestNewerNodesAreNotPenalised runs a node of a later release next to today's: its offers
// carry a field today's nodes do not know, and it also publishes an envelope of a format
// version they cannot read. The first kind enters every book, verified over its exact bytes;
// the second is ignored; neither counts against the newer node.
func TestNewerNodesAreNotPenalised(t *testing.T) {
	const newer = 2
	nodes := marketCluster(t, 3, func(i int) *spec {
		if i == newer {
			return nil
		}
		return fast()
	})
	n := nodes[newer]
	topic := joinMesh(t, n.Node)
	ctx := context.Background()

	o := testOffer(n.ID())
	o.Addrs = nil
	o.Issued, o.Expires = time.Now().UTC().Truncate(time.Millisecond), time.Now().UTC().Add(time.Minute)
	body, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	body = withField(body, `"gpus":[{"model":"a100","memory_gb":80}]`)
	sig, err := n.PrivKey().Sign(append([]byte(offerDomain), body...))
	if err != nil {
		t.Fatal(err)
	}
	later := append([]byte{'V', 'O', 2}, EncodeEnvelope(offerMagic, body, sig)[3:]...)
	for range 3 {
		if err := topic.Publish(ctx, later); err != nil {
			t.Fatal(err)
		}
	}
	extended := EncodeEnvelope(offerMagic, body, sig)
	testwait.Eventually(t, 30*time.Second, func() error {
		if err := topic.Publish(ctx, extended); err != nil {
			return err
		}
		for i, tn := range nodes[:newer] {
			so, ok := tn.book.Get(n.ID(), o.Machine)
			if !ok {
				return fmt.Errorf("node %d has not taken the newer node's offer", i)
			}
			if !bytes.Equal(so.Raw, extended) {
				return fmt.Errorf("node %d keeps the offer in other bytes than were signed", i)
			}
		}
		return nil
	})
	for i, tn := range nodes[:newer] {
		if r := tn.book.Rejected(n.ID()); r != 0 {
			t.Fatalf("node %d counted %d invalid offers against the newer node", i, r)
		}
	}
	// Its bootstrap peer (the others may reach it through that one) still keeps it connected.
	if nodes[0].Host().Network().Connectedness(n.ID()) != network.Connected {
		t.Fatal("the newer node's bootstrap peer dropped it")
	}
	// The offer travels on unchanged: a joiner catching up from a today's node gets the
	// newer node's exact bytes too.
	if added, err := nodes[1].book.QueryOffers(ctx, nodes[0].ID()); err != nil || added != 0 {
		t.Fatalf("catch-up from a peer holding the same offers: %d new, %v", added, err)
	}
}

// TestOneIdentityCannotMoveTheAverages: next to two honest providers, one identity publishes
// 40 validly signed offers at the highest price, each advertising an invented image. The
// buyer's averages stay within the honest providers' prices, count the flooder once, and no
// price history is written for the invented names.
func TestOneIdentityCannotMoveTheAverages(t *testing.T) {
	const flooder = 3
	nodes := marketCluster(t, 4, func(i int) *spec {
		switch i {
		case 0, 1:
			return seller(nil)
		case flooder:
			return nil
		}
		return fast()
	})
	buyer, x := nodes[2], nodes[flooder]
	ctx := context.Background()
	tiny := StandardConfigs()[0]
	var honest []Money
	for i, p := range nodes[:2] {
		spec := testSpec(fmt.Sprintf("honest-%d", i), roomy)
		spec.Terms.SpeedPrice = Money(1_000 * (i + 1))
		m, err := p.prov.AddMachine(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		q, _ := m.Terms.Quote(tiny.Resources())
		honest = append(honest, q.RunningPerHour())
		waitOffer(t, []*testNode{buyer}, p.ID(), m.ID, 1, 30*time.Second)
	}
	topic := joinMesh(t, x.Node)
	var flood [][]byte
	for i := range 40 {
		o := testOffer(x.ID())
		o.Machine, o.Addrs = MachineID{0xfe, byte(i)}, nil
		o.Issued, o.Expires = time.Now().UTC().Truncate(time.Millisecond), time.Now().UTC().Add(time.Minute)
		o.Terms.SpeedPrice, o.Terms.MemoryPrice, o.Terms.StoragePrice = MaxPrice, MaxPrice, MaxPrice
		o.Images = []ImageInfo{{Hash: "blake3:" + fmt.Sprintf("%064x", i+1), Name: fmt.Sprintf("invented-%02d", i), OS: "linux", SizeMB: 32, MemoryMB: 128}}
		so, err := SignOffer(o, x.PrivKey())
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, so.Raw)
	}
	testwait.Eventually(t, 30*time.Second, func() error {
		for _, raw := range flood {
			if err := topic.Publish(ctx, raw); err != nil {
				return err
			}
		}
		n := 0
		for _, o := range buyer.book.Offers() {
			if o.Provider == x.ID() {
				n++
			}
		}
		if n < len(flood) {
			return fmt.Errorf("the buyer's book took %d of the flooder's %d offers", n, len(flood))
		}
		return nil
	})
	testwait.Eventually(t, 30*time.Second, func() error {
		a, err := buyer.book.Averages()
		if err != nil {
			return err
		}
		i := slices.IndexFunc(a.Configs, func(c ConfigAverage) bool { return c.Config == "tiny" })
		if i < 0 || a.Configs[i].Providers != 3 {
			return fmt.Errorf("tiny's average is not over the 3 providers yet: %+v", a.Configs)
		}
		got := a.Configs[i].RunningPerHour
		if got < slices.Min(honest) || got > slices.Max(honest) {
			t.Fatalf("tiny's average %s per hour, outside the honest providers' %v", got, honest)
		}
		if a.Resources.Providers != 3 || a.Resources.SpeedPer1000BogomipsHour > 10*Unit {
			t.Fatalf("resource averages %+v moved by one identity's offers", a.Resources)
		}
		return nil
	})
	// Two periods' samples of tiny: the invented names had as many chances to be recorded.
	testwait.Eventually(t, 30*time.Second, func() error {
		if hist, err := buyer.book.History("tiny"); err != nil || len(hist) < 2 {
			return fmt.Errorf("tiny's history has %d samples (%v)", len(hist), err)
		}
		return nil
	})
	var recorded []string
	if err := buyer.book.avgSpace.List(func(key string, _ []byte) error {
		recorded = append(recorded, key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, k := range recorded {
		if strings.HasPrefix(k, "invented-") {
			t.Fatalf("price history was written for the flooder's invented %q (history kept: %v)", k, recorded)
		}
	}
	if !slices.Contains(recorded, "tiny") {
		t.Fatalf("no history for tiny: %v", recorded)
	}
}

// TestCatalogNamesAreNotShadowed: a stranger advertising another image under the name of one
// the buyer already knows changes neither the buyer's catalog entry nor its search results;
// the stranger's image is listed under a name of its own.
func TestCatalogNamesAreNotShadowed(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "busybox.img")
	if err := os.WriteFile(disk, bytes.Repeat([]byte("virtuoso"), 1<<17), 0o600); err != nil {
		t.Fatal(err)
	}
	const stranger = 2
	nodes := marketCluster(t, 3, func(i int) *spec {
		switch i {
		case 0:
			s := seller(nil)
			s.Seller.Images = []Image{{Name: "busybox", OS: "linux", Disk: disk, MemoryMB: 128}}
			return s
		case stranger:
			return nil
		}
		return fast()
	})
	p, buyer, x := nodes[0], nodes[1], nodes[stranger]
	ctx := context.Background()
	m, err := p.prov.AddMachine(ctx, testSpec("honest", roomy))
	if err != nil {
		t.Fatal(err)
	}
	// The book binds the names of an offer's images before it shows the offer: from the moment
	// the offer is in the book, its image is in the catalog under its name.
	waitOffer(t, []*testNode{buyer}, p.ID(), m.ID, 1, 30*time.Second)
	before, err := buyer.book.Config("busybox")
	if err != nil {
		t.Fatalf("the offer is in the book, its image not in the catalog: %v", err)
	}

	o := testOffer(x.ID())
	o.Addrs = nil
	o.Issued, o.Expires = time.Now().UTC().Truncate(time.Millisecond), time.Now().UTC().Add(time.Minute)
	o.Terms.SpeedPrice, o.Terms.MemoryPrice, o.Terms.StoragePrice = 1, 1, 1 // cheapest of all
	o.Images = []ImageInfo{{Hash: "blake3:" + strings.Repeat("cd", 32), Name: "busybox", OS: "linux", SizeMB: 32, MemoryMB: 128}}
	so, err := SignOffer(o, x.PrivKey())
	if err != nil {
		t.Fatal(err)
	}
	topic := joinMesh(t, x.Node)
	testwait.Eventually(t, 30*time.Second, func() error {
		if err := topic.Publish(ctx, so.Raw); err != nil {
			return err
		}
		if _, ok := buyer.book.Get(x.ID(), o.Machine); !ok {
			return errors.New("the stranger's offer has not reached the buyer")
		}
		return nil
	})
	// An offer taken straight into the book (the race a poll would rarely see): a reader that
	// sees the offer finds its image in the catalog.
	o2 := o
	o2.Machine = MachineID{42}
	o2.Images = []ImageInfo{{Hash: "blake3:" + strings.Repeat("ef", 32), Name: "fresh", OS: "linux", SizeMB: 32, MemoryMB: 128}}
	so2, err := SignOffer(o2, x.PrivKey())
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan error, 1)
	go func() {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); runtime.Gosched() {
			if _, ok := buyer.book.Get(x.ID(), o2.Machine); ok {
				_, err := buyer.book.Config("fresh")
				seen <- err
				return
			}
		}
		seen <- errors.New("the offer never reached the book")
	}()
	if !buyer.book.accept(so2) {
		t.Fatal("the book did not take the offer")
	}
	if err := <-seen; err != nil {
		t.Fatalf("the offer is in the book, its image not in the catalog: %v", err)
	}

	after, err := buyer.book.Config("busybox")
	if err != nil || after.Image != before.Image {
		t.Fatalf("busybox is now %+v (%v), was %+v", after, err, before)
	}
	matches, err := buyer.book.Search(SearchQuery{ConfigName: "busybox"})
	if err != nil || len(matches) != 1 || matches[0].Provider != p.ID() {
		t.Fatalf("search for busybox: %+v, %v; want the honest provider only", matches, err)
	}
	cfgs, err := buyer.book.Configs()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(cfgs, func(c ConfigView) bool { return c.Name == "busybox@cdcdcdcd" && c.Image == o.Images[0].Hash }) {
		t.Fatalf("the stranger's image is not listed under a name of its own: %+v", cfgs)
	}
	// The binding survives a restart of the buyer's node.
	buyer = buyer.restart(t, *fast(), func(cfg *node.Config) { cfg.Network.Bootstrap = nil })
	if c, err := buyer.book.Config("busybox"); err != nil || c.Image != before.Image {
		t.Fatalf("after a restart busybox is %+v (%v)", c, err)
	}
}

// TestOfferFloodIsBounded: one identity publishes a thousand validly signed offers for made-up
// machines. Every book keeps at most its bound of them (the rest are ignored, not rejected: a
// peer relaying them is not at fault) and keeps the honest provider's; a node
// joining afterwards catches up the honest offer from either peer; and a node's answer puts
// its own offers first.
func TestOfferFloodIsBounded(t *testing.T) {
	const flooder, flood = 2, 5000
	nodes := marketCluster(t, 3, func(i int) *spec {
		switch i {
		case 0:
			return seller(nil)
		case flooder:
			return nil
		}
		return fast()
	})
	p, buyer, x := nodes[0], nodes[1], nodes[flooder]
	ctx := context.Background()
	m, err := p.prov.AddMachine(ctx, testSpec("honest", roomy))
	if err != nil {
		t.Fatal(err)
	}
	waitOffer(t, []*testNode{buyer}, p.ID(), m.ID, 1, 30*time.Second)
	topic := joinMesh(t, x.Node)
	t0 := time.Now()
	now := t0.UTC().Truncate(time.Millisecond)
	raws := make([][]byte, flood)
	var signers errgroup.Group
	for w := range runtime.NumCPU() {
		signers.Go(func() error {
			for i := w; i < flood; i += runtime.NumCPU() {
				o := testOffer(x.ID())
				o.Machine, o.Addrs = MachineID{0xfd, byte(i >> 8), byte(i)}, nil
				o.Issued, o.Expires = now, now.Add(time.Minute)
				so, err := SignOffer(o, x.PrivKey())
				if err != nil {
					return err
				}
				raws[i] = so.Raw
			}
			return nil
		})
	}
	if err := signers.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d offers signed in %v", flood, time.Since(t0))
	for _, raw := range raws {
		if err := topic.Publish(ctx, raw); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d offers signed and published in %v", flood, time.Since(t0))
	limit := buyer.book.opts.MaxOffersPerProvider
	count := func(b *Book, of peer.ID) int {
		n := 0
		for _, o := range b.Offers() {
			if o.Provider == of {
				n++
			}
		}
		return n
	}
	testwait.Eventually(t, 30*time.Second, func() error {
		for i, tn := range nodes[:2] {
			if n := count(tn.book, x.ID()); n != limit {
				return fmt.Errorf("node %d holds %d of the flooder's offers, want its bound %d", i, n, limit)
			}
		}
		return nil
	})
	t.Logf("every book at its bound %v after the flood began", time.Since(t0))
	for i, tn := range nodes[:2] {
		if _, ok := tn.book.Get(p.ID(), m.ID); !ok {
			t.Fatalf("node %d lost the honest offer in the flood", i)
		}
		if tn.book.Rejected(x.ID()) != 0 {
			t.Fatalf("node %d rejected validly signed offers (a full book is this node's state, not the sender's fault)", i)
		}
	}

	// Each node answers a catch-up with the honest offer in it, the answerer's own first.
	for i, tn := range nodes[:2] {
		joiner := marketCluster(t, 1, func(int) *spec { return fast() })[0]
		if err := joiner.Host().Connect(ctx, peer.AddrInfo{ID: tn.ID(), Addrs: tn.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
		if _, err := joiner.book.QueryOffers(ctx, tn.ID()); err != nil {
			t.Fatalf("catch-up from node %d: %v", i, err)
		}
		if _, ok := joiner.book.Get(p.ID(), m.ID); !ok {
			t.Fatalf("a catch-up from node %d does not carry the honest offer", i)
		}
	}
	var page []SignedOffer
	st, err := buyer.Host().NewStream(ctx, p.ID(), OffersQueryID)
	if err != nil {
		t.Fatal(err)
	}
	WriteJSON(st, queryRequest{Max: 1})
	st.CloseWrite()
	r := bufio.NewReader(st)
	for {
		raw, err := ReadFrame(r, MaxOfferBytes)
		if err != nil || len(raw) == 0 {
			break
		}
		so, err := DecodeOffer(raw)
		if err != nil {
			t.Fatal(err)
		}
		page = append(page, so)
	}
	if len(page) != 1 || page[0].Provider != p.ID() {
		t.Fatalf("the provider's one-offer answer: %+v; want its own offer", page)
	}
}

// TestSybilsAreScoredDown: eight fresh identities each send a few invalid offers — far fewer
// than any per-identity limit a node could set — and then a valid offer of their own. Gossip
// peer scoring graylists each of them: no book takes their valid offers, while an honest
// provider's offer published after them reaches every book.
func TestSybilsAreScoredDown(t *testing.T) {
	const honest, sybils = 3, 8
	nodes := marketCluster(t, honest+sybils, func(i int) *spec {
		switch {
		case i == 0:
			return seller(nil)
		case i < honest:
			return fast()
		}
		return nil
	})
	ctx := context.Background()
	var topics []*pubsub.Topic
	for _, x := range nodes[honest:] {
		topics = append(topics, joinMesh(t, x.Node))
	}
	// Every honest node hears a sybil's invalid offers from the sybil itself (gossipsub floods
	// its own messages to every topic peer); an honest node that never did would rightly take
	// its valid offer, and forward it.
	testwait.Eventually(t, 30*time.Second, func() error {
		for i, topic := range topics {
			for j, tn := range nodes[:honest] {
				if !slices.Contains(topic.ListPeers(), tn.ID()) {
					return fmt.Errorf("sybil %d is not yet a topic peer of honest node %d", i, j)
				}
			}
		}
		return nil
	})
	now := time.Now().UTC().Truncate(time.Millisecond)
	for i, x := range nodes[honest:] {
		bad := testOffer(x.ID())
		bad.Issued, bad.Expires = now, now.Add(time.Minute)
		bad.Free.MemoryMB = bad.Capacity.MemoryMB * 2 // out of range
		body, _ := jsonMarshalOffer(bad)
		sig, _ := x.PrivKey().Sign(append([]byte(offerDomain), body...))
		for k := range 4 {
			raw := EncodeEnvelope(offerMagic, append(bytes.Clone(body[:len(body)-1]), []byte(fmt.Sprintf(`,"n":%d}`, k))...), sig)
			if err := topics[i].Publish(ctx, raw); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The invalid offers are delivered (to the sybils' bootstrap peer at least) before the
	// valid ones are sent.
	testwait.Eventually(t, 10*time.Second, func() error {
		for j, tn := range nodes[:honest] {
			for _, x := range nodes[honest:] {
				if n := tn.book.Rejected(x.ID()); n < 4 {
					return fmt.Errorf("node %d has rejected %d of a sybil's 4 invalid offers", j, n)
				}
			}
		}
		return nil
	})
	for i, x := range nodes[honest:] {
		good := testOffer(x.ID())
		good.Machine, good.Addrs = MachineID{0xfc, byte(i)}, nil
		good.Issued, good.Expires = now, now.Add(time.Minute)
		so, err := SignOffer(good, x.PrivKey())
		if err != nil {
			t.Fatal(err)
		}
		if err := topics[i].Publish(ctx, so.Raw); err != nil {
			t.Fatal(err)
		}
	}
	p := nodes[0]
	m, err := p.prov.AddMachine(ctx, testSpec("honest", roomy))
	if err != nil {
		t.Fatal(err)
	}
	waitOffer(t, nodes[:honest], p.ID(), m.ID, 1, 30*time.Second)
	rejected := 0
	for i, tn := range nodes[:honest] {
		for _, o := range tn.book.Offers() {
			if o.Provider != p.ID() {
				t.Fatalf("node %d took a graylisted identity's offer: %s", i, Short(o.Provider))
			}
		}
		for _, x := range nodes[honest:] {
			rejected += tn.book.Rejected(x.ID())
			if tn.book.Rejected(x.ID()) >= 16 {
				t.Fatalf("node %d counted %d rejects of one identity: the test sent too many to prove anything", i, tn.book.Rejected(x.ID()))
			}
		}
	}
	if rejected == 0 {
		t.Fatal("no node received the sybils' invalid offers: the test proved nothing")
	}
	// Graylisted, they are disconnected, and refused when they dial again.
	testwait.Eventually(t, 10*time.Second, func() error {
		for _, x := range nodes[honest:] {
			if nodes[0].Host().Network().Connectedness(x.ID()) == network.Connected {
				return fmt.Errorf("sybil %s is still connected to the node it sent invalid offers to", Short(x.ID()))
			}
		}
		return nil
	})
	x := nodes[honest]
	if err := x.Host().Connect(ctx, peer.AddrInfo{ID: nodes[0].ID(), Addrs: nodes[0].Host().Addrs()}); err == nil &&
		nodes[0].Host().Network().Connectedness(x.ID()) == network.Connected {
		t.Fatal("a banned sybil connected again")
	}
}
