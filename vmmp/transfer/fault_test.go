package transfer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/virtuoso-market/virtuoso/internal/testwait"
)

func TestResumeAfterSourceKilled(t *testing.T) {
	const size = 32 << 20
	p := newPair(t)
	src := filepath.Join(p.srcDir, "disk.img")
	writeImage(t, src, size, 21)
	files := []string{"disk.img"}

	var once sync.Once
	_, err := p.fetch(t, files, withReportEvery(0), WithProgress(func(pr Progress) {
		if pr.Done > pr.Total/3 {
			once.Do(func() { _ = p.src.Close() }) // the source dies mid-transfer
		}
	}))
	if err == nil {
		t.Fatal("fetch succeeded although the source died")
	}
	if !exists(stagePath(p.dstDir, "disk.img")) {
		t.Fatal("no stage kept to resume from")
	}
	if exists(filepath.Join(p.dstDir, "disk.img")) {
		t.Fatal("a half-received file was committed")
	}

	// The source comes back (a new process: a new host) and the destination retries.
	h2 := newHost(t)
	p.serve(t, h2)
	connect(t, p.dst, h2)
	p.src = h2
	res := p.mustFetch(t, files)
	f := res.Files[0]
	if !f.Resumed || f.BlocksReused < int64(size/DefaultBlockSize/4) {
		t.Errorf("resumed %v, reused %d blocks: the retry started over", f.Resumed, f.BlocksReused)
	}
	if res.WireBytes > size*3/4 {
		t.Errorf("retry moved %d of %d bytes", res.WireBytes, size)
	}
	if exists(stagePath(p.dstDir, "disk.img")) {
		t.Error("stage left behind after the commit")
	}
}

func TestResumeAfterDestinationCanceled(t *testing.T) {
	const size = 32 << 20
	p := newPair(t)
	src := filepath.Join(p.srcDir, "disk.img")
	writeImage(t, src, size, 22)
	// The destination holds an older version that must survive the interruption.
	p.mustFetch(t, []string{"disk.img"})
	old := fileSHA(t, filepath.Join(p.dstDir, "disk.img"))
	var offs []int64
	for off := int64(0); off < size; off += 4 * DefaultBlockSize {
		offs = append(offs, off)
	}
	scribble(t, src, 23, DefaultBlockSize, offs...)

	p.fetchCanceledHalfway(t, old)
	res := p.mustFetch(t, []string{"disk.img"})
	f := res.Files[0]
	changed := int64(len(offs))
	if !f.Resumed || f.BlocksSent >= changed {
		t.Errorf("resumed %v, sent %d of %d changed blocks: the retry started over", f.Resumed, f.BlocksSent, changed)
	}
}

// TestResumePatches interrupts a transfer of scattered small writes, which stages single
// pages, and checks that the retry completes the image from them.
func TestResumePatches(t *testing.T) {
	const size = 16 << 20
	p := newPair(t)
	src := filepath.Join(p.srcDir, "disk.img")
	dst := filepath.Join(p.dstDir, "disk.img")
	writeImage(t, src, size, 24)
	p.mustFetch(t, []string{"disk.img"})
	old := fileSHA(t, dst)
	var offs []int64
	for off := int64(0); off < size; off += DefaultBlockSize {
		offs = append(offs, off+(off/DefaultBlockSize%16)*4*kib)
	}
	scribble(t, src, 25, 4*kib, offs...)

	p.fetchCanceledHalfway(t, old)
	res := p.mustFetch(t, []string{"disk.img"})
	if f := res.Files[0]; !f.Resumed || f.BlocksPatched >= int64(len(offs)) {
		t.Errorf("resumed %v, patched %d of %d changed blocks: the retry started over", f.Resumed, f.BlocksPatched, len(offs))
	}
}

