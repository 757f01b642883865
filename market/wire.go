package market

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode"
)

// Envelope magics: two letters and the format version.
var (
	offerMagic = [3]byte{'V', 'O', 1}
	leaseMagic = [3]byte{'V', 'L', 1}
)

// Signature domains: what a signature is over is the domain followed by the body, so that a
// signature made for one kind of message can never pass for another.
const (
	offerDomain = "virtuoso/offer/1\n"
	leaseDomain = "virtuoso/lease/1\n"
)

// Size caps of what is read from the network.
const (
	MaxOfferBytes = 16 << 10 // one encoded offer envelope
	MaxLeaseBytes = 16 << 10 // one encoded lease envelope
	maxBodyBytes  = 12 << 10 // the JSON body inside an envelope
	maxSigBytes   = 128      // one signature (ed25519: 64)
	maxFrameBytes = 64 << 10 // one stream frame (requests, responses)
)

// EncodeEnvelope writes magic, then each field as uvarint length and bytes: the format of every
// signed message (offers, leases, and the ledger's entries and checkpoints).
func EncodeEnvelope(magic [3]byte, fields ...[]byte) []byte {
	n := len(magic)
	for _, f := range fields {
		n += binary.MaxVarintLen64 + len(f)
	}
	b := make([]byte, 0, n)
	b = append(b, magic[:]...)
	for _, f := range fields {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// DecodeEnvelope splits an envelope into its fields, each capped; nothing may follow them. An
// envelope of the magic's kind but another version is ErrUnknownVersion, anything else that
// does not parse ErrMalformed.
func DecodeEnvelope(b []byte, magic [3]byte, maxTotal int, caps ...int) ([][]byte, error) {
	if len(b) > maxTotal {
		return nil, fmt.Errorf("%w: %d bytes, over the %d-byte cap", ErrMalformed, len(b), maxTotal)
	}
	if len(b) >= len(magic) && bytes.Equal(b[:len(magic)-1], magic[:len(magic)-1]) && b[len(magic)-1] != magic[len(magic)-1] {
		return nil, fmt.Errorf("%w: %c%c version %d envelope; this node reads version %d", ErrUnknownVersion, magic[0], magic[1], b[len(magic)-1], magic[2])
	}
	if len(b) < len(magic) || !bytes.Equal(b[:len(magic)], magic[:]) {
		return nil, fmt.Errorf("%w: not a %c%c version %d envelope", ErrMalformed, magic[0], magic[1], magic[2])
	}
	b = b[len(magic):]
	out := make([][]byte, len(caps))
	for i, limit := range caps {
		n, k := binary.Uvarint(b)
		if k <= 0 || k != len(binary.AppendUvarint(nil, n)) {
			return nil, fmt.Errorf("%w: field %d: bad length", ErrMalformed, i)
		}
		if n > uint64(limit) || n > uint64(len(b)-k) {
			return nil, fmt.Errorf("%w: field %d: length %d over its cap or the data", ErrMalformed, i, n)
		}
		out[i] = b[k : k+int(n)]
		b = b[k+int(n):]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(b))
	}
	return out, nil
}

// DecodeStrict decodes one JSON value, refusing trailing data and objects that name a member
// twice (uniqueKeys). Unknown fields are ignored, so that a newer node may add optional fields
// to a body or a message without being refused by older ones; a change that older nodes must
// not misread takes a new envelope version or protocol ID instead.
func DecodeStrict(b []byte, v any) error {
	if err := uniqueKeys(b); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON value", ErrMalformed)
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: trailing data after the JSON value", ErrMalformed)
	}
	return nil
}

// uniqueKeys refuses JSON in which an object names one member twice, as encoding/json matches
// names: without regard to case. Decoders resolve such a document differently (encoding/json
// takes the last, others the first), so a signed body could be read as one thing here and as
// another by a web page or the ledger: it is ambiguous, and ambiguity is refused.
func uniqueKeys(b []byte) error {
	type level struct {
		keys map[string]bool // nil in an array
		key  bool            // the next token of this object is a member name
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var stack []*level
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].keys != nil {
			stack[n-1].key = true
		}
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) && len(stack) == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				stack = append(stack, &level{keys: map[string]bool{}, key: true})
			case '[':
				stack = append(stack, &level{})
			default:
				stack = stack[:len(stack)-1]
				valueDone()
			}
			continue
		case string:
			if n := len(stack); n > 0 && stack[n-1].key {
				k := foldName(t)
				if stack[n-1].keys[k] {
					return fmt.Errorf("%w: member %q named twice in one object", ErrMalformed, truncate(t))
				}
				stack[n-1].keys[k], stack[n-1].key = true, false
				continue
			}
		}
		valueDone()
	}
}

// foldName is a member name as encoding/json matches it: each rune replaced by the smallest
// of its case-folding orbit, so that "Provider", "PROVIDER" and "ProvIder" (with U+0130 or
// the Kelvin sign among them) compare equal.
func foldName(s string) string {
	out := make([]rune, 0, len(s))
	for _, r := range s {
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		out = append(out, least)
	}
	return string(out)
}

// WriteFrame writes one frame: uvarint length, then the bytes.
func WriteFrame(w io.Writer, b []byte) error {
	if len(b) > maxFrameBytes {
		return fmt.Errorf("frame of %d bytes over the %d-byte cap", len(b), maxFrameBytes)
	}
	buf := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+len(b)), uint64(len(b)))
	_, err := w.Write(append(buf, b...))
	return err
}

// ReadFrame reads one frame of at most limit bytes. A frame over the cap or a bad length is
// ErrMalformed; a stream that ends or breaks is the reader's error (io.EOF before any byte).
func ReadFrame(r *bufio.Reader, limit int) ([]byte, error) {
	var n uint64
	for i := 0; ; i++ {
		c, err := r.ReadByte()
		if err != nil {
			if i > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if i == binary.MaxVarintLen64-1 && c > 1 {
			return nil, fmt.Errorf("%w: frame length overflows", ErrMalformed)
		}
		n |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			break
		}
	}
	if n > uint64(limit) {
		return nil, fmt.Errorf("%w: frame of %d bytes over the %d-byte cap", ErrMalformed, n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// WriteJSON writes v as one JSON frame.
func WriteJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return WriteFrame(w, b)
}

// ReadJSON reads one JSON frame into v.
func ReadJSON(r *bufio.Reader, v any) error {
	b, err := ReadFrame(r, maxFrameBytes)
	if err != nil {
		return err
	}
	return DecodeStrict(b, v)
}
