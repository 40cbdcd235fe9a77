# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  name:
    description:
      - Name of the VM. Letters, digits, V(.), V(_) and V(-); no V(/) and no V(..).
    type: str
    required: true
  host:
    description:
      - This host's locations for VMs, in one dict, for example the one the C(livemig.qemu.live_migration) role
        builds from a host's C(livemig_run_dir), C(livemig_image_dir), C(livemig_state_dir), C(livemig_shared_dir)
        and C(livemig_qemu_binary).
      - Give either this or the separate options O(run_dir), O(image_dir), O(state_dir) and O(shared_dir).
    type: dict
    suboptions:
      run_dir:
        description:
          - This host's directory for the VM's volatile files, each VM's in its own directory C(<run_dir>/<name>/)
            (mode 0700).
          - The QMP sockets are C(<run_dir>/<name>/qmp) (mode 0600) and C(<run_dir>/<name>/job.qmp), the serial
            console C(<run_dir>/<name>/serial); beside them QEMU's C(pid) and C(log).
          - The modules make this directory, the image and state directories and the VMs' own ones mode 0700, and
            refuse one that is a symbolic link or another user's; give the collection directories of its own.
        type: path
        required: true
      image_dir:
        description:
          - This host's directory for disk images; the disk C(D) of VM O(name) is C(<image_dir>/<name>-D.<format>)
            (mode 0600).
          - Defaults to O(host.run_dir).
        type: path
      state_dir:
        description:
          - This host's directory for its record of the VM (ownership, pinned machine type and accelerator),
            C(<state_dir>/<name>/record.json), and for a state file of the stateful path, C(<state_dir>/<name>/state)
            (mode 0600).
          - A record that livemig.qemu 0.3 left at C(<state_dir>/<name>.json) is moved there by the first module run on
            the VM; while a QEMU of that version's layout runs the VM, the modules refuse it.
          - Defaults to O(host.image_dir).
        type: path
      shared_dir:
        description:
          - This host's path to the storage it shares with other hosts. Disks with C(shared=true) live there, as
            C(<shared_dir>/<name>-D.<format>); the path may differ from host to host. Empty means none.
          - Defaults to O(host.image_dir).
        type: path
      qemu_binary:
        description: QEMU system emulator of this host, for the modules that start one.
        type: str
        default: qemu-system-x86_64
  run_dir:
    description:
      - This host's directory for the VM's volatile files, as O(host.run_dir).
      - Required unless O(host) is given.
    type: path
  image_dir:
    description:
      - This host's directory for disk images, as O(host.image_dir). Defaults to O(run_dir).
    type: path
  state_dir:
    description:
      - This host's directory for its record of the VM and its state file, as O(host.state_dir).
        Defaults to O(image_dir).
    type: path
  shared_dir:
    description:
      - This host's path to shared storage, as O(host.shared_dir). Defaults to O(image_dir).
    type: path
  connect_timeout:
    description:
      - Seconds to wait for the QMP monitor to accept the connection.
    type: float
    default: 10.0
requirements:
  - python >= 3.11
  - qemu.qmp (on the managed host)
"""

    LOCK = r"""
options:
  lock_id:
    description:
      - The VM's lease on this host (see M(livemig.qemu.qemu_vm_lock)) this run belongs to. The run goes on when
        the VM holds that lease here or none; a live lease of another id makes it fail at once, naming its holder.
      - Without it, the run takes a lease of its own for as long as it runs, so that two changes of one VM never
        overlap.
    type: str
  lock_release:
    description:
      - Give the lease O(lock_id) back on this host once this run has succeeded, as M(livemig.qemu.qemu_vm_lock)
        with O(livemig.qemu.qemu_vm_lock#module:state=unlocked) would, in the same call (the play's last one on
        this host). A failed run keeps it, for the play's rollback.
    type: bool
    default: false
    version_added: 0.3.0
"""
