package disk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ErrOutOfRange reports a write past the end of a plain disk, which never grows.
var ErrOutOfRange = errors.New("write beyond the end of the disk")

// CreatePlain creates a plain disk of sizeMB megabytes (geometry from PlainGeometry) whose
// descriptor is at path; its chunks go next to it, named after path without its extension
// ("vm/test.pln" → "vm/test1.dat", "vm/test2.dat", ...). Chunks are created sparse, so a new disk
// costs no space and reads as zeros. No existing file is overwritten, and on failure the files
// already created are removed. The descriptor is written last, so a descriptor on disk always has
// all its chunks.
func CreatePlain(path string, sizeMB int64) (*Descriptor, error) {
	g, err := PlainGeometry(sizeMB)
	if err != nil {
		return nil, err
	}
	base := filepath.Base(path)
	d, err := NewPlainDescriptor(strings.TrimSuffix(base, filepath.Ext(base)), g)
	if err != nil {
		return nil, fmt.Errorf("create plain disk %s: %w", path, err)
	}
	text, err := d.MarshalText()
	if err != nil {
		return nil, fmt.Errorf("create plain disk %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	var created []string
	fail := func(err error) (*Descriptor, error) {
		for _, p := range created {
			os.Remove(p)
		}
		return nil, fmt.Errorf("create plain disk %s: %w", path, err)
	}
	for _, e := range d.Extents {
		p := filepath.Join(dir, e.File)
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fail(err)
		}
		created = append(created, p)
		err = f.Truncate(e.Bytes())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fail(err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fail(err)
	}
	created = append(created, path)
	_, err = f.Write(text)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	return d, nil
}

// Plain is an open plain disk: its chunk files seen as one device of Size bytes. ReadAt and
// WriteAt may be called concurrently, like on an *os.File, but not concurrently with Close.
type Plain struct {
	desc   *Descriptor
	files  []*os.File
	starts []int64 // byte offset of each chunk
}

var (
	_ io.ReaderAt = (*Plain)(nil)
	_ io.WriterAt = (*Plain)(nil)
)

// OpenPlain opens the plain disk described by the descriptor at path, read-only unless writable.
// Every chunk must exist and have exactly the size its ACCESS line gives.
func OpenPlain(path string, writable bool) (*Plain, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open plain disk: %w", err)
	}
	d, err := ReadDescriptor(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("open plain disk %s: %w", path, err)
	}
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	p := &Plain{desc: d}
	for _, e := range d.Extents {
		f, err := os.OpenFile(filepath.Join(filepath.Dir(path), e.File), flag, 0)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("open plain disk %s: %w", path, err)
		}
		p.files = append(p.files, f)
		p.starts = append(p.starts, e.Start*SectorSize)
		fi, err := f.Stat()
		if err == nil && fi.Size() != e.Bytes() {
			err = fmt.Errorf("%w: chunk %s is %d bytes, descriptor says %d", ErrMalformed, e.File, fi.Size(), e.Bytes())
		}
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("open plain disk %s: %w", path, err)
		}
	}
	return p, nil
}

// Descriptor returns the disk's descriptor. The caller must not modify it.
func (p *Plain) Descriptor() *Descriptor { return p.desc }

// Size is the disk's size in bytes.
func (p *Plain) Size() int64 { return p.desc.Size() }

// ReadAt reads from the disk as if its chunks were one file, returning io.EOF at the end.
func (p *Plain) ReadAt(b []byte, off int64) (int, error) {
	if p.files == nil {
		return 0, fmt.Errorf("read plain disk: %w", os.ErrClosed)
	}
	if off < 0 {
		return 0, fmt.Errorf("read plain disk: negative offset %d", off)
	}
	n := 0
	for n < len(b) {
		if off >= p.Size() {
			return n, io.EOF
		}
		i, within, room := p.locate(off)
		m, err := p.files[i].ReadAt(b[n:n+int(min(room, int64(len(b)-n)))], within)
		n += m
		off += int64(m)
		if err != nil && !(errors.Is(err, io.EOF) && int64(m) == room) {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: chunk %s is shorter than its extent", ErrMalformed, p.desc.Extents[i].File)
			}
			return n, fmt.Errorf("read plain disk: %w", err)
		}
	}
	return n, nil
}

// WriteAt writes to the disk as if its chunks were one file. Writing past the end fails with
// ErrOutOfRange and writes nothing.
func (p *Plain) WriteAt(b []byte, off int64) (int, error) {
	if p.files == nil {
		return 0, fmt.Errorf("write plain disk: %w", os.ErrClosed)
	}
	if off < 0 || off > p.Size() || int64(len(b)) > p.Size()-off {
		return 0, fmt.Errorf("write plain disk at %d+%d: %w (size %d)", off, len(b), ErrOutOfRange, p.Size())
	}
	n := 0
	for n < len(b) {
		i, within, room := p.locate(off)
		m, err := p.files[i].WriteAt(b[n:n+int(min(room, int64(len(b)-n)))], within)
		n += m
		off += int64(m)
		if err != nil {
			return n, fmt.Errorf("write plain disk: %w", err)
		}
	}
	return n, nil
}

// Sync flushes every chunk to stable storage.
func (p *Plain) Sync() error {
	for _, f := range p.files {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("sync plain disk: %w", err)
		}
	}
	return nil
}

// Close closes the chunk files.
func (p *Plain) Close() error {
	var errs []error
	for _, f := range p.files {
		errs = append(errs, f.Close())
	}
	p.files = nil
	return errors.Join(errs...)
}

// locate returns the chunk holding byte off (< Size), the offset inside it and the bytes left
// in it from there.
func (p *Plain) locate(off int64) (chunk int, within, room int64) {
	i := sort.Search(len(p.starts), func(i int) bool { return p.starts[i] > off }) - 1
	within = off - p.starts[i]
	return i, within, p.desc.Extents[i].Bytes() - within
}
