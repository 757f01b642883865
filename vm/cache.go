package vm

import (
	"cmp"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// The copies an origin keeps of VMs that moved away (Record.Cached) save a later return all
// but what changed, but they are not paid for: they take at most ManagerConfig.CacheMB of
// disk, and give way, oldest first, to a new VM that needs the room.

// DefaultCacheMB is ManagerConfig.CacheMB's default: 10 GiB of cached copies.
const DefaultCacheMB = 10240

// cachedCopy is a cached copy with the disk it takes.
type cachedCopy struct {
	rec   Record
	bytes int64 // allocated on disk: holes take nothing
}

// cachedCopies lists the cached copies, the oldest (longest since it moved away) first.
func (m *Manager) cachedCopies(ctx context.Context) ([]cachedCopy, int64) {
	var out []cachedCopy
	var total int64
	for _, r := range m.inv.List() {
		if !r.Cached {
			continue
		}
		c := cachedCopy{rec: r}
		if files, err := m.drv.Files(ctx, r.ID); err == nil {
			for _, name := range files.Names {
				c.bytes += allocated(filepath.Join(files.Dir, name))
			}
		}
		out = append(out, c)
		total += c.bytes
	}
	slices.SortFunc(out, func(a, b cachedCopy) int {
		return cmp.Or(a.rec.Updated.Compare(b.rec.Updated), cmp.Compare(a.rec.ID.String(), b.rec.ID.String()))
	})
	return out, total
}

// allocated is the disk the file at path takes.
func allocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// trimCache evicts cached copies, oldest first, until they take at most the cache's budget
// and, when needMB is above zero, the host has needMB free for a new VM's disk (as far as
// the driver can tell, HostDescriber). It never evicts keep.
func (m *Manager) trimCache(ctx context.Context, needMB int64, keep ID) {
	copies, total := m.cachedCopies(ctx)
	free := func() bool {
		if needMB <= 0 {
			return true
		}
		hd, ok := m.drv.(HostDescriber)
		if !ok {
			return true
		}
		h, err := hd.DescribeHost(ctx)
		return err != nil || h.DiskMB >= needMB
	}
	for _, c := range copies {
		if total <= m.cacheBytes && free() {
			return
		}
		if c.rec.ID == keep {
			continue
		}
		if _, err := m.Delete(ctx, c.rec.ID); err != nil && !errors.Is(err, ErrNotFound) {
			m.log.Warn("evict a cached copy", "vm", c.rec.ID, "err", err)
			continue
		}
		total -= c.bytes
		m.log.Info("cached copy evicted", "vm", c.rec.ID, "bytes", c.bytes, "cache_bytes", total)
	}
}
