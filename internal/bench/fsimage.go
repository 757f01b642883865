package bench

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/virtuoso-market/virtuoso/internal/progress"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// The transfer benchmark's images: random data (randomImage, the hard case for compression
// and the easy one for diffs) or a real filesystem (ext4Image).
type transferImage interface {
	// file is the image the methods move.
	file() string
	// create makes it.
	create(ctx context.Context) error
	// reset sets it back to as created and drops the transfer's cached signature, so that
	// every method starts from the same file, as new.
	reset(ctx context.Context) error
	// change changes it as between a VM's two migrations.
	change(ctx context.Context) error
	// changedBytes is how much data the change wrote.
	changedBytes() int64
	// describe says what the image is, for the table's title.
	describe() string
}

// ext4Image is an ext4 filesystem built with mke2fs -d from real files of this machine
// (/usr/lib, /usr/share, /usr/bin, in order) until they fill its share of it; its change is what
// a guest does between two moves: a package-install-sized set of files written (the next
// files of the same trees), some files removed, the times of others touched, all by debugfs,
// in place, as a running guest changes its disk.
type ext4Image struct {
	opts    TransferOptions
	share   float64 // of the image its files fill
	path    string
	orig    string // the image as built
	tree    string // the tree it was built from: hard links to (or copies of) the machine's files
	used    int64  // bytes of files in it
	adds    []string
	added   int64
	removes []string // paths in the image
	touches []string
}

// ext4Roots are the trees the image's files come from.
var ext4Roots = []string{"/usr/lib", "/usr/share", "/usr/bin"}

// debugfsSafe matches the paths debugfs takes unquoted.
var debugfsSafe = regexp.MustCompile(`^[A-Za-z0-9._+/-]+$`)

func newExt4Image(opts TransferOptions, path string) *ext4Image {
	dir := filepath.Dir(filepath.Dir(path))
	share := 0.5
	if opts.Files > 0 {
		share = float64(opts.Files) / float64(opts.Size)
	}
	return &ext4Image{opts: opts, share: share, path: path, orig: filepath.Join(dir, "ext4-orig.img"), tree: filepath.Join(dir, "ext4-tree")}
}

func (im *ext4Image) file() string { return im.path }

func (im *ext4Image) describe() string {
	return fmt.Sprintf("ext4 with %s of this machine's files", progress.FormatSize(im.used))
}

func (im *ext4Image) changedBytes() int64 { return im.added }

func (im *ext4Image) create(ctx context.Context) error {
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (e2fsprogs: apt-get install -y e2fsprogs)", tool)
		}
	}
	want, add := int64(im.share*float64(im.opts.Size)), int64(im.opts.Changed*float64(im.opts.Size))
	var n int
	// A file goes in only if it fits what is left, so that the filesystem's own metadata has
	// room; none is larger than a sixteenth of the image, so that many files fill it.
	err := walkFiles(ext4Roots, func(src string, fi fs.FileInfo) (bool, error) {
		if fi.Size() > im.opts.Size/16 {
			return true, nil
		}
		switch {
		case im.used+fi.Size() <= want:
			rel := strings.TrimPrefix(src, "/")
			if err := linkOrCopy(src, filepath.Join(im.tree, rel)); err != nil {
				return false, err
			}
			im.used += fi.Size()
			n++
			switch {
			case n%97 == 0:
				im.removes = append(im.removes, "/"+rel)
			case n%31 == 0:
				im.touches = append(im.touches, "/"+rel)
			}
		case im.used < want*99/100:
			// too large for what is left: a smaller one will do
		case im.added+fi.Size() <= add:
			im.adds = append(im.adds, src)
			im.added += fi.Size()
		case im.added >= add*99/100:
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	if im.used < want*99/100 {
		return fmt.Errorf("the machine's %s hold %s of files, less than %s of the %s image", strings.Join(ext4Roots, ", "),
			progress.FormatSize(im.used), formatPercent(im.share), progress.FormatSize(im.opts.Size))
	}
	out, err := exec.CommandContext(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", im.tree,
		im.orig, fmt.Sprintf("%dk", im.opts.Size/1024)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mke2fs: %w: %s", err, out)
	}
	if err := os.RemoveAll(im.tree); err != nil { // links only: the machine's files stay
		return err
	}
	return im.reset(ctx)
}

func (im *ext4Image) reset(ctx context.Context) error { return resetFrom(ctx, im.path, im.orig) }

// resetFrom makes path a copy of orig again, with no cached signature.
func resetFrom(ctx context.Context, path, orig string) error {
	if err := os.RemoveAll(filepath.Join(filepath.Dir(path), ".vmmp-transfer")); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return transfer.CopySparse(ctx, path, orig)
}

func (im *ext4Image) change(ctx context.Context) error {
	var script strings.Builder
	script.WriteString("mkdir /virtuoso-added\n")
	for i, src := range im.adds {
		fmt.Fprintf(&script, "write %s /virtuoso-added/%d-%s\n", src, i, filepath.Base(src))
	}
	for _, p := range im.removes {
		fmt.Fprintf(&script, "rm %s\n", p)
	}
	stamp := time.Date(2027, 1, 1, 12, 0, 0, 0, time.UTC).Format("20060102150405")
	for _, p := range im.touches {
		fmt.Fprintf(&script, "sif %s mtime %s\n", p, stamp)
	}
	f := filepath.Join(filepath.Dir(im.orig), "ext4-change.debugfs")
	if err := os.WriteFile(f, []byte(script.String()), 0o644); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "debugfs", "-w", "-f", f, im.path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("debugfs: %w: %s", err, out)
	}
	time.Sleep(100 * time.Millisecond) // past the timestamp granularity, as a VM's disk between its last write and a move
	return nil
}

// walkFiles calls fn with every regular, non-empty, debugfs-safe file under roots, in order,
// until fn says stop.
func walkFiles(roots []string, fn func(path string, fi fs.FileInfo) (bool, error)) error {
	stop := errors.New("stop")
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // unreadable: skipped
			}
			if !d.Type().IsRegular() || !debugfsSafe.MatchString(p) {
				return nil
			}
			fi, err := d.Info()
			if err != nil || fi.Size() == 0 {
				return nil
			}
			more, err := fn(p, fi)
			if err != nil {
				return err
			}
			if !more {
				return stop
			}
			return nil
		})
		if errors.Is(err, stop) {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// linkOrCopy makes dst a hard link to src, or a copy where a link cannot be made.
func linkOrCopy(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if os.Link(src, dst) == nil {
		return nil
	}
	return transfer.CopySparse(context.Background(), dst, src)
}
