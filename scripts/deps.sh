#!/usr/bin/env bash
# Installs what building, testing and the demo need: Debian packages (when root and missing)
# and the Go modules of go.mod. Safe to run again; it does nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: QEMU and its image tool for real VMs, zstd for suspend images, rsync as the
# transfer benchmark's baseline, the kernel and busybox the tiny test guest is built from,
# mmdebstrap and e2fsprogs (mke2fs -d) that build the Debian guest.
packages=(qemu-system-x86 qemu-utils zstd rsync busybox-static linux-image-amd64 ca-certificates mmdebstrap e2fsprogs)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

go mod download
