package market

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/virtuoso-market/virtuoso/internal/testwait"
	"github.com/virtuoso-market/virtuoso/node"
	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vm/qemu/qemutest"
	"github.com/virtuoso-market/virtuoso/vmmp"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// imageSeller is a provider spec that delivers the images it holds and keeps the images it
// fetches in dir.
func imageSeller(images []Image, dir string) *spec {
	s := seller(nil)
	s.Seller.Images, s.Seller.ImageGrants, s.Seller.ImageDir = images, vmmp.NewImageGrants(), dir
	return s
}

// randomFile writes size bytes of seeded random data at path.
func randomFile(t *testing.T, path string, size int, seed uint64) {
	t.Helper()
	b := make([]byte, size)
	rand.NewChaCha8([32]byte{byte(seed), 7}).Read(b)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// serveImages runs the transfer server of a provider node as the daemon does (internal/daemon
// Migrations): image deliveries by the provider's image grants.
func serveImages(t *testing.T, tn *testNode) {
	t.Helper()
	srv, err := transfer.NewServer(tn.Host(), vmmp.Authorize(vmmp.NewGrants(), tn.prov.opts.ImageGrants))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
}

// TestStoreFetchesImage: a provider asked to store a preconfigured configuration whose image
// it lacks fetches it by its content hash from a provider that offers it, then stores the VM
// (after migrating, one version more than a local store) and holds and offers the image. A
// source that lies (other bytes under the hash) or is gone fails the store cleanly, with
// nothing left behind and the capacity free again; with a good source among the candidates
// the store goes through. A full disk fails it cleanly too.
func TestStoreFetchesImage(t *testing.T) {
	imgDir := t.TempDir()
	good, lie := filepath.Join(imgDir, "plain.img"), filepath.Join(imgDir, "lie.img")
	randomFile(t, good, 3<<20, 1)
	randomFile(t, lie, 3<<20, 1) // the same bytes until the liar has hashed them
	d1Dir, d2Dir := t.TempDir(), t.TempDir()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a small tmpfs for the full-disk case and must run as root")
	}
	if err := syscall.Mount("tmpfs", d2Dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount a 1 MiB tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(d2Dir, syscall.MNT_DETACH) })
	plain := func(disk string) []Image { return []Image{{Name: "plain", OS: "linux", Disk: disk, MemoryMB: 64}} }
	nodes := marketCluster(t, 5, func(i int) *spec {
		switch i {
		case 0:
			return imageSeller(plain(good), "")
		case 1:
			return imageSeller(plain(lie), "")
		case 2:
			return imageSeller(nil, d1Dir)
		case 3:
			return imageSeller(nil, d2Dir)
		}
		return fast()
	})
	src, liar, d1, d2, b := nodes[0], nodes[1], nodes[2], nodes[3], nodes[4]
	for _, tn := range nodes[:4] {
		serveImages(t, tn)
	}
	// The liar now serves other bytes under the hash it computed at start.
	randomFile(t, lie, 3<<20, 2)
	hash := src.prov.images[0].Hash
	if liar.prov.images[0].Hash != hash {
		t.Fatal("the liar does not advertise the good image's hash")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	addMachine := func(tn *testNode) Machine {
		t.Helper()
		m, err := tn.prov.AddMachine(ctx, testSpec("m", roomy))
		if err != nil {
			t.Fatal(err)
		}
		waitOffer(t, []*testNode{b, d1, d2}, tn.ID(), m.ID, 1, 30*time.Second)
		return m
	}
	m1, m2 := addMachine(d1), addMachine(d2)
	addMachine(liar)
	store := func(dest *testNode, m Machine) (VM, error) {
		return b.buyer.Store(ctx, StoreRequest{ConfigName: "plain", Edit: ConfigEdit{DiskMB: 16}, Provider: dest.ID().String(), Machine: m.ID})
	}
	clean := func(dest *testNode, dir string, m Machine) {
		t.Helper()
		if left, _ := os.ReadDir(dir); len(left) > 0 {
			t.Errorf("a failed fetch left %v in the image directory", left)
		}
		if n := leaseCount(t, dest.prov); n != 0 {
			t.Errorf("a failed store holds %d leases", n)
		}
		if views, _ := dest.prov.Machines(); views[0].Free != m.Capacity {
			t.Errorf("a failed store holds capacity: free %s of %s", views[0].Free, m.Capacity)
		}
		if _, ok := dest.prov.image(hash); ok {
			t.Error("a failed fetch added the image")
		}
	}

	// Only the liar offers the image: the store fails, saying why.
	_, err := store(d1, m1)
	if !errors.Is(err, ErrImageMissing) || !strings.Contains(err.Error(), "content hash") {
		t.Fatalf("store with a lying source: %v, want ErrImageMissing naming the content hash", err)
	}
	clean(d1, d1Dir, m1)

	// The full disk: the image does not fit the 1 MiB image directory.
	_, err = store(d2, m2)
	if !errors.Is(err, ErrImageMissing) || !strings.Contains(err.Error(), "full") {
		t.Fatalf("store onto a full disk: %v, want ErrImageMissing saying the disk is full", err)
	}
	clean(d2, d2Dir, m2)

	// The liar goes away, its offer still in the books; the good source offers the image too.
	if err := liar.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = store(d1, m1)
	if !errors.Is(err, ErrImageMissing) || !strings.Contains(err.Error(), "unavailable") {
		t.Fatalf("store with a source that is gone: %v, want ErrImageMissing saying it is unavailable", err)
	}
	clean(d1, d1Dir, m1)
	addMachine(src)
	v, err := store(d1, m1)
	if err != nil {
		t.Fatalf("store with a good source among the candidates: %v", err)
	}
	if v.State != (vm.State{Status: vm.StatusStored, Version: FetchingState.Version + 1}) || v.LeaseState != LeaseStateActive {
		t.Fatalf("stored vm: %+v", v)
	}
	img, ok := d1.prov.image(hash)
	if !ok {
		t.Fatal("the destination does not hold the fetched image")
	}
	if sum, _, err := contentHash(ctx, img.Disk); err != nil || sum != hash || filepath.Dir(img.Disk) != d1Dir {
		t.Fatalf("kept image %s: hash %s, %v", img.Disk, sum, err)
	}
	// It offers the image from now on, and a restart still holds it.
	testwait.Eventually(t, 30*time.Second, func() error {
		so, ok := b.book.Get(d1.ID(), m1.ID)
		if !ok || !slices.ContainsFunc(so.Images, func(i ImageInfo) bool { return i.Hash == hash }) {
			return errors.New("the destination's offer does not list the fetched image")
		}
		return nil
	})
	scanned, err := ScanImages(d1Dir)
	if err != nil || len(scanned) != 1 || scanned[0].Disk != img.Disk || scanned[0].Name != "plain" {
		t.Fatalf("the image directory describes %+v (%v)", scanned, err)
	}
	// The next store of it is local: stored at once, no migrating version.
	v, err = store(d1, m1)
	if err != nil || v.State != (vm.State{Status: vm.StatusStored, Version: 1}) {
		t.Fatalf("second store: %+v, %v", v, err)
	}
}

