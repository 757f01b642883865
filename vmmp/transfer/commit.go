package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// Committing is a redo log. Every file of a Fetch is staged and verified first; then either
// its stage is completed into a full image that will be renamed over the target, or (when
// that would copy more) the target will be patched in place with the staged blocks. The
// plan for all files goes into one commit record, made durable and atomic by a rename; only
// then are targets touched. A crash after that point is finished by Recover (which every
// Fetch runs first); a crash before it leaves every target as it was.
//
// Commit record (dir/.vmmp-transfer/commit):
//
//	magic "VMCR" | version u8 | files u32 | per file: name (uvarint length, bytes) |
//	mode u8 | block size u32 | size u64 | perm u32 | mtime ns i64 |
//	staged u32 | per staged range: offset u64, length u64 |
//	holes u32 | per hole: offset u64, length u64 | xxh3 u64 of everything before

const (
	modeNone   byte = 0 // the target already is the image
	modeRename byte = 1 // the stage is the complete image
	modeApply  byte = 2 // staged pages and holes go into the target in place
)

var recordMagic = [4]byte{'V', 'M', 'C', 'R'}

const (
	recordName    = "commit"
	recordVersion = 1
	maxHoles      = MaxFileSize / MinBlockSize
)

type commitRecord struct {
	files []commitFile
}

type commitFile struct {
	name   string
	mode   byte
	bs     int
	size   int64
	perm   uint32
	mtime  int64
	staged []Extent // apply: ranges of the stage to copy into the target
	holes  []Extent // apply: ranges of the target to punch
}

func appendExtents(b []byte, es []Extent) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(es)))
	for _, e := range es {
		b = binary.BigEndian.AppendUint64(b, uint64(e.Off))
		b = binary.BigEndian.AppendUint64(b, uint64(e.Len))
	}
	return b
}

func decodeExtents(d *dec) ([]Extent, error) {
	n := d.u32("extents")
	if d.err != nil || uint64(n) > maxHoles || len(d.b) < int(n)*16 {
		return nil, fmt.Errorf("%w: extent count", errBadRecord)
	}
	var es []Extent
	for range n {
		off, l := int64(d.u64("extent")), int64(d.u64("extent"))
		if off < 0 || l <= 0 || off > MaxFileSize || l > MaxFileSize {
			return nil, fmt.Errorf("%w: extent", errBadRecord)
		}
		es = append(es, Extent{Off: off, Len: l})
	}
	return es, nil
}

func (r *commitRecord) marshal() []byte {
	b := append([]byte(nil), recordMagic[:]...)
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.files)))
	for _, f := range r.files {
		b = appendString(b, f.name)
		b = append(b, f.mode)
		b = binary.BigEndian.AppendUint32(b, uint32(f.bs))
		b = binary.BigEndian.AppendUint64(b, uint64(f.size))
		b = binary.BigEndian.AppendUint32(b, f.perm)
		b = binary.BigEndian.AppendUint64(b, uint64(f.mtime))
		b = appendExtents(b, f.staged)
		b = appendExtents(b, f.holes)
	}
	return binary.BigEndian.AppendUint64(b, xxh3.Hash(b))
}

var errBadRecord = errors.New("bad commit record")

func decodeCommitRecord(b []byte) (*commitRecord, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: short", errBadRecord)
	}
	body := b[:len(b)-8]
	if xxh3.Hash(body) != binary.BigEndian.Uint64(b[len(b)-8:]) {
		return nil, fmt.Errorf("%w: checksum", errBadRecord)
	}
	d := dec{b: body}
	if string(d.bytes("magic", 4)) != string(recordMagic[:]) || d.u8("version") != recordVersion {
		return nil, fmt.Errorf("%w: magic or version", errBadRecord)
	}
	n := d.u32("files")
	if n > MaxFiles {
		return nil, fmt.Errorf("%w: %d files", errBadRecord, n)
	}
	r := &commitRecord{}
	for range n {
		var f commitFile
		f.name = d.str("name", maxNameLen)
		f.mode = d.u8("mode")
		f.bs = int(d.u32("block size"))
		f.size = int64(d.u64("size"))
		f.perm = d.u32("perm") & 0o777
		f.mtime = int64(d.u64("mtime"))
		if d.err != nil || (Request{Files: []string{f.name}}).validate() != nil || f.mode > modeApply ||
			!validBlockSize(f.bs) || f.size < 0 || f.size > MaxFileSize {
			return nil, fmt.Errorf("%w: file entry", errBadRecord)
		}
		var err error
		if f.staged, err = decodeExtents(&d); err != nil {
			return nil, err
		}
		if f.holes, err = decodeExtents(&d); err != nil {
			return nil, err
		}
		r.files = append(r.files, f)
	}
	if err := d.end("commit record"); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadRecord, err)
	}
	return r, nil
}

