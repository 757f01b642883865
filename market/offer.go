package market

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Offer is what a provider publishes about one machine: its terms and free capacity, signed
// by the provider's node key. Seq grows with every offer of the machine (a newer offer
// replaces an older one everywhere); an offer is void after Expires, so a provider that is gone
// drops out of every book by itself.
type Offer struct {
	Provider    peer.ID     `json:"provider"`
	Machine     MachineID   `json:"machine"`
	Seq         uint64      `json:"seq"`
	Issued      time.Time   `json:"issued"`
	Expires     time.Time   `json:"expires"`
	Withdrawn   bool        `json:"withdrawn,omitempty"` // the machine was removed
	Name        string      `json:"name"`
	Processor   string      `json:"processor"`
	NetworkMbps int64       `json:"network_mbps"`
	Methods     []string    `json:"methods"`
	Capacity    Resources   `json:"capacity"`
	Free        Resources   `json:"free"`
	Terms       Terms       `json:"terms"`
	Images      []ImageInfo `json:"images,omitempty"`
	Addrs       []string    `json:"addrs,omitempty"` // where to reach the provider
}

// Limits on offer times.
const (
	// MaxOfferTTL is the longest an offer may be valid; older replays are therefore expired.
	MaxOfferTTL = time.Hour
	// MaxClockSkew is how far in the future an offer or lease may be dated.
	MaxClockSkew = 2 * time.Minute
)

