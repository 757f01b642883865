//go:build !linux

package transfer

import "os"

// dataBlocks reports every block as data where the platform has no SEEK_DATA.
func dataBlocks(f *os.File, g geometry) (bitset, error) {
	set := newBitset(g.nblocks)
	set.setRange(g, 0, g.size)
	return set, nil
}

func punchHole(f *os.File, off, n int64) error { return writeZeros(f, off, n) }

func reserve(f *os.File, off, n int64) error { return nil }

func copyRange(dst, src *os.File, off, n int64) error { return copyRangeRW(dst, src, off, n) }

func startWriteback(f *os.File, off, n int64) {}
