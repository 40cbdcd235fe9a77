# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every livemig.qemu module shares: the VM location options and error reporting.

Private to the livemig.qemu collection.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMP_IMPORT_ERROR, QMPError, QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import SpecError, VMPaths, check_vm_name

VM_OPTIONS: dict[str, Any] = {
    "name": {"type": "str", "required": True},
    "run_dir": {"type": "path", "required": True},
    "image_dir": {"type": "path"},
    "state_dir": {"type": "path"},
    "shared_dir": {"type": "path"},
    "connect_timeout": {"type": "float", "default": 10.0},
}


def vm_argument_spec(**extra: Any) -> dict[str, Any]:
    return {**VM_OPTIONS, **extra}


def new_module(argument_spec: dict[str, Any], **kwargs: Any) -> AnsibleModule:
    module = AnsibleModule(argument_spec=argument_spec, **kwargs)
    if QMP_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("qemu.qmp"), exception=QMP_IMPORT_ERROR)
    return module


def vm_paths(module: AnsibleModule) -> VMPaths:
    params = module.params
    try:
        name = check_vm_name(params["name"])
    except SpecError as exc:
        module.fail_json(msg=str(exc))
    image_dir = params.get("image_dir") or params["run_dir"]
    return VMPaths(name, image_dir, params["run_dir"], params.get("state_dir") or image_dir, params.get("shared_dir"))


@contextlib.contextmanager
def qmp(module: AnsibleModule, path: str) -> Iterator[QMPSession]:
    """A QMP session whose failures end the module with a clear message."""
    try:
        with QMPSession(path, connect_timeout=module.params["connect_timeout"]) as session:
            yield session
    except QMPError as exc:
        module.fail_json(msg=f"QMP on {path}: {exc}", qmp_command=exc.command, qmp_error_class=exc.error_class)


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds
