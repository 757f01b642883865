package vmmp

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// Incoming is a migration as its destination sees it: which VM comes from which origin, in
// which state there (migrating, with its prior status), for whom, and which files to fetch.
type Incoming struct {
	VM     vm.ID
	Origin peer.ID
	State  vm.State
	Owner  string
	Lease  string
	Files  []string // names as the origin's vm.Files gives them
}

// Pull is the destination's part of a migration (the migration server's copy): it fetches
// the VM's files from the origin, as the origin granted, into a staging directory of m's
// driver — seeded with the copy this provider kept from an earlier stay, so that only what
// changed travels — and adopts them into m at the next version. The transfer verifies every
// file's hash before it commits; a failure leaves nothing adopted and the staging directory
// removed.
func Pull(ctx context.Context, h host.Host, m *vm.Manager, in Incoming, opts ...transfer.Option) (vm.Record, *transfer.Result, error) {
	imp, ok := m.Driver().(vm.Importer)
	if !ok {
		return vm.Record{}, nil, fmt.Errorf("pull vm %s: this provider's hypervisor cannot import: %w", in.VM, vm.ErrUnsupported)
	}
	dir, err := imp.StagingDir(ctx, in.VM)
	if err != nil {
		return vm.Record{}, nil, err
	}
	adopted := false
	defer func() {
		if !adopted {
			os.RemoveAll(dir)
		}
	}()
	if rec, err := m.Get(in.VM); err == nil && rec.Cached {
		restore, err := seed(ctx, m, in.VM, dir)
		if err != nil {
			return vm.Record{}, nil, err
		}
		defer func() {
			if !adopted {
				restore()
			}
		}()
	}
	res, err := transfer.Fetch(ctx, h, in.Origin, transfer.Request{VM: in.VM.String(), Files: in.Files}, dir, opts...)
	if err != nil {
		return vm.Record{}, res, fmt.Errorf("pull vm %s from %s: %w", in.VM, in.Origin, err)
	}
	rec, err := m.Adopt(ctx, vm.AdoptRequest{ID: in.VM, Dir: dir, State: in.State, Origin: in.Origin.String(), Owner: in.Owner, Lease: in.Lease})
	if err != nil {
		return vm.Record{}, res, err
	}
	adopted = true
	return rec, res, nil
}

// seed puts the cached copy of id in the staging directory dir, for the transfer to patch: it
// moves the copy's whole directory there, which costs nothing and keeps every file's identity,
// so that the signatures the transfer stored beside them stay valid and unchanged files are
// neither copied nor hashed again. Where the directory cannot move (another file system), it
// copies the files, holes kept. restore puts a moved copy back, for a migration that failed:
// the files are then each the old or the new version, a basis as good as before.
func seed(ctx context.Context, m *vm.Manager, id vm.ID, dir string) (restore func(), err error) {
	restore = func() {}
	files, err := m.Driver().Files(ctx, id)
	if err != nil {
		if errors.Is(err, vm.ErrNotFound) {
			return restore, nil
		}
		return restore, err
	}
	if err := os.Remove(dir); err == nil {
		if err := os.Rename(files.Dir, dir); err == nil {
			return func() {
				if rec, err := m.Get(id); err == nil && rec.Cached {
					if err := os.Rename(dir, files.Dir); err == nil {
						return
					}
				}
				os.RemoveAll(dir) // the cached copy went meanwhile (evicted)
			}, nil
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			return restore, fmt.Errorf("seed the migration of vm %s: %w", id, err)
		}
	}
	for _, name := range files.Names {
		if err := copyFile(ctx, filepath.Join(files.Dir, name), filepath.Join(dir, name)); err != nil {
			return restore, fmt.Errorf("seed the migration of vm %s with its cached copy: %w", id, err)
		}
	}
	return restore, nil
}

// copyFile copies src to dst keeping its holes: a cached disk image is mostly sparse, and a
// copy that filled the holes would take the image's whole size on disk.
func copyFile(ctx context.Context, src, dst string) error {
	if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
		return nil // the cached copy lacks the file: the transfer sends it whole
	}
	return transfer.CopySparse(ctx, dst, src)
}

// SweepStaging tidies the staging directories of m's driver that a node stopped in the middle
// of a migration left: a cached copy that had moved there to seed it goes back where it was,
// anything else is removed. The daemon calls it before it serves migrations.
func SweepStaging(m *vm.Manager) error {
	d, ok := m.Driver().(interface {
		StagingRoot() string
		Dir(vm.ID) string
	})
	if !ok {
		return nil
	}
	entries, err := os.ReadDir(d.StagingRoot())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		path := filepath.Join(d.StagingRoot(), e.Name())
		name := e.Name() // the VM's ID, '-', a random suffix
		if id, err := vm.ParseID(name[:min(len(name), 36)]); err == nil {
			if rec, err := m.Get(id); err == nil && rec.Cached {
				if _, err := os.Stat(d.Dir(id)); errors.Is(err, os.ErrNotExist) {
					if err := os.Rename(path, d.Dir(id)); err == nil {
						continue
					}
				}
			}
		}
		errs = append(errs, os.RemoveAll(path))
	}
	return errors.Join(errs...)
}
