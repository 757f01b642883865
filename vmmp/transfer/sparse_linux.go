package transfer

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// dataBlocks marks the blocks of f that overlap data, asking the filesystem for its holes
// (SEEK_DATA/SEEK_HOLE) so holes are never read. A filesystem without hole support reports
// the whole file as data.
func dataBlocks(f *os.File, g geometry) (bitset, error) {
	set := newBitset(g.nblocks)
	fd := int(f.Fd())
	var off int64
	for off < g.size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				set.setRange(g, off, g.size-off)
				break
			}
			return nil, fmt.Errorf("seek data in %s: %w", f.Name(), err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s: %w", f.Name(), err)
		}
		hole = min(hole, g.size)
		set.setRange(g, data, hole-data)
		off = hole
	}
	return set, nil
}

// punchHole deallocates [off, off+n) of f, which then reads as zeros.
func punchHole(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return writeZeros(f, off, n)
	}
	if err != nil {
		return fmt.Errorf("punch hole in %s: %w", f.Name(), err)
	}
	return nil
}

// reserve allocates [off, off+n) of f without changing its size or content, so a later
// write there cannot fail for lack of space.
func reserve(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reserve space in %s: %w", f.Name(), err)
	}
	return nil
}

// copyRange copies [off, off+n) from src to the same offset of dst, in the kernel.
func copyRange(dst, src *os.File, off, n int64) error {
	roff, woff := off, off
	for n > 0 {
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(min(n, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
				return copyRangeRW(dst, src, roff, n)
			}
			return fmt.Errorf("copy %s to %s: %w", src.Name(), dst.Name(), err)
		}
		if c == 0 {
			return fmt.Errorf("copy %s to %s: %w", src.Name(), dst.Name(), io.ErrUnexpectedEOF)
		}
		n -= int64(c)
	}
	return nil
}

// startWriteback asks the kernel to begin writing [off, off+n) to disk without waiting, so
// the fsync at commit finds little left to do.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// preadv fills bufs from consecutive bytes of f starting at off, in as few system calls as
// the kernel allows.
func preadv(f *os.File, bufs [][]byte, off int64) error {
	bufs = append([][]byte(nil), bufs...) // trimmed below on short reads
	for len(bufs) > 0 {
		n, err := unix.Preadv(int(f.Fd()), bufs[:min(len(bufs), 1024)], off)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		if n == 0 {
			return io.EOF
		}
		off += int64(n)
		for n > 0 && len(bufs) > 0 {
			if n < len(bufs[0]) {
				bufs[0] = bufs[0][n:]
				n = 0
				break
			}
			n -= len(bufs[0])
			bufs = bufs[1:]
		}
	}
	return nil
}

// openDirect opens path for writing with O_DIRECT.
func openDirect(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
}

// prefetch asks the kernel to start reading [off, off+n) of f into the page cache.
func prefetch(f *os.File, off, n int64) {
	if f != nil {
		_ = unix.Fadvise(int(f.Fd()), off, n, unix.FADV_WILLNEED)
	}
}
