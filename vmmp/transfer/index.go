package transfer

import "math/rand/v2"

// contentIndex finds content the destination holds anywhere in its basis, by the weak
// hashes of its full sub-blocks: a guest that copies or moves files (a package install, a
// defragmenter, a filesystem that writes anew and frees the old) leaves blocks whose pages
// the destination already has at other offsets, and a COPY frame names those offsets
// instead of carrying the pages. Matches are confirmed against the whole weak hash, and the
// destination verifies the block it assembles against its strong hash, as for a PATCH.
type contentIndex struct {
	slots []uint64 // open addressing by weak hash: the hash's high 32 bits, then 1 + the page's number; 0 is empty
	mult  uint64   // odd, random: slot numbers are the high bits of hash × mult
	shift uint
	subs  []uint64 // the destination's weak hash of every sub-block, by number
	n     int      // sub-blocks that may be named: the full ones
}

// maxIndexed bounds the pages indexed (16 bytes each): a basis of 16 GiB. Fetch offers its
// basis for copies only up to that size, where every page is indexed; the source indexes
// no more than that of whatever a destination offers.
const maxIndexed = 1 << 22

// maxProbes bounds every search of the index, so that no choice of hashes (the destination
// chooses them) makes building or searching it slow: a page whose search would go further
// is left out, a search that goes further finds nothing. With random multipliers and the
// table at most half full, honest searches end within a few probes.
const maxProbes = 32

// newContentIndex indexes the first limit full sub-blocks of sig, except the all-zero ones
// (holes, which HOLE and PATCH frames cover, and which would swamp the index), each content
// once.
func newContentIndex(sig *signature, zeroSub uint64, limit int) *contentIndex {
	x := &contentIndex{subs: sig.subs, n: int(sig.g.size / subBlockSize), mult: rand.Uint64() | 1}
	bits := uint(1)
	for 1<<bits < 2*min(x.n, limit) {
		bits++
	}
	x.slots, x.shift = make([]uint64, 1<<bits), 64-bits
	for k := range min(x.n, limit) {
		h := x.subs[k]
		if h == zeroSub {
			continue
		}
		for s, p := x.slot(h), 0; p < maxProbes; s, p = (s+1)&uint64(len(x.slots)-1), p+1 {
			e := x.slots[s]
			if e == 0 {
				x.slots[s] = h>>32<<32 | uint64(k+1)
				break
			}
			if e>>32 == h>>32 && x.subs[int(uint32(e))-1] == h {
				break // this content is indexed already
			}
		}
	}
	return x
}

// slot is where the search for weak hash h starts (multiply-shift hashing).
func (x *contentIndex) slot(h uint64) uint64 { return h * x.mult >> x.shift }

// holds reports whether the destination's sub-block k has weak hash h.
func (x *contentIndex) holds(k int, h uint64) bool {
	return k >= 0 && k < x.n && x.subs[k] == h
}

// find returns a sub-block of the destination with weak hash h.
func (x *contentIndex) find(h uint64) (int, bool) {
	for s, p := x.slot(h), 0; p < maxProbes; s, p = (s+1)&uint64(len(x.slots)-1), p+1 {
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
	return 0, false
}

// place decides where the destination finds each sub-block of block i (subs are its weak
// hashes, n its length): ref[j] is the destination's sub-block with the same content, or -1
// when it must be sent. A page at the same offset is preferred, then the page after the
// previous one's (content moves in runs), then any page the index knows; a second pass
// extends runs backwards over pages the index left out. It returns how many were placed.
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