// Validate checks an offer's sanity, apart from its signature and the current time.
func (o Offer) Validate() error {
	var bad []string
	if o.Provider == "" || o.Provider.Validate() != nil {
		bad = append(bad, "provider is not a peer id")
	}
	if o.Machine.IsZero() {
		bad = append(bad, "machine id is zero")
	}
	if o.Seq == 0 {
		bad = append(bad, "seq is zero")
	}
	if ttl := o.Expires.Sub(o.Issued); ttl <= 0 || ttl > MaxOfferTTL {
		bad = append(bad, fmt.Sprintf("validity %v out of range (0, %v]", ttl, MaxOfferTTL))
	}
	if err := checkText("name", o.Name, true); err != nil {
		bad = append(bad, err.Error())
	}
	if err := checkText("processor", o.Processor, true); err != nil {
		bad = append(bad, err.Error())
	}
	if o.NetworkMbps < 0 || o.NetworkMbps > maxNetworkMbps {
		bad = append(bad, "network_mbps out of range")
	}
	if err := checkMethods(o.Methods); err != nil {
		bad = append(bad, err.Error())
	}
	if err := checkCapacity(o.Capacity); err != nil {
		bad = append(bad, err.Error())
	}
	if f := o.Free; f.SpeedBogomips < 0 || f.MemoryMB < 0 || f.StorageMB < 0 || !f.Fits(o.Capacity) {
		bad = append(bad, "free capacity negative or above the capacity")
	}
	if err := o.Terms.Validate(); err != nil {
		bad = append(bad, err.Error())
	}
	if len(o.Images) > maxImages {
		bad = append(bad, fmt.Sprintf("%d images, at most %d", len(o.Images), maxImages))
	} else {
		for _, img := range o.Images {
			if err := img.validate(); err != nil {
				bad = append(bad, err.Error())
				break
			}
		}
	}
	if len(o.Addrs) > maxAddrs {
		bad = append(bad, fmt.Sprintf("%d addresses, at most %d", len(o.Addrs), maxAddrs))
	} else {
		for _, a := range o.Addrs {
			if len(a) > maxAddrLen {
				bad = append(bad, "address too long")
				break
			}
			if _, err := ma.NewMultiaddr(a); err != nil {
				bad = append(bad, fmt.Sprintf("address %q is not a multiaddr", truncate(a)))
				break
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: offer: %s", ErrInvalid, strings.Join(bad, "; "))
	}
	return nil
}

// Live reports whether the offer is valid at now: not expired and not withdrawn.
func (o Offer) Live(now time.Time) bool { return !o.Withdrawn && now.Before(o.Expires) }

// key identifies the machine the offer is about, for the book.
func (o Offer) key() offerKey { return offerKey{o.Provider, o.Machine} }

type offerKey struct {
	provider peer.ID
	machine  MachineID
}

// SignedOffer is an offer with the envelope it travelled in.
type SignedOffer struct {
	Offer
	Raw []byte // the encoded envelope: body and signature
}

// SignOffer encodes o and signs it with key, which must be o.Provider's.
func SignOffer(o Offer, key crypto.PrivKey) (SignedOffer, error) {
	o.Issued, o.Expires = o.Issued.UTC(), o.Expires.UTC()
	body, sig, err := signBody("offer", &o, key, o.Provider, offerDomain)
	if err != nil {
		return SignedOffer{}, err
	}
	return SignedOffer{Offer: o, Raw: EncodeEnvelope(offerMagic, body, sig)}, nil
}

// DecodeOffer decodes an offer envelope from the network and verifies it: size caps, strict
// JSON, sanity (Validate) and the provider's signature. It does not look at the time or at
// sequence numbers: the book does.
func DecodeOffer(raw []byte) (SignedOffer, error) {
	o, f, err := openOffer(raw)
	if err != nil {
		return SignedOffer{}, err
	}
	return verifyOffer(o, f, raw)
}

// openOffer decodes and validates an offer envelope without checking its signature, which
// verifyOffer does with the fields it returns.
func openOffer(raw []byte) (Offer, [][]byte, error) {
	var o Offer
	f, err := openBody("offer", raw, offerMagic, MaxOfferBytes, &o, maxSigBytes)
	return o, f, err
}

func verifyOffer(o Offer, f [][]byte, raw []byte) (SignedOffer, error) {
	if err := verify(o.Provider, offerDomain, f[0], f[1]); err != nil {
		return SignedOffer{}, fmt.Errorf("offer of %s: %w", o.Provider, err)
	}
	return SignedOffer{Offer: o, Raw: slices.Clone(raw)}, nil
}

// verify checks sig over domain+body with the key of id.
func verify(id peer.ID, domain string, body, sig []byte) error {
	pub, err := id.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("%w: no public key in peer id: %w", ErrForged, err)
	}
	ok, err := pub.Verify(append([]byte(domain), body...), sig)
	if err != nil || !ok {
		return fmt.Errorf("%w: signature does not verify", ErrForged)
	}
	return nil
}

// document is the body of a signed envelope.
type document interface{ Validate() error }

// signBody validates doc, encodes it within the body cap and signs domain+body with key,
// which must be signer's; what names the document in errors.
func signBody(what string, doc document, key crypto.PrivKey, signer peer.ID, domain string) (body, sig []byte, err error) {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	if id != signer {
		return nil, nil, fmt.Errorf("sign %s: key of %s, signer %s", what, id, signer)
	}
	if err := doc.Validate(); err != nil {
		return nil, nil, err
	}
	if body, err = json.Marshal(doc); err != nil {
		return nil, nil, err
	}
	if len(body) > maxBodyBytes {
		return nil, nil, fmt.Errorf("%w: %s body of %d bytes over the %d-byte cap", ErrInvalid, what, len(body), maxBodyBytes)
	}
	if sig, err = key.Sign(append([]byte(domain), body...)); err != nil {
		return nil, nil, fmt.Errorf("sign %s: %w", what, err)
	}
	return body, sig, nil
}

// openBody decodes an envelope of magic within maxTotal bytes, whose first field is the body
// and the others are capped by sigCaps, decodes the body strictly into doc and validates it.
// It returns the envelope's fields; the signatures in them are the caller's to verify.
func openBody(what string, raw []byte, magic [3]byte, maxTotal int, doc document, sigCaps ...int) ([][]byte, error) {
	f, err := DecodeEnvelope(raw, magic, maxTotal, append([]int{maxBodyBytes}, sigCaps...)...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := DecodeStrict(f[0], doc); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := doc.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}
