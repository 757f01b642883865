package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Format names a disk-image format that Inspect recognises.
type Format string

// The formats Inspect tells apart. Anything else is raw.
const (
	FormatRaw   Format = "raw"
	FormatPlain Format = "plain" // VMware plain disk: descriptor and chunk files
	FormatQCOW2 Format = "qcow2"
	FormatVMDK  Format = "vmdk" // VMDK text descriptor with extents, or a sparse VMDK file
)

// maxChain bounds how many backing images Chain follows.
const maxChain = 16

// qcow2HeaderRead is how much of a qcow2 image is read for its header, extensions and backing
// file name; qemu keeps them inside the first cluster, 64 KiB by default.
const qcow2HeaderRead = 64 << 10

// ErrOutside reports an image that refers to a file outside the directory it must stay in.
var ErrOutside = errors.New("disk file outside the VM directory")

// Image describes one disk image as found on disk.
type Image struct {
	Path        string
	Format      Format
	VirtualSize int64    // bytes the guest sees
	Files       []string // the files of this image, Path first; backing images not included
	Backing     string   // the backing (parent) image, "" if none
}

// Inspect reads the header or descriptor of the image at path. It never runs qemu-img.
// Names found inside the image are resolved against the image's directory; they are not checked
// further, see Files.
func Inspect(path string) (Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return Image{}, fmt.Errorf("inspect disk: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Image{}, fmt.Errorf("inspect disk: %w", err)
	}
	head := make([]byte, qcow2HeaderRead)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return Image{}, fmt.Errorf("inspect disk %s: %w", path, err)
	}
	head = head[:n]
	img := Image{Path: path, Format: FormatRaw, VirtualSize: fi.Size(), Files: []string{path}}
	dir := filepath.Dir(path)
	resolve := func(name string) string {
		if filepath.IsAbs(name) {
			return filepath.Clean(name)
		}
		return filepath.Join(dir, name)
	}
	switch {
	case bytes.HasPrefix(head, []byte("QFI\xfb")):
		h, err := parseQCOW2(head)
		if err != nil {
			return Image{}, fmt.Errorf("inspect disk %s: %w", path, err)
		}
		img.Format, img.VirtualSize = FormatQCOW2, h.size
		if h.backing != "" {
			img.Backing = resolve(h.backing)
		}
		if h.dataFile != "" {
			img.Files = append(img.Files, resolve(h.dataFile))
		}
	case bytes.HasPrefix(head, []byte("KDMV")):
		v, err := parseSparseVMDK(head)
		if err != nil {
			return Image{}, fmt.Errorf("inspect disk %s: %w", path, err)
		}
		img.Format, img.VirtualSize = FormatVMDK, v.capacity*SectorSize
		if v.parent != "" {
			img.Backing = resolve(v.parent)
		}
	case fi.Size() <= MaxDescriptorSize && bytes.IndexByte(head, 0) < 0:
		if bytes.HasPrefix(bytes.TrimLeft(head, "\ufeff \t\r\n"), []byte("# Disk DescriptorFile")) {
			v, err := parseVMDKDescriptor(head)
			if err != nil {
				return Image{}, fmt.Errorf("inspect disk %s: %w", path, err)
			}
			img.Format, img.VirtualSize = FormatVMDK, v.capacity*SectorSize
			for _, e := range v.files {
				img.Files = append(img.Files, resolve(e))
			}
			if v.parent != "" {
				img.Backing = resolve(v.parent)
			}
			break
		}
		if d, err := ParseDescriptor(head); err == nil {
			img.Format, img.VirtualSize = FormatPlain, d.Size()
			for _, e := range d.Extents {
				img.Files = append(img.Files, filepath.Join(dir, e.File))
			}
		}
	}
	return img, nil
}

// Chain inspects the image at path and then its backing images, top first. It fails on a
// backing loop or a chain deeper than 16.
func Chain(path string) ([]Image, error) {
	var chain []Image
	seen := map[string]bool{}
	for p := path; p != ""; {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("disk chain of %s: %w", path, err)
		}
		if seen[abs] {
			return nil, fmt.Errorf("disk chain of %s: %w: %s is its own backing image", path, ErrMalformed, p)
		}
		if len(chain) == maxChain {
			return nil, fmt.Errorf("disk chain of %s: %w: more than %d backing images", path, ErrMalformed, maxChain)
		}
		seen[abs] = true
		img, err := Inspect(p)
		if err != nil {
			return nil, fmt.Errorf("disk chain of %s: %w", path, err)
		}
		chain = append(chain, img)
		p = img.Backing
	}
	return chain, nil
}