// evilSource answers Fetches on h as a source of the file at path would, except that bad
// writes the instructions for the file.
func evilSource(tb testing.TB, h host.Host, path string, bad func(fw *frameWriter, data []byte, sig *signature)) {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := scanLocal(context.Background(), path, DefaultBlockSize, 2)
	if err != nil {
		tb.Fatal(err)
	}
	h.SetStreamHandler(ID, func(st network.Stream) {
		defer st.Close()
		fr, fw := newFrameReader(st), newFrameWriter(st)
		if readPreamble(fr.r) != nil {
			_ = st.Reset()
			return
		}
		if _, _, err := fr.read(); err != nil {
			_ = st.Reset()
			return
		}
		_ = writePreamble(fw.w)
		acc := accept{files: []acceptFile{{size: int64(len(data)), mode: 0o644}}}
		_ = fw.write(frameAccept, acc.marshal())
		_ = fw.flush()
		// Drain the signature and the verdict until the destination closes or resets its end,
		// which it does once it has judged the instructions.
		destDone := make(chan struct{})
		go func() {
			defer close(destDone)
			for {
				if _, _, err := fr.read(); err != nil {
					return
				}
			}
		}()
		bad(fw, data, c.sig)
		_ = fw.flush()
		_ = st.CloseWrite()
		<-destDone // closing earlier would cut off the verdict
	})
	tb.Cleanup(func() { h.RemoveStreamHandler(ID) })
}

// sendAll writes every block of data as DATA, letting mangle alter block i, unless own
// (if set) wrote block i its own way.
func sendAll(fw *frameWriter, data []byte, sig *signature, mangle func(i int, hash *Hash, payload []byte) []byte, own func(i int) bool) {
	_ = fw.write(frameFile, marshalUvarint(0))
	g := sig.g
	for i := range g.nblocks {
		if own != nil && own(i) {
			continue
		}
		payload := append([]byte(nil), data[g.off(i):g.off(i)+int64(g.blockLen(i))]...)
		h := sig.strong[i]
		if mangle != nil {
			payload = mangle(i, &h, payload)
		}
		hdr := [33]byte{}
		copy(hdr[1:], h[:])
		_ = fw.write(frameData, hdr[:], payload)
	}
}

