package market

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/vm"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testKey returns a deterministic ed25519 key from a seed byte.
func testKey(tb testing.TB, seed byte) (crypto.PrivKey, peer.ID) {
	tb.Helper()
	priv, _, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{seed}, 32)))
	if err != nil {
		tb.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		tb.Fatal(err)
	}
	return priv, id
}

var goldenTime = time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)

func testOffer(provider peer.ID) Offer {
	return Offer{
		Provider: provider, Machine: MachineID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		Seq: 7, Issued: goldenTime, Expires: goldenTime.Add(10 * time.Minute),
		Name: "rack-1", Processor: "x86_64", NetworkMbps: 1000, Methods: []string{"blockdiff", "full"},
		Capacity: Resources{8000, 16384, 512000}, Free: Resources{6000, 8192, 256000}, Terms: testTerms(),
		Images: []ImageInfo{{Hash: "blake3:" + string(bytes.Repeat([]byte("ab"), 32)), Name: "busybox", OS: "linux", SizeMB: 32, MemoryMB: 128}},
		Addrs:  []string{"/ip4/127.0.0.1/tcp/4710"},
	}
}

func golden(t *testing.T, name string, got []byte) []byte {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	return want
}

func TestOfferGolden(t *testing.T) {
	key, id := testKey(t, 1)
	so, err := SignOffer(testOffer(id), key)
	if err != nil {
		t.Fatal(err)
	}
	want := golden(t, "offer.golden", so.Raw)
	if !bytes.Equal(so.Raw, want) {
		t.Fatalf("encoded offer differs from testdata/offer.golden:\n got %q\nwant %q", so.Raw, want)
	}
	back, err := DecodeOffer(want)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Offer, so.Offer) {
		t.Fatalf("decoded %+v, want %+v", back.Offer, so.Offer)
	}
}

func testLease(t testing.TB, buyer, provider peer.ID) Lease {
	l := Lease{ID: LeaseID{9}, VM: vm.ID{8}, Buyer: buyer, Provider: provider, Machine: MachineID{7},
		Config: StandardConfigs()[0], Terms: testTerms(), Created: goldenTime}
	l.Quote, _ = l.Terms.Quote(l.Config.Resources())
	return l
}

func TestLeaseGolden(t *testing.T) {
	bkey, buyer := testKey(t, 2)
	pkey, provider := testKey(t, 3)
	prop, err := ProposeLease(testLease(t, buyer, provider), bkey)
	if err != nil {
		t.Fatal(err)
	}
	full, err := prop.Countersign(pkey)
	if err != nil {
		t.Fatal(err)
	}
	raw := full.Encode()
	want := golden(t, "lease.golden", raw)
	if !bytes.Equal(raw, want) {
		t.Fatalf("encoded lease differs from testdata/lease.golden")
	}
	back, err := DecodeLease(want)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Complete() || back.Lease != full.Lease {
		t.Fatalf("decoded %+v", back)
	}
	if _, err := prop.Countersign(bkey); err == nil {
		t.Fatal("the buyer's key countersigned as the provider")
	}
}

