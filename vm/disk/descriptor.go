package disk

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
)

// MaxDescriptorSize caps the bytes read from a descriptor; real ones are a few hundred bytes.
const MaxDescriptorSize = 64 << 10

// maxExtents caps the chunk count: a MaxSizeMB disk has 1,028 chunks of 260 cylinders.
const maxExtents = 4096

// ErrMalformed reports a descriptor or image header that cannot be trusted.
var ErrMalformed = errors.New("malformed disk descriptor")

// Descriptor is a VMware plain-disk descriptor: the disk's geometry and its chunk files.
type Descriptor struct {
	DriveType    string // "scsi" or "ide"
	Version      int64  // #vm| VERSION
	ToolsVersion int64  // #vm| TOOLSVERSION
	Geometry     Geometry
	Capacity     int64 // #vm| CAPACITY, sectors; always the sum of the extents
	Extents      []Extent
}

// Extent is one ACCESS line: a chunk file holding Length sectors from sector Start.
type Extent struct {
	File   string // file name in the descriptor's directory
	Start  int64
	Length int64
}

// Bytes is the size of the extent's file.
func (e Extent) Bytes() int64 { return e.Length * SectorSize }

// NewPlainDescriptor lays out a plain disk called name with geometry g: chunk i (from 1) is
// name+i+".dat" and holds ChunkCylinders(g) cylinders, the last chunk the rest.
func NewPlainDescriptor(name string, g Geometry) (*Descriptor, error) {
	if err := checkFileName(name + "1.dat"); err != nil {
		return nil, err
	}
	if g.Cylinders <= 0 || g.Heads <= 0 || g.Heads > 255 || g.Sectors <= 0 || g.Sectors > 63 {
		return nil, fmt.Errorf("%w: geometry %d/%d/%d", ErrSize, g.Cylinders, g.Heads, g.Sectors)
	}
	if g.Bytes() > MaxSizeMB<<20 {
		return nil, fmt.Errorf("%w: %d bytes", ErrSize, g.Bytes())
	}
	d := &Descriptor{DriveType: "scsi", Version: 2, Geometry: g, Capacity: g.Capacity()}
	per := ChunkCylinders(g) * g.CylinderSectors()
	for start, i := int64(0), 1; start < d.Capacity; i++ {
		n := min(per, d.Capacity-start)
		d.Extents = append(d.Extents, Extent{File: name + strconv.Itoa(i) + ".dat", Start: start, Length: n})
		start += n
	}
	return d, nil
}

// Size is the disk's size in bytes.
func (d *Descriptor) Size() int64 { return d.Capacity * SectorSize }

// MarshalText formats the descriptor in the layout of the package comment.
func (d *Descriptor) MarshalText() ([]byte, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "DRIVETYPE %s\n", d.DriveType)
	fmt.Fprintf(&b, "#vm| VERSION %d\n", d.Version)
	fmt.Fprintf(&b, "#vm| TOOLSVERSION %d\n", d.ToolsVersion)
	fmt.Fprintf(&b, "CYLINDERS %d\n", d.Geometry.Cylinders)
	fmt.Fprintf(&b, "HEADS %d\n", d.Geometry.Heads)
	fmt.Fprintf(&b, "SECTORS %d\n", d.Geometry.Sectors)
	fmt.Fprintf(&b, "#vm| CAPACITY %d\n", d.Capacity)
	for _, e := range d.Extents {
		fmt.Fprintf(&b, "ACCESS \"%s\" %d %d\n", e.File, e.Start, e.Length)
	}
	return b.Bytes(), nil
}

// UnmarshalText parses a descriptor; see ParseDescriptor.
func (d *Descriptor) UnmarshalText(b []byte) error {
	p, err := ParseDescriptor(b)
	if err != nil {
		return err
	}
	*d = *p
	return nil
}

// ReadDescriptor reads and parses a descriptor of at most MaxDescriptorSize bytes.
func ReadDescriptor(r io.Reader) (*Descriptor, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxDescriptorSize+1))
	if err != nil {
		return nil, fmt.Errorf("read disk descriptor: %w", err)
	}
	return ParseDescriptor(b)
}

