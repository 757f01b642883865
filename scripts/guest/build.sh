#!/bin/sh
# Builds the tiny test guest that vm/qemu's tests and benchmarks boot: a Debian kernel
# (linux-image-amd64) and a busybox (busybox-static) initramfs whose init prints a boot banner
# and then a counter every 0.5 s to the serial console, plus a small raw disk image the guest
# writes its counter to. Nothing here is committed: the result is cached outside git in
#   $VIRTUOSO_GUEST_CACHE, or ${XDG_CACHE_HOME:-~/.cache}/virtuoso/guest
# and rebuilt only when this script changes. Prints the cache directory on success; its
# guest.json names the files:
#   {"kernel": ..., "initrd": ..., "disk": ..., "cmdline": ..., "recipe": ...}
#
# Packages come from the installed system when present; otherwise they are installed with
# apt-get (as root) or fetched with `apt-get download` and unpacked into a temporary directory.
set -eu

cache=${VIRTUOSO_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtuoso/guest}
recipe=$(sha256sum "$0" | cut -c1-16)

if [ -f "$cache/guest.json" ] && grep -q "\"recipe\": \"$recipe\"" "$cache/guest.json"; then
	echo "$cache"
	exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/virtuoso-guest.XXXXXX")
trap 'rm -rf "$work"' EXIT

die() {
	echo "guest build: $*" >&2
	exit 1
}

installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# pkgroot PKG prints the root under which PKG's files are: / when it is installed (installing
# it first when we are root), else a directory it was unpacked into.
pkgroot() {
	if ! installed "$1" && [ "$(id -u)" = 0 ]; then
		apt-get install -y --no-install-recommends "$1" >&2 ||
			{ apt-get update >&2 && apt-get install -y --no-install-recommends "$1" >&2; } || true
	fi
	if installed "$1"; then
		echo /
		return
	fi
	mkdir -p "$work/pkg/$1"
	(cd "$work/pkg" && apt-get download "$1" >&2) || die "cannot get package $1 (apt-get download failed)"
	dpkg-deb -x "$work/pkg/$1"_*.deb "$work/pkg/$1" || die "cannot unpack $1"
	echo "$work/pkg/$1"
}

# The kernel: linux-image-amd64 is a meta-package depending on linux-image-<version>.
meta=$(pkgroot linux-image-amd64)
kpkg=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null | grep -o 'linux-image-[0-9][^ ,(]*' | head -n1 || true)
if [ -z "$kpkg" ]; then
	kpkg=$(dpkg-deb -f "$work/pkg/linux-image-amd64"_*.deb Depends 2>/dev/null | grep -o 'linux-image-[0-9][^ ,(]*' | head -n1 || true)
fi
[ -n "$kpkg" ] || die "cannot tell which kernel linux-image-amd64 ($meta) depends on"
kver=${kpkg#linux-image-}
kroot=$(pkgroot "$kpkg")
kernel=$kroot/boot/vmlinuz-$kver
moddir=$kroot/lib/modules/$kver/kernel
[ -r "$kernel" ] || die "kernel $kernel missing or unreadable"

broot=$(pkgroot busybox-static)
busybox=$broot/bin/busybox
[ -x "$busybox" ] || die "busybox $busybox missing"

# The initramfs.
root=$work/root
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/lib/modules"
cp "$busybox" "$root/bin/busybox"
for m in virtio/virtio virtio/virtio_ring virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev \
	virtio/virtio_pci block/virtio_blk acpi/button input/evdev; do
	f=$moddir/drivers/$m.ko
	if [ -f "$f" ]; then
		cp "$f" "$root/lib/modules/"
	elif [ -f "$f.xz" ]; then
		xz -dc "$f.xz" >"$root/lib/modules/${m##*/}.ko"
	fi # absent means built in
done

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
# Virtuoso test guest. Prints a banner, then "virtuoso guest tick N" every 0.5 s on the console
# (ttyS0) and writes the same line to the disk, so a test sees it booted and that it keeps
# counting after a suspend and resume. The ACPI power button powers it off. The screen has a
# shell, whose output the serial console repeats.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
# In dependency order (modinfo -F depends): virtio needs virtio_ring.
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk button evdev; do
	[ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done
echo "VIRTUOSO GUEST BOOTED $(uname -r)"
for ev in /sys/class/input/event*; do
	if grep -q "Power Button" "$ev/device/name" 2>/dev/null; then
		# an input_event is 24 bytes on x86-64; evdev refuses shorter reads
		(dd if="/dev/input/${ev##*/}" of=/dev/null bs=24 count=1 2>/dev/null &&
			echo "virtuoso guest: power button" && sync && poweroff -f) &
	fi
done
# A shell on the screen (tty1, what the VNC console shows) for whoever types there; what it
# prints goes to the serial log as well when the kernel's console is there (console=ttyS0), so
# a test sees what a command typed there wrote.
echo_to=/dev/null
grep -q 'console=ttyS0' /proc/cmdline && echo_to=/dev/ttyS0
setsid sh -c "exec </dev/tty1; sh -i 2>&1 | tee $echo_to >/dev/tty1" &
i=0
while :; do
	i=$((i + 1))
	echo "virtuoso guest tick $i"
	# sectors 2048.. (1 MiB on): past the label the image starts with. The disk is looked
	# for each time: virtio-blk may probe it after the loop started.
	[ -b /dev/vda ] && printf 'virtuoso guest tick %d\n' $i |
		dd of=/dev/vda bs=512 seek=$((2048 + i % 4096)) conv=notrunc,fsync 2>/dev/null
	usleep 500000
done
EOF
chmod 755 "$root/init"

(cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -9 >"$work/initrd.gz"

# The preconfigured disk: 32 MiB raw, sparse, a label in its first sector.
truncate -s 32M "$work/disk.img"
printf 'VIRTUOSO GUEST DISK %s\n' "$recipe" | dd of="$work/disk.img" conv=notrunc 2>/dev/null

cp "$kernel" "$work/vmlinuz"
cat >"$work/guest.json" <<EOF
{
  "kernel": "$cache/vmlinuz",
  "initrd": "$cache/initrd.gz",
  "disk": "$cache/disk.img",
  "cmdline": "console=tty0 console=ttyS0 quiet panic=-1",
  "kernel_version": "$kver",
  "recipe": "$recipe"
}
EOF

mkdir -p "$cache"
for f in vmlinuz initrd.gz disk.img; do
	cp --sparse=always "$work/$f" "$cache/$f.tmp" && mv "$cache/$f.tmp" "$cache/$f"
done
mv "$work/guest.json" "$cache/guest.json" # last: it marks the cache complete
echo "$cache"
