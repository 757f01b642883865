package transfer

import (
	"context"
	"fmt"
	"os"
)

// copyGrain is the granularity at which CopySparse finds holes: the filesystem's page.
const copyGrain = 4 << 10

// CopySparse copies the regular file src to dst, which must not exist, keeping src's holes:
// it asks the filesystem where src holds data (SEEK_DATA/SEEK_HOLE) and copies only those
// ranges, in the kernel (copy_file_range, which shares the blocks where the filesystem can
// reflink), falling back to reads and writes. A platform or filesystem without hole support
// gets a full copy. On error dst is removed.
func CopySparse(ctx context.Context, dst, src string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("copy %s: not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm()|0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	g := newGeometry(fi.Size(), copyGrain)
	data, err := dataBlocks(in, g)
	if err != nil {
		return err
	}
	for i := 0; i < g.nblocks; {
		if !data.get(i) {
			i++
			continue
		}
		j := i
		for j < g.nblocks && data.get(j) && j-i < 1<<16 { // runs of at most 256 MiB, to notice ctx
			j++
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		off := g.off(i)
		if err := copyRange(out, in, off, min(g.off(j), g.size)-off); err != nil {
			return err
		}
		i = j
	}
	// The size, so that a trailing hole is kept as a hole.
	return out.Truncate(fi.Size())
}
