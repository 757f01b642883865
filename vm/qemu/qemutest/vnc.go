package qemutest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/des"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// VNCResult is what a VNC session saw.
type VNCResult struct {
	Width, Height int
	Name          string
	UpdateBytes   int // pixel bytes of the first framebuffer update
}

// ErrVNCAuth is returned by VNCSession and DialVNC when the server refuses the password.
var ErrVNCAuth = errors.New("vnc authentication failed")

// VNCSession connects to a VNC server at addr, authenticates with password (RFB 3.8, VNC
// authentication), and reads one full framebuffer update.
func VNCSession(ctx context.Context, addr, password string) (VNCResult, error) {
	c, err := DialVNC(ctx, addr, password)
	if err != nil {
		return VNCResult{}, err
	}
	defer c.Close()
	res := VNCResult{Width: c.Width, Height: c.Height, Name: c.Name}
	res.UpdateBytes, err = c.update()
	return res, err
}

// VNC is a client session with a VNC (RFB 3.8) server, as a buyer's viewer has one: it sees
// the screen and types on the keyboard.
type VNC struct {
	Width, Height int
	Name          string

	c   net.Conn
	r   *bufio.Reader
	bpp int
}

// DialVNC connects to the VNC server at addr and authenticates with password (VNC
// authentication: DES challenge-response). The session ends with ctx's deadline, if any.
func DialVNC(ctx context.Context, addr, password string) (*VNC, error) {
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	v := &VNC{c: c, r: bufio.NewReader(c)}
	if err := v.handshake(password); err != nil {
		c.Close()
		return nil, err
	}
	return v, nil
}

// Close ends the session.
func (v *VNC) Close() error { return v.c.Close() }

func (v *VNC) handshake(password string) error {
	r, c := v.r, v.c
	version := make([]byte, 12)
	if _, err := io.ReadFull(r, version); err != nil {
		return fmt.Errorf("protocol version: %w", err)
	}
	if !bytes.HasPrefix(version, []byte("RFB 003.")) {
		return fmt.Errorf("not an RFB server: %q", version)
	}
	if _, err := c.Write([]byte("RFB 003.008\n")); err != nil {
		return err
	}
	n, err := r.ReadByte()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("server refused: %s", readReason(r))
	}
	types := make([]byte, n)
	if _, err := io.ReadFull(r, types); err != nil {
		return err
	}
	if !bytes.Contains(types, []byte{2}) {
		return fmt.Errorf("server offers security types %v, not VNC authentication", types)
	}
	if _, err := c.Write([]byte{2}); err != nil {
		return err
	}
	challenge := make([]byte, 16)
	if _, err := io.ReadFull(r, challenge); err != nil {
		return err
	}
	response, err := vncResponse(password, challenge)
	if err != nil {
		return err
	}
	if _, err := c.Write(response); err != nil {
		return err
	}
	var result uint32
	if err := binary.Read(r, binary.BigEndian, &result); err != nil {
		return err
	}
	if result != 0 {
		return fmt.Errorf("%w: %s", ErrVNCAuth, readReason(r))
	}
	if _, err := c.Write([]byte{1}); err != nil { // ClientInit, shared
		return err
	}
	var init struct {
		Width, Height uint16
		BPP, Depth    uint8
		BigEndian     uint8
		TrueColor     uint8
		_             [3]uint16
		_             [3]uint8
		_             [3]uint8
		NameLen       uint32
	}
	if err := binary.Read(r, binary.BigEndian, &init); err != nil {
		return fmt.Errorf("server init: %w", err)
	}
	if init.NameLen > 1<<16 {
		return fmt.Errorf("server name of %d bytes", init.NameLen)
	}
	name := make([]byte, init.NameLen)
	if _, err := io.ReadFull(r, name); err != nil {
		return err
	}
	v.Width, v.Height, v.Name, v.bpp = int(init.Width), int(init.Height), string(name), int(init.BPP)
	return nil
}