func TestFetchFromMisbehavingSource(t *testing.T) {
	cases := []struct {
		name string
		want error
		bad  func(fw *frameWriter, data []byte, sig *signature)
	}{
		{"corrupted block", ErrCorrupt, func(fw *frameWriter, data []byte, sig *signature) {
			sendAll(fw, data, sig, func(i int, h *Hash, p []byte) []byte {
				if i == 3 {
					p[100] ^= 1
				}
				return p
			}, nil)
			_ = fw.write(frameEnd, imageOf(sig))
		}},
		{"truncated block", ErrCorrupt, func(fw *frameWriter, data []byte, sig *signature) {
			sendAll(fw, data, sig, func(i int, h *Hash, p []byte) []byte {
				if i == 2 {
					return p[:len(p)-100]
				}
				return p
			}, nil)
			_ = fw.write(frameEnd, imageOf(sig))
		}},
		{"lying block hash", ErrCorrupt, func(fw *frameWriter, data []byte, sig *signature) {
			sendAll(fw, data, sig, func(i int, h *Hash, p []byte) []byte {
				if i == 5 {
					h[0] ^= 1
				}
				return p
			}, nil)
			_ = fw.write(frameEnd, imageOf(sig))
		}},
		{"lying image hash", ErrCorrupt, func(fw *frameWriter, data []byte, sig *signature) {
			sendAll(fw, data, sig, nil, nil)
			h := sig.image()
			h[31] ^= 1
			_ = fw.write(frameEnd, h[:])
		}},
		{"false reuse", ErrCorrupt, func(fw *frameWriter, data []byte, sig *signature) {
			_ = fw.write(frameFile, marshalUvarint(0))
			_ = fw.write(frameReuse, marshalUvarint(sig.g.nblocks))
			_ = fw.write(frameEnd, imageOf(sig))
		}},
		{"false copy", ErrCorrupt, func(fw *frameWriter, data []byte, sig *signature) {
			// Block 0 claims block 1's pages with its own hash; every other block is true.
			sendAll(fw, data, sig, nil, func(i int) bool {
				if i != 0 {
					return false
				}
				writeCopy(fw, sig, data, 0, seq(16, 16))
				return true
			})
			_ = fw.write(frameEnd, imageOf(sig))
		}},
		{"copy past the basis", ErrProtocol, func(fw *frameWriter, data []byte, sig *signature) {
			// The basis (2 MiB + 5) has 512 full pages: page 512 is the first it lacks.
			_ = fw.write(frameFile, marshalUvarint(0))
			ref := slices.Repeat([]int{-1}, 16)
			ref[0] = 512
			writeCopy(fw, sig, data, 0, ref)
		}},
		{"garbage zstd", ErrCorrupt, func(fw *frameWriter, data []byte, sig *signature) {
			_ = fw.write(frameFile, marshalUvarint(0))
			hdr := [33]byte{flagZstd}
			_ = fw.write(frameData, hdr[:], []byte("this is not a zstd frame at all"))
		}},
		{"oversized frame", ErrProtocol, func(fw *frameWriter, data []byte, sig *signature) {
			_ = fw.write(frameFile, marshalUvarint(0))
			_, _ = fw.w.Write([]byte{frameData, 0x7f, 0xff, 0xff, 0xff})
		}},
		{"unknown frame", ErrProtocol, func(fw *frameWriter, data []byte, sig *signature) {
			_ = fw.write(frameFile, marshalUvarint(0))
			_, _ = fw.w.Write([]byte{0x7e, 0, 0, 0, 0})
		}},
		{"run past the end", ErrProtocol, func(fw *frameWriter, data []byte, sig *signature) {
			_ = fw.write(frameFile, marshalUvarint(0))
			_ = fw.write(frameReuse, marshalUvarint(sig.g.nblocks+1))
		}},
		{"block past the end", ErrProtocol, func(fw *frameWriter, data []byte, sig *signature) {
			sendAll(fw, data, sig, nil, nil)
			hdr := [33]byte{}
			_ = fw.write(frameData, hdr[:], []byte{1, 2, 3})
		}},
		{"early end", ErrProtocol, func(fw *frameWriter, data []byte, sig *signature) {
			_ = fw.write(frameFile, marshalUvarint(0))
			_ = fw.write(frameHole, marshalUvarint(1))
			_ = fw.write(frameEnd, imageOf(sig))
		}},
		{"oversized block", ErrProtocol, func(fw *frameWriter, data []byte, sig *signature) {
			_ = fw.write(frameFile, marshalUvarint(0))
			hdr := [33]byte{}
			_ = fw.write(frameData, hdr[:], make([]byte, DefaultBlockSize+1))
		}},
		{"wrong file", ErrProtocol, func(fw *frameWriter, data []byte, sig *signature) {
			_ = fw.write(frameFile, marshalUvarint(1))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t)
			src := filepath.Join(p.srcDir, "disk.img")
			dst := filepath.Join(p.dstDir, "disk.img")
			writeImage(t, src, 2*mib+5, 31)
			p.mustFetch(t, []string{"disk.img"})
			old := fileSHA(t, dst)
			scribble(t, src, 32, 10*kib, 0, mib)

			evil := newHost(t)
			connect(t, p.dst, evil)
			evilSource(t, evil, src, tc.bad)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := Fetch(ctx, p.dst, evil.ID(), Request{VM: "vm-1", Files: []string{"disk.img"}}, p.dstDir)
			if !errors.Is(err, tc.want) {
				t.Fatalf("fetch: %v, want %v", err, tc.want)
			}
			if fileSHA(t, dst) != old {
				t.Fatal("the previous version was damaged")
			}
			if exists(stagePath(p.dstDir, "disk.img")) {
				t.Fatal("a stage of bad data was left behind")
			}
			p.mustFetch(t, []string{"disk.img"}) // an honest source completes
		})
	}
}

