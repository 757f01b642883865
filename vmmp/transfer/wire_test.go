package transfer

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func testHash(b byte) Hash {
	var h Hash
	for i := range h {
		h[i] = b + byte(i)
	}
	return h
}

// goldenSession is one of each frame, as both sides would write them, in order.
func goldenSession() []byte {
	var buf bytes.Buffer
	fw := newFrameWriter(&buf)
	_ = writePreamble(fw.w)
	req := request{Request: Request{VM: "vm-7", Files: []string{"disk.img", "state"}}, method: MethodBlockDiff,
		blockSize: 8 << 10, compress: true}
	_ = fw.write(frameRequest, req.marshal())
	_ = fw.write(frameBasis, basis{file: 0, size: 10000}.marshal())
	sig := appendSigHeader(nil, sigHeader{file: 0, first: 0, count: 1})
	h10 := testHash(0x10)
	sig = append(sig, h10[:]...)
	sig = append(sig, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0)
	_ = fw.write(frameSig, sig)
	_ = fw.write(frameBasis, basis{file: 1, identical: true}.marshal())
	_ = fw.write(frameDone, remoteError{code: codeOK}.marshal())
	_ = writePreamble(fw.w)
	acc := accept{files: []acceptFile{{size: 20000, mode: 0o640, mtime: 1700000000123456789, hash: testHash(0x20)}, {size: 0, mode: 0o600}}}
	_ = fw.write(frameAccept, acc.marshal())
	_ = fw.write(frameFile, marshalUvarint(0))
	_ = fw.write(frameReuse, marshalUvarint(1))
	_ = fw.write(frameHole, marshalUvarint(300))
	h := testHash(0x30)
	_ = fw.write(frameData, append([]byte{0}, h[:]...), []byte("abc"))
	_ = fw.write(framePatch, append([]byte{flagZstd}, h[:]...), []byte{0x02}, []byte("zz"))
	_ = fw.write(frameEnd, h[:])
	_ = fw.write(frameError, remoteError{code: codeRefused, msg: "no"}.marshal())
	_ = fw.flush()
	return buf.Bytes()
}