// update asks for the whole screen, not incremental, and reads the answer, returning its
// number of pixel bytes. No SetEncodings was sent, so the server answers in raw encoding.
func (v *VNC) update() (int, error) {
	req := []byte{3, 0, 0, 0, 0, 0, byte(v.Width >> 8), byte(v.Width), byte(v.Height >> 8), byte(v.Height)}
	if _, err := v.c.Write(req); err != nil {
		return 0, err
	}
	total := 0
	for {
		typ, err := v.r.ReadByte()
		if err != nil {
			return total, fmt.Errorf("waiting for framebuffer update: %w", err)
		}
		if typ != 0 {
			return total, fmt.Errorf("unexpected server message type %d", typ)
		}
		var hdr struct {
			_     uint8
			Rects uint16
		}
		if err := binary.Read(v.r, binary.BigEndian, &hdr); err != nil {
			return total, err
		}
		for i := 0; i < int(hdr.Rects); i++ {
			var rect struct {
				X, Y, W, H uint16
				Encoding   int32
			}
			if err := binary.Read(v.r, binary.BigEndian, &rect); err != nil {
				return total, err
			}
			if rect.Encoding != 0 {
				// Pseudo-encodings (e.g. a desktop resize) carry no pixels in raw mode.
				if rect.Encoding < 0 {
					continue
				}
				return total, fmt.Errorf("unexpected encoding %d", rect.Encoding)
			}
			size := int(rect.W) * int(rect.H) * v.bpp / 8
			if _, err := io.CopyN(io.Discard, v.r, int64(size)); err != nil {
				return total, fmt.Errorf("rectangle pixels: %w", err)
			}
			total += size
		}
		if total > 0 {
			return total, nil
		}
	}
}

// X keysyms the client types besides printable ASCII, whose keysym is its code.
const (
	KeyReturn = 0xff0d
	keyShift  = 0xffe1
)

// Key presses and releases the key with X keysym sym (RFB KeyEvent messages), holding Shift
// around it when shift is set.
func (v *VNC) Key(sym uint32, shift bool) error {
	var msgs []byte
	event := func(down bool, sym uint32) {
		m := []byte{4, 0, 0, 0, 0, 0, 0, 0}
		if down {
			m[1] = 1
		}
		binary.BigEndian.PutUint32(m[4:], sym)
		msgs = append(msgs, m...)
	}
	if shift {
		event(true, keyShift)
	}
	event(true, sym)
	event(false, sym)
	if shift {
		event(false, keyShift)
	}
	_, err := v.c.Write(msgs)
	return err
}

// usShifted are the characters a US keyboard types with Shift held. A VNC server turns
// keysyms into the scancodes of its keyboard layout and does not press Shift by itself.
const usShifted = `~!@#$%^&*()_+{}|:"<>?`

// Type types text on the keyboard: printable ASCII, and '\n' as Return.
func (v *VNC) Type(text string) error {
	for _, ch := range text {
		var err error
		switch {
		case ch == '\n':
			err = v.Key(KeyReturn, false)
		case ch >= ' ' && ch <= '~':
			err = v.Key(uint32(ch), (ch >= 'A' && ch <= 'Z') || strings.ContainsRune(usShifted, ch))
		default:
			return fmt.Errorf("cannot type %q", ch)
		}
		if err != nil {
			return err
		}
		// A viewer's keystrokes come tens of milliseconds apart; a burst can outrun a guest's
		// keyboard buffer under emulation.
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func readReason(r io.Reader) string {
	var n uint32
	if binary.Read(r, binary.BigEndian, &n) != nil || n > 4096 {
		return "(no reason)"
	}
	b := make([]byte, n)
	io.ReadFull(r, b)
	return string(b)
}

// vncResponse encrypts the challenge with DES in ECB mode, keyed by the password padded to 8
// bytes with each byte's bits reversed (the VNC authentication scheme's quirk).
func vncResponse(password string, challenge []byte) ([]byte, error) {
	key := make([]byte, 8)
	copy(key, password)
	for i, b := range key {
		var rev byte
		for bit := 0; bit < 8; bit++ {
			if b&(1<<bit) != 0 {
				rev |= 0x80 >> bit
			}
		}
		key[i] = rev
	}
	block, err := des.NewCipher(key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 16)
	block.Encrypt(out[:8], challenge[:8])
	block.Encrypt(out[8:], challenge[8:])
	return out, nil
}
