#!/bin/sh
# Builds the preconfigured Debian guest a provider offers as the OS image "debian": a minimal
# Debian bookworm (mmdebstrap --variant=minbase, from Debian's packages) with systemd, a root
# shell logged in on tty1 (the VNC console) and on ttyS0 (the serial log), hostname
# virtuoso-debian, in a raw ext4 disk image (made with mke2fs -d, no mount), booted directly with
# the kernel and initramfs taken out of the tree's /boot (the initramfs carries the virtio
# modules). Nothing here is committed: the result is cached outside git in
#   $VIRTUOSO_GUEST_CACHE, or ${XDG_CACHE_HOME:-~/.cache}/virtuoso/guest
# beside the tiny test guest, and rebuilt only when this script changes. Prints the cache
# directory on success; its debian.json names the files:
#   {"disk": ..., "kernel": ..., "initrd": ..., "cmdline": ..., "disk_mb": ..., "recipe": ...}
#
# dbus is there for systemd-logind, which powers the guest off when QEMU presses its ACPI power
# button (how the driver stops a VM cleanly).
#
# Needs root (mmdebstrap's root mode, mke2fs preserving ownership) and Debian's mirrors;
# installs mmdebstrap and e2fsprogs with apt-get when they are missing.
set -eu

# Called back by mmdebstrap as a customize hook, with the tree's root as $2.
if [ "${1:-}" = customize ]; then
	root=$2
	echo virtuoso-debian >"$root/etc/hostname"
	printf '127.0.0.1\tlocalhost\n127.0.1.1\tvirtuoso-debian\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
	printf '/dev/vda\t/\text4\trw,discard,errors=remount-ro\t0\t1\n' >"$root/etc/fstab"
	printf 'Virtuoso Debian guest (\\l)\n\n' >"$root/etc/issue"
	# Root logs in by itself on the VNC console and on the serial console.
	mkdir -p "$root/etc/systemd/system/getty@tty1.service.d" "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
	cat >"$root/etc/systemd/system/getty@tty1.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear %I $TERM
EOF
	cat >"$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
EOF
	# Nothing to wait for at boot: no network to configure, no timers worth running in a VM
	# that a buyer may stop at any time, no spare gettys on tty2-6, no kernel debug file
	# systems. (Under TCG it boots to its shell in about 25 s.)
	for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
		fstrim.timer systemd-networkd-wait-online.service getty-static.service \
		sys-kernel-debug.mount sys-kernel-tracing.mount modprobe@dm_mod.service \
		modprobe@efi_pstore.service; do
		ln -sf /dev/null "$root/etc/systemd/system/$unit"
	done
	# A small initramfs with what finding the root disk needs, rather than most of the drivers.
	echo MODULES=list >"$root/etc/initramfs-tools/conf.d/virtuoso"
	printf '%s\n' virtio_pci virtio_blk virtio_net virtio_console ext4 crc32c_generic >>"$root/etc/initramfs-tools/modules"
	chroot "$root" update-initramfs -u -k all >&2
	rm -rf "$root/var/cache/apt/"*.bin "$root/var/lib/apt/lists/"* "$root/var/log/"*.log
	exit 0
fi

cache=${VIRTUOSO_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtuoso/guest}
recipe=$(sha256sum "$0" | cut -c1-16)

cached() {
	[ -f "$cache/debian.json" ] && grep -q "\"recipe\": \"$recipe\"" "$cache/debian.json"
}
if cached; then
	echo "$cache"
	exit 0
fi

die() {
	echo "debian guest build: $*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap in root mode); run make guest as root"
for tool in mmdebstrap:mmdebstrap mke2fs:e2fsprogs; do
	command -v "${tool%%:*}" >/dev/null 2>&1 && continue
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tool#*:}" >&2 ||
		die "cannot install ${tool#*:}"
done

mkdir -p "$cache"
# One build at a time (test packages run in parallel); a build that waited may find the cache
# made by the one before it.
exec 9>"$cache/.debian.lock"
flock 9
if cached; then
	echo "$cache"
	exit 0
fi
work=$(mktemp -d "$cache/.debian.XXXXXX")
trap 'rm -rf "$work"' EXIT

mmdebstrap --variant=minbase --mode=root --quiet \
	--include=systemd-sysv,udev,dbus,kmod,linux-image-amd64,initramfs-tools,procps,iproute2,less \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
	--customize-hook="sh '$0' customize \"\$1\"" \
	bookworm "$work/root" \
	"deb http://deb.debian.org/debian bookworm main" \
	"deb http://deb.debian.org/debian bookworm-updates main" \
	"deb http://deb.debian.org/debian-security bookworm-security main" >&2 ||
	die "mmdebstrap failed"

kernel=$(ls "$work/root/boot/"vmlinuz-* | sort -V | tail -n1)
kver=${kernel##*/vmlinuz-}
[ -f "$work/root/boot/initrd.img-$kver" ] || die "no initramfs for kernel $kver in the tree"
cp "$kernel" "$work/debian-vmlinuz"
cp "$work/root/boot/initrd.img-$kver" "$work/debian-initrd.img"

# The disk: what the tree uses, plus a quarter and 256 MiB free, in whole 64 MiB.
used=$(du -sm "$work/root" | cut -f1)
disk_mb=$(((used + used / 4 + 256 + 63) / 64 * 64))
mke2fs -q -t ext4 -L virtuoso-root -d "$work/root" "$work/debian.img" "${disk_mb}M" >&2 ||
	die "mke2fs failed"

cat >"$work/debian.json" <<EOF
{
  "disk": "$cache/debian.img",
  "kernel": "$cache/debian-vmlinuz",
  "initrd": "$cache/debian-initrd.img",
  "cmdline": "root=/dev/vda rw console=tty1 console=ttyS0 quiet systemd.show_status=false",
  "disk_mb": $disk_mb,
  "kernel_version": "$kver",
  "recipe": "$recipe"
}
EOF
for f in debian-vmlinuz debian-initrd.img debian.img; do
	mv "$work/$f" "$cache/$f" # same file system: the work directory is in the cache
done
mv "$work/debian.json" "$cache/debian.json" # last: it marks the cache complete
echo "$cache"