// commit moves every verified file into place (see the comment at the top of the file).
func (c *client) commit(ctx context.Context) error {
	sync := !c.cfg.noSync
	rec := &commitRecord{}
	for _, f := range c.files {
		cf, err := c.prepare(f, sync)
		if err != nil {
			return fmt.Errorf("commit %s: %w", f.name, err)
		}
		rec.files = append(rec.files, cf)
	}
	// Files the destination held already (an unchanged re-transfer) need no record: no
	// target changes, nothing to finish after a crash, nothing to wait on the disk for.
	if slices.ContainsFunc(rec.files, func(cf commitFile) bool { return cf.mode != modeNone }) {
		book := filepath.Join(c.dir, bookkeepingDir)
		if err := writeRecord(book, rec, sync); err != nil {
			return err
		}
		n, err := redo(c.dir, rec, sync)
		c.written.Add(n)
		if err != nil {
			return err
		}
	}
	for _, f := range c.files {
		c.storeSignature(ctx, f)
	}
	return nil
}

// prepare finishes a file's stage so that the commit cannot fail for want of space, and
// returns its entry of the commit record.
func (c *client) prepare(f *dstFile, sync bool) (commitFile, error) {
	g := f.g
	pg := newGeometry(g.size, subBlockSize) // the new image's pages
	cf := commitFile{name: f.name, bs: g.bs, size: g.size, perm: f.acc.mode, mtime: f.acc.mtime}
	if f.identical {
		cf.mode = modeNone
		_ = os.Remove(f.stageP)
		return cf, nil
	}
	z := newZeroes(g.bs)
	tailZero := z.hash(g.blockLen(g.nblocks - 1))
	zero := func(i int) bool {
		if g.blockLen(i) == g.bs {
			return f.final.strong[i] == z.full
		}
		return f.final.strong[i] == tailZero
	}
	// fromBasis: in a completed stage, page p would be copied from the basis.
	fromBasis := func(p int) bool {
		i := p / g.stride
		return f.basis != nil && !f.pages.get(p) && !f.holes[i] && pg.off(p) < f.basisSize && !zero(i)
	}
	var stagedBytes, copyBytes int64
	for p := range pg.nblocks {
		switch {
		case f.pages.get(p):
			stagedBytes += int64(pg.blockLen(p))
		case fromBasis(p):
			copyBytes += int64(pg.blockLen(p))
		}
	}
	holes := slices.Contains(f.holes[:g.nblocks], true)
	switch {
	case f.basis != nil && stagedBytes == 0 && !holes && g.size == f.basisSize:
		cf.mode = modeNone
		_ = os.Remove(f.stageP)
		return cf, nil
	case f.basis == nil || copyBytes <= stagedBytes:
		cf.mode = modeRename
	default:
		cf.mode = modeApply
	}
	if cf.mode == modeRename {
		// Complete the stage with what the new image keeps of the basis.
		n, err := forRuns(pg.nblocks, fromBasis, func(lo, hi int) (int64, error) {
			end := min(pg.off(hi-1)+int64(pg.blockLen(hi-1)), f.basisSize)
			return end - pg.off(lo), copyRange(f.stage, f.basis, pg.off(lo), end-pg.off(lo))
		})
		c.written.Add(n)
		if err != nil {
			return cf, err
		}
		if err := f.stage.Truncate(g.size); err != nil {
			return cf, err
		}
		if err := f.stage.Chmod(os.FileMode(cf.perm)); err != nil {
			return cf, err
		}
		if err := os.Chtimes(f.stageP, time.Time{}, time.Unix(0, cf.mtime)); err != nil {
			return cf, err
		}
	} else {
		// Allocate the target's space for the staged pages now: once the record is
		// written, the in-place copy must not run out of disk.
		tgt, err := os.OpenFile(f.target, os.O_RDWR, 0)
		if err != nil {
			return cf, err
		}
		defer tgt.Close()
		if _, err := forRuns(pg.nblocks, f.pages.get, func(lo, hi int) (int64, error) {
			e := Extent{Off: pg.off(lo), Len: pg.off(hi-1) + int64(pg.blockLen(hi-1)) - pg.off(lo)}
			cf.staged = append(cf.staged, e)
			return 0, reserve(tgt, e.Off, e.Len)
		}); err != nil {
			return cf, err
		}
		_, _ = forRuns(g.nblocks, func(i int) bool { return f.holes[i] }, func(lo, hi int) (int64, error) {
			cf.holes = append(cf.holes, Extent{Off: g.off(lo), Len: g.off(hi-1) + int64(g.blockLen(hi-1)) - g.off(lo)})
			return 0, nil
		})
	}
	if sync {
		if err := f.stage.Sync(); err != nil {
			return cf, err
		}
	}
	return cf, nil
}

// forRuns calls do for each maximal run [lo, hi) of indexes below n where in is true and
// sums what it returns.
func forRuns(n int, in func(i int) bool, do func(lo, hi int) (int64, error)) (int64, error) {
	var total int64
	for i := 0; i < n; {
		if !in(i) {
			i++
			continue
		}
		j := i + 1
		for j < n && in(j) {
			j++
		}
		k, err := do(i, j)
		total += k
		if err != nil {
			return total, err
		}
		i = j
	}
	return total, nil
}

