package disk

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// createPlain makes a plain disk in a fresh directory and returns its descriptor path.
func createPlain(t testing.TB, name string, sizeMB int64) (string, *Descriptor) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	d, err := CreatePlain(path, sizeMB)
	if err != nil {
		t.Fatal(err)
	}
	return path, d
}

func openPlain(t testing.TB, path string, writable bool) *Plain {
	t.Helper()
	p, err := OpenPlain(path, writable)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestCreatePlainReportExample(t *testing.T) {
	path, _ := createPlain(t, "test.pln", 3000)
	dir := filepath.Dir(path)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := readGolden(t, "test.pln"); !bytes.Equal(got, want) {
		t.Fatalf("descriptor on disk:\n%s\nwant:\n%s", got, want)
	}
	for _, c := range []struct {
		name string
		size int64
	}{{"test1.dat", 4176900 * 512}, {"test2.dat", 1959930 * 512}} {
		fi, err := os.Stat(filepath.Join(dir, c.name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != c.size {
			t.Fatalf("%s is %d bytes, want %d", c.name, fi.Size(), c.size)
		}
		// Sparse: a 2 GB chunk takes (almost) no blocks.
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Blocks*512 > 1<<20 {
			t.Fatalf("%s uses %d bytes of disk, want a sparse file", c.name, st.Blocks*512)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Fatalf("directory holds %d files, want the descriptor and 2 chunks", len(entries))
	}
}

func TestCreatePlainRefusesToOverwrite(t *testing.T) {
	path, _ := createPlain(t, "test.pln", 100)
	if err := os.WriteFile(path+".keep", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CreatePlain(path, 100); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second CreatePlain: %v, want os.ErrExist", err)
	}
	// The first disk is intact.
	p := openPlain(t, path, false)
	if p.Size() != 100<<20 {
		t.Fatalf("size %d after a refused create", p.Size())
	}

	// A descriptor that exists without chunks: the chunk created on the way is removed again.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "b.pln"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CreatePlain(filepath.Join(dir, "b.pln"), 100); !errors.Is(err, os.ErrExist) {
		t.Fatalf("CreatePlain over a descriptor: %v, want os.ErrExist", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "b1.dat")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("chunk left behind after a failed create: %v", err)
	}
}

func TestCreatePlainRejectsSize(t *testing.T) {
	for _, size := range []int64{0, -1, MaxSizeMB + 1} {
		dir := t.TempDir()
		if _, err := CreatePlain(filepath.Join(dir, "x.pln"), size); !errors.Is(err, ErrSize) {
			t.Fatalf("CreatePlain(%d MB): %v, want ErrSize", size, err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Fatalf("CreatePlain(%d MB) left %d files", size, len(entries))
		}
	}
}

// TestPlainReadWriteAcrossChunks writes across the boundary between test1.dat and test2.dat
// and finds the bytes split between the two files.
func TestPlainReadWriteAcrossChunks(t *testing.T) {
	path, d := createPlain(t, "test.pln", 3000)
	p := openPlain(t, path, true)
	if p.Size() != 6136830*512 {
		t.Fatalf("size %d", p.Size())
	}
	boundary := d.Extents[1].Start * SectorSize
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	off := boundary - 1000
	if n, err := p.WriteAt(data, off); err != nil || n != len(data) {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	got := make([]byte, len(data))
	if n, err := p.ReadAt(got, off); err != nil || n != len(data) || !bytes.Equal(got, data) {
		t.Fatalf("ReadAt = %d, %v; equal %v", n, err, bytes.Equal(got, data))
	}

	// The chunk files hold the two halves.
	dir := filepath.Dir(path)
	tail := make([]byte, 1000)
	f1, err := os.Open(filepath.Join(dir, "test1.dat"))
	if err != nil {
		t.Fatal(err)
	}
	defer f1.Close()
	if _, err := f1.ReadAt(tail, boundary-1000); err != nil || !bytes.Equal(tail, data[:1000]) {
		t.Fatalf("test1.dat tail: %v", err)
	}
	head := make([]byte, len(data)-1000)
	f2, err := os.Open(filepath.Join(dir, "test2.dat"))
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	if _, err := f2.ReadAt(head, 0); err != nil || !bytes.Equal(head, data[1000:]) {
		t.Fatalf("test2.dat head: %v", err)
	}

	// Untouched parts read as zeros; reads end with io.EOF at the end of the disk.
	zeros := make([]byte, 4096)
	buf := make([]byte, 4096)
	if _, err := p.ReadAt(buf, 1<<30); err != nil || !bytes.Equal(buf, zeros) {
		t.Fatalf("fresh sectors are not zero: %v", err)
	}
	if n, err := p.ReadAt(buf, p.Size()-100); n != 100 || err != io.EOF {
		t.Fatalf("ReadAt at the end = %d, %v; want 100, io.EOF", n, err)
	}
	if n, err := p.ReadAt(buf, p.Size()); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt past the end = %d, %v; want 0, io.EOF", n, err)
	}
	if err := p.Sync(); err != nil {
		t.Fatal(err)
	}
}

func TestPlainWriteBounds(t *testing.T) {
	path, _ := createPlain(t, "w.pln", 10)
	p := openPlain(t, path, true)
	for _, tt := range []struct {
		name string
		off  int64
		n    int
	}{
		{"past the end", p.Size(), 1},
		{"straddling the end", p.Size() - 10, 11},
		{"negative", -1, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if n, err := p.WriteAt(make([]byte, tt.n), tt.off); n != 0 || !errors.Is(err, ErrOutOfRange) {
				t.Fatalf("WriteAt = %d, %v; want 0, ErrOutOfRange", n, err)
			}
		})
	}
	if fi, err := os.Stat(filepath.Join(filepath.Dir(path), "w1.dat")); err != nil || fi.Size() != 10<<20 {
		t.Fatalf("chunk grew or vanished: %v", err)
	}

	ro := openPlain(t, path, false)
	if _, err := ro.WriteAt([]byte{1}, 0); err == nil {
		t.Fatal("write to a read-only disk succeeded")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ReadAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("ReadAt after Close: %v, want os.ErrClosed", err)
	}
}

func TestOpenPlainRejects(t *testing.T) {
	tests := []struct {
		name  string
		spoil func(t *testing.T, dir string)
		want  error
	}{
		{"chunk missing", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "test2.dat")); err != nil {
				t.Fatal(err)
			}
		}, os.ErrNotExist},
		{"chunk too short", func(t *testing.T, dir string) {
			if err := os.Truncate(filepath.Join(dir, "test2.dat"), 512); err != nil {
				t.Fatal(err)
			}
		}, ErrMalformed},
		{"chunk too long", func(t *testing.T, dir string) {
			if err := os.Truncate(filepath.Join(dir, "test1.dat"), 4176901*512); err != nil {
				t.Fatal(err)
			}
		}, ErrMalformed},
		{"chunk outside the directory", func(t *testing.T, dir string) {
			text := bytes.Replace(readGolden(t, "test.pln"), []byte(`"test2.dat"`), []byte(`"../test2.dat"`), 1)
			if err := os.WriteFile(filepath.Join(dir, "test.pln"), text, 0o600); err != nil {
				t.Fatal(err)
			}
		}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, _ := createPlain(t, "test.pln", 3000)
			tt.spoil(t, filepath.Dir(path))
			if p, err := OpenPlain(path, false); !errors.Is(err, tt.want) {
				if p != nil {
					p.Close()
				}
				t.Fatalf("OpenPlain: %v, want %v", err, tt.want)
			}
		})
	}
}

func BenchmarkPlainReadAt(b *testing.B) {
	path, d := createPlain(b, "bench.pln", 3000)
	p := openPlain(b, path, true)
	buf := make([]byte, 64<<10)
	start := d.Extents[1].Start*SectorSize - 32<<20
	if _, err := p.WriteAt(bytes.Repeat([]byte{7}, 64<<20), start); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		off := start + int64(i%1024)*int64(len(buf))
		if _, err := p.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
}
