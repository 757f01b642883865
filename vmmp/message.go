package vmmp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/virtuoso-market/virtuoso/vm"
)

// ProtocolID is the stream protocol of VMMP/1.0 messages.
const ProtocolID protocol.ID = "/vmmp/1.0.0"

// MaxMessageBytes caps one message, its newline included.
const MaxMessageBytes = 1024

// Limits of a message's fields.
const (
	MaxMethods    = 16
	maxTokenBytes = 32
	maxAddrBytes  = 256
)

// ErrMalformed: bytes that are not a VMMP/1.0 message.
var ErrMalformed = errors.New("malformed VMMP message")

// Kind is a VMMP message type.
type Kind string

// The five messages of VMMP/1.0 (report §7.2.1).
const (
	Query     Kind = "QUERY"     // which methods can the destination migrate this VM with?
	Results   Kind = "RESULTS"   // the methods it can
	Req       Kind = "REQ"       // migrate the VM from the origin with a method
	Heartbeat Kind = "HEARTBEAT" // the destination is still at it
	Resp      Kind = "RESP"      // done: SUCCESS at a new version, or FAIL
)

// Message is one VMMP/1.0 message. Which fields a kind carries is in the package comment.
type Message struct {
	Kind    Kind
	VM      vm.ID
	Methods []string // RESULTS
	Version uint64   // REQ: the VM's version at the origin; RESP: its version at the destination
	Origin  Addr     // REQ: the provider the VM is stored on
	Agent   Addr     // REQ: the buyer's node, which heartbeats and RESP go back to
	Method  string   // REQ
	Success bool     // RESP
	// Code names why a RESP is FAIL (an error code such as "no_capacity"); optional.
	Code string
	// HEARTBEAT, optional: the destination's step (a token such as "copy") and, in it, the
	// image bytes settled of the total and the bytes on the wire so far.
	Step              string
	Done, Total, Wire uint64
}

// Addr is a node as VMMP names it: its peer ID and one multiaddr where it listens (the
// report's IP and port).
type Addr struct {
	Peer peer.ID
	Addr ma.Multiaddr
}

var token = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)

func checkToken(what, t string) error {
	if len(t) > maxTokenBytes || !token.MatchString(t) {
		return fmt.Errorf("%w: %s %q: lower-case letters, digits, '_' and '-', at most %d", ErrMalformed, what, t, maxTokenBytes)
	}
	return nil
}

// Validate checks that the message has what its kind carries, in range.
func (m Message) Validate() error {
	if m.VM.IsZero() {
		return fmt.Errorf("%w: %s without a vm id", ErrMalformed, m.Kind)
	}
	switch m.Kind {
	case Query:
	case Heartbeat:
		if m.Step != "" {
			return checkToken("step", m.Step)
		}
		if m.Done != 0 || m.Total != 0 || m.Wire != 0 {
			return fmt.Errorf("%w: HEARTBEAT progress without a step", ErrMalformed)
		}
	case Results:
		if len(m.Methods) > MaxMethods {
			return fmt.Errorf("%w: %d methods, at most %d", ErrMalformed, len(m.Methods), MaxMethods)
		}
		for _, t := range m.Methods {
			if err := checkToken("method", t); err != nil {
				return err
			}
		}
	case Req:
		for _, a := range []struct {
			what string
			a    Addr
		}{{"origin", m.Origin}, {"agent", m.Agent}} {
			if a.a.Peer.Validate() != nil || a.a.Addr == nil {
				return fmt.Errorf("%w: REQ without an %s peer and address", ErrMalformed, a.what)
			}
			if _, err := a.a.Addr.ValueForProtocol(ma.P_P2P); err == nil {
				return fmt.Errorf("%w: REQ %s address carries /p2p/: the peer is the field before it", ErrMalformed, a.what)
			}
		}
		return checkToken("method", m.Method)
	case Resp:
		if m.Code != "" {
			if m.Success {
				return fmt.Errorf("%w: a SUCCESS with an error code", ErrMalformed)
			}
			return checkToken("code", m.Code)
		}
	default:
		return fmt.Errorf("%w: unknown message %q", ErrMalformed, m.Kind)
	}
	return nil
}

// MarshalText writes the message in VMMP/1.0's text form, without the newline.
func (m Message) MarshalText() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	f := []string{"<VMMP", "1.0", string(m.Kind), m.VM.String()}
	switch m.Kind {
	case Query:
		f = append(f, "METHODS")
	case Heartbeat:
		if m.Step != "" {
			f = append(f, m.Step, strconv.FormatUint(m.Done, 10), strconv.FormatUint(m.Total, 10), strconv.FormatUint(m.Wire, 10))
		}
	case Results:
		f = append(f, strconv.Itoa(len(m.Methods)))
		f = append(f, m.Methods...)
	case Req:
		f = append(f, strconv.FormatUint(m.Version, 10), m.Origin.Peer.String(), m.Origin.Addr.String(),
			m.Agent.Peer.String(), m.Agent.Addr.String(), m.Method)
	case Resp:
		outcome := "FAIL"
		if m.Success {
			outcome = "SUCCESS"
		}
		f = append(f, strconv.FormatUint(m.Version, 10), outcome)
		if m.Code != "" {
			f = append(f, m.Code)
		}
	}
	b := []byte(strings.Join(f, " ") + ">")
	if len(b)+1 > MaxMessageBytes {
		return nil, fmt.Errorf("%w: %d bytes, over the %d-byte cap", ErrMalformed, len(b)+1, MaxMessageBytes)
	}
	return b, nil
}

