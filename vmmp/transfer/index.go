package transfer

// contentIndex finds content the destination holds anywhere in its basis, by the weak
// hashes of its full sub-blocks: a guest that copies or moves files (a package install, a
// defragmenter, a filesystem that writes anew and frees the old) leaves blocks whose pages
// the destination already has at other offsets, and a COPY frame names those offsets
// instead of carrying the pages. Matches are confirmed against the whole weak hash, and the
// destination verifies the block it assembles against its strong hash, as for a PATCH.
type contentIndex struct {
	slots []uint64 // open addressing by weak hash: the hash's high 32 bits, then 1 + the page's number; 0 is empty
	mask  uint64
	subs  []uint64 // the destination's weak hash of every sub-block, by number
	n     int      // sub-blocks the index may name: the full ones
}

// maxIndexed bounds the index (16 bytes per page at most): up to it every full sub-block is
// indexed (16 GiB of basis); a larger basis indexes a sample chosen by content, and a match
// found through the sample is extended page by page through the whole signature.
const maxIndexed = 1 << 22

// newContentIndex indexes the full sub-blocks of sig, except the all-zero ones (holes, which
// HOLE and PATCH frames already cover, and which would swamp the index), each content once,
// at most limit of them.
func newContentIndex(sig *signature, zeroSub uint64, limit int) *contentIndex {
	x := &contentIndex{subs: sig.subs, n: int(min(sig.g.size/subBlockSize, 1<<32-2))}
	sample := uint64(1)
	for uint64(x.n) > sample*uint64(limit) {
		sample *= 2
	}
	size := 1
	for size < 2*min(x.n, limit) {
		size *= 2
	}
	x.slots, x.mask = make([]uint64, size), uint64(size-1)
	for k, room := 0, size/2; k < x.n && room > 0; k++ {
		h := x.subs[k]
		if h == zeroSub || h&(sample-1) != 0 {
			continue
		}
		for s := x.slot(h); ; s = (s + 1) & x.mask {
			e := x.slots[s]
			if e == 0 {
				x.slots[s] = h>>32<<32 | uint64(k+1)
				room--
				break
			}
			if e>>32 == h>>32 && x.subs[int(uint32(e))-1] == h {
				break // this content is indexed already
			}
		}
	}
	return x
}

// slot is where the search for weak hash h starts: its low bits, which the sample leaves
// alone above the sampled ones.
func (x *contentIndex) slot(h uint64) uint64 { return (h ^ h>>29) & x.mask }

// holds reports whether the destination's sub-block k has weak hash h.
func (x *contentIndex) holds(k int, h uint64) bool {
	return k >= 0 && k < x.n && x.subs[k] == h
}

// find returns a sub-block of the destination with weak hash h.
func (x *contentIndex) find(h uint64) (int, bool) {
	for s := x.slot(h); ; s = (s + 1) & x.mask {
		e := x.slots[s]
		if e == 0 {
			return 0, false
		}
		if e>>32 == h>>32 {
			if k := int(uint32(e)) - 1; x.subs[k] == h {
				return k, true
			}
		}
	}
}

// place decides where the destination finds each sub-block of block i (subs are its weak
// hashes, n its length): ref[j] is the destination's sub-block with the same content, or -1
// when it must be sent. A page at the same offset is preferred, then the page after the
// previous one's (content moves in runs), then any page the index knows; a second pass
// extends runs backwards over pages a sampled index missed. It returns how many were placed.
func (x *contentIndex) place(i, stride int, subs []uint64, n int, ref []int) int {
	placed := 0
	for j := range ref {
		ref[j] = -1
		if (j+1)*subBlockSize > n {
			continue // a short tail page is only ever sent or patched in place
		}
		h := subs[j]
		switch k := i*stride + j; {
		case x.holds(k, h):
			ref[j] = k
		case j > 0 && ref[j-1] >= 0 && x.holds(ref[j-1]+1, h):
			ref[j] = ref[j-1] + 1
		default:
			if k, ok := x.find(h); ok {
				ref[j] = k
			}
		}
		if ref[j] >= 0 {
			placed++
		}
	}
	for j := len(ref) - 2; j >= 0; j-- {
		if ref[j] < 0 && ref[j+1] > 0 && (j+1)*subBlockSize <= n && x.holds(ref[j+1]-1, subs[j]) {
			ref[j] = ref[j+1] - 1
			placed++
		}
	}
	return placed
}
