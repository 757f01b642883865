package disk

import (
	"errors"
	"fmt"
)

// SectorSize is the size of a disk sector in bytes; VMware assumes 512 like physical disks.
const SectorSize = 512

// MaxSizeMB is the largest disk this package creates: 2 TiB, the limit of the VMware disk
// formats of the report's time. Anything larger is a typo or an attack, not a request.
const MaxSizeMB = 2 << 20

// maxChunkBytes is the file-size limit that chunks are cut to stay under.
const maxChunkBytes = 2 << 30

// ErrSize reports a requested disk size that is not positive or larger than MaxSizeMB.
var ErrSize = errors.New("disk size out of range")

// Geometry is a disk's cylinder/head/sector shape. Its capacity is Cylinders×Heads×Sectors
// sectors of SectorSize bytes.
type Geometry struct {
	Cylinders int64
	Heads     int64
	Sectors   int64 // sectors per track
}

// CylinderSectors is the number of sectors in one cylinder.
func (g Geometry) CylinderSectors() int64 { return g.Heads * g.Sectors }

// Capacity is the number of sectors on the disk.
func (g Geometry) Capacity() int64 { return g.Cylinders * g.CylinderSectors() }

// Bytes is the disk's size in bytes.
func (g Geometry) Bytes() int64 { return g.Capacity() * SectorSize }

// PlainGeometry returns the geometry of the plain disk that VMware builds for a request of
// sizeMB megabytes (MiB). The cylinder count is rounded down, so the disk is at most one cylinder
// smaller than asked (for 3000 MB: 382 cylinders, 2996.5 MB).
//
// The report only gives the rule for disks of 2 GB and more: 255 heads and 63 sectors per track,
// so that the cylinder count alone sets the size. Smaller disks follow the BIOS translation of
// the BusLogic SCSI adapter that VMware emulates, which is where the 255/63 rule comes from:
// under 1 GB 64 heads × 32 sectors (1 MiB cylinders, so the size is exact), under 2 GB 128 heads
// × 32 sectors (2 MiB cylinders). A request of exactly 2048 MB already gets 255/63, as on the
// adapter, whose rule is "at least 2 GB".
func PlainGeometry(sizeMB int64) (Geometry, error) {
	if sizeMB <= 0 || sizeMB > MaxSizeMB {
		return Geometry{}, fmt.Errorf("%w: %d MB requested, want 1 to %d", ErrSize, sizeMB, MaxSizeMB)
	}
	g := Geometry{Heads: 255, Sectors: 63}
	switch {
	case sizeMB < 1024:
		g = Geometry{Heads: 64, Sectors: 32}
	case sizeMB < 2048:
		g = Geometry{Heads: 128, Sectors: 32}
	}
	sectors := sizeMB * (1 << 20) / SectorSize
	g.Cylinders = sectors / g.CylinderSectors()
	return g, nil
}

// ChunkCylinders returns how many cylinders go into each chunk file of a plain disk with
// geometry g: the largest whole number of cylinders that stays strictly below 2 GiB, less one
// cylinder of margin. For 255/63 that is 260 cylinders (2,138,572,800 bytes) where 261 would
// still fit; the report's own example ("test1.dat" 0 4176900) has exactly 260, so descriptors
// made here match the ones the original provider wrote, and no chunk comes within a cylinder of
// the signed 32-bit file-size limit that the filesystems and copy tools of the time had.
func ChunkCylinders(g Geometry) int64 {
	perCylinder := g.CylinderSectors() * SectorSize
	if perCylinder <= 0 {
		return 0
	}
	fit := (maxChunkBytes - 1) / perCylinder // largest n with n×cylinder < 2 GiB
	if fit <= 1 {
		return 1
	}
	return fit - 1
}
