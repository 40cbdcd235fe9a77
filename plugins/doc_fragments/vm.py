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
  run_dir:
    description:
      - This host's directory for the VM's volatile files.
      - The QMP sockets are C(<run_dir>/<name>.qmp) (mode 0600) and C(<run_dir>/<name>.job.qmp),
        the serial console C(<run_dir>/<name>.serial).
    type: path
    required: true
  image_dir:
    description:
      - This host's directory for disk images; the disk O(name)-C(D) is C(<image_dir>/<name>-D.<format>).
      - Defaults to O(run_dir).
    type: path
  state_dir:
    description:
      - This host's directory for its record of the VM (ownership, pinned machine type and accelerator).
      - Defaults to O(image_dir).
    type: path
  shared_dir:
    description:
      - This host's path to the storage it shares with other hosts. Disks with C(shared=true) live there, as
        C(<shared_dir>/<name>-D.<format>); the path may differ from host to host.
      - Defaults to O(image_dir).
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