// writeCopy writes a COPY frame for block i, with its true hash, naming basis pages ref
// (-1: the page is carried, from data) as its content.
func writeCopy(fw *frameWriter, sig *signature, data []byte, i int, ref []int) {
	g := sig.g
	mask := make([]byte, (g.stride+7)/8)
	var pages []byte
	for j, k := range ref {
		if k < 0 {
			mask[j/8] |= 1 << (j % 8)
			pages = append(pages, data[g.off(i)+int64(j*subBlockSize):][:subBlockSize]...)
		}
	}
	hdr := [33]byte{}
	copy(hdr[1:], sig.strong[i][:])
	_ = fw.write(frameCopy, hdr[:], mask, appendRefs(nil, i, g.stride, ref), pages)
}

// seq is n numbers from first on.
func seq(first, n int) []int {
	s := make([]int, n)
	for j := range s {
		s[j] = first + j
	}
	return s
}

func imageOf(sig *signature) []byte {
	h := sig.image()
	return h[:]
}

func TestFetchRefused(t *testing.T) {
	p := newPair(t)
	writeImage(t, filepath.Join(p.srcDir, "disk.img"), mib, 41)
	p.refuse = errors.New("peer does not own vm-1")
	_, err := p.fetch(t, []string{"disk.img"})
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("fetch: %v, want ErrRefused", err)
	}
	if exists(filepath.Join(p.dstDir, "disk.img")) || exists(stagePath(p.dstDir, "disk.img")) {
		t.Fatal("a refused fetch left files behind")
	}
	p.refuse = nil
	p.mustFetch(t, []string{"disk.img"})
}

func TestFetchBadRequest(t *testing.T) {
	p := newPair(t)
	cases := []struct {
		name string
		req  Request
	}{
		{"no files", Request{VM: "vm"}},
		{"path", Request{VM: "vm", Files: []string{"../etc/passwd"}}},
		{"bookkeeping", Request{VM: "vm", Files: []string{bookkeepingDir}}},
		{"hidden", Request{VM: "vm", Files: []string{".disk.raw.track"}}},
		{"twice", Request{VM: "vm", Files: []string{"a", "a"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Fetch(t.Context(), p.dst, p.src.ID(), tc.req, p.dstDir)
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("fetch: %v, want ErrBadRequest", err)
			}
		})
	}
	if _, err := Fetch(t.Context(), p.dst, p.src.ID(), Request{Files: []string{"a"}}, p.dstDir, WithBlockSize(1000)); !errors.Is(err, ErrBlockSize) {
		t.Fatalf("fetch with block size 1000: %v, want ErrBlockSize", err)
	}
	_, err := p.fetch(t, []string{"missing"})
	if !errors.Is(err, ErrRemote) {
		t.Fatalf("fetch of a missing file: %v, want ErrRemote", err)
	}
}

func TestFetchDiskFull(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(p.srcDir, "disk.img")
	dst := filepath.Join(p.dstDir, "disk.img")
	writeImage(t, src, testSize, 51)
	p.mustFetch(t, []string{"disk.img"})
	old := fileSHA(t, dst)
	var offs []int64
	for off := int64(0); off < testSize; off += 2 * DefaultBlockSize {
		offs = append(offs, off)
	}
	scribble(t, src, 52, DefaultBlockSize, offs...)

	_, err := p.fetch(t, []string{"disk.img"}, withWriteLimit(mib))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("fetch: %v, want ENOSPC", err)
	}
	if fileSHA(t, dst) != old {
		t.Fatal("the previous version was damaged")
	}
	if exists(stagePath(p.dstDir, "disk.img")) {
		t.Fatal("the stage was left behind on a full disk")
	}
	p.mustFetch(t, []string{"disk.img"})
}