func writeRecord(book string, rec *commitRecord, sync bool) error {
	p := filepath.Join(book, recordName)
	tmp := p + ".tmp"
	if err := writeFileSync(tmp, rec.marshal(), sync); err != nil {
		return fmt.Errorf("write commit record: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write commit record: %w", err)
	}
	if sync {
		return syncDir(book)
	}
	return nil
}

func writeFileSync(path string, b []byte, sync bool) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	if sync {
		if err := f.Sync(); err != nil {
			_ = f.Close()
			return err
		}
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// redo carries out a commit record; it is idempotent, so it is also how a crashed commit is
// finished. It returns the bytes copied.
func redo(dir string, rec *commitRecord, sync bool) (int64, error) {
	book := filepath.Join(dir, bookkeepingDir)
	// A target's cached signature (and with it what a change tracker counts from) no longer
	// describes it once the commit touches it: it goes first, for good, before any byte
	// changes; the commit's end stores the new one.
	dropped := false
	for _, f := range rec.files {
		if f.mode == modeNone {
			continue
		}
		if err := os.Remove(sigPath(filepath.Join(dir, f.name))); err == nil {
			dropped = true
		} else if !errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("commit %s: drop its signature: %w", f.name, err)
		}
	}
	if dropped && sync {
		if err := syncDir(book); err != nil {
			return 0, err
		}
	}
	var copied int64
	for _, f := range rec.files {
		target := filepath.Join(dir, f.name)
		stage := filepath.Join(book, f.name+".stage")
		switch f.mode {
		case modeRename:
			if err := os.Rename(stage, target); err != nil && !errors.Is(err, os.ErrNotExist) {
				return copied, fmt.Errorf("commit %s: %w", f.name, err)
			}
		case modeApply:
			n, err := applyStage(target, stage, f, sync)
			copied += n
			if err != nil {
				return copied, fmt.Errorf("commit %s: %w", f.name, err)
			}
		}
	}
	if sync {
		if err := syncDir(dir); err != nil {
			return copied, err
		}
	}
	if err := os.Remove(filepath.Join(book, recordName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return copied, err
	}
	if sync {
		return copied, syncDir(book)
	}
	return copied, nil
}

// applyStage copies the staged pages into the target, punches its holes and sets its size,
// then drops the stage.
func applyStage(target, stagePath string, f commitFile, sync bool) (int64, error) {
	st, err := os.Open(stagePath)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil // applied before a crash
	}
	if err != nil {
		return 0, err
	}
	defer st.Close()
	tgt, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer tgt.Close()
	var copied int64
	for _, e := range f.staged {
		if err := copyRange(tgt, st, e.Off, e.Len); err != nil {
			return copied, err
		}
		copied += e.Len
	}
	for _, h := range f.holes {
		if err := punchHole(tgt, h.Off, h.Len); err != nil {
			return copied, err
		}
	}
	if err := tgt.Truncate(f.size); err != nil {
		return copied, err
	}
	if err := tgt.Chmod(os.FileMode(f.perm)); err != nil {
		return copied, err
	}
	if err := os.Chtimes(target, time.Time{}, time.Unix(0, f.mtime)); err != nil {
		return copied, err
	}
	if sync {
		if err := tgt.Sync(); err != nil {
			return copied, err
		}
	}
	return copied, os.Remove(stagePath)
}

// Recover finishes a commit that a crash interrupted in dir (a directory Fetch writes to).
// Fetch calls it itself; a node calls it at start for each such directory before it uses
// the files there.
func Recover(dir string) error { return recoverDir(dir, true) }

func recoverDir(dir string, sync bool) error {
	b, err := os.ReadFile(filepath.Join(dir, bookkeepingDir, recordName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	rec, err := decodeCommitRecord(b)
	if err != nil {
		// A torn record was never renamed into place, so it cannot be here; a corrupt one
		// is a disk fault that needs a person.
		return fmt.Errorf("recover %s: %w", dir, err)
	}
	_, err = redo(dir, rec, sync)
	return err
}

// storeSignature caches the new image's signature next to it, so the next transfer of it,
// in either direction, need not hash it, and tells the change tracker, which counts changes
// from here.
func (c *client) storeSignature(ctx context.Context, f *dstFile) {
	if f.identical {
		return // its cache holds already
	}
	fi, err := os.Stat(f.target)
	if err != nil {
		return
	}
	cs := &cachedSig{sig: f.final, id: fileIdentity(fi), verifiedAt: time.Now().UnixNano(), image: f.res.Hash}
	if err := storeCachedSig(f.target, cs); err != nil {
		c.cfg.log.Debug("transfer: cache signature", "err", err)
	} else if c.cfg.tracker != nil {
		if err := c.cfg.tracker.Checkpoint(ctx, f.target, f.res.Hash); err != nil {
			c.cfg.log.Warn("transfer: checkpoint of the change tracker", "file", f.target, "err", err)
		}
	}
}

// lockDir serialises Fetches into one directory.
func lockDir(ctx context.Context, book string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(book, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", book, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
