#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_nbd_copy
short_description: Copy a disk image or a VM state file to another host over NBD, sending only its data
version_added: 0.2.0
description:
  - Copies one file (a qcow2 or raw disk image, or a raw VM state file) from the host that runs O(state=sent) to the
    host that runs O(state=listening), with QEMU's own tools and no SSH between the hosts.
  - The receiving host serves the destination with a one-shot C(qemu-nbd) bound to one address, under an
    unguessable export name. It takes one client and exits when that client disconnects.
  - The sending host writes the source into it with C(qemu-img convert). Unallocated and zero areas are not sent,
    and the destination stays sparse.
  - The receiving server's pid, port and export name are kept in this host's record of the VM, under the volatile
    key C(copy:<label>), never on another host.
  - Used by the stateful and cold migration paths. A run is O(state=listening) on the receiving host, then
    O(state=sent) on the sending host, then O(state=finished) on the receiving host, or O(state=absent) there to
    roll back.
  - With O(tls_dir) the copy is TLS. O(state=listening) then serves only TLS and admits only the client
    O(tls_peer_dn); O(state=sent) shows this host's client certificate and checks the receiver's against
    O(tls_hostname).
extends_documentation_fragment:
  - livemig.qemu.vm
  - livemig.qemu.vm.lock
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.action_group
  - livemig.qemu.tls
  - livemig.qemu.tls.server
  - livemig.qemu.tls.client
