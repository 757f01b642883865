package disk

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
)

// qemuImg runs qemu-img in dir. The package itself never needs it; the tests use it to make
// real images and to check Inspect against qemu-img's own reading of them.
func qemuImg(t testing.TB, dir string, args ...string) []byte {
	t.Helper()
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Fatalf("qemu-img is needed to make test images: install qemu-utils (the Makefile does): %v", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("qemu-img %v: %v: %s", args, err, ee.Stderr)
		}
		t.Fatalf("qemu-img %v: %v", args, err)
	}
	return out
}

// qemuChain is what qemu-img reports about an image chain: file name and virtual size.
func qemuChain(t testing.TB, dir, name string) [][2]any {
	t.Helper()
	var info []struct {
		Filename    string `json:"filename"`
		VirtualSize int64  `json:"virtual-size"`
	}
	if err := json.Unmarshal(qemuImg(t, dir, "info", "--backing-chain", "--output=json", name), &info); err != nil {
		t.Fatal(err)
	}
	var out [][2]any
	for _, i := range info {
		out = append(out, [2]any{filepath.Join(dir, i.Filename), i.VirtualSize})
	}
	return out
}

func TestInspectMatchesQemuImg(t *testing.T) {
	tests := []struct {
		name   string
		make   [][]string // qemu-img commands run in the directory
		top    string
		format Format
		files  []string // Files(dir, top), relative to dir
	}{
		{
			name: "qcow2 chain with a data file over raw",
			make: [][]string{
				{"create", "-q", "-f", "raw", "base.raw", "10M"},
				{"create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "mid.qcow2"},
				{"create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "-o", "data_file=top.data", "top.qcow2", "10M"},
			},
			top: "top.qcow2", format: FormatQCOW2,
			files: []string{"top.qcow2", "top.data", "mid.qcow2", "base.raw"},
		},
		{
			name:   "qcow2 version 2 (compat 0.10)",
			make:   [][]string{{"create", "-q", "-f", "qcow2", "-o", "compat=0.10", "old.qcow2", "3G"}},
			top:    "old.qcow2",
			format: FormatQCOW2, files: []string{"old.qcow2"},
		},
		{
			name:   "vmdk split in 2 GB sparse extents",
			make:   [][]string{{"create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "split.vmdk", "5G"}},
			top:    "split.vmdk",
			format: FormatVMDK, files: []string{"split.vmdk", "split-s001.vmdk", "split-s002.vmdk", "split-s003.vmdk"},
		},
		{
			name:   "vmdk flat",
			make:   [][]string{{"create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "flat.vmdk", "10M"}},
			top:    "flat.vmdk",
			format: FormatVMDK, files: []string{"flat.vmdk", "flat-flat.vmdk"},
		},
		{
			name: "sparse vmdk delta over its parent",
			make: [][]string{
				{"create", "-q", "-f", "vmdk", "base.vmdk", "10M"},
				{"create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "delta.vmdk"},
			},
			top:    "delta.vmdk",
			format: FormatVMDK, files: []string{"delta.vmdk", "base.vmdk"},
		},
		{
			name:   "raw",
			make:   [][]string{{"create", "-q", "-f", "raw", "disk.img", "1M"}},
			top:    "disk.img",
			format: FormatRaw, files: []string{"disk.img"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, args := range tt.make {
				qemuImg(t, dir, args...)
			}
			chain, err := Chain(filepath.Join(dir, tt.top))
			if err != nil {
				t.Fatal(err)
			}
			if chain[0].Format != tt.format {
				t.Fatalf("format %q, want %q", chain[0].Format, tt.format)
			}
			var got [][2]any
			for _, img := range chain {
				got = append(got, [2]any{img.Path, img.VirtualSize})
			}
			if want := qemuChain(t, dir, tt.top); !reflect.DeepEqual(got, want) {
				t.Fatalf("chain (path, virtual size):\n got %v\nwant %v (qemu-img info)", got, want)
			}
			files, err := Files(dir, filepath.Join(dir, tt.top))
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, f := range tt.files {
				want = append(want, filepath.Join(dir, f))
			}
			if !reflect.DeepEqual(files, want) {
				t.Fatalf("Files = %v, want %v", files, want)
			}
		})
	}
}

func TestFilesPlainDisks(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a.pln", "b.pln"} {
		if _, err := CreatePlain(filepath.Join(dir, name), 2100); err != nil {
			t.Fatal(err)
		}
	}
	img, err := Inspect(filepath.Join(dir, "a.pln"))
	if err != nil {
		t.Fatal(err)
	}
	if img.Format != FormatPlain || img.VirtualSize != 267*16065*512 {
		t.Fatalf("Inspect = %+v", img)
	}
	// A disk named twice is listed once.
	files, err := Files(dir, filepath.Join(dir, "a.pln"), filepath.Join(dir, "b.pln"), filepath.Join(dir, "a.pln"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range []string{"a.pln", "a1.dat", "a2.dat", "b.pln", "b1.dat", "b2.dat"} {
		want = append(want, filepath.Join(dir, f))
	}
	if !reflect.DeepEqual(files, want) {
		t.Fatalf("Files = %v, want %v", files, want)
	}
}

func TestFilesRefusesEscapes(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, vmDir, outside string) string // returns the disk path
		want  error
	}{
		{"qcow2 backing file elsewhere", func(t *testing.T, vmDir, outside string) string {
			qemuImg(t, outside, "create", "-q", "-f", "raw", "secret.raw", "1M")
			qemuImg(t, vmDir, "create", "-q", "-f", "qcow2", "-b", filepath.Join(outside, "secret.raw"), "-F", "raw", "top.qcow2")
			return filepath.Join(vmDir, "top.qcow2")
		}, ErrOutside},
		{"qcow2 backing file through ..", func(t *testing.T, vmDir, outside string) string {
			qemuImg(t, outside, "create", "-q", "-f", "raw", "secret.raw", "1M")
			rel, err := filepath.Rel(vmDir, filepath.Join(outside, "secret.raw"))
			if err != nil {
				t.Fatal(err)
			}
			qemuImg(t, vmDir, "create", "-q", "-f", "qcow2", "-b", rel, "-F", "raw", "top.qcow2")
			return filepath.Join(vmDir, "top.qcow2")
		}, ErrOutside},
		{"plain chunk is a symlink out", func(t *testing.T, vmDir, outside string) string {
			path := filepath.Join(vmDir, "d.pln")
			if _, err := CreatePlain(path, 10); err != nil {
				t.Fatal(err)
			}
			qemuImg(t, outside, "create", "-q", "-f", "raw", "secret.raw", "10M")
			chunk := filepath.Join(vmDir, "d1.dat")
			if err := os.Remove(chunk); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(outside, "secret.raw"), chunk); err != nil {
				t.Fatal(err)
			}
			return path
		}, ErrOutside},
		{"backing loop", func(t *testing.T, vmDir, _ string) string {
			qemuImg(t, vmDir, "create", "-q", "-f", "qcow2", "a.qcow2", "1M")
			qemuImg(t, vmDir, "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2")
			qemuImg(t, vmDir, "rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2")
			return filepath.Join(vmDir, "b.qcow2")
		}, ErrMalformed},
		{"missing backing file", func(t *testing.T, vmDir, _ string) string {
			qemuImg(t, vmDir, "create", "-q", "-f", "qcow2", "-u", "-b", "gone.raw", "-F", "raw", "top.qcow2", "1M")
			return filepath.Join(vmDir, "top.qcow2")
		}, os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vmDir, outside := t.TempDir(), t.TempDir()
			path := tt.setup(t, vmDir, outside)
			if files, err := Files(vmDir, path); !errors.Is(err, tt.want) {
				t.Fatalf("Files = %v, %v; want %v", files, err, tt.want)
			}
		})
	}
}

// qcow2Bytes builds a qcow2 header by the specification, for the fuzz seeds.
func qcow2Bytes(version uint32, size uint64, backing, dataFile string) []byte {
	be := binary.BigEndian
	hlen := 72
	if version == 3 {
		hlen = 104
	}
	b := make([]byte, hlen)
	copy(b, "QFI\xfb")
	be.PutUint32(b[4:], version)
	be.PutUint32(b[20:], 16)
	be.PutUint64(b[24:], size)
	if version == 3 {
		be.PutUint32(b[96:], 4)
		be.PutUint32(b[100:], uint32(hlen))
	}
	if dataFile != "" {
		ext := make([]byte, 8+(len(dataFile)+7)&^7)
		be.PutUint32(ext, 0x44415441)
		be.PutUint32(ext[4:], uint32(len(dataFile)))
		copy(ext[8:], dataFile)
		b = append(b, ext...)
	}
	b = append(b, make([]byte, 8)...) // end of extensions
	if backing != "" {
		be.PutUint64(b[8:], uint64(len(b)))
		be.PutUint32(b[16:], uint32(len(backing)))
		b = append(b, backing...)
	}
	return b
}

func TestParseQCOW2(t *testing.T) {
	tests := []struct {
		name    string
		b       []byte
		want    qcow2Header
		wantErr bool
	}{
		{"v3 with backing and data file", qcow2Bytes(3, 1<<30, "base.qcow2", "top.data"), qcow2Header{1 << 30, "base.qcow2", "top.data"}, false},
		{"v2 with backing", qcow2Bytes(2, 512, "/images/base.raw", ""), qcow2Header{512, "/images/base.raw", ""}, false},
		{"v1", qcow2Bytes(1, 512, "", ""), qcow2Header{}, true},
		{"truncated", qcow2Bytes(3, 512, "", "")[:90], qcow2Header{}, true},
		{"backing name past the end", func() []byte {
			b := qcow2Bytes(3, 512, "base", "")
			binary.BigEndian.PutUint32(b[16:], 5000)
			return b
		}(), qcow2Header{}, true},
		{"backing name with NUL", qcow2Bytes(3, 512, "a\x00b", ""), qcow2Header{}, true},
		{"extension longer than the header", func() []byte {
			b := qcow2Bytes(3, 512, "", "data")
			binary.BigEndian.PutUint32(b[108:], 1<<31)
			return b
		}(), qcow2Header{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := parseQCOW2(tt.b)
			if tt.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("parseQCOW2 = %+v, %v; want ErrMalformed", h, err)
				}
				return
			}
			if err != nil || h != tt.want {
				t.Fatalf("parseQCOW2 = %+v, %v; want %+v", h, err, tt.want)
			}
		})
	}
}

func FuzzParseQCOW2(f *testing.F) {
	f.Add(qcow2Bytes(3, 1<<30, "base.qcow2", "top.data"))
	f.Add(qcow2Bytes(2, 512, "/images/base.raw", ""))
	f.Add(qcow2Bytes(3, 0, "", ""))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > qcow2HeaderRead {
			b = b[:qcow2HeaderRead]
		}
		h, err := parseQCOW2(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if h.size < 0 || len(h.backing) > 1023 || len(h.dataFile) > len(b) {
			t.Fatalf("accepted %+v", h)
		}
	})
}

// sparseVMDKBytes builds a hosted sparse VMDK header with an embedded descriptor.
func sparseVMDKBytes(capacity uint64, desc string) []byte {
	le := binary.LittleEndian
	b := make([]byte, 512+(len(desc)+511)&^511)
	copy(b, "KDMV")
	le.PutUint32(b[4:], 1)
	le.PutUint64(b[12:], capacity)
	le.PutUint64(b[20:], 128)
	if desc != "" {
		le.PutUint64(b[28:], 1)
		le.PutUint64(b[36:], uint64(len(desc)+511)/512)
		copy(b[512:], desc)
	}
	return b
}

func FuzzParseVMDK(f *testing.F) {
	split := "# Disk DescriptorFile\nversion=1\nCID=e65430f6\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\n# Extent description\nRW 4194304 SPARSE \"split-s001.vmdk\"\nRW 4194304 SPARSE \"split-s002.vmdk\"\nRW 2097152 SPARSE \"split-s003.vmdk\"\n\n#DDB\nddb.adapterType = \"ide\"\n"
	delta := "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=9ebb9c4b\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"base.vmdk\"\nRW 20480 SPARSE \"delta.vmdk\"\n"
	f.Add([]byte(split))
	f.Add([]byte("# Disk DescriptorFile\nRW 20480 FLAT \"flat-flat.vmdk\" 0\nRW 100 ZERO\n"))
	f.Add(sparseVMDKBytes(20480, delta))
	f.Add(sparseVMDKBytes(1<<30, ""))
	f.Fuzz(func(t *testing.T, b []byte) {
		var v vmdkInfo
		var err error
		if len(b) >= 4 && string(b[:4]) == "KDMV" {
			v, err = parseSparseVMDK(b)
		} else {
			v, err = parseVMDKDescriptor(b)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if v.capacity < 0 || len(v.files) > maxExtents {
			t.Fatalf("accepted %+v", v)
		}
	})
}

func TestParseVMDK(t *testing.T) {
	v, err := parseSparseVMDK(sparseVMDKBytes(20480, "# Disk DescriptorFile\nparentFileNameHint=\"/vm/base.vmdk\"\nRW 20480 SPARSE \"delta.vmdk\"\n"))
	if err != nil || v.capacity != 20480 || v.parent != "/vm/base.vmdk" {
		t.Fatalf("parseSparseVMDK = %+v, %v", v, err)
	}
	for _, tt := range []struct{ name, text string }{
		{"unknown line", "# Disk DescriptorFile\nHELLO\n"},
		{"extent without file", "# Disk DescriptorFile\nRW 10 SPARSE\n"},
		{"unterminated name", "# Disk DescriptorFile\nRW 10 SPARSE \"a.vmdk\n"},
		{"bad size", "# Disk DescriptorFile\nRW -10 SPARSE \"a.vmdk\"\n"},
		{"control character in parent", "# Disk DescriptorFile\nparentFileNameHint=\"a\x01\"\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if v, err := parseVMDKDescriptor([]byte(tt.text)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("parseVMDKDescriptor = %+v, %v; want ErrMalformed", v, err)
			}
		})
	}
}
