#!/usr/bin/env bash
# Build the Debian 12 test guest: a qcow2 that boots from its own disk with SeaBIOS and with OVMF.
#
#   tests/guest/build-debian.sh   -> the image dir, printed as the last stdout line (progress goes to stderr):
#       ${LIVEMIG_GUEST_CACHE:-/var/cache/livemig-guest}/<key>/{debian12.qcow2,id_ed25519,id_ed25519.pub,manifest.txt}
#
# <key> is a short hash of the builder's own files (this script, debian/, workload.c): an unchanged builder
# returns the cached dir at once, a changed one builds a new dir. The build happens in a temp dir next to it and
# is renamed into place at the end, so an interrupted build leaves no half image.
#
# No mounts: mmdebstrap builds the root tree (in a private mount namespace), mke2fs -d turns it into the ext4
# root, mtools fills the ESP, sfdisk lays out the GPT and debian/bootsector.py does grub-bios-setup's writes.
# Disk: p1 BIOS boot (1 MiB), p2 ESP (FAT32, 64 MiB, \EFI\BOOT\BOOTX64.EFI), p3 ext4 root labelled lmroot.
# Run as root (file ownership in the image); installs the host packages it needs with apt-get.
set -euo pipefail
umask 022 # the modes in the image do not depend on the caller's

