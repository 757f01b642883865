package transfer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
)

// preamble opens the stream in both directions: a magic and the wire version.
var preamble = [5]byte{'V', 'M', 'T', 'X', wireVersion}

const wireVersion = 1

// Frame types. Client (destination) to server (source) are below 0x10.
const (
	frameRequest byte = 0x01
	frameSig     byte = 0x02
	frameBasis   byte = 0x03
	frameDone    byte = 0x05
	frameError   byte = 0x0f
	frameAccept  byte = 0x10
	frameFile    byte = 0x11
	frameReuse   byte = 0x12
	frameHole    byte = 0x13
	frameData    byte = 0x14
	framePatch   byte = 0x15
	frameEnd     byte = 0x16
	frameCopy    byte = 0x17
)

const (
	frameHeaderLen = 5
	maxSmallFrame  = 64 << 10
	maxSigEntries  = 4096 // entries per SIG frame
	// maxFrame bounds every frame: a block plus its header, or a SIG chunk.
	maxFrame = MaxBlockSize + 1024

	maxVMLen      = 256
	maxNameLen    = 255
	maxMessageLen = 1024
	flagZstd      = 1 << 0
	flagIdentical = 1 << 0
	flagCopies    = 1 << 1
	flagCompress  = 1 << 0
)

// frameCap returns the largest payload a frame of type t may carry, 0 for unknown types.
func frameCap(t byte) int {
	switch t {
	case frameRequest, frameAccept, frameDone:
		return maxSmallFrame
	case frameError:
		return maxMessageLen + 8
	case frameBasis, frameFile, frameReuse, frameHole, frameEnd:
		return 64
	case frameSig:
		return maxSigFrame + 32
	case frameData, framePatch, frameCopy:
		return maxFrame
	}
	return 0
}

// maxSigFrame bounds the entries of one SIG frame.
const maxSigFrame = 1 << 20

// sigChunk is the number of entries the client puts in one SIG frame for a stride.
func sigChunk(stride int) int { return min(maxSigEntries, maxSigFrame/(32+8*stride)) }

// Error codes carried by ERROR and DONE frames.
const (
	codeOK       byte = 0
	codeProtocol byte = 1
	codeRefused  byte = 2
	codeChanged  byte = 3
	codeInternal byte = 4
	codeCorrupt  byte = 5
	codeCanceled byte = 6
)

func codeErr(code byte) error {
	switch code {
	case codeProtocol:
		return ErrProtocol
	case codeRefused:
		return ErrRefused
	case codeChanged:
		return ErrSourceChanged
	case codeCorrupt:
		return ErrCorrupt
	}
	return ErrRemote
}

func errCode(err error) byte {
	switch {
	case errors.Is(err, ErrProtocol), errors.Is(err, ErrBadRequest), errors.Is(err, ErrBlockSize):
		return codeProtocol
	case errors.Is(err, ErrRefused):
		return codeRefused
	case errors.Is(err, ErrSourceChanged):
		return codeChanged
	case errors.Is(err, ErrCorrupt):
		return codeCorrupt
	}
	return codeInternal
}

// frameWriter writes frames through a buffer and counts the bytes.
type frameWriter struct {
	w   *bufio.Writer
	n   atomic.Int64
	hdr [frameHeaderLen]byte
}

func newFrameWriter(w io.Writer) *frameWriter {
	return &frameWriter{w: bufio.NewWriterSize(w, 256<<10)}
}

func (fw *frameWriter) write(t byte, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > frameCap(t) {
		return fmt.Errorf("%w: frame 0x%02x of %d bytes over its cap", ErrProtocol, t, n)
	}
	fw.hdr[0] = t
	binary.BigEndian.PutUint32(fw.hdr[1:], uint32(n))
	if _, err := fw.w.Write(fw.hdr[:]); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := fw.w.Write(p); err != nil {
			return err
		}
	}
	fw.n.Add(int64(frameHeaderLen + n))
	return nil
}

func (fw *frameWriter) flush() error { return fw.w.Flush() }

// writeFrames writes already encoded frames; large runs bypass the buffer.
func (fw *frameWriter) writeFrames(p []byte) error {
	if len(p) > fw.w.Available() && fw.w.Buffered() > 0 {
		if err := fw.w.Flush(); err != nil {
			return err
		}
	}
	_, err := fw.w.Write(p) // bufio writes straight through when p does not fit
	if err == nil {
		fw.n.Add(int64(len(p)))
	}
	return err
}

// frameReader reads size-capped frames; the payload it returns is valid until the next read.
type frameReader struct {
	src io.Reader
	r   *bufio.Reader
	buf []byte
	n   atomic.Int64
}

// A small read buffer: headers and small frames go through it, and so little of a block
// lands in it with a header that the rest is read straight into place.
func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{src: r, r: bufio.NewReaderSize(r, 512)}
}

