#!/bin/sh
# Runs inside the guest root at the end of mmdebstrap (customize hook, chroot; build-debian.sh copies it in).
# Sets the guest up, writes /boot/grub/grub.cfg, builds GRUB's BIOS and UEFI images into /tmp/lmboot (the
# builder moves them out before mmdebstrap empties /tmp), then removes GRUB's packages: the guest only needs
# the images and grub.cfg.
set -eu
cmdline='root=LABEL=lmroot ro console=ttyS0,115200 quiet loglevel=0 systemd.show_status=false net.ifnames=0'
out=/tmp/lmboot
mkdir -p "$out"

# Files that packages may also write: written last.
echo debian12-lm >/etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian12-lm\n' >/etc/hosts
echo 'LABEL=lmroot / ext4 defaults,errors=remount-ro 0 1' >/etc/fstab
echo '# no DNS in the livemig test guest' >/etc/resolv.conf
echo 'LANG=C.UTF-8' >/etc/default/locale

# Units: DHCP on eth0, the echo socket, the boot marker; sshd is enabled by its package, qemu-guest-agent is
# started by udev when its virtio port appears, logind (with dbus) powers off on the ACPI power button. No getty
# at all (the serial port carries the test's lines; there is no screen), no first-boot prompt, no periodic jobs.
systemctl set-default -q multi-user.target
systemctl enable -q systemd-networkd.service echo.socket lm-booted.service
systemctl mask -q serial-getty@ttyS0.service getty.target getty-static.service systemd-firstboot.service \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer

kver=$(ls /lib/modules)
[ "$(echo "$kver" | wc -l)" -eq 1 ] || { echo "setup.sh: want one kernel, found: $kver" >&2; exit 1; }
mkdir -p /boot/grub
# No menu: nothing to show, nothing printed (under UEFI GRUB still prints "Welcome to GRUB!" and, without a
# display, "error: no suitable video mode found. Booting in blind mode": harmless).
cat >/boot/grub/grub.cfg <<CFG
linux /boot/vmlinuz-$kver $cmdline
initrd /boot/initrd.img-$kver
boot
CFG

# Both images find the root by its label and read grub.cfg from it; every module they need is built in, so
# the disk holds no GRUB module directory.
# shellcheck disable=SC2016 # $root is GRUB's variable
printf 'search --no-floppy --label --set=root lmroot\nset prefix=($root)/boot/grub\n' >"$out/early.cfg"
modules='part_gpt ext2 search search_label normal configfile linux echo test'
# shellcheck disable=SC2086 # $modules is a list
grub-mkimage -O i386-pc -o "$out/core.img" -c "$out/early.cfg" -p /boot/grub biosdisk $modules
# shellcheck disable=SC2086
grub-mkimage -O x86_64-efi -o "$out/BOOTX64.EFI" -c "$out/early.cfg" -p /boot/grub $modules
cp /usr/lib/grub/i386-pc/boot.img "$out/boot.img"

{
    echo "kernel: $kver"
    echo "cmdline: $cmdline"
    echo "initrd_bytes: $(stat -c %s "/boot/initrd.img-$kver")"
    echo "packages (grub-*-bin only built the boot images and are not in the guest):"
    dpkg-query -W -f='  ${Package} ${Version}\n' "linux-image-$kver" systemd udev dbus openssh-server \
        qemu-guest-agent iproute2 initramfs-tools grub-pc-bin grub-efi-amd64-bin
    echo "modules (for the devices a test may give):"
    for m in virtio_pci virtio_blk virtio_scsi virtio_net virtio_console virtio_rng ahci ata_piix sr_mod \
        e1000 e1000e 8139cp efivarfs; do
        # file names use - or _ (virtio-rng.ko)
        if grep -q -E "/$(echo "$m" | sed 's/_/[-_]/g')\.ko" "/lib/modules/$kver/modules.dep" \
            "/lib/modules/$kver/modules.builtin"; then echo "  $m yes"; else echo "  $m MISSING"; fi
    done
} >"$out/manifest-guest.txt"

apt-get purge -y -q --autoremove grub-pc-bin grub-efi-amd64-bin >/dev/null
