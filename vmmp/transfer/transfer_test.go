package transfer

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

const (
	testSize = 8 << 20
	kib      = 1 << 10
	mib      = 1 << 20
)

// sigBytes is the size of a signature on the wire for size bytes at the default block size.
func sigBytes(size int64) int64 {
	g := newGeometry(size, DefaultBlockSize)
	return int64(g.nblocks) * int64(32+8*g.stride)
}

func TestFetchLifecycle(t *testing.T) {
	nblocks := int64(testSize / DefaultBlockSize)
	cases := []struct {
		name   string
		change func(tb testing.TB, path string)
		check  func(tb testing.TB, r *Result)
	}{
		{
			name: "whole blocks changed",
			change: func(tb testing.TB, path string) {
				scribble(tb, path, 1, DefaultBlockSize, 0, 3*mib, testSize-DefaultBlockSize)
			},
			check: func(tb testing.TB, r *Result) {
				f := r.Files[0]
				if f.BlocksSent != 3 || f.BlocksPatched != 0 || f.BlocksReused != nblocks-3 {
					tb.Errorf("sent %d patched %d reused %d, want 3, 0, %d", f.BlocksSent, f.BlocksPatched, f.BlocksReused, nblocks-3)
				}
				if max := 3*DefaultBlockSize + sigBytes(testSize) + 4*kib; r.WireBytes > max {
					tb.Errorf("%d bytes on the wire, want at most %d", r.WireBytes, max)
				}
			},
		},
		{
			name: "scattered 4KiB writes",
			change: func(tb testing.TB, path string) {
				var offs []int64
				for i := range int64(20) {
					offs = append(offs, i*5*DefaultBlockSize+int64(i%16)*4*kib)
				}
				scribble(tb, path, 2, 4*kib, offs...)
			},
			check: func(tb testing.TB, r *Result) {
				f := r.Files[0]
				if f.BlocksPatched != 20 || f.BlocksSent != 0 {
					tb.Errorf("patched %d sent %d, want 20 and 0", f.BlocksPatched, f.BlocksSent)
				}
				changed := int64(20 * 4 * kib)
				if max := 3*changed + sigBytes(testSize); r.WireBytes > max {
					tb.Errorf("%d bytes on the wire for %d changed, want at most %d", r.WireBytes, changed, max)
				}
				// Staged and then copied into place: only the changed pages, twice.
				if r.WrittenBytes != 2*changed {
					tb.Errorf("%d bytes written for %d changed, want %d", r.WrittenBytes, changed, 2*changed)
				}
			},
		},
		{
			// More changed than kept: the stage is completed from the old version and
			// renamed over it, instead of being copied into it.
			name: "most blocks changed",
			change: func(tb testing.TB, path string) {
				var offs []int64
				for i := range nblocks {
					if i%4 != 0 {
						offs = append(offs, i*DefaultBlockSize)
					}
				}
				scribble(tb, path, 4, DefaultBlockSize, offs...)
			},
			check: func(tb testing.TB, r *Result) {
				f := r.Files[0]
				if f.BlocksSent != nblocks*3/4 || f.BlocksReused != nblocks/4 {
					tb.Errorf("sent %d reused %d, want %d and %d", f.BlocksSent, f.BlocksReused, nblocks*3/4, nblocks/4)
				}
				// Staged, then the kept quarter copied in: every byte written once.
				if r.WrittenBytes != testSize {
					tb.Errorf("%d bytes written, want %d", r.WrittenBytes, testSize)
				}
			},
		},
		{
			// A guest copied a file: 1 MiB of pages, aligned to pages but not to blocks,
			// now also lies elsewhere. The destination takes them from its own basis.
			name: "pages copied from elsewhere",
			change: func(tb testing.TB, path string) {
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					tb.Fatal(err)
				}
				defer f.Close()
				buf := make([]byte, mib)
				if _, err := f.ReadAt(buf, mib+8*kib); err != nil {
					tb.Fatal(err)
				}
				if _, err := f.WriteAt(buf, 5*mib+12*kib); err != nil {
					tb.Fatal(err)
				}
				settle()
			},
			check: func(tb testing.TB, r *Result) {
				f := r.Files[0]
				if f.BlocksCopied != 17 || f.BlocksSent+f.BlocksPatched != 0 || f.BlocksReused != nblocks-17 {
					tb.Errorf("copied %d sent %d patched %d reused %d, want 17 copied, the rest reused",
						f.BlocksCopied, f.BlocksSent, f.BlocksPatched, f.BlocksReused)
				}
				if max := sigBytes(testSize) + 8*kib; r.WireBytes > max {
					tb.Errorf("%d bytes on the wire for 1 MiB the destination held, want at most %d", r.WireBytes, max)
				}
			},
		},
		{
			// Pages copied far past the end of the old version: the references of the new
			// blocks point a long way back.
			name: "grown by a copy of its start",
			change: func(tb testing.TB, path string) {
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					tb.Fatal(err)
				}
				defer f.Close()
				buf := make([]byte, DefaultBlockSize)
				if _, err := f.ReadAt(buf, 0); err != nil {
					tb.Fatal(err)
				}
				if _, err := f.WriteAt(buf, 3*testSize-DefaultBlockSize); err != nil {
					tb.Fatal(err)
				}
				settle()
			},
			check: func(tb testing.TB, r *Result) {
				f := r.Files[0]
				if f.BlocksCopied != 1 || f.BlocksSent+f.BlocksPatched != 0 || f.BlocksHole != 2*nblocks-1 {
					tb.Errorf("copied %d sent %d patched %d holes %d, want the last block copied, holes before it",
						f.BlocksCopied, f.BlocksSent, f.BlocksPatched, f.BlocksHole)
				}
			},
		},
		{
			name: "grown by an unaligned tail",
			change: func(tb testing.TB, path string) {
				scribble(tb, path, 3, 100*kib+7, testSize)
			},
			check: func(tb testing.TB, r *Result) {
				f := r.Files[0]
				if f.Size != testSize+100*kib+7 || f.BlocksReused != nblocks {
					tb.Errorf("size %d reused %d, want %d and %d", f.Size, f.BlocksReused, testSize+100*kib+7, nblocks)
				}
			},
		},
		{
			name: "shrunk",
			change: func(tb testing.TB, path string) {
				if err := os.Truncate(path, testSize-100*kib-5); err != nil {
					tb.Fatal(err)
				}
				settle()
			},
			check: func(tb testing.TB, r *Result) {
				f := r.Files[0]
				// The shorter tail block is the old one's first pages: copied, not sent.
				if f.BlocksReused != nblocks-2 || f.BlocksCopied != 1 || f.BlocksSent+f.BlocksPatched != 0 {
					tb.Errorf("reused %d copied %d sent %d patched %d, want %d reused and the tail copied",
						f.BlocksReused, f.BlocksCopied, f.BlocksSent, f.BlocksPatched, nblocks-2)
				}
			},
		},
		{
			name: "zeroed",
			change: func(tb testing.TB, path string) {
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					tb.Fatal(err)
				}
				defer f.Close()
				if _, err := f.WriteAt(make([]byte, 4*DefaultBlockSize), 2*mib); err != nil {
					tb.Fatal(err)
				}
				settle()
			},
			check: func(tb testing.TB, r *Result) {
				f := r.Files[0]
				if f.BlocksHole != 4 || f.BlocksSent+f.BlocksPatched != 0 {
					tb.Errorf("holes %d sent %d patched %d, want 4 holes only", f.BlocksHole, f.BlocksSent, f.BlocksPatched)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t)
			src := filepath.Join(p.srcDir, "disk.img")
			writeImage(t, src, testSize, 42)
			files := []string{"disk.img"}

			first := p.mustFetch(t, files)
			if f := first.Files[0]; f.BlocksSent != nblocks || f.BlocksReused != 0 {
				t.Fatalf("first transfer sent %d reused %d, want %d and 0", f.BlocksSent, f.BlocksReused, nblocks)
			}
			if first.WireBytes < testSize || first.WireBytes > testSize+testSize/100 {
				t.Errorf("first transfer: %d bytes on the wire for %d", first.WireBytes, testSize)
			}
			want, err := HashFile(t.Context(), src, 0)
			if err != nil {
				t.Fatal(err)
			}
			if first.Files[0].Hash != want {
				t.Errorf("result hash %s, file hashes to %s", first.Files[0].Hash, want)
			}

			tc.change(t, src)
			diff := p.mustFetch(t, files)
			tc.check(t, diff)

			same := p.mustFetch(t, files)
			f := same.Files[0]
			g := newGeometry(f.Size, DefaultBlockSize)
			if f.BlocksReused != int64(g.nblocks) || same.WireBytes > 1024 {
				t.Errorf("unchanged: reused %d of %d, %d bytes on the wire", f.BlocksReused, g.nblocks, same.WireBytes)
			}
			if exists(stagePath(p.dstDir, "disk.img")) {
				t.Error("stage left behind")
			}
		})
	}
}

