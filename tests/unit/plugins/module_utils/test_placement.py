"""The planner and the VM's devices: what each host's qemu_host_check says decides which methods can move it."""
from __future__ import annotations

import pytest
from test_negotiate import request

from ansible_collections.livemig.qemu.plugins.module_utils._negotiate import PlanError, make_plan

MIB = 1 << 20
GIB = 1 << 30
SPEC = {"firmware": "uefi", "cdrom": "/srv/iso/tools.iso",
        "nics": [{"name": "lan", "bridge": "br0", "mac": "52:54:00:00:00:01"}]}
DISKS = [{"name": "root", "size_mb": 1024}, {"name": "blk", "size_mb": 512, "path": "/dev/vg/web1-blk"}]
UEFI = {"found": True, "code_size": 3653632, "vars_size": 540672}
ISO = {"path": "/srv/iso/tools.iso", "exists": True, "size": 8 * MIB, "sha256": "ab" * 32}
ROOM = {"image_dir": {"free": 100 * GIB, "device": 1}, "state_dir": {"free": 100 * GIB, "device": 1}}
SOURCE = {"problems": [], "firmware": UEFI, "cdrom": ISO, "room": ROOM,
          "volumes": {"root": {"kind": "file", "allocated": 2 * GIB}, "blk": {"kind": "block", "size": 512 * MIB},
                      "nvram": {"kind": "nvram", "allocated": 540672}}}
TARGET = {"problems": [], "firmware": UEFI, "cdrom": ISO, "room": ROOM, "volumes": {}}


def plan(source=None, target=None, wishes=None, spec=None, disks=None):
    built = request(spec={**SPEC, **(spec or {})}, disks=DISKS if disks is None else disks,
                    wishes={"allow_cold": True, **(wishes or {})})
    built["host_checks"] = {"source": {**SOURCE, **(source or {})}, "target": {**TARGET, **(target or {})}}
    return make_plan(built)


def reasons(result):
    return {method: verdict["reasons"] for method, verdict in result["methods"].items()}


def test_a_vm_with_nics_uefi_a_block_device_and_a_cdrom_moves_live():
    result = plan()
    assert result["method"] == "live-mirror"
    assert result["local_disks"] == ["root", "blk", "nvram"], "the variable store is mirrored like a disk"
    assert [(disk["name"], disk["kind"], disk["action"]) for disk in result["disks"]] == [
        ("root", "file", "mirror"), ("blk", "block", "mirror"), ("nvram", "nvram", "mirror")]
    assert result["cdrom"]["action"] == "same" and result["cdrom_copy"] == []
    assert result["spec"]["nvram"] == {"shared": False}
    assert result["parameters"]["target"] == {"announce-initial": 50, "announce-max": 550, "announce-rounds": 5,
                                              "announce-step": 100}
    assert result["announce"]["self"] == {"initial": 50, "max": 550, "rounds": 5, "step": 100,
                                          "interfaces": ["net-lan"]}
    assert "  NIC lan: 52:54:00:00:00:01 on bridge br0" in result["summary"]
    assert any(line.startswith("  announce: 5 rounds of RARP") for line in result["summary"])
    assert "  CD-ROM /srv/iso/tools.iso: same (the same image on both hosts (size and SHA-256))" in result["summary"]


def test_what_the_target_lacks_blocks_every_method_with_its_reason():
    problem = "NIC lan: bridge br0 does not exist on this host: create it (the same name on every host)"
    result = plan(target={"problems": [problem]})
    assert result["method"] is None
    assert all(problem in why for why in reasons(result).values())
    assert problem in result["situation"]["message"]


def test_a_cdrom_missing_on_the_target_is_copied_first_and_one_that_differs_stops_the_move():
    missing = plan(target={"cdrom": {"path": ISO["path"], "exists": False}})
    assert missing["method"] == "live-mirror" and missing["cdrom"]["action"] == "copy"
    assert missing["cdrom_copy"] == [{"label": "cdrom", "source": ISO["path"], "target": ISO["path"],
                                      "format": "raw", "size": 8 * MIB, "kind": "file"}]
    assert "cdrom" not in missing["local_disks"], "a CD-ROM is never mirrored"
    differs = plan(target={"cdrom": {**ISO, "sha256": "cd" * 32}})
    assert differs["method"] is None
    assert any("the CD-ROM image /srv/iso/tools.iso differs between the hosts" in reason
               for reason in reasons(differs)["cold"])