// Files lists every file that the disks at paths are made of, backing images included, each
// once, in a stable order: what a migration has to move, without qemu-img. Every file must lie
// inside dir (the VM's directory) after resolving symbolic links, so that an image handed in
// by a buyer cannot make the provider ship, say, /etc/shadow as its "backing file"; such a disk
// fails with ErrOutside.
func Files(dir string, paths ...string) ([]string, error) {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("disk files: %w", err)
	}
	if root, err = filepath.Abs(root); err != nil {
		return nil, fmt.Errorf("disk files: %w", err)
	}
	var out []string
	seen := map[string]bool{}
	for _, p := range paths {
		chain, err := Chain(p)
		if err != nil {
			return nil, err
		}
		for _, img := range chain {
			for _, f := range img.Files {
				real, err := filepath.EvalSymlinks(f)
				if err != nil {
					return nil, fmt.Errorf("disk files of %s: %w", p, err)
				}
				if real, err = filepath.Abs(real); err != nil {
					return nil, fmt.Errorf("disk files of %s: %w", p, err)
				}
				if rel, err := filepath.Rel(root, real); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
					return nil, fmt.Errorf("disk files of %s: %w: %s is not in %s", p, ErrOutside, f, dir)
				}
				if !seen[real] {
					seen[real] = true
					out = append(out, f)
				}
			}
		}
	}
	return out, nil
}

type qcow2Header struct {
	size     int64
	backing  string
	dataFile string
}

// parseQCOW2 reads the parts of a qcow2 header (big-endian, see qemu's docs/interop/qcow2.txt)
// that say which files the image needs: the backing file name and the external data file
// header extension. b is the start of the file, at most qcow2HeaderRead bytes.
func parseQCOW2(b []byte) (qcow2Header, error) {
	if len(b) < 72 || !bytes.HasPrefix(b, []byte("QFI\xfb")) {
		return qcow2Header{}, fmt.Errorf("%w: short qcow2 header", ErrMalformed)
	}
	be := binary.BigEndian
	version := be.Uint32(b[4:])
	if version != 2 && version != 3 {
		return qcow2Header{}, fmt.Errorf("%w: qcow2 version %d", ErrMalformed, version)
	}
	var h qcow2Header
	size := be.Uint64(b[24:])
	if size > 1<<62 {
		return qcow2Header{}, fmt.Errorf("%w: qcow2 size %d", ErrMalformed, size)
	}
	h.size = int64(size)
	if off, n := be.Uint64(b[8:]), uint64(be.Uint32(b[16:])); off != 0 {
		// qemu caps backing file names at 1023 bytes.
		if n == 0 || n > 1023 || off > uint64(len(b)) || n > uint64(len(b))-off {
			return qcow2Header{}, fmt.Errorf("%w: qcow2 backing file name at %d+%d", ErrMalformed, off, n)
		}
		name, err := checkPathName(b[off : off+n])
		if err != nil {
			return qcow2Header{}, fmt.Errorf("qcow2 backing file: %w", err)
		}
		h.backing = name
	}
	extStart := uint64(72)
	if version == 3 {
		if len(b) < 104 {
			return qcow2Header{}, fmt.Errorf("%w: short qcow2 v3 header", ErrMalformed)
		}
		extStart = uint64(be.Uint32(b[100:]))
		if extStart < 104 || extStart > uint64(len(b)) {
			return qcow2Header{}, fmt.Errorf("%w: qcow2 header length %d", ErrMalformed, extStart)
		}
	}
	for off := extStart; ; {
		if off+8 > uint64(len(b)) {
			return qcow2Header{}, fmt.Errorf("%w: qcow2 header extensions run past %d bytes", ErrMalformed, len(b))
		}
		typ, n := be.Uint32(b[off:]), uint64(be.Uint32(b[off+4:]))
		off += 8
		if typ == 0 {
			break
		}
		if n > uint64(len(b))-off {
			return qcow2Header{}, fmt.Errorf("%w: qcow2 header extension %#x of %d bytes", ErrMalformed, typ, n)
		}
		if typ == 0x44415441 { // external data file name
			name, err := checkPathName(b[off : off+n])
			if err != nil {
				return qcow2Header{}, fmt.Errorf("qcow2 data file: %w", err)
			}
			h.dataFile = name
		}
		off += (n + 7) &^ 7
	}
	return h, nil
}

type vmdkInfo struct {
	capacity int64 // sectors
	files    []string
	parent   string
}

