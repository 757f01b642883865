package disk

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func readGolden(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDescriptorGolden checks the layout against the report's example for disk "test".
func TestDescriptorGolden(t *testing.T) {
	g, err := PlainGeometry(3000)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewPlainDescriptor("test", g)
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	want := readGolden(t, "test.pln")
	if !bytes.Equal(got, want) {
		t.Fatalf("descriptor:\n%s\nwant (testdata/test.pln):\n%s", got, want)
	}
	parsed, err := ParseDescriptor(want)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(parsed, d) {
		t.Fatalf("parsed %+v, want %+v", parsed, d)
	}
	if parsed.Size() != 3142056960 {
		t.Fatalf("size %d, want 3142056960", parsed.Size())
	}
}

func TestNewPlainDescriptorChunks(t *testing.T) {
	tests := []struct {
		name    string
		sizeMB  int64
		extents []Extent
	}{
		{"small disk, one chunk", 100, []Extent{{"d1.dat", 0, 204800}}},
		{"exactly 2 GB", 2048, []Extent{{"d1.dat", 0, 4176900}, {"d2.dat", 4176900, 16065}}},
		{"10 GB", 10240, []Extent{
			{"d1.dat", 0, 4176900}, {"d2.dat", 4176900, 4176900}, {"d3.dat", 8353800, 4176900},
			{"d4.dat", 12530700, 4176900}, {"d5.dat", 16707600, 4176900}, {"d6.dat", 20884500, 80325},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := PlainGeometry(tt.sizeMB)
			if err != nil {
				t.Fatal(err)
			}
			d, err := NewPlainDescriptor("d", g)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d.Extents, tt.extents) {
				t.Fatalf("extents %v, want %v", d.Extents, tt.extents)
			}
			if d.Capacity != g.Capacity() {
				t.Fatalf("capacity %d, want %d", d.Capacity, g.Capacity())
			}
		})
	}
}