func TestSourceChangedDuringTransfer(t *testing.T) {
	var once sync.Once
	p := newPair(t, withSent(func(path string) {
		// The server has sent every block and not yet checked the file: a write lands now.
		once.Do(func() { scribble(t, path, 62, 10, testSize-100) })
	}))
	src := filepath.Join(p.srcDir, "disk.img")
	writeImage(t, src, testSize, 61)
	_, err := p.fetch(t, []string{"disk.img"})
	if !errors.Is(err, ErrSourceChanged) {
		t.Fatalf("fetch: %v, want ErrSourceChanged", err)
	}
	if exists(filepath.Join(p.dstDir, "disk.img")) {
		t.Fatal("a torn image was committed")
	}
	p.mustFetch(t, []string{"disk.img"})
}

// TestServerRejectsMalformedInput speaks raw bytes to a Server: each bad input must end in
// an ERROR frame or a closed stream, and the server must go on serving.
func TestServerRejectsMalformedInput(t *testing.T) {
	p := newPair(t)
	writeImage(t, filepath.Join(p.srcDir, "disk.img"), mib, 71)
	req := (&request{Request: Request{VM: "vm", Files: []string{"disk.img"}}, method: MethodBlockDiff, blockSize: DefaultBlockSize}).marshal()
	frame := func(t byte, p []byte) []byte {
		return append([]byte{t, byte(len(p) >> 24), byte(len(p) >> 16), byte(len(p) >> 8), byte(len(p))}, p...)
	}
	pre := preamble[:]
	cases := []struct {
		name  string
		input [][]byte
	}{
		{"bad magic", [][]byte{[]byte("HTTP/1.1 GET /")}},
		{"wrong version", [][]byte{{'V', 'M', 'T', 'X', 9}}},
		{"oversized request", [][]byte{pre, {frameRequest, 0xff, 0xff, 0xff, 0xff}}},
		{"frame before request", [][]byte{pre, frame(frameSig, []byte{0, 0, 1})}},
		{"malformed request", [][]byte{pre, frame(frameRequest, []byte{1, 2, 3})}},
		{"bad block size", [][]byte{pre, frame(frameRequest, (&request{Request: Request{VM: "vm", Files: []string{"disk.img"}}, method: MethodBlockDiff, blockSize: 3000}).marshal())}},
		{"escaping name", [][]byte{pre, frame(frameRequest, (&request{Request: Request{VM: "vm", Files: []string{"../x"}}, method: MethodBlockDiff, blockSize: DefaultBlockSize}).marshal())}},
		{"signature out of order", [][]byte{pre, frame(frameRequest, req), frame(frameBasis, basis{file: 0, size: mib}.marshal()), frame(frameSig, append(appendSigHeader(nil, sigHeader{file: 0, first: 3, count: 1}), make([]byte, 32+8*16)...))}},
		{"signature past the basis", [][]byte{pre, frame(frameRequest, req), frame(frameBasis, basis{file: 0, size: 10}.marshal()), frame(frameSig, append(appendSigHeader(nil, sigHeader{file: 0, first: 0, count: 2}), make([]byte, 2*(32+8*16))...))}},
		{"basis for a second file", [][]byte{pre, frame(frameRequest, req), frame(frameBasis, basis{file: 1}.marshal())}},
		{"unknown frame", [][]byte{pre, frame(frameRequest, req), frame(0x66, nil)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st, err := p.dst.NewStream(ctx, p.src.ID(), ID)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Reset()
			_ = st.SetDeadline(time.Now().Add(20 * time.Second))
			for _, b := range tc.input {
				if _, err := st.Write(b); err != nil {
					break
				}
			}
			_ = st.CloseWrite()
			got, _ := io.ReadAll(st) // ends: the server closed or reset the stream
			if len(got) > len(preamble) {
				fr := newFrameReader(bytes.NewReader(got[len(preamble):]))
				for {
					typ, payload, err := fr.read()
					if err != nil {
						t.Fatalf("server answered without an ERROR frame: %v", err)
					}
					if typ == frameError {
						e, err := decodeError(payload)
						if err != nil || e.code == codeOK {
							t.Fatalf("bad ERROR frame %x", payload)
						}
						break
					}
				}
			}
		})
	}
	p.mustFetch(t, []string{"disk.img"})
}