// parseSparseVMDK reads a hosted sparse VMDK header (little-endian, VMware's "Virtual Disk
// Format 1.1"): its capacity, and the parent named in the descriptor it may embed.
func parseSparseVMDK(b []byte) (vmdkInfo, error) {
	if len(b) < 44 || !bytes.HasPrefix(b, []byte("KDMV")) {
		return vmdkInfo{}, fmt.Errorf("%w: short sparse VMDK header", ErrMalformed)
	}
	le := binary.LittleEndian
	capacity := le.Uint64(b[12:])
	if capacity > 1<<53 {
		return vmdkInfo{}, fmt.Errorf("%w: VMDK capacity %d", ErrMalformed, capacity)
	}
	v := vmdkInfo{capacity: int64(capacity)}
	off, n := le.Uint64(b[28:]), le.Uint64(b[36:])
	if off == 0 || n == 0 {
		return v, nil
	}
	if off > uint64(len(b))/SectorSize || n > uint64(len(b))/SectorSize-off {
		return vmdkInfo{}, fmt.Errorf("%w: embedded VMDK descriptor at sector %d+%d", ErrMalformed, off, n)
	}
	desc := b[off*SectorSize : (off+n)*SectorSize]
	if i := bytes.IndexByte(desc, 0); i >= 0 {
		desc = desc[:i]
	}
	d, err := parseVMDKDescriptor(desc)
	if err != nil {
		return vmdkInfo{}, err
	}
	v.parent = d.parent
	return v, nil
}

// parseVMDKDescriptor reads a VMDK text descriptor: key=value lines and extent lines such as
// `RW 4192256 SPARSE "disk-s001.vmdk"` or `RW 2097152 FLAT "disk-flat.vmdk" 0`. Only what
// names files or sizes is kept.
func parseVMDKDescriptor(b []byte) (vmdkInfo, error) {
	if len(b) > MaxDescriptorSize {
		return vmdkInfo{}, fmt.Errorf("%w: VMDK descriptor longer than %d bytes", ErrMalformed, MaxDescriptorSize)
	}
	var v vmdkInfo
	extents := 0
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if k, val, ok := strings.Cut(line, "="); ok && !strings.ContainsAny(k, `"`) {
			if strings.TrimSpace(k) == "parentFileNameHint" {
				name, err := checkPathName([]byte(strings.Trim(strings.TrimSpace(val), `"`)))
				if err != nil {
					return vmdkInfo{}, fmt.Errorf("VMDK descriptor line %d: %w", i+1, err)
				}
				v.parent = name
			}
			continue
		}
		access, rest := cutSpace(line)
		if access != "RW" && access != "RDONLY" && access != "NOACCESS" {
			return vmdkInfo{}, fmt.Errorf("%w: VMDK descriptor line %d: %q", ErrMalformed, i+1, line)
		}
		if extents++; extents > maxExtents {
			return vmdkInfo{}, fmt.Errorf("%w: more than %d VMDK extents", ErrMalformed, maxExtents)
		}
		count, rest := cutSpace(rest)
		sectors, err := parseCount(count, 1<<53)
		if err != nil || v.capacity+sectors > 1<<53 {
			return vmdkInfo{}, fmt.Errorf("%w: VMDK descriptor line %d: extent size %q", ErrMalformed, i+1, count)
		}
		v.capacity += sectors
		typ, rest := cutSpace(rest)
		if typ == "ZERO" {
			continue
		}
		if typ == "" || !strings.HasPrefix(rest, `"`) {
			return vmdkInfo{}, fmt.Errorf("%w: VMDK descriptor line %d: extent without a file", ErrMalformed, i+1)
		}
		name, _, ok := strings.Cut(rest[1:], `"`)
		if !ok {
			return vmdkInfo{}, fmt.Errorf("%w: VMDK descriptor line %d: unterminated file name", ErrMalformed, i+1)
		}
		if name, err = checkPathName([]byte(name)); err != nil {
			return vmdkInfo{}, fmt.Errorf("VMDK descriptor line %d: %w", i+1, err)
		}
		v.files = append(v.files, name)
	}
	return v, nil
}

// checkPathName accepts a file name found in an image: printable, no NUL. Where the path may
// point is Files' concern.
func checkPathName(b []byte) (string, error) {
	s := string(b)
	if s == "" || len(s) > 4096 || strings.ContainsRune(s, 0) || strings.ContainsRune(s, '\uFFFD') {
		return "", fmt.Errorf("%w: bad file name %s", ErrMalformed, strconv.Quote(s))
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return "", fmt.Errorf("%w: bad file name %s", ErrMalformed, strconv.Quote(s))
		}
	}
	return s, nil
}