func TestFetchSparse(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(p.srcDir, "disk.img")
	// Half the image is holes, one block is explicit zeros.
	writeImage(t, src, testSize, 5, Extent{Off: 1 * mib, Len: 3 * mib}, Extent{Off: 5 * mib, Len: 1 * mib})
	f, err := os.OpenFile(src, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, DefaultBlockSize), 7*mib); err != nil {
		t.Fatal(err)
	}
	f.Close()
	settle()

	res := p.mustFetch(t, []string{"disk.img"})
	r := res.Files[0]
	if want := int64((4*mib + DefaultBlockSize) / DefaultBlockSize); r.BlocksHole != want {
		t.Errorf("%d hole blocks, want %d", r.BlocksHole, want)
	}
	data := int64(testSize - 4*mib - DefaultBlockSize)
	if res.WireBytes > data+data/50 {
		t.Errorf("%d bytes on the wire for %d bytes of data", res.WireBytes, data)
	}
	dst := filepath.Join(p.dstDir, "disk.img")
	if got := allocated(t, dst); got > data+mib {
		t.Errorf("destination allocates %d bytes for %d bytes of data: not sparse", got, data)
	}
}

func TestFetchFullMethod(t *testing.T) {
	p := newPair(t)
	src := filepath.Join(p.srcDir, "disk.img")
	writeImage(t, src, testSize, 6, Extent{Off: 0, Len: 2 * mib})
	for range 2 {
		res := p.mustFetch(t, []string{"disk.img"}, WithMethod(MethodFull))
		if res.WireBytes < testSize {
			t.Errorf("full transfer: %d bytes on the wire, want every byte (%d)", res.WireBytes, testSize)
		}
		if res.ReusedBlocks != 0 {
			t.Errorf("full transfer reused %d blocks", res.ReusedBlocks)
		}
	}
}

