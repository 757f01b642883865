package vmmp

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/virtuoso-market/virtuoso/vm"
	"github.com/virtuoso-market/virtuoso/vmmp/transfer"
)

// TestImageGrants: a source serves the granted peer exactly the granted image, beside its VM
// grants; nothing to a stranger, nothing of another image, nothing after the grant expired,
// and an image grant opens no VM's files.
func TestImageGrants(t *testing.T) {
	src, dest, stranger := testHost(t), testHost(t), testHost(t)
	vms, images := NewGrants(), NewImageGrants()
	srv, err := transfer.NewServer(src, Authorize(vms, images))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, h := range []host.Host{dest, stranger} {
		if err := h.Connect(ctx, peer.AddrInfo{ID: src.ID(), Addrs: src.Addrs()}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	image := filepath.Join(dir, "debian.img")
	if err := os.WriteFile(image, []byte(strings.Repeat("i", 1<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	const hash, other = "blake3:aa", "blake3:bb"
	fetch := func(h host.Host, req transfer.Request) error {
		_, err := transfer.Fetch(ctx, h, src.ID(), req, t.TempDir())
		return err
	}
	if err := fetch(dest, ImageRequest(hash)); err == nil {
		t.Fatal("a fetch before any grant succeeded")
	}
	if err := images.Grant(hash, dest.ID(), ImageFiles{Disk: image}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := fetch(dest, ImageRequest(hash)); err != nil {
		t.Fatalf("the granted peer: %v", err)
	}
	id := vm.NewID()
	for _, tc := range []struct {
		name string
		h    host.Host
		req  transfer.Request
	}{
		{"a stranger", stranger, ImageRequest(hash)},
		{"another image", dest, ImageRequest(other)},
		{"another file name", dest, transfer.Request{VM: ImagePrefix + hash, Files: []string{"debian.img"}}},
		{"a kernel the image has not", dest, ImageRequest(hash, ImageFile, KernelFile)},
		{"a vm's files", dest, transfer.Request{VM: id.String(), Files: []string{"disk.img"}}},
	} {
		if err := fetch(tc.h, tc.req); err == nil || !strings.Contains(err.Error(), ErrNotGranted.Error()) {
			t.Fatalf("%s: %v, want a refusal", tc.name, err)
		}
	}
	images.Revoke(hash, dest.ID())
	if err := fetch(dest, ImageRequest(hash)); err == nil {
		t.Fatal("a fetch after the grant was revoked succeeded")
	}
	now := time.Now()
	images.now = func() time.Time { return now }
	if err := images.Grant(hash, dest.ID(), ImageFiles{Disk: image}, time.Second); err != nil {
		t.Fatal(err)
	}
	images.now = func() time.Time { return now.Add(2 * time.Second) }
	if _, err := images.Authorize(ctx, dest.ID(), ImageRequest(hash)); !errors.Is(err, ErrNotGranted) {
		t.Fatalf("an expired grant: %v", err)
	}
}

// TestImageGrantsKernelBoot: the grant of an image that boots a kernel directly serves its
// three files in one transfer, each under its own name, and nothing beyond the granted files.
func TestImageGrantsKernelBoot(t *testing.T) {
	src, dest := testHost(t), testHost(t)
	images := NewImageGrants()
	srv, err := transfer.NewServer(src, Authorize(NewGrants(), images))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := dest.Connect(ctx, peer.AddrInfo{ID: src.ID(), Addrs: src.Addrs()}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := ImageFiles{Disk: filepath.Join(dir, "disk.img"), Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.gz")}
	content := map[string]string{ImageFile: strings.Repeat("d", 1<<20), KernelFile: "a kernel", InitrdFile: "an initramfs"}
	for name, path := range map[string]string{ImageFile: files.Disk, KernelFile: files.Kernel, InitrdFile: files.Initrd} {
		if err := os.WriteFile(path, []byte(content[name]), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if names := files.Names(); !slices.Equal(names, []string{ImageFile, KernelFile, InitrdFile}) {
		t.Fatalf("names %v", names)
	}
	const hash = "blake3:cc"
	if err := images.Grant(hash, dest.ID(), ImageFiles{Disk: files.Disk, Initrd: files.Initrd}, time.Minute); err == nil {
		t.Fatal("a grant of an initramfs without a kernel was taken")
	}
	if err := images.Grant(hash, dest.ID(), files, time.Minute); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if _, err := transfer.Fetch(ctx, dest, src.ID(), ImageRequest(hash, files.Names()...), out); err != nil {
		t.Fatalf("the granted files: %v", err)
	}
	for name, want := range content {
		if got, err := os.ReadFile(filepath.Join(out, name)); err != nil || string(got) != want {
			t.Fatalf("delivered %s: %d bytes, %v", name, len(got), err)
		}
	}
	req := transfer.Request{VM: ImagePrefix + hash, Files: []string{ImageFile, KernelFile, "cmdline"}}
	if _, err := images.Authorize(ctx, dest.ID(), req); !errors.Is(err, ErrNotGranted) {
		t.Fatalf("a file beyond the grant: %v", err)
	}
}
