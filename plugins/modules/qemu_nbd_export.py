#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_nbd_export
short_description: Export a VM's disks over NBD from its own QEMU, for a disk mirror to write into
version_added: 0.2.0
description:
  - Starts QEMU's built-in NBD server bound to one address (never all addresses) and exports the given disks
    writable, each under an unguessable export name.
  - On a migration target this is where the source's block mirror writes.
  - The server's address and port are kept in this host's record of the VM, never on another host.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
options:
  state:
    description: V(present) starts the server and adds the exports; V(absent) removes all exports and stops it.
    type: str
    choices: [present, absent]
    default: present
  disks:
    description: Names of the VM's disks to export.
    type: list
    elements: str
    default: []
  address:
    description: Address to bind the NBD server to. Required for O(state=present).
    type: str
  port:
    description: TCP port; V(0) picks a free one.
    type: int
    default: 0
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Export web1's root disk on the migration network
  livemig.qemu.qemu_nbd_export:
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    address: 192.0.2.12
    disks: [root]
  register: nbd

- name: Stop exporting
  livemig.qemu.qemu_nbd_export:
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    state: absent
"""

RETURN = r"""
host:
  description: Address the NBD server listens on.
  returned: when O(state=present)
  type: str
port:
  description: Port the NBD server listens on.
  returned: when O(state=present)
  type: int
exports:
  description: Export name by disk name.
  returned: when O(state=present)
  type: dict
  sample: {"root": "root-3q2Xk9yWcPj1s0bq"}
"""

import secrets

from ansible_collections.livemig.qemu.plugins.module_utils._module import new_module, qmp, vm_argument_spec, vm_paths
from ansible_collections.livemig.qemu.plugins.module_utils._nbdcopy import free_port
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import HostRecord, load_record, save_record
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import DISK_NAME

EXPORT_PREFIX = "livemig-export-"
PORT_ATTEMPTS = 5


def our_exports(session: QMPSession) -> dict[str, dict]:
    return {item["id"][len(EXPORT_PREFIX):]: item for item in session.execute("query-block-exports")
            if item["id"].startswith(EXPORT_PREFIX)}


def start_server(session: QMPSession, address: str, port: int) -> int:
    for attempt in range(PORT_ATTEMPTS):
        chosen = port or free_port(address)
        try:
            session.execute("nbd-server-start",
                            {"addr": {"type": "inet", "data": {"host": address, "port": str(chosen)}}})
            return chosen
        except QMPError as exc:
            if port or "in use" not in str(exc).lower() or attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def present(module, session: QMPSession, record: HostRecord) -> dict:
    params = module.params
    server = record.volatile.get("nbd")
    exports = our_exports(session)
    missing = [disk for disk in params["disks"] if disk not in exports]
    names = dict(server.get("exports", {})) if server else {}
    if server and not missing:
        return {"changed": False, "host": server["host"], "port": server["port"], "exports": names}
    if module.check_mode:
        return {"changed": True, "exports": {}}
    if not server:
        server = {"host": params["address"], "port": start_server(session, params["address"], params["port"])}
    for disk in missing:
        names[disk] = f"{disk}-{secrets.token_urlsafe(12)}"
        session.execute("block-export-add", {"type": "nbd", "id": EXPORT_PREFIX + disk, "node-name": f"disk-{disk}",
                                             "name": names[disk], "writable": True})
    server["exports"] = names
    record.volatile["nbd"] = server
    return {"changed": True, "host": server["host"], "port": server["port"], "exports": names}


def absent(module, session: QMPSession, record: HostRecord) -> dict:
    exports = our_exports(session)
    if not exports and "nbd" not in record.volatile:
        return {"changed": False}
    if not module.check_mode:
        for disk in exports:
            session.execute("block-export-del", {"id": EXPORT_PREFIX + disk, "mode": "hard"})
        try:
            session.execute("nbd-server-stop")
        except QMPError as exc:
            if "not running" not in str(exc).lower():
                raise
        record.volatile.pop("nbd", None)
    return {"changed": True}


def main() -> None:
    module = new_module(
        vm_argument_spec(
            state={"type": "str", "default": "present", "choices": ["present", "absent"]},
            disks={"type": "list", "elements": "str", "default": []},
            address={"type": "str"},
            port={"type": "int", "default": 0},
        ),
        supports_check_mode=True,
        required_if=[("state", "present", ("address",))],
    )
    paths = vm_paths(module)
    bad = [disk for disk in module.params["disks"] if not DISK_NAME.fullmatch(disk)]
    if bad:
        module.fail_json(msg=f"invalid disk names {bad}: each must match {DISK_NAME.pattern}")
    record = load_record(paths.record, paths.vm) or HostRecord(vm=paths.vm)
    with qmp(module, paths.qmp) as session:
        result = (present if module.params["state"] == "present" else absent)(module, session, record)
    if result["changed"] and not module.check_mode:
        save_record(paths.record, record)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
