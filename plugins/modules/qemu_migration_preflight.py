#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_migration_preflight
short_description: One host's part of a move's preflight in one call - lease, facts, host check, storage, link test
version_added: 0.3.0
description:
  - Does in one module call what a move's preflight does on one host, one SSH round trip instead of one per task.
    Each part is the handler of the module that does it on its own, with the options that module would get.
  - O(step=source), on the source host. Breaks the stale lease O(lease.break_lock_id) when given, takes the VM's
    lease (as M(livemig.qemu.qemu_vm_lock) with O(livemig.qemu.qemu_vm_lock#module:state=locked)), gathers facts (as M(livemig.qemu.qemu_facts) with
    O(livemig.qemu.qemu_facts#module:check_kvm=false)), marks the VM's images (as
    M(livemig.qemu.qemu_storage_check) with O(livemig.qemu.qemu_storage_check#module:state=marked)) and checks the
    host (as M(livemig.qemu.qemu_host_check); its accelerator and machine type default to those of the VM running
    here, from the facts just gathered).
  - O(step=target), on the target host. Breaks the stale lease when asked, takes the VM's lease, gathers facts
    (O(check_kvm)), checks the host, looks for the source's marks (O(token)) and, with O(link_listener), starts the
    one-shot link-test listener (as M(livemig.qemu.qemu_migration_probe) with
    O(livemig.qemu.qemu_migration_probe#module:state=listening)).
  - O(step=measure), on the source host once the target step has looked for the marks. Removes the marks, then, with
    O(measure), measures the VM and the link to the target's listener (as M(livemig.qemu.qemu_migration_probe) with
    O(livemig.qemu.qemu_migration_probe#module:state=measured)).
  - A step that fails fails the call. Its message starts with the host (added by the action plugin) and the step, for
    example C(on hv2, checking the host), and RV(failed_step) is the step's result key. Before failing, the call gives
    back the lease it took (a lease left by a failed preflight would block the next run until its O(lease.ttl)) and
    removes the marks it wrote.
  - A listener that cannot start fails nothing. RV(link_listener.error) says why, the measurement then has no link
    figure and the plan says why it has no prediction.
  - The call reports no change. The lease is the run's, which gives it back at its end, and the marks are removed by
    O(step=measure) (or by the failing call itself).
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.attributes
  - livemig.qemu.attributes.action_group
attributes:
  check_mode:
    support: full
    details:
      - The lease behaves as M(livemig.qemu.qemu_vm_lock) does in check mode. None is taken or broken, and the call
        fails when another live lease holds the VM here.
      - The facts, the host check, the marks, the look for them, the listener and the measurement run in check mode
        too, so that the C(livemig.qemu.preflight) playbook run with C(--check) prints the whole plan. The marks are
        token files that O(step=measure) removes again; the listener ends by itself after its sender or
        O(link_listener.timeout).
options:
  step:
    description:
      - V(source) and V(measure) run on the source host, V(target) on the target host (see the description).
    type: str
    required: true
    choices: [source, target, measure]
  spec:
    description: The VM description (one C(livemig_vms) entry).
    type: dict
    required: true
  token:
    description:
      - With O(step=target), the token of the source's marks, RV(storage.token) of O(step=source). Required for
        O(step=target).
    type: str
  check_kvm:
    description:
      - With O(step=target), whether the facts boot a tiny guest to tell whether KVM is usable (see
        O(livemig.qemu.qemu_facts#module:check_kvm)). The source step never does, since its VM's accelerator is
        known.
    type: bool
    default: true
  lease:
    description:
      - The VM's lease on this host, as M(livemig.qemu.qemu_vm_lock) takes it, with O(step=source) and
        O(step=target); O(step=measure) takes none.
      - Without it no lease is taken (a plan that changes nothing, such as C(playbooks/preflight.yml)'s) and
        RV(lease) is null.
    type: dict
    suboptions:
      lock_id:
        description: The lease's id, for example the move's id.
        type: str
        required: true
      break_lock_id:
        description:
          - The id of a lease whose play is gone, given back first (as M(livemig.qemu.qemu_vm_lock) with
            O(livemig.qemu.qemu_vm_lock#module:state=unlocked)), for example C(livemig_break_lock).
        type: str
      operation:
        description: What the holder does, for the refusal message (for example C(migrate from hv1 to hv2)).
        type: str
        default: change
      holder:
        description: Who holds the lease, for the refusal message (for example C(root@controller1)).
        type: str
        default: unknown
      ttl:
        description: Seconds the lease lasts at most when it is not given back.
        type: float
        default: 3600
      hosts:
        description: Every host the play takes the VM's lease on, recorded with the lease.
        type: list
        elements: str
        default: []
      holding:
        description:
          - A host where the caller already holds the VM's lease; with O(step=target), the source's inventory name
            (see O(livemig.qemu.qemu_vm_lock#module:holding)).
        type: str
      controller:
        description: The controller process that holds the lease. The module's action plugin fills it in; leave it
          unset.
        type: dict
      replace:
        description: The id of a lease to take over whose controller has ended. The action plugin sets it; leave it
          unset.
        type: str
  check:
    description: The host check's options (see M(livemig.qemu.qemu_host_check)).
    type: dict
    suboptions:
      accel:
        description:
          - The accelerator the VM runs or will run with.
          - With O(step=source), defaults to that of the VM running here. With O(step=target), give the source's.
        type: str
        choices: [kvm, tcg]
      machine:
        description:
          - The versioned machine type, to pick the firmware built for it.
          - With O(step=source), defaults to that of the VM running here. With O(step=target), give the source's.
        type: str
      address:
        description: The host's migration address, to check that a listener can bind it.
        type: str
      tls_dir:
        description: The host's TLS directory in QEMU's x509 layout, to check.
        type: path
  link_listener:
    description:
      - With O(step=target), start the one-shot link-test listener (see M(livemig.qemu.qemu_migration_probe)).
    type: dict
    suboptions:
      address:
        description: The target's migration address, the only one the listener binds to.
        type: str
        required: true
      timeout:
        description: Seconds the listener lives, at most 3600.
        type: float
        default: 30
      tls_dir:
        description: This host's TLS directory; given, the link test runs over TLS.
        type: path
      tls_peer_dn:
        description: With O(link_listener.tls_dir), the subject of the one client certificate admitted.
        type: str
  measure:
    description:
      - With O(step=measure), measure the VM and the link to the target's listener (see
        M(livemig.qemu.qemu_migration_probe), O(livemig.qemu.qemu_migration_probe#module:state=measured)).
    type: dict
    suboptions:
      disks:
        description:
          - Names of the VM's local disks, the ones a move would mirror.
          - UEFI's variable store V(nvram) may be among them; it is not measured.
        type: list
        elements: str
        default: []
      peer_address:
        description: The target's migration address the listener binds to. Without it the link is not measured.
        type: str
      peer_port:
        description: RV(link_listener.port) of the target step; V(0) measures no link.
        type: int
        default: 0
      token:
        description: RV(link_listener.token) of the target step.
        type: str
      tls_dir:
        description: This host's TLS directory; given, the link test runs over TLS.
        type: path
      tls_hostname:
        description: With O(measure.tls_dir), the name the target's server certificate must bear.
        type: str
      link_seconds:
        description: Seconds to send for, from 0.1 to 60.
        type: float
        default: 1.0
      dirty_rate_seconds:
        description: The window in seconds of the dirty rate and the disk writes, from 0.05 to 60.
        type: float
        default: 1.0
      transport:
        description:
          - The transport of the move to predict, which selects the recorded stream rate
            (RV(livemig.qemu.qemu_migration_probe#module:measurements.stream_rate)).
          - Default V(tls) when O(measure.tls_dir) is given, else V(tcp).
        type: str
        choices: [tls, tcp]
      capabilities:
        description:
          - The migration capabilities the source will migrate with, as M(livemig.qemu.qemu_migrate) gets them.
          - With C(multifd) among them the stream is multifd; selects the recorded stream rate, like
            O(measure.transport).
        type: list
        elements: str
        default: []
      parameters:
        description:
          - The migration parameters the source will migrate with, as M(livemig.qemu.qemu_migrate) gets them.
          - With C(multifd) in O(measure.capabilities), C(multifd-channels) (QEMU's default V(2) when not set) and
            C(multifd-compression) select the recorded stream rate, like O(measure.transport).
        type: dict
        default: {}
requirements:
  - qemu-img (Debian package qemu-utils)
  - QEMU (Debian package qemu-system-x86), for the facts
  - iproute2 (C(ip)) when the VM has NICs
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: The source's part - lease, facts, marks, host check
  livemig.qemu.qemu_migration_preflight:
    step: source
    name: web1
    host:
      run_dir: /run/livemig
      image_dir: /var/lib/livemig/images
    spec: "{{ livemig_vms.web1 }}"
    lease:
      lock_id: "{{ move_id }}"
      operation: migrate from hv1 to hv2
      holder: root@controller1
      ttl: 7200
      hosts: [hv1, hv2]
    check:
      tls_dir: /etc/livemig/tls
  register: source

- name: The target's part - lease, facts, host check, look for the marks, listener
  livemig.qemu.qemu_migration_preflight:
    step: target
    name: web1
    host:
      run_dir: /run/livemig
      image_dir: /srv/images
    spec: "{{ livemig_vms.web1 }}"
    token: "{{ source.storage.token }}"
    check_kvm: false
    lease:
      lock_id: "{{ move_id }}"
      operation: migrate from hv1 to hv2
      holder: root@controller1
      ttl: 7200
      hosts: [hv1, hv2]
      holding: hv1
    check:
      accel: "{{ source.facts.vms.web1.accel }}"
      machine: "{{ source.facts.vms.web1.machine }}"
      address: 198.18.0.2
      tls_dir: /etc/livemig/tls
    link_listener:
      address: 198.18.0.2
      tls_dir: /etc/livemig/tls
      tls_peer_dn: CN=hv1
  delegate_to: hv2
  register: target

- name: Remove the marks, measure the VM and the link
  livemig.qemu.qemu_migration_preflight:
    step: measure
    name: web1
    host:
      run_dir: /run/livemig
      image_dir: /var/lib/livemig/images
    spec: "{{ livemig_vms.web1 }}"
    measure:
      disks: [root]
      peer_address: 198.18.0.2
      peer_port: "{{ target.link_listener.port | default(0) }}"
      token: "{{ target.link_listener.token | default(omit) }}"
      tls_dir: /etc/livemig/tls
      tls_hostname: hv2
  register: probe
"""

RETURN = r"""
lease:
  description: The lease step, M(livemig.qemu.qemu_vm_lock)'s result and whether the stale lease was broken; null without O(lease).
  returned: with O(step=source) and O(step=target)
  type: dict
  contains:
    lock:
      description: The lease after the step (in check mode the one that holds the VM here, if any).
      type: dict
      sample: {"id": "move-1", "operation": "migrate from hv1 to hv2", "holder": "root@controller1"}
    replaced:
      description: The lease of an ended play that this one replaced.
      type: dict
      returned: when one was replaced
    broken:
      description: Whether O(lease.break_lock_id) was given back (in check mode, whether it would be).
      type: bool
facts:
  description:
    - M(livemig.qemu.qemu_facts)'s C(livemig_qemu) of this host, returned as a plain value, not as C(ansible_facts)
      (the target step is delegated, and facts would land on the wrong inventory host).
  returned: with O(step=source) and O(step=target)
  type: dict
host_check:
  description: M(livemig.qemu.qemu_host_check)'s result (C(problems), C(runs_here), C(volumes), C(room), and when
    they apply C(firmware), C(cdrom), C(address), C(tls)).
  returned: with O(step=source) and O(step=target)
  type: dict
storage:
  description: M(livemig.qemu.qemu_storage_check)'s result.
  returned: always
  type: dict
  contains:
    token:
      description: With O(step=source) the token of the marks written; with O(step=target) the one looked for.
      type: str
      returned: with O(step=source) and O(step=target)
      sample: 5f0c1e7a9b2d4c6e8f1a3b5c7d9e0f12
    disks:
      description:
        - Per disk, C(path) and C(exists); with O(step=source) the image's C(virtual_size), with O(step=target)
          C(same_file) (this host reads the source's mark beside it).
      type: dict
      sample: {"root": {"path": "/var/lib/livemig/images/web1-root.qcow2", "exists": true, "same_file": false}}
link_listener:
  description: The link-test listener, as M(livemig.qemu.qemu_migration_probe) returns it, or why it could not start.
  returned: with O(step=target) and O(link_listener)
  type: dict
  contains:
    port:
      description: Port the listener listens on.
      type: int
      returned: when it started
      sample: 40713
    token:
      description: What the sender must present first; pass it as O(measure.token).
      type: str
      returned: when it started
      sample: 5f0c1e7a9b2d4c6e8f1a3b5c7d9e0f125f0c1e7a9b2d4c6e8f1a3b5c7d9e0f12
    pid:
      description: Process id of the listener.
      type: int
      returned: when it started
      sample: 41877
    error:
      description: Why the listener could not start; then the only key.
      type: str
      returned: when it could not start
status:
  description: QEMU's run state of the VM when measured, V(running) or V(paused).
  returned: with O(step=measure) and O(measure)
  type: str
  sample: running
measurements:
  description: M(livemig.qemu.qemu_migration_probe)'s RV(livemig.qemu.qemu_migration_probe#module:measurements).
  returned: with O(step=measure) and O(measure)
  type: dict
msg:
  description: The measurements in one line, or on failure what failed.
  returned: with O(step=measure) and O(measure), and on failure
  type: str
failed_step:
  description: The result key of the step that failed, V(lease), V(facts), V(host_check), V(storage) or
    V(measurements).
  returned: on failure
  type: str
  sample: host_check
lock:
  description: When the lease is refused, the live one that holds the VM here.
  returned: when the lease is refused
  type: dict
busy:
  description: When the lease is refused, the pids of the module runs that still work under the live lease here.
  returned: when the lease is refused
  type: list
  elements: int
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _preflight
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec

LEASE = {
    "lock_id": {"type": "str", "required": True},
    "break_lock_id": {"type": "str"},
    "operation": {"type": "str", "default": "change"},
    "holder": {"type": "str", "default": "unknown"},
    "ttl": {"type": "float", "default": 3600},
    "hosts": {"type": "list", "elements": "str", "default": []},
    "holding": {"type": "str"},
    "controller": {"type": "dict"},
    "replace": {"type": "str"},
}
CHECK = {
    "accel": {"type": "str", "choices": ["kvm", "tcg"]},
    "machine": {"type": "str"},
    "address": {"type": "str"},
    "tls_dir": {"type": "path"},
}
LINK_LISTENER = {
    "address": {"type": "str", "required": True},
    "timeout": {"type": "float", "default": 30},
    "tls_dir": {"type": "path"},
    "tls_peer_dn": {"type": "str"},
}
MEASURE = {
    "disks": {"type": "list", "elements": "str", "default": []},
    "peer_address": {"type": "str"},
    "peer_port": {"type": "int", "default": 0},
    "token": {"type": "str", "no_log": False},
    "tls_dir": {"type": "path"},
    "tls_hostname": {"type": "str"},
    "link_seconds": {"type": "float", "default": 1.0},
    "dirty_rate_seconds": {"type": "float", "default": 1.0},
    "transport": {"type": "str", "choices": ["tls", "tcp"]},
    "capabilities": {"type": "list", "elements": "str", "default": []},
    "parameters": {"type": "dict", "default": {}},
}


def main() -> None:
    run_module(
        vm_argument_spec(
            step={"type": "str", "required": True, "choices": list(_preflight.STEPS)},
            spec={"type": "dict", "required": True},
            token={"type": "str", "no_log": False},
            check_kvm={"type": "bool", "default": True},
            lease={"type": "dict", "options": LEASE},
            check={"type": "dict", "options": CHECK},
            link_listener={"type": "dict", "options": LINK_LISTENER},
            measure={"type": "dict", "options": MEASURE},
        ),
        _preflight.run,
        required_if=[("step", "target", ["token"])],
        supports_check_mode=True,
    )


if __name__ == "__main__":
    main()
