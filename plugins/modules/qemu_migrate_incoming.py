#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_migrate_incoming
short_description: Target side of a live migration - listen for it, or wait until it has completed
version_added: 0.2.0
description:
  - The VM must have been started with C(-incoming defer) (M(livemig.qemu.qemu_vm) with O(ignore:state=incoming)).
  - V(listening) sets the migration capabilities and parameters that must match the source, then listens on
    O(address) and a port (O(port=0) picks a free one) and returns the URI the source must use.
  - V(completed) waits on the VM's job monitor until the migration has completed and the VM runs here, and returns
    the time QEMU resumed it. Start it (with Ansible C(async)) before the source's switchover to catch that moment.
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
  - livemig.qemu.attributes.async
options:
  state:
    description: V(listening) or V(completed), see the description.
    type: str
    choices: [listening, completed]
    default: listening
  address:
    description: Address of this host's migration network to listen on. Required for O(state=listening).
    type: str
  port:
    description: TCP port to listen on; V(0) lets QEMU pick a free one.
    type: int
    default: 0
  capabilities:
    description:
      - Migration capabilities to switch on before C(migrate-incoming), besides C(events).
      - C(postcopy-ram) and C(multifd) must be on at both ends when the source uses them
        (M(livemig.qemu.qemu_migrate) O(livemig.qemu.qemu_migrate#module:capabilities)); C(postcopy-ram) here needs
        userfaultfd on this host. Source-only capabilities such as C(auto-converge) and C(xbzrle) need not be set.
      - Names are checked against C(query-migrate-capabilities) of this QEMU.
    type: list
    elements: str
    default: []
  parameters:
    description:
      - Migration parameters to set before C(migrate-incoming), for example C(multifd-channels) and
        C(multifd-compression), which must match the source's.
      - Names are checked against the parameters this QEMU reports.
    type: dict
    default: {}
  timeout:
    description: With O(state=completed), seconds to wait.
    type: float
    default: 3600
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Listen for the migration of web1
  livemig.qemu.qemu_migrate_incoming:
    name: web1
    run_dir: /run/livemig
    address: 192.0.2.12
  register: incoming

- name: Wait until web1 runs here
  livemig.qemu.qemu_migrate_incoming:
    name: web1
    run_dir: /run/livemig
    state: completed
  async: 3600
  poll: 0
"""

RETURN = r"""
uri:
  description: The URI the source must migrate to.
  returned: when O(state=listening)
  type: str
  sample: tcp:192.0.2.12:49152
port:
  description: The port QEMU listens on.
  returned: when O(state=listening)
  type: int
status:
  description: QEMU's run state.
  returned: always
  type: str
resume_time:
  description: QEMU's timestamp (seconds since the epoch) of the RESUME event on this host, when it was seen.
  returned: when O(state=completed)
  type: float
disk_allocated:
  description: Bytes allocated on this host by each disk image of the VM (what the disk mirrors had to write).
  returned: when O(state=completed)
  type: dict
  sample: {"root": 9502720}
"""

import time

from ansible_collections.livemig.qemu.plugins.module_utils._migration import RequestError, check_request
from ansible_collections.livemig.qemu.plugins.module_utils._module import new_module, qmp, vm_argument_spec, vm_paths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPError, QMPSession, QMPTimeout, event_time


def listening_uri(info: dict) -> str | None:
    for address in info.get("socket-address") or []:
        if address.get("type") == "inet":
            return f"tcp:{address['host']}:{address['port']}"
    return None


def listen(module, session: QMPSession) -> dict:
    params = module.params
    status = session.execute("query-status")["status"]
    if status != "inmigrate":
        module.fail_json(msg=f"VM {params['name']}: QEMU is {status}, not waiting for an incoming migration")
    uri = listening_uri(session.execute("query-migrate"))
    if uri:
        return {"changed": False, "uri": uri, "port": int(uri.rsplit(":", 1)[1]), "status": status}
    try:
        parameters = check_request(session, params["capabilities"], params["parameters"])
    except RequestError as exc:
        module.fail_json(msg=f"VM {params['name']}: {exc}")
    if module.check_mode:
        return {"changed": True, "status": status}
    capabilities = sorted({"events", *params["capabilities"]})
    try:
        session.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": name, "state": True} for name in capabilities]})
        if parameters:
            session.execute("migrate-set-parameters", parameters)
    except QMPError as exc:
        module.fail_json(msg=f"VM {params['name']}: QEMU refused the capabilities {', '.join(capabilities)} or the "
                             f"parameters {parameters}: {exc}")
    session.execute("migrate-incoming", {"uri": f"tcp:{params['address']}:{params['port']}"})
    uri = listening_uri(session.execute("query-migrate"))
    if not uri:
        module.fail_json(msg=f"VM {params['name']}: QEMU accepted migrate-incoming but reports no listening address")
    return {"changed": True, "uri": uri, "port": int(uri.rsplit(":", 1)[1]), "status": status}


def disk_allocated(session: QMPSession) -> dict:
    return {node["node-name"][len("file-"):]: node["image"].get("actual-size", 0)
            for node in session.execute("query-named-block-nodes", {"flat": True})
            if node.get("node-name", "").startswith("file-") and "image" in node}


def wait_completed(module, session: QMPSession) -> dict:
    deadline = time.monotonic() + module.params["timeout"]
    with session.subscribe(("RESUME", "MIGRATION")) as events:
        status = session.execute("query-status")["status"]
        if status == "running":
            return {"changed": False, "status": status, "resume_time": None, "disk_allocated": disk_allocated(session)}
        while True:
            try:
                event = events.wait(None, deadline, "the incoming migration to complete")
            except QMPTimeout:
                module.fail_json(msg=f"VM {module.params['name']}: the incoming migration did not complete in time",
                                 status=session.execute("query-status")["status"])
            if event["event"] == "RESUME":
                return {"changed": False, "status": "running", "resume_time": event_time(event),
                        "disk_allocated": disk_allocated(session)}
            if event["data"].get("status") in ("failed", "postcopy-paused"):
                module.fail_json(msg=f"VM {module.params['name']}: the incoming migration {event['data']['status']}",
                                 status=session.execute("query-status")["status"])


def main() -> None:
    module = new_module(
        vm_argument_spec(
            state={"type": "str", "default": "listening", "choices": ["listening", "completed"]},
            address={"type": "str"},
            port={"type": "int", "default": 0},
            capabilities={"type": "list", "elements": "str", "default": []},
            parameters={"type": "dict", "default": {}},
            timeout={"type": "float", "default": 3600},
        ),
        supports_check_mode=True,
        required_if=[("state", "listening", ("address",))],
    )
    paths = vm_paths(module)
    if module.params["state"] == "listening":
        with qmp(module, paths.qmp) as session:
            result = listen(module, session)
    else:
        with qmp(module, paths.job_qmp) as session:
            result = wait_completed(module, session)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