options:
  state:
    description:
      - V(listening) (receiving host) creates the destination image if it is missing and starts the server.
        If a live server for O(label) is already recorded, it is returned unchanged.
      - V(sent) (sending host) copies O(src) into the server at O(uri). It reads no VM record and always reports a
        change.
      - V(finished) (receiving host) waits up to O(timeout) seconds for the server to exit after the copy, then
        forgets it. A server still running after that is killed and the task fails.
      - V(absent) (receiving host, for rollback) stops the server, forgets it and deletes O(path).
    type: str
    choices: [listening, sent, finished, absent]
    required: true
  name:
    description:
      - Name of the VM the copy belongs to. Letters, digits, V(.), V(_) and V(-); no V(/) and no V(..).
      - Required for O(state=listening), O(state=finished) and O(state=absent).
    type: str
    required: false
  run_dir:
    description:
      - This host's directory for the VM's volatile files, as O(host.run_dir); the server's pid file is
        C(<run_dir>/<name>/copy-<label>.pid).
      - O(state=listening), O(state=finished) and O(state=absent) need this or O(host); O(state=sent) needs
        neither.
    type: path
    required: false
  label:
    description:
      - What is copied, for example a disk name or V(state). Names the server in the VM's record, so one VM can
        receive several files at once.
      - Lower-case letters, digits and V(_), starting with a letter, at most 16 characters.
      - Required for O(state=listening), O(state=finished) and O(state=absent).
    type: str
  path:
    description:
      - Absolute path of the destination file on the receiving host. A missing one is created mode 0600 (a disk, or
        the state file, which holds all of the guest's RAM), never through a symbolic link.
      - An existing file is used only if it has the virtual size O(size) and holds no data; the copy skips the
        source's zero areas, so older data there would survive.
      - A block device is served as it is, raw and cut to O(size), which it must hold; it is never created, replaced
        or deleted, and the sender overwrites all of it (RV(zeroed) is V(false)).
      - Required for O(state=listening) and O(state=absent).
    type: path
  replace:
    description:
      - With O(state=listening), delete an existing O(path) first and start from an empty image of O(size).
      - For a stale copy, such as the disk a host kept after the VM moved away from it.
    type: bool
    default: false
  format:
    description: Format of the destination image. V(raw) for a VM state file.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  size:
    description:
      - Virtual size in bytes of the destination, the source's virtual size (for a raw file, its size in bytes).
      - Required when O(path) does not exist.
    type: int
  address:
    description: Address the server binds to, on the network the copy should use. Required for O(state=listening).
    type: str
  port:
    description: TCP port of the server; V(0) picks a free one.
    type: int
    default: 0
  src:
    description: Absolute path of the file to send. Required for O(state=sent).
    type: path
  src_format:
    description: Format of O(src).
    type: str
    choices: [qcow2, raw]
    default: qcow2
  src_size:
    description:
      - When O(src) is a block device, the bytes from its start to send (the size of the disk on it, which may be
        smaller than the device). Required for a block device.
    type: int
  target_is_zero:
    description:
      - The destination holds no data, so the source's zero areas need not be written. Pass the receiver's
        RV(zeroed); V(false) for a block device, whose old content must be overwritten.
    type: bool
    default: true
  uri:
    description: The RV(uri) that O(state=listening) returned on the receiving host. Required for O(state=sent).
    type: str
  force_share:
    description:
      - Read O(src) even though another process has it open (C(qemu-img -U)).
      - Only safe when nothing writes to it, for example while the VM's QEMU is paused.
    type: bool
    default: false
  timeout:
    description:
      - With O(state=sent), seconds the copy may take.
      - With O(state=finished), seconds to wait for the server to exit.
    type: float
    default: 3600
  fsync:
    description: With O(state=finished), flush the destination file to stable storage.
    type: bool
    default: true
requirements:
  - qemu-img and qemu-nbd (QEMU 7.2 or later; Debian package qemu-utils) on both hosts
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Receive web1's root disk on the migration network
  livemig.qemu.qemu_nbd_copy:
    state: listening
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    label: root
    path: /var/lib/livemig/images/web1-root.qcow2
    size: 21474836480
    address: 192.0.2.12
  delegate_to: hv2
  register: receiver

- name: Send it from the source, whose QEMU is paused
  livemig.qemu.qemu_nbd_copy:
    state: sent
    src: /var/lib/livemig/images/web1-root.qcow2
    src_format: qcow2
    uri: "{{ receiver.uri }}"
    force_share: true
  delegate_to: hv1

- name: Wait for the receiving server to end and flush the image
  livemig.qemu.qemu_nbd_copy:
    state: finished
    name: web1
    host:
      run_dir: /run/livemig
      image_dir: /var/lib/livemig/images
    label: root
  delegate_to: hv2

- name: Roll back a copy of the VM state
  livemig.qemu.qemu_nbd_copy:
    state: absent
    name: web1
    run_dir: /run/livemig
    image_dir: /var/lib/livemig/images
    label: state
    path: /var/lib/livemig/images/web1/state
  delegate_to: hv2
"""

RETURN = r"""
uri:
  description: Where the sender writes; pass it to O(state=sent) as O(uri).
  returned: with O(state=listening), except in check mode when the server would be started
  type: str
  sample: nbd://192.0.2.12:40711/root-5f0c1e7a9b2d4c6e8f1a3b5c7d9e0f12
host:
  description: Address the server listens on.
  returned: with O(state=listening), except in check mode when the server would be started
  type: str
  sample: 192.0.2.12
port:
  description: Port the server listens on.
  returned: with O(state=listening), except in check mode when the server would be started
  type: int
  sample: 40711
zeroed:
  description: Whether the destination holds no data (an image this task created); V(false) for a block device.
  returned: with O(state=listening), except in check mode when the server would be started
  type: bool
export:
  description: The server's export name.
  returned: with O(state=listening), except in check mode when the server would be started
  type: str
  sample: root-5f0c1e7a9b2d4c6e8f1a3b5c7d9e0f12
pid:
  description: Process id of the server.
  returned: with O(state=listening), except in check mode when the server would be started
  type: int
bytes_allocated:
  description:
    - Bytes of data in the source, which is at most what crossed the link. Unallocated and zero areas are not
      counted and were not sent.
  returned: with O(state=sent), except in check mode
  type: int
  sample: 4194304
virtual_size:
  description: Virtual size of the source in bytes (for a raw file, its size).
  returned: with O(state=sent), except in check mode
  type: int
  sample: 1073741824
seconds:
  description: How long the copy took.
  returned: with O(state=sent), except in check mode
  type: float
  sample: 0.42
msg:
  description: What the task did or, in check mode, would do.
  returned: always
  type: str
"""

from ansible_collections.livemig.qemu.plugins.module_utils import _copy, _nbdcopy
from ansible_collections.livemig.qemu.plugins.module_utils._module import run_module, vm_argument_spec
from ansible_collections.livemig.qemu.plugins.module_utils._tlsqemu import CLIENT_OPTIONS, SERVER_OPTIONS


def main() -> None:
    spec = vm_argument_spec(
        state={"type": "str", "required": True, "choices": ["listening", "sent", "finished", "absent"]},
        label={"type": "str"},
        replace={"type": "bool", "default": False},
        path={"type": "path"},
        format={"type": "str", "default": "qcow2", "choices": list(_nbdcopy.FORMATS)},
        size={"type": "int"},
        address={"type": "str"},
        port={"type": "int", "default": 0},
        src={"type": "path"},
        src_format={"type": "str", "default": "qcow2", "choices": list(_nbdcopy.FORMATS)},
        src_size={"type": "int"},
        target_is_zero={"type": "bool", "default": True},
        uri={"type": "str"},
        force_share={"type": "bool", "default": False},
        timeout={"type": "float", "default": 3600},
        fsync={"type": "bool", "default": True},
        **{**SERVER_OPTIONS, **CLIENT_OPTIONS},
    )
    # The sending host needs no VM record, hence no VM name and no host locations.
    spec["name"] = {**spec["name"], "required": False}
    run_module(spec, _copy.run, needs_qmp=False, host_required=False, supports_check_mode=True,
               required_if=_copy.REQUIRED_IF, changes_vm=True)


if __name__ == "__main__":
    main()
