#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_migration_probe
short_description: Measure what a live move of a VM would carry and what the migration network carries
version_added: 0.3.0
description:
  - The measurements a prediction of a live move needs, in two tasks. First O(state=listening) on the target host
    starts a one-shot listener on its migration address. Then O(state=measured) on the source host measures the VM
    and sends to that listener for O(link_seconds) to measure the link.
  - O(state=listening) starts a detached process that listens on O(address) only, for O(timeout) seconds, and
    returns at once with its RV(port), RV(pid) and a random RV(token). The listener serves a single sender. A
    connection that does not present the token within 5 seconds is closed and counted. With O(tls_dir), so is a
    connection without a client certificate of the CA with the subject O(tls_peer_dn). After the real sender's
    stream it answers with the bytes it received and the time it took, then exits. It exits at its deadline in any
    case.
  - O(state=measured) measures the VM over one window of O(dirty_rate_seconds). It measures the rate at which the
    guest dirties its RAM (QEMU's C(calc-dirty-rate)) and the bytes per second the guest writes to O(disks). It also
    reads the size of the RAM and how much of it the guest ever touched, and the bytes allocated on each disk of
    O(disks). Then it sends random bytes to the listener at O(peer_address):O(peer_port). With O(tls_dir) it sends
    over TLS, as a TLS move would.
  - O(state=measured) also returns the rate QEMU's own migration stream reached in the last live move from this host
    to O(peer_address) over the same transport and multifd setting (RV(measurements.stream_rate)). The source
    records it in C(<run_dir>/.livemig-streams/) after each completed move; a figure older than 30 days is ignored.
    A move whose stream reached 85 % of the link rate measured before it (or of its bandwidth cap) was held back by
    the link, not by this host, and sets no rate. Under TCG or with TLS QEMU sends far slower than the link test, so
    the prediction goes by the lower of the two.
  - A dirty rate or link rate that cannot be measured (no listener, refused, timed out) does not fail the task. The
    figure is null and the reason is beside it (RV(measurements.dirty_rate_error), RV(measurements.link_error)), so
    the plan can say why it has no prediction. A VM that does not run on this host fails the task.
  - O(state=measured) changes nothing and measures in check mode too. O(state=listening) starts nothing in check
    mode and returns port V(0). The link then stays unmeasured, unless that task runs with C(check_mode=false).
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.action_group
  - livemig.qemu.tls
  - livemig.qemu.tls.server
  - livemig.qemu.tls.client
attributes:
  check_mode:
    support: full
    details:
      - O(state=measured) changes nothing and runs the same in check mode.
      - O(state=listening) starts no listener in check mode, reports a change and returns port V(0).
options:
  state:
    description:
      - V(listening) (target host) starts the one-shot listener.
      - V(measured) (source host) measures the VM and the link to the listener.
    type: str
    choices: [listening, measured]
    required: true
  name:
    description:
      - Name of the VM to measure. Required for O(state=measured), which also needs O(host) or O(run_dir).
      - Letters, digits, V(.), V(_) and V(-); no V(/) and no V(..).
    type: str
    required: false
  run_dir:
    description:
      - This host's directory for the VM's volatile files, as O(host.run_dir).
      - O(state=measured) needs this or O(host); O(state=listening) needs neither.
    type: path
    required: false
  address:
    description:
      - The target's migration address, the only one the listener binds to; not a wildcard address.
      - Required for O(state=listening).
    type: str
  port:
    description: TCP port of the listener; V(0) picks a free one.
    type: int
    default: 0
  timeout:
    description: Seconds the listener lives, at most 3600.
    type: float
    default: 30
  disks:
    description:
      - Names of the VM's local disks, the ones a move would mirror, as its spec names them.
      - O(state=measured) reports the guest's writes to them and their allocated bytes. It leaves out UEFI's
        variable store V(nvram), a few MiB that no device's block statistics count.
    type: list
    elements: str
    default: []
  peer_address:
    description:
      - With O(state=measured), the target's migration address the listener binds to (its O(address)).
      - Without it, or with O(peer_port=0), the link is not measured.
    type: str
  peer_port:
    description: With O(state=measured), the RV(port) that O(state=listening) returned.
    type: int
    default: 0
  token:
    description:
      - With O(state=measured), the RV(token) that O(state=listening) returned.
      - The token is not a secret. It tells the listener which connection is the sender's on a network that others
        may reach.
    type: str
  link_seconds:
    description: With O(state=measured), seconds to send for, from 0.1 to 60.
    type: float
    default: 1.0
  dirty_rate_seconds:
    description:
      - With O(state=measured), the window in seconds of the dirty rate and the disk writes, from 0.05 to 60.
      - QEMU before 8.2 measures whole seconds only, so it is rounded to at least 1 second there
        (RV(measurements.dirty_rate_seconds)).
    type: float
    default: 1.0
  transport:
    description:
      - With O(state=measured), the transport of the move to predict, which selects the recorded stream rate
        (RV(measurements.stream_rate)).
      - Default V(tls) when O(tls_dir) is given, else V(tcp), as the link test itself runs.
    type: str
    choices: [tls, tcp]
    version_added: 0.3.0
  capabilities:
    description:
      - With O(state=measured), the migration capabilities the source will migrate with, as
        M(livemig.qemu.qemu_migrate) gets them (O(livemig.qemu.qemu_migrate#module:capabilities)).
      - With C(multifd) among them the stream is multifd, its channels and compression from O(parameters); without
        it a single stream. Selects the recorded stream rate, like O(transport).
    type: list
    elements: str
    default: []
    version_added: 0.3.0
  parameters:
    description:
      - With O(state=measured), the migration parameters the source will migrate with, as
        M(livemig.qemu.qemu_migrate) gets them (O(livemig.qemu.qemu_migrate#module:parameters)).
      - Only C(multifd-channels) (QEMU's default V(2) when not set) and C(multifd-compression) (default V(none))
        count, and only with C(multifd) in O(capabilities). Selects the recorded stream rate, like O(transport).
    type: dict
    default: {}
    version_added: 0.3.0
requirements:
  - qemu.qmp (Python library on the managed host), for O(state=measured)
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Listen on web1's target for the link test
  livemig.qemu.qemu_migration_probe:
    state: listening
    address: 198.18.0.2
    tls_dir: /etc/livemig/tls
    tls_peer_dn: CN=hv1
  delegate_to: hv2
  check_mode: false
  register: listener

- name: Measure web1 and the link from its source
  livemig.qemu.qemu_migration_probe:
    state: measured
    name: web1
    host:
      run_dir: /run/livemig
      image_dir: /var/lib/livemig/images
    disks: [root]
    peer_address: 198.18.0.2
    peer_port: "{{ listener.port }}"
    token: "{{ listener.token }}"
    tls_dir: /etc/livemig/tls
    tls_hostname: hv2
  delegate_to: hv1
  register: probe
"""

RETURN = r"""
port:
  description: Port the listener listens on; V(0) in check mode.
  returned: with O(state=listening)
  type: int
  sample: 40713
token:
  description: What the sender must present first; pass it to O(state=measured) as O(token). Empty in check mode.
  returned: with O(state=listening)
  type: str
  sample: 5f0c1e7a9b2d4c6e8f1a3b5c7d9e0f125f0c1e7a9b2d4c6e8f1a3b5c7d9e0f12
pid:
  description: Process id of the listener; null in check mode.
  returned: with O(state=listening)
  type: int
  sample: 41877
status:
  description: QEMU's run state of the VM, V(running) or V(paused) (a paused guest dirties nothing).
  returned: with O(state=measured)
  type: str
  sample: running
measurements:
  description: The figures, plain numbers in bytes, bytes per second and seconds.
  returned: with O(state=measured)
  type: dict
  contains:
    dirty_rate:
      description:
        - Bytes per second of guest RAM dirtied during the window, from QEMU's C(calc-dirty-rate) (which reports
          whole MiB/s); null when it could not be measured.
        - In V(page-sampling) mode it is estimated from a sample of pages whose content changed. In V(dirty-bitmap)
          mode it is the distinct pages dirtied. In V(dirty-ring) mode it is every page dirtied again after it was
          collected, which can exceed the working set.
      type: int
      sample: 16777216
    dirty_rate_mode:
      description:
        - The mode used. V(page-sampling) under TCG. Under KVM, V(dirty-ring) when the VM's KVM has a dirty ring,
          else V(dirty-bitmap), else V(page-sampling).
      type: str
      sample: page-sampling
    dirty_rate_seconds:
      description: The window QEMU measured over.
      type: float
      sample: 1.0
    dirty_rate_error:
      description: Why QEMU could not measure the dirty rate; null when it did.
      type: str
    disk_write_rate:
      description: Bytes per second the guest wrote to O(disks) over the same window (their devices' C(wr_bytes)).
      type: int
      sample: 81920
    disk_write_seconds:
      description: The length of that window.
      type: float
      sample: 1.02
    ram_bytes:
      description: The guest's RAM, base and hot-plugged (C(query-memory-size-summary)).
      type: int
      sample: 268435456
    ram_resident_bytes:
      description:
        - Bytes of the guest's RAM that the QEMU process ever touched (resident or swapped out), from its memory
          backends' mappings in C(/proc/<pid>/smaps); null when they cannot be read.
        - Pages the guest never touched are not resident, and pre-copy sends them as a zero-page flag at almost no
          cost. So this is an upper bound of the RAM pre-copy really sends in its first pass. Touched pages that
          hold zeros cost almost nothing too.
      type: int
      sample: 115343360
    ram_resident_error:
      description: Why RV(measurements.ram_resident_bytes) is null; null otherwise.
      type: str
    disk_bytes:
      description:
        - Bytes allocated for all of O(disks) on this host (their images' C(actual-size)), the most a mirror
          sends. A block device counts its whole size.
      type: int
      sample: 268435456
    disk_bytes_per_disk:
      description: The same for each disk of O(disks).
      type: dict
      sample: {root: 268435456}
    link_rate:
      description:
        - Bytes per second the link carried, RV(measurements.link_bytes) over RV(measurements.link_seconds) as
          the listener counted them; null when it could not be measured.
      type: int
      sample: 1181116006
    link_bytes:
      description: Bytes the listener received.
      type: int
    link_seconds:
      description: Seconds the listener took to receive them.
      type: float
    link_sender_bytes:
      description: Bytes this host sent (equal to RV(measurements.link_bytes) when measured).
      type: int
    link_sender_seconds:
      description: Seconds this host took to send them, which ends before the last bytes arrive.
      type: float
    link_refused:
      description: Connections the listener refused before this host's (no token, or not the admitted certificate).
      type: int
      sample: 0
    link_error:
      description: Why the link was not measured; null when it was.
      type: str
      sample: "cannot connect to the listener at 198.18.0.2:40713: Connection refused (is it listening there, ...)"
    stream_rate:
      description:
        - Bytes per second QEMU's migration stream carried while the guest ran, in the last move from this host to
          O(peer_address) with the same O(transport) and multifd setting (from O(capabilities) and O(parameters))
          whose stream this host held back (not the link or the cap). It is the ceiling of the next move's rate.
        - Null when no such move was recorded in the last 30 days, or when the last one was held back by the link
          or the cap and no earlier one set a lower ceiling.
      type: float
      sample: 220200960.0
      version_added: 0.3.0
    stream_rate_source:
      description:
        - The recorded move the stream rate comes from, or the last move when none sets a rate; null when none was
          recorded in the last 30 days.
        - C(migration_id) of that move, C(when) it completed (epoch seconds), C(bound) (V(host), V(link) or V(cap),
          what held its stream back), the C(link_rate) measured before it and its bandwidth C(cap) (V(0) for none).
      type: dict
      sample: {migration_id: web1-1733230000, when: 1733230012.5, bound: host, link_rate: 1181116006, cap: 0}
      version_added: 0.3.0
msg:
  description: What the task did, or the measurements in one line.
  returned: always
  type: str
  sample: "VM web1: dirties 16.0 MiB/s (page-sampling), writes 0.1 MiB/s to its disks, RAM 256.0 MiB (110.0 MiB
    touched), disks 256.0 MiB allocated, link 1126.4 MiB/s, QEMU's stream last reached 210.0 MiB/s to this target"
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _linktest, _vmmeasure
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec
from ansible_collections.livemig.qemu.plugins.module_utils._tlsqemu import CLIENT_OPTIONS, SERVER_OPTIONS

HANDLERS = {"listening": _linktest.listening, "measured": _vmmeasure.measured}


def main() -> None:
    spec = vm_argument_spec(
        state={"type": "str", "required": True, "choices": list(HANDLERS)},
        address={"type": "str"},
        port={"type": "int", "default": 0},
        timeout={"type": "float", "default": 30},
        disks={"type": "list", "elements": "str", "default": []},
        peer_address={"type": "str"},
        peer_port={"type": "int", "default": 0},
        token={"type": "str", "no_log": False},
        link_seconds={"type": "float", "default": 1.0},
        dirty_rate_seconds={"type": "float", "default": 1.0},
        transport={"type": "str", "choices": ["tls", "tcp"]},
        capabilities={"type": "list", "elements": "str", "default": []},
        parameters={"type": "dict", "default": {}},
        **{**SERVER_OPTIONS, **CLIENT_OPTIONS},
    )
    # The target's listener belongs to no VM, hence no VM name and no host locations.
    spec["name"] = {**spec["name"], "required": False}
    run_module(spec, lambda task: HANDLERS[task.params["state"]](task), needs_qmp=False, host_required=False,
               supports_check_mode=True,
               required_if=[("state", "listening", ("address",)), ("state", "measured", ("name",)),
                            ("state", "measured", ("host", "run_dir"), True)])


if __name__ == "__main__":
    main()
