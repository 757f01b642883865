package market

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/zeebo/blake3"

	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// The image protocol, /virtuoso/image/1.0.0 (report §6.3.1, the preconfigured path): a
// provider asked to store a preconfigured configuration whose OS image it does not hold
// fetches the image by its content hash from a provider whose signed offer lists it. It asks
// that source to deliver the image, showing the buyer's lease proposal that names this
// provider and the image; the source grants it exactly that image, and the image then moves
// with the migration's transfer (/vmmp/transfer/1.0.0) under vmmp.ImagePrefix. An image that
// boots a kernel directly moves as its disk, kernel and initramfs in one transfer, its command
// line in the source's answer; its content hash covers all four (imageParts). While the image
// moves the VM is migrating (as the report has it, so that its owner makes no change while it
// is being stored); then it is created, stored, and the provider holds and advertises the
// image like its own.
//
// The sources are the offers in this provider's own book: they are signed by their providers
// and were checked when they arrived, whereas a buyer's node is not trusted to name peers for
// a provider to dial. Whatever a source sends is checked against the content hash before it
// is used, so a source need not be trusted either.

// imageRequest asks a source to deliver an image.
type imageRequest struct {
	Image string `json:"image"` // content hash, blake3:<64 hex>
	Lease []byte `json:"lease"` // the buyer's proposal naming the requester and the image
}

// imageResponse agrees to a delivery (the size of the image's disk, and what else an image
// that boots a kernel directly sends) or refuses it.
type imageResponse struct {
	Size  int64         `json:"size,omitempty"`
	Boot  *bootDelivery `json:"boot,omitempty"`
	Error *WireError    `json:"error,omitempty"`
}

