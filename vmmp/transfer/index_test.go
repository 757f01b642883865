package transfer

import (
	"slices"
	"testing"
)

// TestContentIndexPlace: pages are found in place first, then following the previous page,
// then anywhere; with a sampled index a run is found from any sampled page of it, forwards
// and backwards; zero pages are not indexed and a short tail page is never named.
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

	// Sampled: 1/16 of the pages are indexed; a run is found from its sampled page.
	sampled := newContentIndex(sig, zero, len(sig.subs)/16)
	indexed := func(k int) bool { _, ok := sampled.find(sig.subs[k]); return ok }
	from := -1
	for k := 200; k < len(sig.subs)-stride && from < 0; k++ {
		if indexed(k+7) && !slices.ContainsFunc(run(k), func(p int) bool { return p != k+7 && indexed(p) }) {
			from = k
		}
	}
	if from < 0 {
		t.Fatal("no run with exactly one sampled page")
	}
	if got := place(sampled, 1, slices.Clone(sig.subs[from:from+stride]), stride*subBlockSize); !slices.Equal(got, run(from)) {
		t.Errorf("sampled run from page %d: %v", from, got)
	}
	n := 0
	for k := range sig.subs {
		if indexed(k) {
			n++
		}
	}
	if n == 0 || n > len(sig.subs)/16 {
		t.Errorf("%d pages indexed of %d, want at most 1/16", n, len(sig.subs))
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