def test_other_uefi_firmware_sizes_keep_the_guest_from_moving_live():
    code = plan(target={"firmware": {**UEFI, "code_size": 1966080}})
    assert code["method"] == "cold", "a cold boot reads the target's own code"
    assert "the UEFI firmware code on hv2 has 1966080 bytes, not 3653632 as on the source: install the same " \
           "OVMF build" in reasons(code)["live-mirror"]
    store = plan(target={"firmware": {**UEFI, "vars_size": 131072}})
    assert store["method"] is None, "the variable store the VM brings does not fit the other firmware"


def test_the_target_needs_room_for_the_images_and_for_a_state_file():
    small = plan(target={"room": {"image_dir": {"free": 1 * GIB, "device": 1},
                                  "state_dir": {"free": 1 * GIB, "device": 1}}})
    assert small["method"] is None
    need = (2 * GIB + 540672 + 64 * MIB) // MIB
    assert f"hv2 has 1024 MiB free for the images, the move needs {need} MiB" in reasons(small)["live-mirror"]
    apart = plan(target={"room": {"image_dir": {"free": 3 * GIB, "device": 1},
                                  "state_dir": {"free": 1 * GIB, "device": 2}}}, wishes={"method": "stateful"})
    assert apart["method"] == "stateful", "512 MiB of RAM fits in the state directory's own 1 GiB"
    shared_fs = plan(target={"room": {"image_dir": {"free": 2300 * MIB, "device": 1},
                                      "state_dir": {"free": 2300 * MIB, "device": 1}}}, wishes={"method": "stateful"})
    assert shared_fs["method"] == "cold", "images and state file share the filesystem, and both do not fit"
    assert f"hv2 has 2300 MiB free for the state file, a stateful move needs {need + 512} MiB" in \
        reasons(shared_fs)["stateful"]


def test_announce_switched_off_sets_zero_rounds_on_the_target_and_sends_nothing_later():
    result = plan(wishes={"announce": False})
    assert result["parameters"]["target"]["announce-rounds"] == 0
    assert result["announce"]["enabled"] is False and result["announce"]["self"] is None
    assert "  announce: off (the network learns the new port from the guest's own traffic)" in result["summary"]
    timing = plan(wishes={"announce_rounds": 3, "announce_step_ms": 20})
    assert timing["parameters"]["target"]["announce-rounds"] == 3 and timing["announce"]["self"]["step"] == 20
    no_nics = plan(spec={"nics": []})
    assert no_nics["parameters"]["target"] == {} and no_nics["announce"]["enabled"] is False


@pytest.mark.parametrize("wishes,message", [
    ({"announce": "yes"}, "livemig_announce must be true or false"),
    ({"announce_rounds": 1001}, "livemig_announce_rounds must be a whole number from 0 to 1000"),
    ({"announce_step_ms": 0}, "livemig_announce_step_ms must be a whole number from 1 to 10000"),
])
def test_bad_announce_settings_are_refused(wishes, message):
    with pytest.raises(PlanError, match=message):
        plan(wishes=wishes)


def test_a_block_device_is_copied_raw_with_its_size_by_a_stateful_move():
    built = request(disks=DISKS, wishes={"method": "stateful"},
                    source_storage={"root": {"path": "/img/a/web1-root.qcow2", "virtual_size": GIB},
                                    "blk": {"path": "/dev/vg/web1-blk", "virtual_size": 512 * MIB}},
                    storage={"root": {"path": "/img/b/web1-root.qcow2", "same_file": False},
                             "blk": {"path": "/dev/vg/web1-blk", "same_file": False}})
    result = make_plan(built)
    assert result["copies"][1] == {"label": "blk", "source": "/dev/vg/web1-blk", "target": "/dev/vg/web1-blk",
                                   "format": "raw", "size": 512 * MIB, "kind": "block"}
    shared = make_plan(request(disks=[{"name": "lun", "size_mb": 64, "path": "/dev/mapper/lun", "shared": True}]))
    assert shared["method"] == "live-shared", "a block device declared shared is trusted (no token fits beside it)"
