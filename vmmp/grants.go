package vmmp

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/internal/failpoint"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// ErrNotGranted: the peer has no live grant for the VM's files it asked for. The text is the
// same whether the VM exists or not, so a stranger learns nothing.
var ErrNotGranted = errors.New("no migration of this vm to this peer is agreed")

// Grants are an origin's agreed migrations (and image deliveries): for each, which peer may
// read which files of which VM, until when. Authorize is the transfer server's hook: every
// provider serves its VMs' files to exactly the destinations it granted, and nothing else.
// It is safe for concurrent use.
type Grants struct {
	now func() time.Time

	mu     sync.Mutex
	grants map[vm.ID]grant
}

type grant struct {
	to      peer.ID
	files   vm.Files
	rec     vm.Record
	expires time.Time
}

// NewGrants returns an empty set of grants.
func NewGrants() *Grants { return &Grants{now: time.Now, grants: map[vm.ID]grant{}} }

// Grant lets to read the files of the VM of rec (migrating) for ttl, replacing any earlier
// grant of the VM (a VM moves to one destination at a time); the destination may also ask
// for rec's state, owner and lease (Ask).
func (g *Grants) Grant(rec vm.Record, to peer.ID, files vm.Files, ttl time.Duration) error {
	if to.Validate() != nil || files.Dir == "" || len(files.Names) == 0 || ttl <= 0 {
		return fmt.Errorf("grant of vm %s: a peer, files and a time to live are needed", rec.ID)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.grants[rec.ID] = grant{to: to, files: vm.Files{Dir: files.Dir, Names: slices.Clone(files.Names)}, rec: rec, expires: g.now().Add(ttl)}
	return nil
}

// live returns the grant of id to from, if there is a live one.
func (g *Grants) live(id vm.ID, from peer.ID) (grant, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	gr, ok := g.grants[id]
	if ok && !g.now().Before(gr.expires) {
		delete(g.grants, id)
		ok = false
	}
	return gr, ok && gr.to == from
}

// Granted reports whether VM id has a live grant, to any peer.
func (g *Grants) Granted(id vm.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	gr, ok := g.grants[id]
	return ok && g.now().Before(gr.expires)
}

// Covers reports whether req asks for every file of a live grant of its VM to from: a transfer
// of it, completed, gave from the whole VM.
func (g *Grants) Covers(from peer.ID, req transfer.Request) (vm.ID, bool) {
	id, err := vm.ParseID(req.VM)
	if err != nil {
		return vm.ID{}, false
	}
	gr, ok := g.live(id, from)
	if !ok {
		return id, false
	}
	for _, name := range gr.files.Names {
		if !slices.Contains(req.Files, name) {
			return id, false
		}
	}
	return id, true
}

// Revoke ends the grant of VM id, if any.
func (g *Grants) Revoke(id vm.ID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.grants, id)
}

// Authorize is a transfer.AuthorizeFunc: from may read the files it names only if it holds a
// live grant of the VM and every name is among the granted files.
func (g *Grants) Authorize(_ context.Context, from peer.ID, req transfer.Request) ([]string, error) {
	id, err := vm.ParseID(req.VM)
	if err != nil {
		return nil, ErrNotGranted
	}
	gr, ok := g.live(id, from)
	if !ok {
		return nil, ErrNotGranted
	}
	paths := make([]string, len(req.Files))
	for i, name := range req.Files {
		if !slices.Contains(gr.files.Names, name) {
			return nil, fmt.Errorf("%w: %q is not a file of the vm", ErrNotGranted, name)
		}
		paths[i] = filepath.Join(gr.files.Dir, name)
	}
	failpoint.Here("origin:send")
	return paths, nil
}