// ParseDescriptor parses a plain-disk descriptor. DRIVETYPE, CYLINDERS, HEADS, SECTORS and at
// least one ACCESS line are required; VERSION and TOOLSVERSION default to 0 and CAPACITY to the
// extents' total. Blank lines, comments and unknown "#vm|" settings are skipped; unknown
// keywords, repeated settings, out-of-range numbers, chunk names with a path, and extents that
// do not tile the disk from sector 0 without gaps are errors wrapping ErrMalformed. Both "#vm|"
// and "#vm |" are accepted.
func ParseDescriptor(b []byte) (*Descriptor, error) {
	if len(b) > MaxDescriptorSize {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxDescriptorSize)
	}
	d := &Descriptor{}
	seen := map[string]bool{}
	capacity := int64(-1)
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), MaxDescriptorSize)
	for line := 1; sc.Scan(); line++ {
		key, rest := splitLine(sc.Text())
		if key == "" {
			continue
		}
		if key != "ACCESS" {
			if seen[key] {
				return nil, fmt.Errorf("%w: line %d: %s given twice", ErrMalformed, line, key)
			}
			seen[key] = true
		}
		var field *int64
		limit := int64(MaxSizeMB) << 20 / SectorSize
		switch key {
		case "DRIVETYPE":
			if !isWord(rest) {
				return nil, fmt.Errorf("%w: line %d: bad drive type %q", ErrMalformed, line, rest)
			}
			d.DriveType = rest
			continue
		case "ACCESS":
			e, err := parseAccess(rest)
			if err != nil {
				return nil, fmt.Errorf("%w: line %d: %w", ErrMalformed, line, err)
			}
			if len(d.Extents) == maxExtents {
				return nil, fmt.Errorf("%w: more than %d extents", ErrMalformed, maxExtents)
			}
			d.Extents = append(d.Extents, e)
			continue
		case "VERSION":
			field, limit = &d.Version, 1<<20
		case "TOOLSVERSION":
			field, limit = &d.ToolsVersion, 1<<31
		case "CYLINDERS":
			field = &d.Geometry.Cylinders
		case "HEADS":
			field, limit = &d.Geometry.Heads, 255
		case "SECTORS":
			field, limit = &d.Geometry.Sectors, 63
		case "CAPACITY":
			field = &capacity
		default:
			if strings.HasPrefix(key, "#vm|") {
				continue // a VMware setting this package does not use
			}
			return nil, fmt.Errorf("%w: line %d: unknown keyword %q", ErrMalformed, line, key)
		}
		n, err := parseCount(rest, limit)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %s: %w", ErrMalformed, line, key, err)
		}
		*field = n
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	var total int64
	for _, e := range d.Extents {
		total += e.Length
	}
	if capacity < 0 {
		capacity = total
	}
	d.Capacity = capacity
	if err := d.validate(); err != nil {
		return nil, err
	}
	return d, nil
}

// validate checks what ParseDescriptor promises, so that MarshalText never writes a descriptor
// that would not parse.
func (d *Descriptor) validate() error {
	switch {
	case !isWord(d.DriveType):
		return fmt.Errorf("%w: missing or bad DRIVETYPE", ErrMalformed)
	case d.Geometry.Cylinders <= 0 || d.Geometry.Heads <= 0 || d.Geometry.Sectors <= 0:
		return fmt.Errorf("%w: CYLINDERS, HEADS and SECTORS must be given and positive", ErrMalformed)
	case d.Geometry.Heads > 255 || d.Geometry.Sectors > 63:
		return fmt.Errorf("%w: %d heads, %d sectors", ErrMalformed, d.Geometry.Heads, d.Geometry.Sectors)
	case d.Version < 0 || d.ToolsVersion < 0:
		return fmt.Errorf("%w: negative version", ErrMalformed)
	case len(d.Extents) == 0:
		return fmt.Errorf("%w: no ACCESS lines", ErrMalformed)
	case len(d.Extents) > maxExtents:
		return fmt.Errorf("%w: more than %d extents", ErrMalformed, maxExtents)
	}
	var next int64
	names := make(map[string]bool, len(d.Extents))
	for i, e := range d.Extents {
		if err := checkFileName(e.File); err != nil {
			return fmt.Errorf("extent %d: %w", i+1, err)
		}
		if names[e.File] {
			return fmt.Errorf("%w: extent %d: %q used twice", ErrMalformed, i+1, e.File)
		}
		names[e.File] = true
		if e.Start != next || e.Length <= 0 || e.Length > MaxSizeMB<<20/SectorSize {
			return fmt.Errorf("%w: extent %d (%q %d %d) does not continue at sector %d", ErrMalformed, i+1, e.File, e.Start, e.Length, next)
		}
		next += e.Length
		if next > MaxSizeMB<<20/SectorSize {
			return fmt.Errorf("%w: larger than %d MB", ErrMalformed, MaxSizeMB)
		}
	}
	if d.Capacity != next {
		return fmt.Errorf("%w: CAPACITY %d but the extents hold %d sectors", ErrMalformed, d.Capacity, next)
	}
	return nil
}