// Parse reads one message in its text form (without the newline). It is strict: single
// spaces, canonical numbers, and exactly the fields of its kind, so that one message has one
// form.
func Parse(b []byte) (Message, error) {
	if len(b)+1 > MaxMessageBytes {
		return Message{}, fmt.Errorf("%w: %d bytes, over the %d-byte cap", ErrMalformed, len(b)+1, MaxMessageBytes)
	}
	s := string(b)
	if !strings.HasPrefix(s, "<VMMP ") || !strings.HasSuffix(s, ">") {
		return Message{}, fmt.Errorf("%w: not <VMMP …>", ErrMalformed)
	}
	f := strings.Split(s[1:len(s)-1], " ")
	if slices.Contains(f, "") || len(f) < 4 {
		return Message{}, fmt.Errorf("%w: fields must be separated by single spaces", ErrMalformed)
	}
	if f[1] != "1.0" {
		return Message{}, fmt.Errorf("%w: VMMP version %q; this node speaks 1.0", ErrMalformed, f[1])
	}
	m := Message{Kind: Kind(f[2])}
	id, err := vm.ParseID(f[3])
	if err != nil || id.String() != f[3] {
		return Message{}, fmt.Errorf("%w: vm id %q", ErrMalformed, f[3])
	}
	m.VM = id
	rest := f[4:]
	want := func(n int) error {
		if len(rest) != n {
			return fmt.Errorf("%w: %s has %d fields after the vm id, want %d", ErrMalformed, m.Kind, len(rest), n)
		}
		return nil
	}
	number := func(t string) (uint64, error) {
		n, err := strconv.ParseUint(t, 10, 64)
		if err != nil || strconv.FormatUint(n, 10) != t {
			return 0, fmt.Errorf("%w: %q is not a decimal number", ErrMalformed, t)
		}
		return n, nil
	}
	switch m.Kind {
	case Query:
		if err := want(1); err != nil {
			return Message{}, err
		}
		if rest[0] != "METHODS" {
			return Message{}, fmt.Errorf("%w: QUERY asks for METHODS, not %q", ErrMalformed, rest[0])
		}
	case Heartbeat:
		if len(rest) != 0 && len(rest) != 4 {
			return Message{}, fmt.Errorf("%w: HEARTBEAT has %d fields after the vm id, want 0 or 4", ErrMalformed, len(rest))
		}
		if len(rest) == 4 {
			m.Step = rest[0]
			for i, n := range []*uint64{&m.Done, &m.Total, &m.Wire} {
				if *n, err = number(rest[1+i]); err != nil {
					return Message{}, err
				}
			}
		}
	case Results:
		if len(rest) == 0 {
			return Message{}, fmt.Errorf("%w: RESULTS without a count", ErrMalformed)
		}
		n, err := number(rest[0])
		if err != nil || n > MaxMethods {
			return Message{}, fmt.Errorf("%w: RESULTS count %q", ErrMalformed, rest[0])
		}
		if err := want(1 + int(n)); err != nil {
			return Message{}, err
		}
		m.Methods = slices.Clone(rest[1:])
	case Req:
		if err := want(6); err != nil {
			return Message{}, err
		}
		if m.Version, err = number(rest[0]); err != nil {
			return Message{}, err
		}
		for i, a := range []*Addr{&m.Origin, &m.Agent} {
			p, err := peer.Decode(rest[1+2*i])
			if err != nil || p.String() != rest[1+2*i] {
				return Message{}, fmt.Errorf("%w: peer id %q", ErrMalformed, rest[1+2*i])
			}
			text := rest[2+2*i]
			if len(text) > maxAddrBytes {
				return Message{}, fmt.Errorf("%w: address of %d bytes, at most %d", ErrMalformed, len(text), maxAddrBytes)
			}
			addr, err := ma.NewMultiaddr(text)
			if err != nil || addr.String() != text {
				return Message{}, fmt.Errorf("%w: address %q", ErrMalformed, text)
			}
			a.Peer, a.Addr = p, addr
		}
		m.Method = rest[5]
	case Resp:
		if len(rest) != 2 && len(rest) != 3 {
			return Message{}, fmt.Errorf("%w: RESP has %d fields after the vm id, want 2 or 3", ErrMalformed, len(rest))
		}
		if m.Version, err = number(rest[0]); err != nil {
			return Message{}, err
		}
		switch rest[1] {
		case "SUCCESS":
			m.Success = true
		case "FAIL":
		default:
			return Message{}, fmt.Errorf("%w: RESP outcome %q: SUCCESS or FAIL", ErrMalformed, rest[1])
		}
		if len(rest) == 3 {
			m.Code = rest[2]
		}
	default:
		return Message{}, fmt.Errorf("%w: unknown message %q", ErrMalformed, f[2])
	}
	return m, m.Validate()
}

// WriteMessage writes m and its newline.
func WriteMessage(w io.Writer, m Message) error {
	b, err := m.MarshalText()
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadMessage reads one newline-terminated message, at most MaxMessageBytes.
func ReadMessage(r *bufio.Reader) (Message, error) {
	line, err := readCappedLine(r, MaxMessageBytes)
	if err != nil {
		return Message{}, err
	}
	return Parse(bytes.TrimSuffix(line, []byte("\n")))
}

// readCappedLine reads one line ending in '\n', refusing one over limit bytes before it is all
// read; a stream that ends in the middle of a line is ErrMalformed, one that ends before it
// the reader's error.
func readCappedLine(r *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > limit {
			return nil, fmt.Errorf("%w: a line over the %d-byte cap", ErrMalformed, limit)
		}
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, fmt.Errorf("%w: message cut short", ErrMalformed)
		default:
			return nil, err
		}
	}
}