func TestChangeTracker(t *testing.T) {
	tr := &memTracker{}
	p := newPair(t, WithChangeTracker(tr))
	src := filepath.Join(p.srcDir, "disk.img")
	writeImage(t, src, testSize, 81)
	first := p.mustFetch(t, []string{"disk.img"})
	if tr.checkpoint != first.Files[0].Hash {
		t.Fatalf("checkpoint %s, want the image hash %s", tr.checkpoint, first.Files[0].Hash)
	}
	scribble(t, src, 82, 5000, 3*mib+100)
	tr.write(3*mib+100, 5000)
	res := p.mustFetch(t, []string{"disk.img"})
	if tr.changedCalls != 1 {
		t.Errorf("tracker asked %d times, want once", tr.changedCalls)
	}
	if f := res.Files[0]; f.BlocksSent+f.BlocksPatched != 1 {
		t.Errorf("sent %d blocks, want 1", f.BlocksSent+f.BlocksPatched)
	}
	if tr.checkpoint != res.Files[0].Hash {
		t.Errorf("no checkpoint at the new image")
	}
	if got := tr.checkpointed(); !slices.Equal(got, []string{src, src}) {
		t.Errorf("the source's checkpoints: %v", got)
	}
	// The destination counts from what arrived too: the copy it stored the signature of.
	dt := &memTracker{}
	scribble(t, src, 83, 5000, 5*mib)
	tr.write(5*mib, 5000)
	res = p.mustFetch(t, []string{"disk.img"}, WithChangeTracker(dt))
	if got := dt.checkpointed(); !slices.Equal(got, []string{filepath.Join(p.dstDir, "disk.img")}) || dt.checkpoint != res.Files[0].Hash {
		t.Errorf("the destination's checkpoints: %v at %s, want its file at %s", got, dt.checkpoint, res.Files[0].Hash)
	}
}

// The source checkpoints its tracker (hypervisor tools, tens of ms) while the destination
// commits, not before it has sent the end; and the destination's Fetch returns only once the
// source's checkpoint is made, so that what the caller does next (start the VM, send it
// back) comes after it.
func TestSourceCheckpointsWhileDestinationCommits(t *testing.T) {
	dt := &memTracker{called: make(chan struct{}, 4)}
	tr := &memTracker{after: dt.called, delay: 200 * time.Millisecond} // a hypervisor tool's time
	p := newPair(t, WithChangeTracker(tr))
	src := filepath.Join(p.srcDir, "disk.img")
	writeImage(t, src, testSize, 84)
	res := p.mustFetch(t, []string{"disk.img"}, WithChangeTracker(dt))
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.waitErr != nil {
		t.Fatal(tr.waitErr)
	}
	if !slices.Equal(tr.paths, []string{src}) || tr.checkpoint != res.Files[0].Hash {
		t.Fatalf("when the fetch returned, the source had checkpointed %v at %s, want %s at %s", tr.paths, tr.checkpoint, src, res.Files[0].Hash)
	}
}

// memTracker records writes the test makes, as a hypervisor's dirty bitmap would.
type memTracker struct {
	// after, if set, is waited for (10 s at most, else waitErr) before a checkpoint;
	// called, if set, gets a value after each; each takes delay.
	after   <-chan struct{}
	delay   time.Duration
	called  chan struct{}
	waitErr error

	mu           sync.Mutex
	checkpoint   Hash
	dirty        []Extent
	changedCalls int
	paths        []string // the files checkpointed
}

func (m *memTracker) write(off, n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dirty = append(m.dirty, Extent{Off: off, Len: n})
}

