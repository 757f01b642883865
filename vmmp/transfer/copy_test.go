package transfer

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestCopySparse: a file with holes at its start, middle and end is copied with the same bytes
// and no more allocated blocks; a destination that exists is refused and left alone.
func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	for _, off := range []int64{8 << 20, 8<<20 + 4096, 40 << 20} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, 64<<10), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := CopySparse(context.Background(), dst, src); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("the copy reads differently")
	}
	blocks := func(p string) int64 {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Blocks
	}
	if s, d := blocks(src), blocks(dst); s*512 >= size/4 || d > s+16 {
		t.Fatalf("allocated 512-byte blocks: source %d, copy %d (size %d)", s, d, size)
	}
	if err := CopySparse(context.Background(), dst, src); !errors.Is(err, os.ErrExist) {
		t.Fatalf("copy over an existing file: %v, want ErrExist", err)
	}
}
