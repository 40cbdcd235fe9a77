#!/usr/bin/env python
"""Make a GPT disk image boot GRUB under a BIOS: what grub-bios-setup does, on a plain file.

    bootsector.py DISK BOOT_IMG CORE_IMG

Writes core.img at the start of the disk's BIOS boot partition, points the first entry of its blocklist
(end of its first sector, diskboot) at the rest of it, and puts boot.img's code into the protective MBR,
keeping the disk signature and the partition table, with the LBA of core.img and the hard-disk fix-up.
Offsets from GRUB's include/grub/i386/pc/boot.h.
"""
from __future__ import annotations

import struct
import sys
import uuid

SECTOR = 512
KERNEL_SECTOR = 0x5C  # boot.img: u64 LBA of core.img's first sector
DRIVE_CHECK = 0x66  # boot.img: a 2-byte jump; two NOPs make it trust the drive number in %dl (hard disk)
NT_MAGIC = 0x1B8  # boot.img's code ends here; the disk signature and partition table follow
LIST_SIZE = 12  # core.img's first sector ends with a blocklist entry {u64 start, u16 sectors, u16 segment}
DISKBOOT_SEGMENT = 0x820  # the segment diskboot.img's entry carries: core.img as grub-mkimage -O i386-pc made it
BIOS_BOOT = uuid.UUID("21686148-6449-6E6F-744E-656564454649").bytes_le


class SetupError(Exception):
    """The disk or the GRUB images are not what the boot code needs."""


def bios_boot_partition(disk) -> tuple[int, int]:
    """(first LBA, sector count) of the GPT partition of type BIOS boot."""
    disk.seek(SECTOR)
    header = disk.read(92)
    if header[:8] != b"EFI PART":
        raise SetupError("no GPT header at LBA 1")
    entries_lba, count, size = struct.unpack_from("<QII", header, 72)
    disk.seek(entries_lba * SECTOR)
    table = disk.read(count * size)
    for i in range(count):
        entry = table[i * size:(i + 1) * size]
        if entry[:16] == BIOS_BOOT:
            first, last = struct.unpack_from("<QQ", entry, 32)
            return first, last - first + 1
    raise SetupError("the GPT has no BIOS boot partition")


def setup(disk_path: str, boot_path: str, core_path: str) -> str:
    with open(boot_path, "rb") as f:
        boot = f.read()
    with open(core_path, "rb") as f:
        core = bytearray(f.read())
    if len(boot) != SECTOR:
        raise SetupError(f"{boot_path}: {len(boot)} bytes, boot.img has {SECTOR}")
    if len(core) < 2 * SECTOR or struct.unpack_from("<H", core, SECTOR - 2)[0] != DISKBOOT_SEGMENT:
        raise SetupError(f"{core_path}: not an i386-pc core.img (no diskboot blocklist)")
    core += bytes(-len(core) % SECTOR)
    sectors = len(core) // SECTOR
    with open(disk_path, "r+b") as disk:
        first, room = bios_boot_partition(disk)
        if sectors > room:
            raise SetupError(f"core.img needs {sectors} sectors, the BIOS boot partition has {room}")
        disk.seek(0)
        mbr = disk.read(SECTOR)
        if mbr[510:] != b"\x55\xaa":
            raise SetupError("no protective MBR (signature 55 aa) in sector 0")
        code = bytearray(boot[:NT_MAGIC])
        struct.pack_into("<Q", code, KERNEL_SECTOR, first)
        code[DRIVE_CHECK:DRIVE_CHECK + 2] = b"\x90\x90"
        struct.pack_into("<QH", core, SECTOR - LIST_SIZE, first + 1, sectors - 1)
        disk.seek(0)
        disk.write(bytes(code) + mbr[NT_MAGIC:])
        disk.seek(first * SECTOR)
        disk.write(core)
    return f"core.img: {sectors} sectors at LBA {first} (partition of {room})"


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        print(setup(*argv[1:]))
    except (OSError, SetupError) as exc:
        print(f"bootsector.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