here=$(cd "$(dirname "$0")" && pwd)
cache=${LIVEMIG_GUEST_CACHE:-/var/cache/livemig-guest}
size_mib=2048 # virtual disk size
esp_mib=64
kernel_pkg=linux-image-amd64 # not -cloud-amd64: that one has no ahci (q35's CD-ROM) and no e1000/e1000e/rtl8139
log() { echo "build-debian: $*" >&2; }
die() { log "$*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "run as root (the image's files must belong to root)"

key=$( (cd "$here" && find build-debian.sh workload.c debian -type f -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum) | sha256sum | cut -c1-12)
final=$cache/$key
mkdir -p "$cache"
exec 9>"$cache/.lock" # one build at a time; a second caller waits and then finds the image
flock 9
if [[ -s $final/debian12.qcow2 ]]; then
    echo "$final"
    exit 0
fi

# Host tools: command -> Debian package.
declare -A provider=([mmdebstrap]=mmdebstrap [sfdisk]=fdisk [mkfs.vfat]=dosfstools [mcopy]=mtools
    [qemu-img]=qemu-utils [mke2fs]=e2fsprogs [gcc]=gcc [ssh-keygen]=openssh-client [python3]=python3)
wanted=()
for cmd in "${!provider[@]}"; do command -v "$cmd" >/dev/null || wanted+=("${provider[$cmd]}"); done
[[ -e /usr/lib/x86_64-linux-gnu/libc.a ]] || wanted+=(libc6-dev) # static workload
[[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ]] || wanted+=(ovmf)       # to boot the image with UEFI
if ((${#wanted[@]})); then
    log "apt-get install ${wanted[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${wanted[@]}" >&2 || { apt-get update -qq >&2 && apt-get install -y -qq "${wanted[@]}" >&2; }
fi

tmp=$(mktemp -d "$cache/.build-$key.XXXXXX")
mounted_under() { awk -v dir="$1/" 'index($5, dir) == 1 { print $5 }' /proc/self/mountinfo; }
cleanup() {
    if [[ -n $(mounted_under "$tmp") ]]; then # never rm -rf through a mount
        log "still mounted under $tmp, not removed"
        return
    fi
    rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
out=$tmp/out tree=$tmp/root stage=$tmp/stage
mkdir -p "$out" "$stage/usr/local/bin" "$stage/tmp"
install -d -m 700 "$stage/root" "$stage/root/.ssh"

# What goes into the guest besides debian/rootfs: the workload, root's key, the setup script.
log "workload, ssh key"
gcc -O2 -static -pthread -Wall -o "$stage/usr/local/bin/lm-workload" "$here/workload.c"
ssh-keygen -q -t ed25519 -N '' -C "root@debian12-lm ($key)" -f "$out/id_ed25519"
install -m 600 "$out/id_ed25519.pub" "$stage/root/.ssh/authorized_keys"
install -m 755 "$here/debian/setup.sh" "$stage/tmp/lm-setup.sh"

log "mmdebstrap (minbase bookworm + systemd, sshd, qemu-guest-agent, $kernel_pkg)"
packages=systemd,systemd-sysv,udev,dbus,kmod,iproute2,procps,openssh-server,qemu-guest-agent,initramfs-tools,zstd
packages+=,$kernel_pkg,grub-pc-bin,grub-efi-amd64-bin # GRUB only to build the boot images; setup.sh removes it
excludes=(/usr/share/man/\* /usr/share/info/\* /usr/share/locale/\* /usr/share/doc/\* /usr/share/lintian/\*)
for dir in drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging drivers/iio \
    drivers/isdn drivers/comedi drivers/bluetooth sound net/wireless net/mac80211 net/bluetooth; do
    excludes+=("/lib/modules/*/kernel/$dir/*") # hardware a QEMU test guest never has
done
dpkgopts=()
for path in "${excludes[@]}"; do dpkgopts+=("--dpkgopt=path-exclude=$path"); done
q() { printf '%q' "$1"; }
# debian/rootfs goes in before the kernel is installed (its initramfs config must be there when the initrd is
# made); plain cp -R: new files belong to root, directories that exist keep their modes.
# shellcheck disable=SC2016 # "$1" in the hooks is the root dir, expanded by mmdebstrap's sh
unshare --mount --propagation private -- mmdebstrap --quiet --variant=minbase --include="$packages" \
    "${dpkgopts[@]}" --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --essential-hook="cp -R $(q "$here/debian/rootfs")/. \"\$1\"/" \
    --customize-hook="cp -R $(q "$stage")/. \"\$1\"/" \
    --customize-hook='chroot "$1" /tmp/lm-setup.sh' \
    --customize-hook="mv \"\$1/tmp/lmboot\" $(q "$tmp/boot")" \
    bookworm "$tree" "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main" >&2
[[ -s $tmp/boot/core.img && -s $tmp/boot/BOOTX64.EFI ]] || die "setup.sh left no GRUB images"
root_tree_mib=$(du -sm --one-file-system "$tree" | cut -f1)

log "disk: GPT, ESP, ext4 root"
disk=$tmp/disk.raw
root_start=$(((2 + esp_mib) * 2048)) root_sectors=$(((size_mib - 3 - esp_mib) * 2048)) # 1 MiB left: GPT's copy
truncate -s "${size_mib}M" "$disk"
sfdisk --quiet "$disk" >&2 <<EOF
label: gpt
start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=bios
start=4096, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=$root_start, size=$root_sectors, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
EOF
mkfs.vfat -F 32 -n LMESP -C "$tmp/esp.img" $((esp_mib * 1024)) >&2
mmd -i "$tmp/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$tmp/esp.img" "$tmp/boot/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mke2fs -q -F -t ext4 -L lmroot -b 4096 -d "$tree" "$tmp/root.img" $((root_sectors / 8)) >&2
put() { dd if="$1" of="$disk" bs=1M oflag=seek_bytes seek=$(($2 * 512)) conv=notrunc,sparse status=none; }
put "$tmp/esp.img" 4096
put "$tmp/root.img" "$root_start"
rm -f "$tmp/esp.img" "$tmp/root.img"
python3 "$here/debian/bootsector.py" "$disk" "$tmp/boot/boot.img" "$tmp/boot/core.img" >&2

log "qcow2"
qemu-img convert -f raw -O qcow2 "$disk" "$out/debian12.qcow2"
rm -f "$disk"
{
    echo "image: debian12.qcow2 (builder key $key, built $(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo "virtual_size_mib: $size_mib"
    echo "qcow2_bytes: $(stat -c %s "$out/debian12.qcow2")"
    echo "root_tree_mib: $root_tree_mib"
    echo "partitions: p1 bios_boot 1 MiB, p2 esp $esp_mib MiB (FAT32 LMESP), p3 root ext4 LABEL=lmroot" \
        "$((root_sectors / 2048)) MiB"
    echo "ssh_key: $(ssh-keygen -l -f "$out/id_ed25519.pub")"
    cat "$tmp/boot/manifest-guest.txt"
} >"$out/manifest.txt"
chmod 755 "$out"
mv -T "$out" "$final"
log "done: $final"
echo "$final"