// TestImageHash: an image that boots from its disk is named by its disk's hash, as before
// kernel-boot images were; one that boots a kernel is named by the hash of its canonical
// description, which changes with every part. The hash cache holds files' hashes, so one disk
// as the disk of a plain image and of a kernel-boot one gives each its own hash, in any order.
func TestImageHash(t *testing.T) {
	h := func(c string) string { return "blake3:" + strings.Repeat(c, 64) }
	boot := imageParts{Disk: h("1"), Kernel: h("2"), Initrd: h("3"), Cmdline: "console=ttyS0 quiet"}
	for _, tc := range []struct {
		name string
		p    imageParts
		desc string
	}{
		{"kernel, initrd and cmdline", boot, "virtuoso kernel-boot image 1\ndisk " + h("1") + "\nkernel " + h("2") + "\ninitrd " + h("3") + "\ncmdline 19\nconsole=ttyS0 quiet\n"},
		{"no initrd, no cmdline", imageParts{Disk: h("1"), Kernel: h("2")}, "virtuoso kernel-boot image 1\ndisk " + h("1") + "\nkernel " + h("2") + "\ninitrd none\ncmdline 0\n\n"},
		{"a cmdline with a newline", imageParts{Disk: h("1"), Kernel: h("2"), Cmdline: "a\nb"}, "virtuoso kernel-boot image 1\ndisk " + h("1") + "\nkernel " + h("2") + "\ninitrd none\ncmdline 3\na\nb\n"},
	} {
		if got := string(tc.p.description()); got != tc.desc {
			t.Errorf("%s: description\n%q\nwant\n%q", tc.name, got, tc.desc)
		}
		sum := blake3.Sum256([]byte(tc.desc))
		if got, want := tc.p.hash(), "blake3:"+hex.EncodeToString(sum[:]); got != want {
			t.Errorf("%s: hash %s, want %s", tc.name, got, want)
		}
	}
	if got := (imageParts{Disk: h("1")}).hash(); got != h("1") {
		t.Errorf("a disk-only image's hash %s, want its disk's %s", got, h("1"))
	}
	seen := map[string]string{}
	for name, p := range map[string]imageParts{
		"boot":          boot,
		"disk only":     {Disk: h("1")},
		"other disk":    {Disk: h("4"), Kernel: h("2"), Initrd: h("3"), Cmdline: boot.Cmdline},
		"other kernel":  {Disk: h("1"), Kernel: h("4"), Initrd: h("3"), Cmdline: boot.Cmdline},
		"other initrd":  {Disk: h("1"), Kernel: h("2"), Initrd: h("4"), Cmdline: boot.Cmdline},
		"no initrd":     {Disk: h("1"), Kernel: h("2"), Cmdline: boot.Cmdline},
		"other cmdline": {Disk: h("1"), Kernel: h("2"), Initrd: h("3"), Cmdline: "console=ttyS0"},
	} {
		if other, ok := seen[p.hash()]; ok {
			t.Errorf("%s and %s share a hash", name, other)
		}
		seen[p.hash()] = name
	}

	dir := t.TempDir()
	disk, kernel, initrd := filepath.Join(dir, "disk.img"), filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.gz")
	randomFile(t, disk, 1<<20, 1)
	randomFile(t, kernel, 1<<16, 2)
	randomFile(t, initrd, 1<<16, 3)
	ctx := context.Background()
	files := imageParts{Disk: fileHash(t, disk), Kernel: fileHash(t, kernel), Initrd: fileHash(t, initrd), Cmdline: "quiet"}
	plain := Image{Name: "plain", Disk: disk}
	booted := Image{Name: "booted", Disk: disk, Boot: &vm.KernelBoot{Kernel: kernel, Initrd: initrd, Cmdline: "quiet"}}
	store, err := node.OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	for i, order := range [][]Image{{plain, booted}, {booted, plain}} {
		cache := store.Space(fmt.Sprintf("market/imagehash/%d/", i))
		for range 2 { // read, then cached
			for _, img := range order {
				want := files.Disk
				if img.Boot != nil {
					want = files.hash()
				}
				if got, size, err := hashImage(ctx, cache, img); err != nil || got != want || size != 1<<20 {
					t.Fatalf("%s first of %s, %s: hash %s, size %d, %v; want %s", order[0].Name, img.Name, order[1].Name, got, size, err, want)
				}
			}
		}
	}
	if _, _, err := hashImage(ctx, store.Space("market/imagehash/"), Image{Name: "kernelless", Disk: disk, Boot: &vm.KernelBoot{}}); err == nil {
		t.Error("an image booting no kernel was hashed")
	}
}

// fileHash is the content hash of the file at path.
func fileHash(t *testing.T, path string) string {
	t.Helper()
	sum, _, err := contentHash(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// TestStoreFetchesKernelBootImage: the busybox test guest, an image that boots a kernel
// directly, is fetched from the provider that offers it, disk, kernel and initramfs in one
// transfer, and started on the fetching provider: it boots and counts on its serial console.
// A source that sends another kernel with the same disk is refused by the content hash, and
// leaves nothing behind. The fetched image is kept beside its kernel and initramfs with a
// description that names all three and the command line, which a restart reads and hashes to
// the same content hash.
func TestStoreFetchesKernelBootImage(t *testing.T) {
	g := qemutest.BuildGuest(t)
	liarKernel := filepath.Join(t.TempDir(), "vmlinuz")
	raw, err := os.ReadFile(g.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(liarKernel, raw, 0o600); err != nil { // the real kernel until hashed
		t.Fatal(err)
	}
	busybox := func(kernel string) []Image {
		return []Image{{Name: "busybox", OS: "linux", Disk: g.Disk, MemoryMB: 128,
			Boot: &vm.KernelBoot{Kernel: kernel, Initrd: g.Initrd, Cmdline: g.Cmdline}}}
	}
	destDir := t.TempDir()
	nodes := marketCluster(t, 4, func(i int) *spec {
		switch i {
		case 0:
			return imageSeller(busybox(g.Kernel), "")
		case 1:
			return imageSeller(busybox(liarKernel), "")
		case 2:
			return imageSeller(nil, destDir)
		}
		return fast()
	})
	src, liar, dest, b := nodes[0], nodes[1], nodes[2], nodes[3]
	for _, tn := range nodes[:3] {
		serveImages(t, tn)
	}
	// The liar now sends another kernel, of the same size, beside the same disk, under the
	// hash it computed at start.
	randomFile(t, liarKernel, len(raw), 3)
	hash := src.prov.images[0].Hash
	if liar.prov.images[0].Hash != hash {
		t.Fatal("the liar does not advertise the good image's hash")
	}
	if disk := fileHash(t, g.Disk); hash == disk {
		t.Fatalf("the kernel-boot image is named by its disk's hash %s", disk)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	addMachine := func(tn *testNode) Machine {
		t.Helper()
		m, err := tn.prov.AddMachine(ctx, testSpec("m", roomy))
		if err != nil {
			t.Fatal(err)
		}
		waitOffer(t, []*testNode{b, dest}, tn.ID(), m.ID, 1, 30*time.Second)
		return m
	}
	m := addMachine(dest)
	addMachine(liar)
	store := func() (VM, error) {
		return b.buyer.Store(ctx, StoreRequest{ConfigName: "busybox", Edit: ConfigEdit{DiskMB: 64}, Provider: dest.ID().String(), Machine: m.ID})
	}

	// Only the liar offers the image: its kernel does not match the content hash.
	_, err = store()
	if !errors.Is(err, ErrImageMissing) || !strings.Contains(err.Error(), "content hash") {
		t.Fatalf("store with a source sending another kernel: %v, want ErrImageMissing naming the content hash", err)
	}
	if left, _ := os.ReadDir(destDir); len(left) > 0 {
		t.Errorf("a refused fetch left %v in the image directory", left)
	}
	if _, ok := dest.prov.image(hash); ok {
		t.Error("a refused fetch added the image")
	}
	if n := leaseCount(t, dest.prov); n != 0 {
		t.Errorf("a failed store holds %d leases", n)
	}

	// The good source offers it too: the store goes through, the liar passed over if tried.
	addMachine(src)
	v, err := store()
	if err != nil {
		t.Fatalf("store with a good source among the candidates: %v", err)
	}
	if v.State != (vm.State{Status: vm.StatusStored, Version: FetchingState.Version + 1}) || v.LeaseState != LeaseStateActive {
		t.Fatalf("stored vm: %+v", v)
	}
	img, ok := dest.prov.image(hash)
	if !ok || img.Boot == nil {
		t.Fatalf("the destination holds %+v, want the fetched kernel-boot image", img)
	}
	for _, f := range []struct{ kept, orig string }{{img.Disk, g.Disk}, {img.Boot.Kernel, g.Kernel}, {img.Boot.Initrd, g.Initrd}} {
		if filepath.Dir(f.kept) != destDir || fileHash(t, f.kept) != fileHash(t, f.orig) {
			t.Fatalf("kept %s is not %s in the image directory", f.kept, f.orig)
		}
	}
	if img.Boot.Cmdline != g.Cmdline {
		t.Fatalf("kept command line %q, want %q", img.Boot.Cmdline, g.Cmdline)
	}

	// It boots on the destination, from the fetched kernel and initramfs.
	if v, err = b.buyer.Control(ctx, v.ID, vm.ActionStart); err != nil {
		t.Fatal(err)
	}
	if v.State.Status != vm.StatusStarted {
		t.Fatalf("started: %+v", v.State)
	}
	qemutest.WaitSerial(t, ctx, dest.drv, v.ID, "the counter", func(out string) bool {
		return strings.Contains(out, qemutest.Banner) && qemutest.LastTick(out) >= 3
	})

	// The destination offers it from now on; its description, as a restart reads it, names
	// all three files and the command line, and hashes to the same content hash, with the
	// cache the fetch filled and without it.
	testwait.Eventually(t, 30*time.Second, func() error {
		so, ok := b.book.Get(dest.ID(), m.ID)
		if !ok || !slices.ContainsFunc(so.Images, func(i ImageInfo) bool { return i.Hash == hash && i.Name == "busybox" }) {
			return errors.New("the destination's offer does not list the fetched image")
		}
		return nil
	})
	scanned, err := ScanImages(destDir)
	if err != nil || len(scanned) != 1 || scanned[0].Name != "busybox" || scanned[0].Disk != img.Disk || scanned[0].Boot == nil || *scanned[0].Boot != *img.Boot {
		t.Fatalf("the image directory describes %+v (%v), want %+v", scanned, err, img)
	}
	for _, cache := range []*node.Space{dest.prov.hashSpace, dest.Store().Space("test/nocache/")} {
		if got, _, err := hashImage(ctx, cache, scanned[0]); err != nil || got != hash {
			t.Fatalf("the described image hashes to %s (%v), want %s", got, err, hash)
		}
	}
}
