//go:build !linux

package transfer

import (
	"errors"
	"io"
	"os"
)

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

func preadv(f *os.File, bufs [][]byte, off int64) error {
	for _, b := range bufs {
		if _, err := f.ReadAt(b, off); err != nil {
			if err == io.EOF {
				return io.EOF
			}
			return err
		}
		off += int64(len(b))
	}
	return nil
}

func openDirect(path string) (*os.File, error) { return nil, errors.ErrUnsupported }

func prefetch(f *os.File, off, n int64) {}