func (fr *frameReader) read() (byte, []byte, error) {
	t, n, err := fr.next()
	if err != nil {
		return 0, nil, err
	}
	if cap(fr.buf) < n {
		fr.buf = make([]byte, n, max(n, 64<<10))
	}
	p, err := fr.payload(fr.buf[:n])
	return t, p, err
}

// directRead is the payload size from which reads bypass the frame reader's buffer.
const directRead = 32 << 10

// next reads a frame header and checks the length against the type's cap; the payload
// must be read next, with payload.
func (fr *frameReader) next() (byte, int, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(fr.r, hdr[:]); err != nil {
		return 0, 0, err
	}
	t := hdr[0]
	n := binary.BigEndian.Uint32(hdr[1:])
	limit := frameCap(t)
	if limit == 0 {
		return 0, 0, fmt.Errorf("%w: unknown frame type 0x%02x", ErrProtocol, t)
	}
	if int64(n) > int64(limit) {
		return 0, 0, fmt.Errorf("%w: frame 0x%02x of %d bytes over its cap %d", ErrProtocol, t, n, limit)
	}
	fr.n.Add(frameHeaderLen)
	return t, int(n), nil
}

// payload reads the payload announced by next into p, which has exactly its length.
func (fr *frameReader) payload(p []byte) ([]byte, error) {
	var err error
	if len(p) >= directRead {
		// A block skips the buffer: what it holds is copied, the rest read in place.
		n := 0
		if b := fr.r.Buffered(); b > 0 {
			n, _ = fr.r.Read(p[:min(b, len(p))])
		}
		_, err = io.ReadFull(fr.src, p[n:])
	} else {
		_, err = io.ReadFull(fr.r, p)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	fr.n.Add(int64(len(p)))
	return p, nil
}

func writePreamble(w io.Writer) error {
	_, err := w.Write(preamble[:])
	return err
}

func readPreamble(r io.Reader) error {
	var p [len(preamble)]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return err
	}
	if string(p[:4]) != string(preamble[:4]) {
		return fmt.Errorf("%w: bad magic %q", ErrProtocol, p[:4])
	}
	if p[4] != wireVersion {
		return fmt.Errorf("%w: wire version %d, want %d", ErrProtocol, p[4], wireVersion)
	}
	return nil
}

// dec is a cursor over a payload; the first error sticks.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: malformed %s", ErrProtocol, what)
	}
}