func (m *memTracker) Checkpoint(ctx context.Context, path string, h Hash) error {
	if m.after != nil {
		select {
		case <-m.after:
		case <-time.After(10 * time.Second):
			m.mu.Lock()
			m.waitErr = errors.New("the source checkpointed before the destination committed: it had not sent the end")
			m.mu.Unlock()
		}
	}
	time.Sleep(m.delay)
	m.mu.Lock()
	m.checkpoint, m.dirty = h, nil
	m.paths = append(m.paths, path)
	m.mu.Unlock()
	if m.called != nil {
		m.called <- struct{}{}
	}
	return nil
}

func (m *memTracker) checkpointed() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.paths)
}

func (m *memTracker) Changed(ctx context.Context, path string, since Hash) ([]Extent, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.changedCalls++
	if since != m.checkpoint {
		return nil, false, nil
	}
	return append([]Extent(nil), m.dirty...), true, nil
}

var _ ChangeTracker = (*memTracker)(nil)

func TestRecoverFinishesCommit(t *testing.T) {
	dir := t.TempDir()
	book := filepath.Join(dir, bookkeepingDir)
	if err := os.MkdirAll(book, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "disk.img")
	writeImage(t, target, 4*mib, 91)
	want, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	// A crash left: staged blocks 1 and 5, a hole at block 9, the file shrunk by 1000 bytes.
	stage, err := os.Create(filepath.Join(book, "disk.img.stage"))
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 5} {
		blk := make([]byte, DefaultBlockSize)
		for k := range blk {
			blk[k] = byte(i + k)
		}
		copy(want[i*DefaultBlockSize:], blk)
		if _, err := stage.WriteAt(blk, int64(i*DefaultBlockSize)); err != nil {
			t.Fatal(err)
		}
	}
	stage.Close()
	clear(want[9*DefaultBlockSize : 10*DefaultBlockSize])
	want = want[:len(want)-1000]
	rec := &commitRecord{files: []commitFile{{name: "disk.img", mode: modeApply, bs: DefaultBlockSize,
		size: int64(len(want)), perm: 0o640, mtime: time.Now().UnixNano(),
		staged: []Extent{{Off: DefaultBlockSize, Len: DefaultBlockSize}, {Off: 5 * DefaultBlockSize, Len: DefaultBlockSize}},
		holes:  []Extent{{Off: 9 * DefaultBlockSize, Len: DefaultBlockSize}}}}}
	if err := writeRecord(book, rec, true); err != nil {
		t.Fatal(err)
	}
	// The target's signature, of its content before the commit, goes with the commit: a
	// change tracker counting from it would miss what the commit wrote.
	if _, err := scanLocal(t.Context(), target, DefaultBlockSize, 1); err != nil || !exists(sigPath(target)) {
		t.Fatalf("cache the target's signature: %v", err)
	}
	for range 2 { // idempotent
		if err := Recover(dir); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(target)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatal("recovered file differs from the committed image")
		}
	}
	if exists(filepath.Join(book, recordName)) || exists(filepath.Join(book, "disk.img.stage")) {
		t.Fatal("recovery left its record or stage")
	}
	if exists(sigPath(target)) {
		t.Fatal("the signature of the content before the commit survived it")
	}
	fi, _ := os.Stat(target)
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
}

func TestFetchStalledSource(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(p.srcDir, "disk.img")
	writeImage(t, src, mib, 101)
	stalled := newHost(t)
	connect(t, p.dst, stalled)
	evilSource(t, stalled, src, func(fw *frameWriter, data []byte, sig *signature) {
		_ = fw.write(frameFile, marshalUvarint(0))
		_ = fw.flush()
		time.Sleep(2 * time.Second) // a source that hangs
	})
	_, err := Fetch(t.Context(), p.dst, stalled.ID(), Request{VM: "vm-1", Files: []string{"disk.img"}}, p.dstDir,
		WithIdleTimeout(200*time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), "no progress") {
		t.Fatalf("fetch from a stalled source: %v, want an idle timeout", err)
	}
	p.mustFetch(t, []string{"disk.img"})
}

