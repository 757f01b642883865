package transfer

import (
	"fmt"
	"io"
	"os"
	"unsafe"
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

// directAlign is the alignment direct I/O needs for memory, offsets and lengths.
const directAlign = 4096

// alignedBuf returns a zeroed slice of n bytes starting at a directAlign boundary.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directAlign)
	k := directAlign - int(uintptr(unsafe.Pointer(&b[0]))%directAlign)
	if k == directAlign {
		k = 0
	}
	return b[k : k+n : k+n]
}

// isAligned reports whether p may be written at off with direct I/O.
func isAligned(p []byte, off int64) bool {
	return len(p) > 0 && len(p)%directAlign == 0 && off%directAlign == 0 &&
		uintptr(unsafe.Pointer(&p[0]))%directAlign == 0
}
