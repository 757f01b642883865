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
// that peer, until the grant expires.

// ImagePrefix starts the transfer request's VM field of an image delivery: "image:" and the
// image's content hash.
const ImagePrefix = "image:"

// ImageFile is the one file name of an image delivery.
const ImageFile = "image"

// ImageRequest is the transfer request of the image with content hash hash.
func ImageRequest(hash string) transfer.Request {
	return transfer.Request{VM: ImagePrefix + hash, Files: []string{ImageFile}}
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
	path    string
	expires time.Time
}

// maxImageGrants bounds the deliveries a source has agreed at once.
const maxImageGrants = 256

// NewImageGrants returns an empty set of image grants.
func NewImageGrants() *ImageGrants {
	return &ImageGrants{now: time.Now, grants: map[imageKey]imageGrant{}}
}

// Grant lets to read the image file at path, of content hash hash, for ttl.
func (g *ImageGrants) Grant(hash string, to peer.ID, path string, ttl time.Duration) error {
	if to.Validate() != nil || hash == "" || path == "" || ttl <= 0 {
		return fmt.Errorf("grant of image %s: a peer, a path and a time to live are needed", hash)
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
	g.grants[k] = imageGrant{path: path, expires: now.Add(ttl)}
	return nil
}

// Revoke ends the grant of image hash to peer to, if any.
func (g *ImageGrants) Revoke(hash string, to peer.ID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.grants, imageKey{to, hash})
}

// Authorize is a transfer.AuthorizeFunc for image deliveries: from may read the one file of
// an image only while it holds a live grant of that image.
func (g *ImageGrants) Authorize(_ context.Context, from peer.ID, req transfer.Request) ([]string, error) {
	hash, ok := strings.CutPrefix(req.VM, ImagePrefix)
	if !ok || len(req.Files) != 1 || req.Files[0] != ImageFile {
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
	return []string{gr.path}, nil
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
