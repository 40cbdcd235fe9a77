#!/usr/bin/env bash
# Build the migration test guest: tests/guest/out/{vmlinuz,initrd.img}.
# Kernel: Debian's cloud kernel (the package linux-image-cloud-amd64 depends on).
# Initrd: /init = static workload.c, plus the virtio-pci/virtio-blk modules if the
# kernel builds them as modules (loaded by /init in file-name order).
# Idempotent: does nothing when the outputs are newer than workload.c and build.sh.
# Delete tests/guest/out/ to force a rebuild (and a fresh kernel download).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$here/out
kernel=$out/vmlinuz
initrd=$out/initrd.img

done_msg() { echo "kernel: $kernel"; echo "initrd: $initrd"; }

up_to_date() {
    local f
    for f in "$here/workload.c" "$here/build.sh"; do
        [[ -s $kernel && -s $initrd && $kernel -nt $f && $initrd -nt $f ]] || return 1
    done
}
if up_to_date; then
    done_msg
    exit 0
fi

apt_install() { # install packages that are not installed yet
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
}
apt_install gcc libc6-dev binutils cpio gzip xz-utils zstd

mkdir -p "$out/cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. Kernel package (cached in out/cache).
deb=$(find "$out/cache" -maxdepth 1 -name 'linux-image-*-cloud-amd64_*.deb' | sort | head -n1)
if [[ -z $deb ]]; then
    resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
    pkg=$(resolve)
    [[ -n $pkg ]] || { apt-get update -q >/dev/null; pkg=$(resolve); }
    [[ -n $pkg ]] || { echo "cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
    (cd "$out/cache" && { apt-get download "$pkg" 2>/dev/null || { apt-get update -q >/dev/null && apt-get download "$pkg"; }; })
    deb=$(find "$out/cache" -maxdepth 1 -name 'linux-image-*-cloud-amd64_*.deb' | sort | head -n1)
fi
dpkg -x "$deb" "$tmp/k"
kver=$(basename "$(ls -d "$tmp"/k/lib/modules/*)")
config=$tmp/k/boot/config-$kver
moddir=$tmp/k/lib/modules/$kver

# 2. Modules needed for virtio-pci + virtio-blk, dependencies first.
modfile() { # module name -> path of its .ko[.xz|.zst] (names may use - or _)
    find "$moddir" \( -name "$1.ko*" -o -name "${1//_/-}.ko*" \) -print -quit
}
modinfo_deps() { # path -> comma-separated depends= of the module
    local ko=$1 raw=$tmp/mod.ko
    case $ko in
        *.xz) xz -dc "$ko" >"$raw" ;;
        *.zst) zstd -qdc "$ko" >"$raw" ;;
        *) cp "$ko" "$raw" ;;
    esac
    objcopy -O binary --only-section=.modinfo "$raw" "$tmp/modinfo"
    tr '\0' '\n' <"$tmp/modinfo" | sed -n 's/^depends=//p'
}
order=()
add_module() { # post-order walk: deps first, each module once
    local name=$1 ko dep
    [[ " ${order[*]-} " == *" $name "* ]] && return 0
    ko=$(modfile "$name")
    [[ -n $ko ]] || { echo "module $name not found in $kver" >&2; exit 1; }
    for dep in $(modinfo_deps "$ko" | tr ',' ' '); do add_module "$dep"; done
    order+=("$name")
}
for sym in VIRTIO_PCI VIRTIO_BLK; do
    if grep -q "^CONFIG_$sym=m" "$config"; then add_module "${sym,,}"; fi
done

# 3. Init + initrd tree.
root=$tmp/root
mkdir -p "$root"/{proc,sys,dev,lib/modules/lm}
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
gcc -O2 -static -pthread -Wall -o "$root/init" "$here/workload.c"
i=0
for name in "${order[@]}"; do
    i=$((i + 1))
    ko=$(modfile "$name")
    dst=$(printf '%s/lib/modules/lm/%02d-%s.ko' "$root" "$i" "$name")
    case $ko in
        *.xz) xz -dc "$ko" >"$dst" ;;
        *.zst) zstd -qdc "$ko" >"$dst" ;;
        *) cp "$ko" "$dst" ;;
    esac
done
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -9n >"$tmp/initrd.img"

cp "$tmp/k/boot/vmlinuz-$kver" "$tmp/vmlinuz"
{
    echo "package: $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"
    echo "kernel: $kver"
    echo "modules: ${order[*]-}"
} >"$out/manifest.txt"
mv "$tmp/vmlinuz" "$kernel"
mv "$tmp/initrd.img" "$initrd"
cat "$out/manifest.txt"
done_msg