func (d *dec) u8(what string) byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail(what)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) u32(what string) uint32 {
	if d.err != nil || len(d.b) < 4 {
		d.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *dec) u64(what string) uint64 {
	if d.err != nil || len(d.b) < 8 {
		d.fail(what)
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

// uvarint reads a varint no larger than limit.
func (d *dec) uvarint(what string, limit uint64) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || v > limit {
		d.fail(what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *dec) bytes(what string, n int) []byte {
	if d.err != nil || n < 0 || len(d.b) < n {
		d.fail(what)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) str(what string, limit int) string {
	n := d.uvarint(what, uint64(limit))
	return string(d.bytes(what, int(n)))
}

func (d *dec) hash(what string) Hash {
	var h Hash
	copy(h[:], d.bytes(what, len(h)))
	return h
}

// end fails unless the payload was consumed exactly.
func (d *dec) end(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(what + " (trailing bytes)")
	}
	return d.err
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Method selects how files move.
type Method byte

const (
	// MethodBlockDiff sends only the blocks the destination lacks (the default).
	MethodBlockDiff Method = 1
	// MethodFull sends every byte, like scp: the baseline.
	MethodFull Method = 2
)

// String returns the method's name as the CLI and VMMP QUERY spell it.
func (m Method) String() string {
	switch m {
	case MethodBlockDiff:
		return "blockdiff"
	case MethodFull:
		return "full"
	}
	return fmt.Sprintf("method(%d)", byte(m))
}

// ParseMethod parses "blockdiff" or "full".
func ParseMethod(s string) (Method, error) {
	switch strings.ToLower(s) {
	case "blockdiff", "":
		return MethodBlockDiff, nil
	case "full":
		return MethodFull, nil
	}
	return 0, fmt.Errorf("transfer method %q: want blockdiff or full", s)
}

// request is the REQUEST frame: what the destination asks for and how.
type request struct {
	Request
	method    Method
	blockSize int
	compress  bool
}

func (r *request) marshal() []byte {
	b := []byte{byte(r.method)}
	b = binary.BigEndian.AppendUint32(b, uint32(r.blockSize))
	var flags byte
	if r.compress {
		flags |= flagCompress
	}
	b = append(b, flags)
	b = appendString(b, r.VM)
	b = binary.AppendUvarint(b, uint64(len(r.Files)))
	for _, f := range r.Files {
		b = appendString(b, f)
	}
	return b
}

func decodeRequest(p []byte) (request, error) {
	d := dec{b: p}
	var r request
	r.method = Method(d.u8("request method"))
	r.blockSize = int(d.u32("request block size"))
	flags := d.u8("request flags")
	r.compress = flags&flagCompress != 0
	r.VM = d.str("request vm", maxVMLen)
	n := d.uvarint("request file count", MaxFiles)
	for i := uint64(0); i < n && d.err == nil; i++ {
		r.Files = append(r.Files, d.str("request file name", maxNameLen))
	}
	if err := d.end("request"); err != nil {
		return request{}, err
	}
	if err := r.validate(); err != nil {
		return request{}, err
	}
	return r, nil
}

func (r *request) validate() error {
	if r.method != MethodBlockDiff && r.method != MethodFull {
		return fmt.Errorf("%w: unknown method %d", ErrProtocol, r.method)
	}
	if !validBlockSize(r.blockSize) {
		return fmt.Errorf("%w: block size %d", ErrBlockSize, r.blockSize)
	}
	return r.Request.validate()
}

// accept is the ACCEPT frame: what the source will send for each requested file.
type accept struct {
	files []acceptFile
}

type acceptFile struct {
	size  int64
	mode  uint32 // permission bits
	mtime int64  // ns; the destination keeps it, as rsync -t does
	hash  Hash   // image hash if the source already knows it, else zero
}

func (a *accept) marshal() []byte {
	b := binary.AppendUvarint(nil, uint64(len(a.files)))
	for _, f := range a.files {
		b = binary.BigEndian.AppendUint64(b, uint64(f.size))
		b = binary.BigEndian.AppendUint32(b, f.mode)
		b = binary.BigEndian.AppendUint64(b, uint64(f.mtime))
		b = append(b, f.hash[:]...)
	}
	return b
}

func decodeAccept(p []byte) (accept, error) {
	d := dec{b: p}
	n := d.uvarint("accept file count", MaxFiles)
	var a accept
	for i := uint64(0); i < n && d.err == nil; i++ {
		var f acceptFile
		size := d.u64("accept size")
		if size > MaxFileSize {
			d.fail("accept size")
		}
		f.size = int64(size)
		f.mode = d.u32("accept mode") & 0o777
		f.mtime = int64(d.u64("accept mtime"))
		f.hash = d.hash("accept hash")
		a.files = append(a.files, f)
	}
	if err := d.end("accept"); err != nil {
		return accept{}, err
	}
	return a, nil
}

// sigHeader heads a SIG frame; its entries follow.
type sigHeader struct {
	file, first, count int
}

func appendSigHeader(b []byte, h sigHeader) []byte {
	b = binary.AppendUvarint(b, uint64(h.file))
	b = binary.AppendUvarint(b, uint64(h.first))
	return binary.AppendUvarint(b, uint64(h.count))
}

// decodeSig splits a SIG frame into its header and entries, each 32+8*stride bytes.
func decodeSig(p []byte, stride int) (sigHeader, []byte, error) {
	d := dec{b: p}
	var h sigHeader
	h.file = int(d.uvarint("sig file", MaxFiles-1))
	h.first = int(d.uvarint("sig first block", MaxFileSize/MinBlockSize))
	h.count = int(d.uvarint("sig count", uint64(sigChunk(stride))))
	if d.err == nil && h.count == 0 {
		d.fail("sig count")
	}
	entries := d.bytes("sig entries", h.count*(32+8*stride))
	if err := d.end("sig"); err != nil {
		return sigHeader{}, nil, err
	}
	return h, entries, nil
}

// basis opens the signature of one file: SIG frames covering every block of a basis of this
// size follow, unless identical.
type basis struct {
	file      int
	size      int64 // size of the basis the signature describes (0: none)
	identical bool  // no SIG frames: the basis has the image hash the source announced
	copies    bool  // the signature describes the basis file alone: COPY frames may name its pages
}

func (s basis) marshal() []byte {
	b := binary.AppendUvarint(nil, uint64(s.file))
	b = binary.BigEndian.AppendUint64(b, uint64(s.size))
	var flags byte
	if s.identical {
		flags |= flagIdentical
	}
	if s.copies {
		flags |= flagCopies
	}
	return append(b, flags)
}

func decodeBasis(p []byte) (basis, error) {
	d := dec{b: p}
	var s basis
	s.file = int(d.uvarint("basis file", MaxFiles-1))
	size := d.u64("basis size")
	if size > MaxFileSize {
		d.fail("basis size")
	}
	s.size = int64(size)
	flags := d.u8("basis flags")
	s.identical = flags&flagIdentical != 0
	s.copies = flags&flagCopies != 0
	if flags&^(flagIdentical|flagCopies) != 0 || (s.copies && (s.identical || s.size == 0)) {
		d.fail("basis flags")
	}
	if err := d.end("basis"); err != nil {
		return basis{}, err
	}
	return s, nil
}

func marshalUvarint(v int) []byte { return binary.AppendUvarint(nil, uint64(v)) }

// decodeUvarintFrame decodes FILE, REUSE and HOLE frames: one varint of at most limit.
func decodeUvarintFrame(p []byte, what string, limit uint64) (int, error) {
	d := dec{b: p}
	v := d.uvarint(what, limit)
	if err := d.end(what); err != nil {
		return 0, err
	}
	return int(v), nil
}

// blockFrame is a DATA, PATCH or COPY frame: a block's new strong hash and its bytes. For
// PATCH and COPY, mask marks the sub-blocks carried in payload, in order; for COPY, refs
// names, for every sub-block not marked, the basis sub-block that holds its content.
type blockFrame struct {
	flags   byte
	hash    Hash
	mask    []byte
	refs    []int
	payload []byte
}

func decodeData(p []byte) (blockFrame, error) {
	d := dec{b: p}
	var f blockFrame
	f.flags = d.u8("data flags")
	f.hash = d.hash("data hash")
	if d.err == nil {
		f.payload = d.b
	}
	if f.flags&^flagZstd != 0 {
		d.fail("data flags")
	}
	return f, d.err
}

// decodePatch needs the number of sub-blocks of the block to size the mask.
func decodePatch(p []byte, nsub int) (blockFrame, error) { return decodeMasked(p, nsub, "patch") }

// decodeMasked decodes what PATCH and COPY frames start with: flags, hash and the mask of the
// sub-blocks carried; the rest is left in payload.
func decodeMasked(p []byte, nsub int, what string) (blockFrame, error) {
	d := dec{b: p}
	var f blockFrame
	f.flags = d.u8(what + " flags")
	f.hash = d.hash(what + " hash")
	f.mask = d.bytes(what+" mask", (nsub+7)/8)
	if d.err == nil {
		f.payload = d.b
	}
	if f.flags&^flagZstd != 0 {
		d.fail(what + " flags")
	}
	return f, d.err
}

// maxRefLen bounds the encoding of one COPY reference (a zigzag varint of a sub-block
// number difference).
const maxRefLen = binary.MaxVarintLen64

// appendRefs encodes a COPY frame's references: for every sub-block j of block i not sent,
// the basis sub-block ref[j] holding its content, as the difference from where the previous
// reference leads (the same offset for the first), so that pages in place or moved in runs
// cost one byte each.
func appendRefs(b []byte, i, stride int, ref []int) []byte {
	next := i * stride
	for _, k := range ref {
		if k >= 0 {
			b = binary.AppendVarint(b, int64(k-next))
			next = k
		}
		next++
	}
	return b
}

// decodeCopy decodes the COPY frame of block i, of nsub sub-blocks, from a basis of avail
// full sub-blocks: every reference must name one of them.
func decodeCopy(p []byte, i, stride, nsub, avail int) (blockFrame, error) {
	f, err := decodeMasked(p, nsub, "copy")
	if err != nil {
		return f, err
	}
	d := dec{b: f.payload}
	f.refs = make([]int, nsub)
	next := i * stride
	for j := range nsub {
		if f.mask[j/8]&(1<<(j%8)) != 0 {
			f.refs[j] = -1
			next++
			continue
		}
		v, n := binary.Varint(d.b)
		if n <= 0 || v < -int64(next) || v >= int64(avail)-int64(next) { // next+v outside [0, avail)
			d.fail("copy reference")
			break
		}
		d.b = d.b[n:]
		k := next + int(v)
		f.refs[j] = k
		next = k + 1
	}
	f.payload = d.b
	return f, d.err
}

func decodeEnd(p []byte) (Hash, error) {
	d := dec{b: p}
	h := d.hash("end hash")
	return h, d.end("end")
}

// remoteError is an ERROR or DONE frame.
type remoteError struct {
	code byte
	msg  string
}

func (e remoteError) marshal() []byte {
	msg := e.msg
	if len(msg) > maxMessageLen {
		msg = msg[:maxMessageLen]
	}
	return appendString([]byte{e.code}, msg)
}

func decodeError(p []byte) (remoteError, error) {
	d := dec{b: p}
	var e remoteError
	e.code = d.u8("error code")
	e.msg = d.str("error message", maxMessageLen)
	if err := d.end("error"); err != nil {
		return remoteError{}, err
	}
	return e, nil
}

func (e remoteError) err() error {
	if e.code == codeOK {
		return nil
	}
	return fmt.Errorf("%w: %s", codeErr(e.code), e.msg)
}
