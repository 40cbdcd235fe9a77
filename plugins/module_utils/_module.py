# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every livemig.qemu module shares: the VM location options, error reporting and running programs.

Private to the livemig.qemu collection.
"""
from __future__ import annotations

import contextlib
import functools
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.livemig.qemu.plugins.module_utils._command import CommandTimeout, Completed, Program
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


def find_program(module: AnsibleModule, name: str, fix: str) -> Program:
    """`name` as get_bin_path finds it on this host; when it is missing the module fails, saying `fix`."""
    path = module.get_bin_path(name)
    if not path:
        module.fail_json(msg=f"{name} not found on this host: {fix}")
    return Program(path, functools.partial(run_with_deadline, module))


def qemu_tool(module: AnsibleModule, name: str) -> Program:
    """qemu-img or qemu-nbd."""
    return find_program(module, name, "install the Debian package qemu-utils")


def qemu_system(module: AnsibleModule) -> Program:
    """The QEMU system emulator the option qemu_binary names."""
    binary = module.params["qemu_binary"]
    package = "the Debian package qemu-system-x86" if binary == "qemu-system-x86_64" else "QEMU"
    return find_program(module, binary, f"install {package} or set qemu_binary to its path")


def run_with_deadline(module: AnsibleModule, argv: list[str], timeout: float, umask: int | None = None) -> Completed:
    """AnsibleModule.run_command, which has no timeout of its own, with the program killed at its deadline."""
    deadline = _Deadline(timeout)
    try:
        rc, stdout, stderr = module.run_command(argv, expand_user_and_vars=False, umask=umask,
                                                errors="surrogate_or_replace", before_communicate_callback=deadline.arm)
    finally:
        deadline.cancel()
    if deadline.expired and rc == -signal.SIGKILL:
        raise CommandTimeout(f"{argv[0]} did not finish within {timeout:.0f}s")
    return Completed(rc, stdout, stderr)


class _Deadline:
    """Kills the process it is armed with once `seconds` have passed, unless cancelled first."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._timer: threading.Timer | None = None

    def arm(self, process: subprocess.Popen) -> None:
        self._timer = threading.Timer(self.seconds, self._expire, (process,))
        self._timer.daemon = True
        self._timer.start()

    def _expire(self, process: subprocess.Popen) -> None:
        self.expired = True
        process.kill()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
