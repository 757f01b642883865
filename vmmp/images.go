package vmmp

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// Image deliveries: a provider that stores a preconfigured VM without holding its OS image
// fetches the image, by its content hash, from a provider that holds it, with the same
// transfer as a migration. The source serves exactly the image it agreed to deliver to exactly
// that peer, until the grant expires. An image that boots a kernel directly moves as three
// files in one transfer: its disk, kernel and initramfs.

// ImagePrefix starts the transfer request's VM field of an image delivery: "image:" and the
// image's content hash.
const ImagePrefix = "image:"

// The file names of an image delivery.
const (
	ImageFile  = "image"  // the disk
	KernelFile = "kernel" // the kernel of an image that boots one directly
	InitrdFile = "initrd" // its initramfs, if it has one
)

// ImageFiles are the files of one image delivery, by path on the source: the disk, and for an
// image that boots a kernel directly the kernel and, if it has one, the initramfs.
type ImageFiles struct {
	Disk, Kernel, Initrd string
}

// Names are the file names under which the files are delivered, in the order of a transfer
// request: ImageFile, then KernelFile and InitrdFile for those f has.
func (f ImageFiles) Names() []string {
	names, _ := f.files()
	return names
}

func (f ImageFiles) files() (names, paths []string) {
	for _, nf := range [...]struct{ name, path string }{{ImageFile, f.Disk}, {KernelFile, f.Kernel}, {InitrdFile, f.Initrd}} {
		if nf.path != "" {
			names, paths = append(names, nf.name), append(paths, nf.path)
		}
	}
	return names, paths
}

// ImageRequest is the transfer request of the image with content hash hash, of the files
// named (ImageFiles.Names; just ImageFile when none are).
func ImageRequest(hash string, names ...string) transfer.Request {
	if len(names) == 0 {
		names = []string{ImageFile}
	}
	return transfer.Request{VM: ImagePrefix + hash, Files: names}
}

// ImageGrants are a source's agreed image deliveries: which peer may read which image file,
// until when. It is safe for concurrent use.
type ImageGrants struct {
	now func() time.Time

	mu     sync.Mutex
	grants map[imageKey]imageGrant
}

type imageKey struct {
	to   peer.ID
	hash string
}

type imageGrant struct {
	files   map[string]string // path by delivered file name
	expires time.Time
}

// maxImageGrants bounds the deliveries a source has agreed at once.
const maxImageGrants = 256

// NewImageGrants returns an empty set of image grants.
func NewImageGrants() *ImageGrants {
	return &ImageGrants{now: time.Now, grants: map[imageKey]imageGrant{}}
}

// Grant lets to read the files of the image of content hash hash for ttl.
func (g *ImageGrants) Grant(hash string, to peer.ID, files ImageFiles, ttl time.Duration) error {
	if to.Validate() != nil || hash == "" || files.Disk == "" || (files.Initrd != "" && files.Kernel == "") || ttl <= 0 {
		return fmt.Errorf("grant of image %s: a peer, a disk (and a kernel with an initramfs) and a time to live are needed", hash)
	}
	names, paths := files.files()
	byName := make(map[string]string, len(names))
	for i, n := range names {
		byName[n] = paths[i]
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	for k, gr := range g.grants {
		if !now.Before(gr.expires) {
			delete(g.grants, k)
		}
	}
	k := imageKey{to, hash}
	if _, ok := g.grants[k]; !ok && len(g.grants) >= maxImageGrants {
		return fmt.Errorf("grant of image %s: %d deliveries are under way; try again later", hash, len(g.grants))
	}
	g.grants[k] = imageGrant{files: byName, expires: now.Add(ttl)}
	return nil
}

// Revoke ends the grant of image hash to peer to, if any.
func (g *ImageGrants) Revoke(hash string, to peer.ID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.grants, imageKey{to, hash})
}

// Authorize is a transfer.AuthorizeFunc for image deliveries: from may read the files of an
// image only while it holds a live grant of that image, and only the files granted.
func (g *ImageGrants) Authorize(_ context.Context, from peer.ID, req transfer.Request) ([]string, error) {
	hash, ok := strings.CutPrefix(req.VM, ImagePrefix)
	if !ok || len(req.Files) == 0 {
		return nil, ErrNotGranted
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	k := imageKey{from, hash}
	gr, ok := g.grants[k]
	if ok && !g.now().Before(gr.expires) {
		delete(g.grants, k)
		ok = false
	}
	if !ok {
		return nil, ErrNotGranted
	}
	paths := make([]string, len(req.Files))
	for i, name := range req.Files {
		if paths[i], ok = gr.files[name]; !ok {
			return nil, ErrNotGranted
		}
	}
	return paths, nil
}

// Authorize is the transfer server's hook of a provider: image deliveries (a request for
// ImagePrefix...) are decided by images, everything else, a VM's files, by vms.
func Authorize(vms *Grants, images *ImageGrants) transfer.AuthorizeFunc {
	return func(ctx context.Context, from peer.ID, req transfer.Request) ([]string, error) {
		if strings.HasPrefix(req.VM, ImagePrefix) {
			if images == nil {
				return nil, ErrNotGranted
			}
			return images.Authorize(ctx, from, req)
		}
		return vms.Authorize(ctx, from, req)
	}
}