// bootDelivery is the kernel boot of a delivered image: the kernel (vmmp.KernelFile) and, with
// Initrd, the initramfs (vmmp.InitrdFile) come with the disk; the command line comes here.
type bootDelivery struct {
	Size    int64  `json:"size"` // bytes of the kernel and initramfs
	Initrd  bool   `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
}

// maxBootBytes caps the kernel and initramfs of a fetched image.
const maxBootBytes = 1 << 30

func (r *imageResponse) check() error {
	if r.Size < 0 || r.Size > vm.MaxDiskMB<<20 {
		return fmt.Errorf("%w: image size %d", ErrMalformed, r.Size)
	}
	if b := r.Boot; b != nil && (b.Size < 0 || b.Size > maxBootBytes || len(b.Cmdline) > maxCmdline) {
		return fmt.Errorf("%w: kernel and initramfs of %d bytes, command line of %d", ErrMalformed, b.Size, len(b.Cmdline))
	}
	return nil
}

// names are the file names of the delivery.
func (b *bootDelivery) names() []string {
	switch {
	case b == nil:
		return []string{vmmp.ImageFile}
	case b.Initrd:
		return []string{vmmp.ImageFile, vmmp.KernelFile, vmmp.InitrdFile}
	}
	return []string{vmmp.ImageFile, vmmp.KernelFile}
}

func decodeImageRequest(b []byte) (imageRequest, error) {
	var r imageRequest
	if err := DecodeStrict(b, &r); err != nil {
		return r, err
	}
	if !validImageHash(r.Image) {
		return r, fmt.Errorf("%w: image %q is not blake3:<64 hex digits>", ErrMalformed, truncate(r.Image))
	}
	return r, nil
}

// imageGrantTTL is how long a source lets the requester start fetching an image it agreed
// to deliver (a broken transfer may resume within it).
const imageGrantTTL = 10 * time.Minute

// handleImage answers a request to deliver an image: only an image this provider holds, to the
// provider that a buyer's fresh lease proposal names for a store of that image.
func (p *Provider) handleImage(_ context.Context, st network.Stream, frame []byte, _ *bufio.Reader) error {
	resp, err := p.agreeDelivery(st.Conn().RemotePeer(), frame)
	if err != nil {
		p.log.Info("image delivery refused", "peer", st.Conn().RemotePeer(), "err", err)
		resp = imageResponse{Error: toWire(err)}
	}
	return WriteJSON(st, resp)
}

func (p *Provider) agreeDelivery(from peer.ID, frame []byte) (imageResponse, error) {
	req, err := decodeImageRequest(frame)
	if err != nil {
		return imageResponse{}, err
	}
	sl, err := DecodeLease(req.Lease)
	if err != nil {
		return imageResponse{}, err
	}
	switch l := sl.Lease; {
	case l.Provider != from:
		return imageResponse{}, fmt.Errorf("%w: the lease names provider %s, not the requester", ErrForged, Short(l.Provider))
	case l.Config.Image != req.Image:
		return imageResponse{}, fmt.Errorf("%w: the lease is not of image %s", ErrInvalid, req.Image)
	case p.now().Sub(l.Created) > MaxClockSkew || l.Created.Sub(p.now()) > MaxClockSkew:
		return imageResponse{}, fmt.Errorf("%w: lease dated %s", ErrExpired, l.Created.Format(time.RFC3339))
	}
	img, ok := p.image(req.Image)
	if !ok {
		return imageResponse{}, fmt.Errorf("%w: %s", ErrImageMissing, req.Image)
	}
	if p.opts.ImageGrants == nil {
		return imageResponse{}, fmt.Errorf("%w: this provider delivers no images", ErrUnavailable)
	}
	size := func(path string) (int64, error) {
		fi, err := os.Stat(path)
		if err != nil {
			return 0, fmt.Errorf("%w: image %s: %v", ErrInternal, img.Name, err)
		}
		return fi.Size(), nil
	}
	files := vmmp.ImageFiles{Disk: img.Disk}
	var resp imageResponse
	if resp.Size, err = size(img.Disk); err != nil {
		return imageResponse{}, err
	}
	if b := img.Boot; b != nil {
		files.Kernel, files.Initrd = b.Kernel, b.Initrd
		resp.Boot = &bootDelivery{Initrd: b.Initrd != "", Cmdline: b.Cmdline}
		for _, path := range []string{b.Kernel, b.Initrd} {
			if path == "" {
				continue
			}
			n, err := size(path)
			if err != nil {
				return imageResponse{}, err
			}
			resp.Boot.Size += n
		}
	}
	if err := p.opts.ImageGrants.Grant(req.Image, from, files, imageGrantTTL); err != nil {
		return imageResponse{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	p.log.Info("image delivery agreed", "peer", from, "image", img.Name, "lease", sl.ID)
	return resp, nil
}

// imageSource is a provider whose live offer lists an image.
type imageSource struct {
	peer  peerAddr
	info  ImageInfo
	offer MachineID
}

// maxImageSources bounds the sources one store tries.
const maxImageSources = 4

// imageSources lists the providers other than self whose live offers in offers list image
// hash, one per provider, at most maxImageSources.
func imageSources(offers []SignedOffer, hash string, self peer.ID) []imageSource {
	var out []imageSource
	seen := map[peer.ID]bool{self: true}
	for _, so := range offers {
		if seen[so.Provider] || len(out) == maxImageSources {
			continue
		}
		for _, img := range so.Images {
			if img.Hash == hash {
				seen[so.Provider] = true
				out = append(out, imageSource{peer: peerAddr{so.Provider, so.Addrs}, info: img, offer: so.Machine})
				break
			}
		}
	}
	return out
}

// imageFetch is one image being fetched; stores of the same image wait for it.
type imageFetch struct {
	done chan struct{}
	img  Image
	err  error
}

// fetchImage returns the image of lease sl's configuration, fetched from one of srcs (tried
// in turn: a source that is gone, refuses or sends other bytes is passed over) unless another
// store fetched it meanwhile. The fetched image is verified against its content hash, kept in
// the image directory, and advertised from then on.
func (p *Provider) fetchImage(ctx context.Context, sl SignedLease, srcs []imageSource) (Image, error) {
	hash := sl.Config.Image
	p.imgMu.Lock()
	if img, ok := p.imageLocked(hash); ok {
		p.imgMu.Unlock()
		return img, nil
	}
	if f, ok := p.fetches[hash]; ok {
		p.imgMu.Unlock()
		select {
		case <-f.done:
			return f.img, f.err
		case <-ctx.Done():
			return Image{}, ctx.Err()
		}
	}
	f := &imageFetch{done: make(chan struct{})}
	p.fetches[hash] = f
	p.imgMu.Unlock()

	var errs []error
	for _, src := range srcs {
		f.img, f.err = p.fetchFrom(ctx, sl, src)
		if f.err == nil {
			break
		}
		p.log.Warn("image fetch failed", "peer", src.peer.id, "image", src.info.Name, "vm", sl.VM, "err", f.err)
		errs = append(errs, fmt.Errorf("from %s: %w", Short(src.peer.id), f.err))
		if errors.Is(f.err, ErrNoCapacity) || ctx.Err() != nil {
			break // not the source's fault: another would not do better
		}
	}
	if f.err != nil {
		f.err = fmt.Errorf("%w: image %s could not be fetched (%v); store a configuration whose image this provider holds, or try again later", ErrImageMissing, hash, errors.Join(errs...))
	}
	p.imgMu.Lock()
	delete(p.fetches, hash)
	if f.err == nil {
		p.images = append(p.images, f.img)
	}
	p.imgMu.Unlock()
	close(f.done)
	if f.err == nil {
		p.log.Info("image fetched", "image", f.img.Name, "hash", hash, "vm", sl.VM)
		p.changed() // offers list it from now on
	}
	return f.img, f.err
}

// fetchFrom fetches the image of sl from src into the image directory: it asks src to deliver
// it, pulls its files into a directory of their own there, checks the content hash over all of
// them and the command line, and only then moves them beside the other images, with a
// description that a restart reads (ScanImages). Whatever fails, nothing of it stays.
func (p *Provider) fetchFrom(ctx context.Context, sl SignedLease, src imageSource) (img Image, err error) {
	hash := sl.Config.Image
	limit := min(sl.Config.DiskMB, p.opts.MaxImageMB) << 20
	var resp imageResponse
	if err := p.request(ctx, src.peer, ImageID, 30*time.Second, imageRequest{Image: hash, Lease: sl.Encode()}, &resp); err != nil {
		return Image{}, err
	}
	if resp.Error != nil {
		return Image{}, fmt.Errorf("it refused: %w", resp.Error.err())
	}
	if resp.Size > limit {
		return Image{}, fmt.Errorf("%w: the image is %d MB, more than the %d MB this store takes", ErrInvalid, ceilDiv(resp.Size, 1<<20), limit>>20)
	}
	total := limit // the disk; a kernel and initramfs may come besides
	if resp.Boot != nil {
		total += maxBootBytes
	}
	dir, err := os.MkdirTemp(p.opts.ImageDir, ".fetch-")
	if err != nil {
		return Image{}, fmt.Errorf("%w: image directory: %v", ErrInternal, err)
	}
	defer os.RemoveAll(dir)
	fctx, cancel := context.WithTimeout(ctx, p.opts.ImageTimeout)
	defer cancel()
	_, err = transfer.Fetch(fctx, p.n.Host(), src.peer.id, vmmp.ImageRequest(hash, resp.Boot.names()...), dir,
		transfer.WithMaxSize(total), transfer.WithIdleTimeout(p.opts.ImageIdle), transfer.WithLogger(p.log))
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return Image{}, fmt.Errorf("%w: the disk of this provider's images (%s) is full: %v", ErrNoCapacity, p.opts.ImageDir, err)
	case errors.Is(err, transfer.ErrTooLarge):
		return Image{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	case err != nil:
		return Image{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	got := fetchedImage{dir: dir, boot: resp.Boot}
	for _, name := range resp.Boot.names() {
		sum, size, err := contentHash(fctx, filepath.Join(dir, name))
		if err != nil {
			return Image{}, fmt.Errorf("%w: %v", ErrInternal, err)
		}
		got.sums = append(got.sums, sum)
		if name == vmmp.ImageFile {
			got.size = size
		}
	}
	if got.size > limit {
		return Image{}, fmt.Errorf("%w: it sent a disk of %d MB, more than the %d MB this store takes", ErrInvalid, ceilDiv(got.size, 1<<20), limit>>20)
	}
	if sum := got.parts().hash(); sum != hash {
		what := "an image"
		if resp.Boot != nil {
			what = "a disk, kernel, initramfs and command line"
		}
		return Image{}, fmt.Errorf("%w: it sent %s of content hash %s, not the %s its offer lists", ErrForged, what, sum, hash)
	}
	return p.keepImage(got, src.info, hash)
}

// fetchedImage is an image whose files a fetch received into dir, under the delivery's names.
type fetchedImage struct {
	dir  string
	boot *bootDelivery // nil for an image that boots from its disk
	sums []string      // content hashes of the files, in the order of boot.names()
	size int64         // the disk's
}

func (f fetchedImage) parts() imageParts {
	p := imageParts{Disk: f.sums[0]}
	if f.boot != nil {
		p.Kernel, p.Cmdline = f.sums[1], f.boot.Cmdline
		if f.boot.Initrd {
			p.Initrd = f.sums[2]
		}
	}
	return p
}

// fetchedSuffix is the suffix of the kept file of each delivered file name.
var fetchedSuffix = map[string]string{vmmp.ImageFile: ".img", vmmp.KernelFile: ".kernel", vmmp.InitrdFile: ".initrd"}

// keepImage moves the verified files of an image into the image directory under names made of
// its hash, and describes it there as ScanImages reads it; the description comes last, so that
// a restart finds either the whole image or none of it.
func (p *Provider) keepImage(f fetchedImage, info ImageInfo, hash string) (img Image, err error) {
	base := "fetched-" + strings.TrimPrefix(hash, "blake3:")[:16]
	names := f.boot.names()
	kept := make([]string, len(names)) // paths in the image directory
	for i, name := range names {
		kept[i] = filepath.Join(p.opts.ImageDir, base+fetchedSuffix[name])
	}
	desc := Image{Name: info.Name, OS: info.OS, Disk: filepath.Base(kept[0]), MemoryMB: info.MemoryMB}
	img = Image{Name: info.Name, OS: info.OS, Disk: kept[0], MemoryMB: info.MemoryMB, Hash: hash, sizeMB: ceilDiv(f.size, 1<<20)}
	if f.boot != nil {
		desc.Boot = &vm.KernelBoot{Kernel: filepath.Base(kept[1]), Cmdline: f.boot.Cmdline}
		img.Boot = &vm.KernelBoot{Kernel: kept[1], Cmdline: f.boot.Cmdline}
		if f.boot.Initrd {
			desc.Boot.Initrd, img.Boot.Initrd = filepath.Base(kept[2]), kept[2]
		}
	}
	raw, err := json.Marshal(desc)
	if err != nil {
		return Image{}, err
	}
	tmp := filepath.Join(f.dir, base+".json")
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return Image{}, fmt.Errorf("%w: describe image: %v", ErrNoCapacity, err)
	}
	var moved []string
	defer func() {
		if err != nil {
			for _, path := range moved {
				os.Remove(path)
			}
		}
	}()
	for i, name := range names {
		if err := os.Rename(filepath.Join(f.dir, name), kept[i]); err != nil {
			return Image{}, fmt.Errorf("%w: keep image: %v", ErrInternal, err)
		}
		moved = append(moved, kept[i])
	}
	if err := os.Rename(tmp, filepath.Join(p.opts.ImageDir, base+".json")); err != nil {
		return Image{}, fmt.Errorf("%w: keep image: %v", ErrInternal, err)
	}
	// The files' hashes as hashImage caches them, so that a restart does not read them again.
	for i, path := range kept {
		if fi, err := os.Stat(path); err == nil {
			node.PutJSON(p.hashSpace, path, hashRecord{Size: fi.Size(), ModTime: fi.ModTime(), Hash: f.sums[i]})
		}
	}
	return img, nil
}

// removeFetchLeftovers removes what fetches that a restart interrupted left in the image
// directory.
func (p *Provider) removeFetchLeftovers() {
	if p.opts.ImageDir == "" {
		return
	}
	left, _ := filepath.Glob(filepath.Join(p.opts.ImageDir, ".fetch-*"))
	for _, d := range left {
		if err := os.RemoveAll(d); err != nil {
			p.log.Warn("remove an interrupted image fetch", "dir", d, "err", err)
		}
	}
}

// contentHash is the content hash of the file at path, and its size: an image's parts are named
// by it (imageParts), and an image that boots from its disk by its disk's.
func contentHash(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("image %s: %w", path, err)
	}
	defer f.Close()
	h := blake3.New()
	buf := make([]byte, 1<<20)
	var size int64
	for {
		if err := ctx.Err(); err != nil {
			return "", 0, err
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		size += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", 0, fmt.Errorf("image %s: %w", path, err)
		}
	}
	return "blake3:" + hex.EncodeToString(h.Sum(nil)), size, nil
}

// fetchImageFor fetches the image of the VM of sl, which is migrating meanwhile.
func (p *Provider) fetchImageFor(ctx context.Context, sl SignedLease, srcs []imageSource) (Image, error) {
	p.imgMu.Lock()
	p.fetching[sl.VM] = FetchingState
	p.imgMu.Unlock()
	defer func() {
		p.imgMu.Lock()
		delete(p.fetching, sl.VM)
		p.imgMu.Unlock()
	}()
	p.log.Info("vm migrating: fetching its image", "vm", sl.VM, "lease", sl.ID, "image", sl.Config.Image, "peer", srcs[0].peer.id)
	return p.fetchImage(ctx, sl, srcs)
}

// fetchingState is the state of VM id if its image is being fetched.
func (p *Provider) fetchingState(id vm.ID) (vm.State, bool) {
	p.imgMu.Lock()
	defer p.imgMu.Unlock()
	st, ok := p.fetching[id]
	return st, ok
}