func TestGoldenFrames(t *testing.T) {
	got := goldenSession()
	path := filepath.Join("testdata", "session.golden")
	if *update {
		if err := os.WriteFile(path, []byte(hex.Dump(got)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if hex.Dump(got) != string(want) {
		t.Fatalf("wire bytes changed: a version 1 peer could no longer talk to this one.\ngot:\n%s\nwant:\n%s", hex.Dump(got), want)
	}
}

// TestFramesRoundTrip decodes the golden session back into what was written.
func TestFramesRoundTrip(t *testing.T) {
	fr := newFrameReader(bytes.NewReader(goldenSession()))
	if err := readPreamble(fr.r); err != nil {
		t.Fatal(err)
	}
	next := func(want byte) []byte {
		t.Helper()
		typ, p, err := fr.read()
		if err != nil || typ != want {
			t.Fatalf("frame 0x%02x %v, want 0x%02x", typ, err, want)
		}
		return append([]byte(nil), p...)
	}
	req, err := decodeRequest(next(frameRequest))
	if err != nil || req.VM != "vm-7" || !reflect.DeepEqual(req.Files, []string{"disk.img", "state"}) ||
		req.blockSize != 8<<10 || !req.compress || req.method != MethodBlockDiff {
		t.Fatalf("request %+v %v", req, err)
	}
	if b, err := decodeBasis(next(frameBasis)); err != nil || b != (basis{file: 0, size: 10000}) {
		t.Fatalf("basis %+v %v", b, err)
	}
	h, entries, err := decodeSig(next(frameSig), 2)
	if err != nil || h != (sigHeader{count: 1}) || Hash(entries[:32]) != testHash(0x10) || leUint64(entries[40:]) != 2 {
		t.Fatalf("sig %+v %v", h, err)
	}
	if b, err := decodeBasis(next(frameBasis)); err != nil || b != (basis{file: 1, identical: true}) {
		t.Fatalf("basis %+v %v", b, err)
	}
	if e, err := decodeError(next(frameDone)); err != nil || e.err() != nil {
		t.Fatalf("done %+v %v", e, err)
	}
	if err := readPreamble(fr.r); err != nil {
		t.Fatal(err)
	}
	acc, err := decodeAccept(next(frameAccept))
	if err != nil || len(acc.files) != 2 || acc.files[0] != (acceptFile{size: 20000, mode: 0o640, mtime: 1700000000123456789, hash: testHash(0x20)}) {
		t.Fatalf("accept %+v %v", acc, err)
	}
	if n, err := decodeUvarintFrame(next(frameFile), "file", MaxFiles); err != nil || n != 0 {
		t.Fatalf("file %d %v", n, err)
	}
	if n, err := decodeUvarintFrame(next(frameReuse), "run", 1000); err != nil || n != 1 {
		t.Fatalf("reuse %d %v", n, err)
	}
	if n, err := decodeUvarintFrame(next(frameHole), "run", 1000); err != nil || n != 300 {
		t.Fatalf("hole %d %v", n, err)
	}
	if d, err := decodeData(next(frameData)); err != nil || d.hash != testHash(0x30) || string(d.payload) != "abc" {
		t.Fatalf("data %+v %v", d, err)
	}
	if d, err := decodePatch(next(framePatch), 2); err != nil || d.flags != flagZstd || !bytes.Equal(d.mask, []byte{2}) || string(d.payload) != "zz" {
		t.Fatalf("patch %+v %v", d, err)
	}
	if h, err := decodeEnd(next(frameEnd)); err != nil || h != testHash(0x30) {
		t.Fatalf("end %v %v", h, err)
	}
	if e, err := decodeError(next(frameError)); err != nil || !errors.Is(e.err(), ErrRefused) {
		t.Fatalf("error %+v %v", e, err)
	}
}

func TestDecodersRejectMalformed(t *testing.T) {
	good := (&request{Request: Request{VM: "vm", Files: []string{"a"}}, method: MethodFull, blockSize: MinBlockSize}).marshal()
	cases := []struct {
		name string
		err  error
	}{
		{"request trailing", errOf(decodeRequest(append(good, 0)))},
		{"request short", errOf(decodeRequest(good[:len(good)-1]))},
		{"request method", errOf(decodeRequest(append([]byte{9}, good[1:]...)))},
		{"request too many files", errOf(decodeRequest(append(good[:len(good)-3], 0xff, 0x01)))},
		{"accept huge size", errOf(decodeAccept(append([]byte{1}, bytes.Repeat([]byte{0xff}, 52)...)))},
		{"basis flags", errOf(decodeBasis([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 2}))},
		{"sig zero count", errOf3(decodeSig([]byte{0, 0, 0}, 16))},
		{"sig huge count", errOf3(decodeSig([]byte{0, 0, 0xff, 0xff, 0x03}, 16))},
		{"sig short entries", errOf3(decodeSig([]byte{0, 0, 1, 1, 2, 3}, 16))},
		{"data flags", errOf(decodeData(append([]byte{0x80}, make([]byte, 32)...)))},
		{"patch short mask", errOf(decodePatch(append([]byte{0}, make([]byte, 32)...), 16))},
		{"end long", errOf(decodeEnd(make([]byte, 33)))},
		{"error long message", errOf(decodeError(append([]byte{1, 0xff, 0x7f}, make([]byte, 20000)...)))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(tc.err, ErrProtocol) && !errors.Is(tc.err, ErrBadRequest) {
				t.Fatalf("got %v, want a protocol error", tc.err)
			}
		})
	}
}

func errOf[T any](_ T, err error) error { return err }

func errOf3[A, B any](_ A, _ B, err error) error { return err }

func TestFrameReaderCaps(t *testing.T) {
	cases := []struct {
		name  string
		input []byte
		want  string
	}{
		{"unknown type", []byte{0x42, 0, 0, 0, 0}, "unknown frame type"},
		{"control frame over cap", []byte{frameReuse, 0, 0, 0, 65}, "over its cap"},
		{"block frame over cap", []byte{frameData, 0, 0x40, 0x04, 0x01}, "over its cap"},
		{"truncated payload", []byte{frameEnd, 0, 0, 0, 32, 1, 2}, "unexpected EOF"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := newFrameReader(bytes.NewReader(tc.input)).read()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzFrameReader(f *testing.F) {
	f.Add(goldenSession()[len(preamble):])
	f.Add([]byte{frameData, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := newFrameReader(bytes.NewReader(b))
		for range 100 {
			typ, p, err := fr.read()
			if err != nil {
				return
			}
			if len(p) > frameCap(typ) {
				t.Fatalf("frame 0x%02x of %d bytes passed its cap", typ, len(p))
			}
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add((&request{Request: Request{VM: "vm", Files: []string{"disk.img", "state"}}, method: MethodBlockDiff, blockSize: DefaultBlockSize, compress: true}).marshal())
	f.Add([]byte{1, 0, 1, 0, 0, 0, 0, 1, 1, 'a'})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRequest(b)
		if err != nil {
			return
		}
		r2, err := decodeRequest(r.marshal())
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip: %+v then %+v, %v", r, r2, err)
		}
	})
}

func FuzzDecodeAccept(f *testing.F) {
	f.Add((&accept{files: []acceptFile{{size: 5, mode: 0o644, mtime: 3, hash: testHash(1)}}}).marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := decodeAccept(b)
		if err != nil {
			return
		}
		a2, err := decodeAccept(a.marshal())
		if err != nil || !reflect.DeepEqual(a, a2) {
			t.Fatalf("round trip: %+v then %+v, %v", a, a2, err)
		}
	})
}

func FuzzDecodeSig(f *testing.F) {
	f.Add(append(appendSigHeader(nil, sigHeader{file: 1, first: 2, count: 1}), make([]byte, 32+8*16)...), 16)
	f.Add([]byte{0, 0, 1}, 1)
	f.Fuzz(func(t *testing.T, b []byte, stride int) {
		if stride < 1 || stride > MaxBlockSize/subBlockSize {
			return
		}
		h, entries, err := decodeSig(b, stride)
		if err != nil {
			return
		}
		if len(entries) != h.count*(32+8*stride) || h.count > sigChunk(stride) {
			t.Fatalf("header %+v with %d bytes of entries", h, len(entries))
		}
		again := append(appendSigHeader(nil, h), entries...)
		if !bytes.Equal(again, b) {
			h2, _, _ := decodeSig(again, stride)
			if h2 != h {
				t.Fatalf("round trip: %+v then %+v", h, h2)
			}
		}
	})
}

func FuzzDecodeBasis(f *testing.F) {
	f.Add(basis{file: 3, size: 12345, identical: true}.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeBasis(b)
		if err != nil {
			return
		}
		s2, err := decodeBasis(s.marshal())
		if err != nil || s != s2 {
			t.Fatalf("round trip: %+v then %+v, %v", s, s2, err)
		}
	})
}

// FuzzDecodeInstructions covers the source's per-block frames and ERROR/DONE.
func FuzzDecodeInstructions(f *testing.F) {
	h := testHash(9)
	f.Add(byte(frameData), append(append([]byte{flagZstd}, h[:]...), 1, 2, 3), 16)
	f.Add(byte(framePatch), append(append([]byte{0}, h[:]...), 3, 0, 9, 9), 16)
	f.Add(byte(frameCopy), append(append([]byte{0}, h[:]...), appendRefs([]byte{1, 0}, 2, 16, []int{-1, 40, 41, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19})...), 16)
	f.Add(byte(frameEnd), h[:], 1)
	f.Add(byte(frameReuse), []byte{0x80, 0x01}, 1)
	f.Add(byte(frameError), remoteError{code: codeRefused, msg: "nope"}.marshal(), 1)
	f.Fuzz(func(t *testing.T, typ byte, b []byte, nsub int) {
		if nsub < 1 || nsub > MaxBlockSize/subBlockSize {
			return
		}
		switch typ {
		case frameData:
			if d, err := decodeData(b); err == nil && len(d.payload) != len(b)-33 {
				t.Fatalf("data payload %d of %d bytes", len(d.payload), len(b))
			}
		case framePatch:
			if d, err := decodePatch(b, nsub); err == nil && len(d.mask) != (nsub+7)/8 {
				t.Fatalf("mask of %d bytes for %d sub-blocks", len(d.mask), nsub)
			}
		case frameCopy:
			const block, avail = 2, 64
			d, err := decodeCopy(b, block, 16, nsub, avail)
			if err != nil {
				break
			}
			if len(d.mask) != (nsub+7)/8 || len(d.refs) != nsub {
				t.Fatalf("mask of %d bytes, %d references for %d sub-blocks", len(d.mask), len(d.refs), nsub)
			}
			for j, k := range d.refs {
				if sent := d.mask[j/8]&(1<<(j%8)) != 0; sent != (k < 0) || k >= avail {
					t.Fatalf("sub-block %d: sent %v, reference %d of %d", j, sent, k, avail)
				}
			}
			again := append(append([]byte{d.flags}, d.hash[:]...), d.mask...)
			again = append(appendRefs(again, block, 16, d.refs), d.payload...)
			if d2, err := decodeCopy(again, block, 16, nsub, avail); err != nil || !slices.Equal(d2.refs, d.refs) || !bytes.Equal(d2.payload, d.payload) {
				t.Fatalf("round trip: %v then %v, %v", d.refs, d2.refs, err)
			}
		case frameEnd:
			_, _ = decodeEnd(b)
		case frameError, frameDone:
			if e, err := decodeError(b); err == nil {
				e2, err := decodeError(e.marshal())
				if err != nil || e != e2 {
					t.Fatalf("round trip: %+v then %+v, %v", e, e2, err)
				}
			}
		default:
			if n, err := decodeUvarintFrame(b, "run", 1<<30); err == nil && n > 1<<30 {
				t.Fatalf("run of %d passed its limit", n)
			}
		}
	})
}

func FuzzDecodeCachedSig(f *testing.F) {
	g := newGeometry(3*DefaultBlockSize+5, DefaultBlockSize)
	sig := newSignature(g)
	sig.strong[1] = testHash(4)
	sig.subs[3] = 77
	c := &cachedSig{sig: sig, id: identity{dev: 1, ino: 2, size: g.size, mtime: 3, ctime: 4}, verifiedAt: 5, image: sig.image()}
	f.Add(c.marshal())
	f.Add([]byte("VMSG"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCachedSig(b)
		if err != nil {
			return
		}
		if !bytes.Equal(c.marshal(), b) {
			t.Fatal("re-encoding a decoded cache changed it")
		}
	})
}

func FuzzDecodeCommitRecord(f *testing.F) {
	rec := &commitRecord{files: []commitFile{{name: "disk.img", mode: modeApply, bs: DefaultBlockSize, size: 9,
		perm: 0o600, mtime: 7, staged: []Extent{{Off: 4096, Len: 8192}}, holes: []Extent{{Off: 0, Len: 4096}}},
		{name: "s", mode: modeRename, bs: MinBlockSize}}}
	f.Add(rec.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeCommitRecord(b)
		if err != nil {
			return
		}
		if !bytes.Equal(r.marshal(), b) {
			t.Fatal("re-encoding a decoded record changed it")
		}
	})
}

func TestCachedSigRoundTrip(t *testing.T) {
	g := newGeometry(5*DefaultBlockSize+77, DefaultBlockSize)
	sig := newSignature(g)
	for i := range sig.strong {
		sig.strong[i] = testHash(byte(i))
	}
	for i := range sig.subs {
		sig.subs[i] = uint64(i) * 0x9e3779b97f4a7c15
	}
	c := &cachedSig{sig: sig, id: identity{dev: 1, ino: 2, size: g.size, mtime: 3, ctime: 4}, verifiedAt: 5, image: sig.image(), g: g}
	b := c.marshal()
	c2, err := decodeCachedSig(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, c2) {
		t.Fatal("cache changed in a round trip")
	}
	h, err := decodeCacheHeader(b[:sigBodyOff])
	if err != nil || h.image != c.image || h.id != c.id || h.g != g || h.sig != nil {
		t.Fatalf("header: %+v, %v", h, err)
	}
	for _, at := range []int{3, sigHeaderLen + 3, sigBodyOff + 40, len(b) - 1} { // header, its checksum, body, its checksum
		bad := slices.Clone(b)
		bad[at] ^= 1
		if _, err := decodeCachedSig(bad); err == nil {
			t.Fatalf("a cache corrupted at byte %d decoded", at)
		}
	}
}

// FuzzCopyRefs: whatever valid references the source encodes (any page of the basis, for any
// block, also blocks far past the basis's end), the destination decodes the same ones.
func FuzzCopyRefs(f *testing.F) {
	f.Add(uint32(320), uint32(2048), []byte{0, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Add(uint32(0), uint32(1), []byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, block, avail uint32, picks []byte) {
		const stride = 16
		block %= 1 << 24
		avail = avail%(1<<28) + 1
		ref := make([]int, stride)
		mask := make([]byte, stride/8)
		for j := range ref {
			var v uint32
			if len(picks) >= 4 {
				v, picks = binary.LittleEndian.Uint32(picks), picks[4:]
			}
			if v == 0xffffffff {
				ref[j] = -1
				mask[j/8] |= 1 << (j % 8)
			} else {
				ref[j] = int(v % avail)
			}
		}
		b := append(append([]byte{0}, make([]byte, 32)...), mask...)
		b = appendRefs(b, int(block), stride, ref)
		d, err := decodeCopy(b, int(block), stride, stride, int(avail))
		if err != nil || !slices.Equal(d.refs, ref) || len(d.payload) != 0 {
			t.Fatalf("block %d, %d pages: sent %v, decoded %v, %v", block, avail, ref, d.refs, err)
		}
	})
}
