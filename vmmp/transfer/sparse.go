package transfer

import (
	"fmt"
	"io"
	"os"
)

// writeZeros stands in for a hole where the filesystem cannot punch one.
func writeZeros(f *os.File, off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		c := min(n, int64(len(buf)))
		if _, err := f.WriteAt(buf[:c], off); err != nil {
			return fmt.Errorf("zero %s: %w", f.Name(), err)
		}
		off += c
		n -= c
	}
	return nil
}

// copyRangeRW copies [off, off+n) from src to dst through user space.
func copyRangeRW(dst, src *os.File, off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		c := min(n, int64(len(buf)))
		if _, err := src.ReadAt(buf[:c], off); err != nil && err != io.EOF {
			return fmt.Errorf("copy %s: %w", src.Name(), err)
		}
		if _, err := dst.WriteAt(buf[:c], off); err != nil {
			return fmt.Errorf("copy to %s: %w", dst.Name(), err)
		}
		off += c
		n -= c
	}
	return nil
}