// TestStaleSourceCacheRecovers plants a cached signature that the source trusts but that
// lies about one block: the destination must refuse the data, and the retry must succeed
// because the source then forgets the cache.
func TestStaleSourceCacheRecovers(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(p.srcDir, "disk.img")
	writeImage(t, src, testSize, 111)
	c, err := scanLocal(t.Context(), src, DefaultBlockSize, 2)
	if err != nil {
		t.Fatal(err)
	}
	c.sig.strong[5][0] ^= 1
	c.image = c.sig.image()
	c.verifiedAt = time.Now().Add(time.Hour).UnixNano()
	if err := storeCachedSig(src, c); err != nil {
		t.Fatal(err)
	}
	_, err = p.fetch(t, []string{"disk.img"})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("fetch: %v, want ErrCorrupt", err)
	}
	testwait.Eventually(t, 10*time.Second, func() error {
		if exists(sigPath(src)) {
			return errors.New("the source kept the cache that failed verification")
		}
		return nil
	})
	p.mustFetch(t, []string{"disk.img"})
}

// fetchCanceledHalfway fetches disk.img and cancels once half of it has arrived; the
// destination's version, whose hash is old, must come through intact.
func (p *pair) fetchCanceledHalfway(t *testing.T, old [32]byte) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := Fetch(ctx, p.dst, p.src.ID(), Request{VM: "vm-1", Files: []string{"disk.img"}}, p.dstDir,
		withReportEvery(0), WithProgress(func(pr Progress) {
			if pr.Done > pr.Total/2 {
				cancel()
			}
		}))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("fetch: %v, want context.Canceled", err)
	}
	if fileSHA(t, filepath.Join(p.dstDir, "disk.img")) != old {
		t.Fatal("the previous version was damaged by a canceled transfer")
	}
}

// TestCacheBodyReadOnlyWhenNeeded damages the body of both sides' cached signatures (a
// strong hash, which no spot check reads): an unchanged transfer, which needs only the
// caches' headers, still costs a few bytes; once the source changed, both bodies are needed,
// both are found damaged and both sides hash their files instead, and the copy is right.
func TestCacheBodyReadOnlyWhenNeeded(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(p.srcDir, "disk.img")
	dst := filepath.Join(p.dstDir, "disk.img")
	writeImage(t, src, testSize, 121)
	p.mustFetch(t, []string{"disk.img"})
	p.mustFetch(t, []string{"disk.img"}) // the source's cache is trusted from here
	damage := func(path string) {
		f, err := os.OpenFile(sigPath(path), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var b [1]byte
		off := int64(sigBodyOff + 7*32) // block 7's strong hash
		if _, err := f.ReadAt(b[:], off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0x40
		if _, err := f.WriteAt(b[:], off); err != nil {
			t.Fatal(err)
		}
	}
	damage(src)
	damage(dst)
	if c := loadCachedSig(src, DefaultBlockSize); c != nil {
		t.Fatal("a damaged body loaded")
	}

	res := p.mustFetch(t, []string{"disk.img"})
	if f := res.Files[0]; res.WireBytes > 1024 || f.BlocksReused != testSize/DefaultBlockSize {
		t.Errorf("unchanged: %d bytes on the wire, %d blocks reused", res.WireBytes, f.BlocksReused)
	}

	scribble(t, src, 122, DefaultBlockSize, 3*mib)
	res = p.mustFetch(t, []string{"disk.img"})
	if f := res.Files[0]; f.BlocksSent+f.BlocksPatched+f.BlocksCopied != 1 {
		t.Errorf("changed: sent %d patched %d copied %d, want one block", f.BlocksSent, f.BlocksPatched, f.BlocksCopied)
	}
	for _, path := range []string{src, dst} {
		if loadCachedSig(path, DefaultBlockSize) == nil {
			t.Errorf("%s: no sound cache after the transfer that hashed it", path)
		}
	}
}
