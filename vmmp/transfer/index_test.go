package transfer

import (
	"slices"
	"testing"
)

// TestContentIndexPlace: pages are found in place first, then following the previous page,
// then anywhere, and runs are extended backwards; zero pages are not indexed, a limited index
// holds only the first pages and a short tail page is never named.
func TestContentIndexPlace(t *testing.T) {
	const stride, blocks = 16, 64
	sig := newSignature(newGeometry(blocks*stride*subBlockSize-1000, stride*subBlockSize))
	for k := range sig.subs {
		sig.subs[k] = uint64(k+1) * 0x9e3779b97f4a7c15
	}
	const zero = 0x5eed
	sig.subs[40] = zero
	place := func(x *contentIndex, i int, subs []uint64, n int) []int {
		ref := make([]int, len(subs))
		placed := x.place(i, stride, subs, n, ref)
		if want := len(ref) - count(ref, -1); placed != want {
			t.Fatalf("place says %d placed, %v has %d", placed, ref, want)
		}
		return ref
	}
	run := func(from int) []int {
		r := make([]int, stride)
		for j := range r {
			r[j] = from + j
		}
		return r
	}

	full := newContentIndex(sig, zero, maxIndexed)
	// Block 3 holds pages 500..515 of the basis, except its page 2, which is its own.
	subs := slices.Clone(sig.subs[500 : 500+stride])
	subs[2] = sig.subs[3*stride+2]
	want := run(500)
	want[2] = 3*stride + 2
	if got := place(full, 3, subs, stride*subBlockSize); !slices.Equal(got, want) {
		t.Errorf("moved run: %v, want %v", got, want)
	}
	// New content and a zero page are not found.
	subs = slices.Clone(sig.subs[100 : 100+stride])
	subs[0], subs[5] = 12345, zero
	want = run(100)
	want[0], want[5] = -1, -1
	if got := place(full, 9, subs, stride*subBlockSize); !slices.Equal(got, want) {
		t.Errorf("new pages: %v, want %v", got, want)
	}
	// The short tail page of the last block is left to be sent.
	last := blocks - 1
	subs = slices.Clone(sig.sub(last))
	if got := place(full, last, subs, sig.g.blockLen(last)); got[stride-1] != -1 || got[0] != last*stride {
		t.Errorf("tail block: %v, want in place but the short last page", got)
	}

	// A limited index finds only the pages it holds; a page it left out (here a zero one)
	// is still named when the run around it leads there.
	limited := newContentIndex(sig, zero, 100)
	if _, ok := limited.find(sig.subs[50]); !ok {
		t.Error("page 50 not in an index of the first 100")
	}
	if _, ok := limited.find(sig.subs[500]); ok {
		t.Error("page 500 in an index of the first 100")
	}
	sig.subs[300] = zero
	if got := place(full, 9, slices.Clone(sig.subs[300:300+stride]), stride*subBlockSize); !slices.Equal(got, run(300)) {
		t.Errorf("run from a zero page: %v, want %v", got, run(300))
	}
}

// TestContentIndexResistsChosenHashes: the destination chooses the hashes the source
// indexes. Hashes that all shared one slot under a fixed slot function (v | v<<29) still
// spread under the index's random multiplier, so nearly all are found within the probe bound.
func TestContentIndexResistsChosenHashes(t *testing.T) {
	const pages = 1 << 16
	sig := newSignature(newGeometry(pages*subBlockSize, DefaultBlockSize))
	for k := range sig.subs {
		v := uint64(k + 1)
		sig.subs[k] = v | v<<29
	}
	x := newContentIndex(sig, 0, maxIndexed)
	found := 0
	for k := range sig.subs {
		if got, ok := x.find(sig.subs[k]); ok {
			if got != k {
				t.Fatalf("page %d found at %d", k, got)
			}
			found++
		}
	}
	if found < pages*9/10 {
		t.Errorf("%d of %d chosen hashes indexed, want nearly all", found, pages)
	}
}

func count(s []int, v int) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}
