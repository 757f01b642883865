package disk

import (
	"errors"
	"testing"
)

func TestPlainGeometry(t *testing.T) {
	tests := []struct {
		name   string
		sizeMB int64
		want   Geometry
		chunks int64 // cylinders per chunk
	}{
		{"report example 3000 MB", 3000, Geometry{382, 255, 63}, 260},
		{"exactly 2 GB takes 255/63", 2048, Geometry{261, 255, 63}, 260},
		{"just under 2 GB", 2047, Geometry{1023, 128, 32}, 1022},
		{"1 GB", 1024, Geometry{512, 128, 32}, 1022},
		{"just under 1 GB is exact", 1023, Geometry{1023, 64, 32}, 2046},
		{"1 MB is one cylinder", 1, Geometry{1, 64, 32}, 2046},
		{"largest", MaxSizeMB, Geometry{267349, 255, 63}, 260},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := PlainGeometry(tt.sizeMB)
			if err != nil {
				t.Fatal(err)
			}
			if g != tt.want {
				t.Fatalf("PlainGeometry(%d) = %+v, want %+v", tt.sizeMB, g, tt.want)
			}
			if g.Bytes() > tt.sizeMB<<20 || g.Bytes() <= tt.sizeMB<<20-g.CylinderSectors()*SectorSize {
				t.Fatalf("%d bytes is not within one cylinder below %d MB", g.Bytes(), tt.sizeMB)
			}
			if c := ChunkCylinders(g); c != tt.chunks {
				t.Fatalf("ChunkCylinders = %d, want %d", c, tt.chunks)
			}
			if b := ChunkCylinders(g) * g.CylinderSectors() * SectorSize; b >= 2<<30 {
				t.Fatalf("chunk of %d bytes reaches 2 GiB", b)
			}
		})
	}
}

func TestPlainGeometryRejects(t *testing.T) {
	for _, tt := range []struct {
		name   string
		sizeMB int64
	}{
		{"zero", 0},
		{"negative", -3000},
		{"beyond 2 TiB", MaxSizeMB + 1},
		{"overflowing", 1 << 62},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if g, err := PlainGeometry(tt.sizeMB); !errors.Is(err, ErrSize) {
				t.Fatalf("PlainGeometry(%d) = %+v, %v; want ErrSize", tt.sizeMB, g, err)
			}
		})
	}
}