func TestDecodeOfferRejects(t *testing.T) {
	key, id := testKey(t, 1)
	otherKey, _ := testKey(t, 4)
	good, err := SignOffer(testOffer(id), key)
	if err != nil {
		t.Fatal(err)
	}
	fields, _ := DecodeEnvelope(good.Raw, offerMagic, MaxOfferBytes, maxBodyBytes, maxSigBytes)
	body, sig := fields[0], fields[1]
	otherSig, _ := otherKey.Sign(append([]byte(offerDomain), body...))
	flipped := bytes.Clone(sig)
	flipped[0] ^= 1
	resign := func(edit func(*Offer)) []byte {
		o := testOffer(id)
		edit(&o)
		b, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := key.Sign(append([]byte(offerDomain), b...))
		return EncodeEnvelope(offerMagic, b, s)
	}
	resignRaw := func(key crypto.PrivKey, edit func([]byte) []byte) []byte {
		b, err := json.Marshal(testOffer(id))
		if err != nil {
			t.Fatal(err)
		}
		b = edit(b)
		s, _ := key.Sign(append([]byte(offerDomain), b...))
		return EncodeEnvelope(offerMagic, b, s)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		want error
	}{
		{"signed by another key", EncodeEnvelope(offerMagic, body, otherSig), ErrForged},
		{"signature flipped", EncodeEnvelope(offerMagic, body, flipped), ErrForged},
		{"lease signature domain", func() []byte {
			s, _ := key.Sign(append([]byte(leaseDomain), body...))
			return EncodeEnvelope(offerMagic, body, s)
		}(), ErrForged},
		{"empty", nil, ErrMalformed},
		{"wrong magic", append([]byte{'V', 'L', 1}, good.Raw[3:]...), ErrMalformed},
		{"newer version", append([]byte{'V', 'O', 2}, good.Raw[3:]...), ErrUnknownVersion},
		{"truncated", good.Raw[:len(good.Raw)-1], ErrMalformed},
		{"trailing byte", append(bytes.Clone(good.Raw), 0), ErrMalformed},
		{"oversized", append(bytes.Clone(good.Raw), make([]byte, MaxOfferBytes)...), ErrMalformed},
		{"not json", EncodeEnvelope(offerMagic, []byte("{nope"), sig), ErrMalformed},
		{"field added after signing", EncodeEnvelope(offerMagic, withField(body, `"x":1`), sig), ErrForged},
		{"provider named twice", resignRaw(key, func(b []byte) []byte {
			return bytes.Replace(b, []byte(`{"provider":`), []byte(`{"provider":"12D3KooWSomeoneElse","provider":`), 1)
		}), ErrMalformed},
		{"provider named twice in another case", resignRaw(key, func(b []byte) []byte {
			return bytes.Replace(b, []byte(`{"provider":`), []byte(`{"PROVIDER":"12D3KooWSomeoneElse","provider":`), 1)
		}), ErrMalformed},
		{"a price named twice", resignRaw(key, func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"speed_price":`), []byte(`"speed_price":1,"speed_price":`), 1)
		}), ErrMalformed},
		{"free above capacity", resign(func(o *Offer) { o.Free.MemoryMB = o.Capacity.MemoryMB + 1 }), ErrInvalid},
		{"negative price", resign(func(o *Offer) { o.Terms.SpeedPrice = -5 }), ErrInvalid},
		{"zero chunk", resign(func(o *Offer) { o.Terms.StorageUnit = 0 }), ErrInvalid},
		{"validity too long", resign(func(o *Offer) { o.Expires = o.Issued.Add(MaxOfferTTL + time.Second) }), ErrInvalid},
		{"expires before issue", resign(func(o *Offer) { o.Expires = o.Issued.Add(-time.Second) }), ErrInvalid},
		{"zero seq", resign(func(o *Offer) { o.Seq = 0 }), ErrInvalid},
		{"control characters in name", resign(func(o *Offer) { o.Name = "a\x1b[2Jb" }), ErrInvalid},
		{"too many methods", resign(func(o *Offer) { o.Methods = make([]string, maxMethods+1) }), ErrInvalid},
		{"bad image hash", resign(func(o *Offer) { o.Images[0].Hash = "sha1:00" }), ErrInvalid},
		{"bad address", resign(func(o *Offer) { o.Addrs = []string{"not an address"} }), ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeOffer(tc.raw)
			if !errors.Is(err, tc.want) {
				t.Fatalf("DecodeOffer: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestUniqueKeys(t *testing.T) {
	for _, tc := range []struct {
		doc string
		ok  bool
	}{
		{`{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}`, true},
		{`{"a":"a","b":["a","a"]}`, true},
		{`[{"a":1},{"a":1}]`, true},
		{`{"a":1,"a":2}`, false},
		{`{"a":1,"A":2}`, false},
		{`{"k":1,"\u212a":2}`, false}, // the Kelvin sign folds to k, as encoding/json matches it
		{`{"x":{"y":[1,{"z":1,"z":2}]}}`, false},
		{`{"a":{"b":1},"a":[]}`, false},
		{`{"a":1`, false},
	} {
		err := uniqueKeys([]byte(tc.doc))
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrMalformed)) {
			t.Errorf("uniqueKeys(%s) = %v, want ok=%v", tc.doc, err, tc.ok)
		}
	}
}

// withField adds a member to the JSON object body.
func withField(body []byte, member string) []byte {
	return append(bytes.Clone(body[:len(body)-1]), []byte(","+member+"}")...)
}

// TestUnknownFieldsAreKept: an offer or lease from a newer node, whose signed body carries a
// field this node does not know, decodes, verifies over its exact bytes, and travels on
// unchanged (its envelope is what is stored and forwarded).
func TestUnknownFieldsAreKept(t *testing.T) {
	key, id := testKey(t, 3)
	buyerKey, buyer := testKey(t, 2)
	body, err := json.Marshal(testOffer(id))
	if err != nil {
		t.Fatal(err)
	}
	body = withField(body, `"gpu":{"model":"a100","count":2}`)
	sig, _ := key.Sign(append([]byte(offerDomain), body...))
	raw := EncodeEnvelope(offerMagic, body, sig)
	so, err := DecodeOffer(raw)
	if err != nil {
		t.Fatalf("offer with an unknown field: %v", err)
	}
	if !bytes.Equal(so.Raw, raw) || so.Provider != id {
		t.Fatalf("decoded offer %+v does not keep its envelope", so.Offer)
	}

	l := testLease(t, buyer, id)
	lb, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	lb = withField(lb, `"deposit":"1.5"`)
	bsig, _ := buyerKey.Sign(append([]byte(leaseDomain), lb...))
	sl, err := DecodeLease(EncodeEnvelope(leaseMagic, lb, bsig, nil))
	if err != nil {
		t.Fatalf("lease with an unknown field: %v", err)
	}
	full, err := sl.Countersign(key)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DecodeLease(full.Encode())
	if err != nil || !again.Complete() || !bytes.Equal(again.Body, lb) {
		t.Fatalf("countersigned lease with an unknown field: %v", err)
	}
}

func TestSignOfferNeedsTheProvidersKey(t *testing.T) {
	_, id := testKey(t, 1)
	other, _ := testKey(t, 2)
	if _, err := SignOffer(testOffer(id), other); err == nil {
		t.Fatal("signed an offer of another provider")
	}
}

func TestBookVerdicts(t *testing.T) {
	key, id := testKey(t, 1)
	now := goldenTime.Add(time.Minute)
	sign := func(seq uint64, issued time.Time) SignedOffer {
		o := testOffer(id)
		o.Seq, o.Issued, o.Expires = seq, issued, issued.Add(10*time.Minute)
		so, err := SignOffer(o, key)
		if err != nil {
			t.Fatal(err)
		}
		return so
	}
	b := newOfferIndex(64, 1<<14)
	first := sign(10, goldenTime)
	if v := b.Check(first.Offer, now); v != Newer {
		t.Fatalf("first offer: %v", v)
	}
	if ok, _ := b.Put(first, now); !ok {
		t.Fatal("first offer not taken")
	}
	for _, tc := range []struct {
		name string
		so   SignedOffer
		want Verdict
	}{
		{"same seq replayed", first, Replayed},
		{"older seq", sign(9, goldenTime), Replayed},
		{"expired", sign(11, goldenTime.Add(-20*time.Minute)), Expired},
		{"dated in the future", sign(12, now.Add(MaxClockSkew+time.Minute)), Future},
		{"newer", sign(13, goldenTime), Newer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if v := b.Check(tc.so.Offer, now); v != tc.want {
				t.Fatalf("Check = %v, want %v", v, tc.want)
			}
		})
	}
	if ok, _ := b.Put(sign(9, goldenTime), now); ok {
		t.Fatal("an older offer replaced a newer one")
	}
	if got := b.Live(now); len(got) != 1 || got[0].Seq != 10 {
		t.Fatalf("live = %+v", got)
	}
	if got := b.Prune(goldenTime.Add(11 * time.Minute)); len(got) != 1 || b.Len() != 0 {
		t.Fatalf("prune dropped %d, %d left", len(got), b.Len())
	}
}

func jsonMarshalOffer(o Offer) ([]byte, error) { return json.Marshal(o) }