func TestParseDescriptorVariants(t *testing.T) {
	want, err := ParseDescriptor(readGolden(t, "test.pln"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		text string
	}{
		{"report spacing with blank lines", "DRIVETYPE scsi\n\n#vm | VERSION 2\n\n#vm | TOOLSVERSION 0\n\nCYLINDERS 382\n\nHEADS 255\n\nSECTORS 63\n\n#vm| CAPACITY 6136830\n\nACCESS \"test1.dat\" 0 4176900\nACCESS \"test2.dat\" 4176900 1959930\n"},
		{"VMware spacing, CRLF, tabs and other settings", "DRIVETYPE\tscsi\r\n#vm|VERSION 2\r\n#vm|TOOLSVERSION 0\r\n#vm|ENCODING windows-1252\r\n# a comment\r\nCYLINDERS 382\r\nHEADS 255\r\nSECTORS 63\r\n#vm|CAPACITY 6136830\r\nACCESS \"test1.dat\"  0  4176900\r\nACCESS \"test2.dat\" 4176900 1959930"},
		{"capacity left out", "DRIVETYPE scsi\n#vm| VERSION 2\nCYLINDERS 382\nHEADS 255\nSECTORS 63\nACCESS \"test1.dat\" 0 4176900\nACCESS \"test2.dat\" 4176900 1959930\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDescriptor([]byte(tt.text))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestParseDescriptorRejects(t *testing.T) {
	golden := string(readGolden(t, "test.pln"))
	replace := func(old, new string) string {
		if !strings.Contains(golden, old) {
			t.Fatalf("golden has no %q", old)
		}
		return strings.Replace(golden, old, new, 1)
	}
	tests := []struct {
		name string
		text string
	}{
		{"empty", ""},
		{"no extents", replace("ACCESS \"test1.dat\" 0 4176900\nACCESS \"test2.dat\" 4176900 1959930\n", "")},
		{"missing heads", replace("HEADS 255\n", "")},
		{"missing drive type", replace("DRIVETYPE scsi\n", "")},
		{"unknown keyword", golden + "FORMAT raw\n"},
		{"repeated cylinders", golden + "CYLINDERS 382\n"},
		{"too many heads", replace("HEADS 255", "HEADS 256")},
		{"too many sectors", replace("SECTORS 63", "SECTORS 64")},
		{"negative number", replace("CYLINDERS 382", "CYLINDERS -382")},
		{"leading zero", replace("CYLINDERS 382", "CYLINDERS 0382")},
		{"huge number", replace("CYLINDERS 382", "CYLINDERS 99999999999999999999")},
		{"gap between extents", replace("4176900 1959930", "4176901 1959929")},
		{"overlapping extents", replace("4176900 1959930", "4176899 1959931")},
		{"first extent not at 0", replace("0 4176900", "1 4176899")},
		{"empty extent", replace("\"test2.dat\" 4176900 1959930", "\"test2.dat\" 4176900 0")},
		{"capacity disagrees", replace("CAPACITY 6136830", "CAPACITY 6136831")},
		{"path in chunk name", replace("test2.dat", "../test2.dat")},
		{"absolute chunk name", replace("test2.dat", "/etc/passwd")},
		{"backslash in chunk name", replace("test2.dat", `..\test2.dat`)},
		{"dot dot", replace("test2.dat", "..")},
		{"control character", replace("test2.dat", "test\x012.dat")},
		{"unterminated quote", replace("\"test2.dat\" 4176900 1959930", "\"test2.dat 4176900 1959930")},
		{"missing length", replace("\"test2.dat\" 4176900 1959930", "\"test2.dat\" 4176900")},
		{"same chunk twice", replace("test2.dat", "test1.dat")},
		{"setting without its comment mark", golden + "vm| CAPACITY 6136830\n"},
		{"over the size cap", golden + strings.Repeat("#", MaxDescriptorSize)},
		{"too large", replace("\"test2.dat\" 4176900 1959930", "\"test2.dat\" 4176900 4294967296")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := ParseDescriptor([]byte(tt.text))
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseDescriptor = %+v, %v; want ErrMalformed", d, err)
			}
		})
	}
}

func TestMarshalTextRejectsInvalid(t *testing.T) {
	d, err := ParseDescriptor(readGolden(t, "test.pln"))
	if err != nil {
		t.Fatal(err)
	}
	d.Extents[1].File = `a"b.dat`
	if _, err := d.MarshalText(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("MarshalText with a quote in a name: %v, want ErrMalformed", err)
	}
}

// FuzzParseDescriptor checks that the parser never panics and that whatever it accepts
// formats to text that parses back to the same descriptor and formats to the same bytes.
func FuzzParseDescriptor(f *testing.F) {
	f.Add(readGolden(f, "test.pln"))
	f.Add([]byte("DRIVETYPE ide\n#vm|VERSION 2\n#vm|TOOLSVERSION 0\nCYLINDERS 1024\nHEADS 16\nSECTORS 63\n#vm|CAPACITY 1032192\nACCESS \"plain disk.dat\" 0 1032192\n"))
	f.Add([]byte("DRIVETYPE scsi\r\n#vm | VERSION 2\r\nCYLINDERS 1\r\nHEADS 64\r\nSECTORS 32\r\nACCESS \"x1.dat\" 0 2048\r\n"))
	f.Add([]byte("ACCESS \"\" 0 0\n#vm|\n#vm| \n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDescriptor(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		text, err := d.MarshalText()
		if err != nil {
			t.Fatalf("accepted %q but cannot format it: %v", b, err)
		}
		again, err := ParseDescriptor(text)
		if err != nil {
			t.Fatalf("formatted %q does not parse: %v", text, err)
		}
		if !reflect.DeepEqual(again, d) {
			t.Fatalf("round trip changed %+v to %+v", d, again)
		}
		if text2, _ := again.MarshalText(); !bytes.Equal(text, text2) {
			t.Fatalf("formatting is not stable: %q then %q", text, text2)
		}
	})
}