func TestFetchSeveralFiles(t *testing.T) {
	p := newPair(t)
	writeImage(t, filepath.Join(p.srcDir, "disk.img"), testSize, 7)
	writeImage(t, filepath.Join(p.srcDir, "state.bin"), 300*kib+3, 8)
	writeImage(t, filepath.Join(p.srcDir, "empty"), 0, 9)
	files := []string{"disk.img", "state.bin", "empty"}
	p.mustFetch(t, files, WithBlockSize(16*kib))
	scribble(t, filepath.Join(p.srcDir, "state.bin"), 10, 100, 1000)
	res := p.mustFetch(t, files, WithBlockSize(16*kib))
	if n := res.Files[0].BlocksSent + res.Files[0].BlocksPatched; n != 0 {
		t.Errorf("unchanged disk sent %d blocks", n)
	}
	if n := res.Files[1].BlocksPatched + res.Files[1].BlocksSent; n != 1 {
		t.Errorf("state sent %d blocks, want 1", n)
	}
}

func TestFetchProgress(t *testing.T) {
	p := newPair(t)
	writeImage(t, filepath.Join(p.srcDir, "disk.img"), testSize, 11)
	var last Progress
	calls := 0
	p.mustFetch(t, []string{"disk.img"}, WithProgress(func(pr Progress) {
		if pr.Done < last.Done {
			t.Errorf("progress went back from %d to %d", last.Done, pr.Done)
		}
		last = pr
		calls++
	}), withReportEvery(0))
	if calls < 2 || last.Done != testSize || last.Total != testSize || last.WireBytes < testSize {
		t.Errorf("%d calls, last %+v", calls, last)
	}
}

// TestServerServesRegularFilesOnly: a name in the served directory that is a symbolic link to
// a file elsewhere, or a FIFO, serves nothing; the destination gets an error and no file.
func TestServerServesRegularFilesOnly(t *testing.T) {
	p := newPair(t)
	secret := filepath.Join(t.TempDir(), "secret.img")
	writeImage(t, secret, 1<<20, 7)
	if err := os.Symlink(secret, filepath.Join(p.srcDir, "disk.img")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(p.srcDir, "pipe.img"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"disk.img", "pipe.img"} {
		if _, err := p.fetch(t, []string{name}); err == nil {
			t.Fatalf("%s: fetched", name)
		}
		if _, err := os.Lstat(filepath.Join(p.dstDir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: the destination has a file: %v", name, err)
		}
	}
	// The server still serves what it may.
	writeImage(t, filepath.Join(p.srcDir, "real.img"), 1<<20, 8)
	p.mustFetch(t, []string{"real.img"})
}

// TestFetchMaxSize: a source announcing more than WithMaxSize allows is refused before a byte
// is staged, and the destination keeps nothing; within the cap the fetch goes through.
func TestFetchMaxSize(t *testing.T) {
	p := newPair(t)
	writeImage(t, filepath.Join(p.srcDir, "disk.img"), testSize, 11)
	_, err := p.fetch(t, []string{"disk.img"}, WithMaxSize(testSize-1))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("fetch over the cap: %v, want ErrTooLarge", err)
	}
	if exists(filepath.Join(p.dstDir, "disk.img")) || exists(filepath.Join(p.dstDir, bookkeepingDir, "disk.img.stage")) {
		t.Fatal("a refused fetch left files behind")
	}
	p.mustFetch(t, []string{"disk.img"}, WithMaxSize(testSize))
}