// splitLine returns a line's keyword (with the "#vm|" prefix kept for VMware settings other than
// the known ones) and the rest. Comments and blank lines give an empty keyword.
func splitLine(s string) (key, rest string) {
	s = strings.TrimSpace(strings.TrimSuffix(s, "\r"))
	if s == "" {
		return "", ""
	}
	if strings.HasPrefix(s, "#") {
		t := strings.TrimSpace(s[1:])
		if !strings.HasPrefix(t, "vm") {
			return "", ""
		}
		t = strings.TrimSpace(t[2:])
		if !strings.HasPrefix(t, "|") {
			return "", ""
		}
		k, r := cutSpace(strings.TrimSpace(t[1:]))
		switch k {
		case "VERSION", "TOOLSVERSION", "CAPACITY":
			return k, r
		}
		return "#vm|" + k, r
	}
	return cutSpace(s)
}

// cutSpace splits s at its first space or tab and trims the rest.
func cutSpace(s string) (word, rest string) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimSpace(s[i+1:])
}

func parseAccess(s string) (Extent, error) {
	if !strings.HasPrefix(s, `"`) {
		return Extent{}, errors.New(`ACCESS wants "file" start length`)
	}
	name, rest, ok := strings.Cut(s[1:], `"`)
	if !ok {
		return Extent{}, errors.New("ACCESS file name has no closing quote")
	}
	f := strings.Fields(rest)
	if len(f) != 2 {
		return Extent{}, errors.New(`ACCESS wants "file" start length`)
	}
	limit := int64(MaxSizeMB) << 20 / SectorSize
	start, err := parseCount(f[0], limit)
	if err != nil {
		return Extent{}, fmt.Errorf("ACCESS start: %w", err)
	}
	length, err := parseCount(f[1], limit)
	if err != nil {
		return Extent{}, fmt.Errorf("ACCESS length: %w", err)
	}
	return Extent{File: name, Start: start, Length: length}, nil
}

// parseCount parses a plain decimal count in [0, limit]: no signs, no leading zeros, so that
// formatting the value gives back the same text.
func parseCount(s string, limit int64) (int64, error) {
	if s == "" || len(s) > 19 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("bad number %q", s)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad number %q", s)
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > limit {
		return 0, fmt.Errorf("number %q out of range (max %d)", s, limit)
	}
	return n, nil
}

func isWord(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// checkFileName accepts the name of a file in the descriptor's own directory and nothing that
// could point elsewhere or break the quoting of an ACCESS line.
func checkFileName(name string) error {
	switch {
	case name == "" || len(name) > 255 || name == "." || name == "..":
		return fmt.Errorf("%w: bad chunk file name %q", ErrMalformed, name)
	case strings.ContainsAny(name, `/\"`) || filepath.Base(name) != name || filepath.IsAbs(name):
		return fmt.Errorf("%w: chunk file name %q must not contain a path or quote", ErrMalformed, name)
	}
	for _, c := range name {
		if c < 0x20 || c == 0x7f || c == '\uFFFD' {
			return fmt.Errorf("%w: chunk file name %q has a control character", ErrMalformed, name)
		}
	}
	return nil
}
