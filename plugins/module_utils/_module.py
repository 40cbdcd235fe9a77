# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every livemig.qemu module shares: the host and VM options, one way to run and to fail, running programs.

Private to the livemig.qemu collection. A module is its argument spec, its docs and `run_module(spec, handler)`:
the handler, a module_util function, gets a `Task` and returns the result, or raises a LivemigError, which
becomes `fail_json` with the error's message and fields. Handlers never see AnsibleModule.
"""
from __future__ import annotations

import contextlib
import functools
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.livemig.qemu.plugins.module_utils import _lock
from ansible_collections.livemig.qemu.plugins.module_utils._command import CommandTimeout, Completed, Program
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMP_IMPORT_ERROR, QMPError, QMPSession
from ansible_collections.livemig.qemu.plugins.module_utils._state import adopt_legacy
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import check_vm_name

DEFAULT_QEMU = "qemu-system-x86_64"
LOCATIONS = ("run_dir", "image_dir", "state_dir", "shared_dir")
HOST_OPTION: dict[str, Any] = {"type": "dict", "options": {
    "run_dir": {"type": "path", "required": True},
    "image_dir": {"type": "path"},
    "state_dir": {"type": "path"},
    "shared_dir": {"type": "path"},
    "qemu_binary": {"type": "str", "default": DEFAULT_QEMU},
}}
VM_OPTIONS: dict[str, Any] = {
    "name": {"type": "str", "required": True},
    "host": HOST_OPTION,
    **{key: {"type": "path"} for key in LOCATIONS},
    "connect_timeout": {"type": "float", "default": 10.0},
}
# The host's locations come either as the one `host` dict or as the separate options.
HOST_CHOICE: dict[str, Any] = {"mutually_exclusive": [("host", key) for key in LOCATIONS],
                               "required_one_of": [("host", "run_dir")]}


def vm_argument_spec(**extra: Any) -> dict[str, Any]:
    return {**VM_OPTIONS, **extra}


def run_module(argument_spec: dict[str, Any], handler: Callable[[Task], dict[str, Any]], needs_qmp: bool = True,
               host_required: bool = True, changes_vm: bool | Callable[[dict[str, Any]], bool] = False,
               **kwargs: Any) -> None:
    """Build the module, run `handler` and exit with its result; a LivemigError fails the module.

    `changes_vm` (or a test of the parameters saying so): the module changes the VM named by its `name`, under the
    VM's lease on this host (`_lock`); it gets the option `lock_id`."""
    if changes_vm:
        argument_spec = {**argument_spec, "lock_id": {"type": "str"},
                         "lock_release": {"type": "bool", "default": False}}
    if host_required:
        for key, pairs in HOST_CHOICE.items():
            kwargs[key] = [*pairs, *kwargs.get(key, [])]
    else:  # only the pairs of options the module has (qemu_facts has no shared_dir)
        exclusive = [pair for pair in HOST_CHOICE["mutually_exclusive"] if set(pair) <= set(argument_spec)]
        kwargs["mutually_exclusive"] = [*exclusive, *kwargs.get("mutually_exclusive", [])]
    module = AnsibleModule(argument_spec=argument_spec, **kwargs)
    if needs_qmp and QMP_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("qemu.qmp"), exception=QMP_IMPORT_ERROR)
    try:
        task = Task(module)
        changes = changes_vm(module.params) if callable(changes_vm) else changes_vm
        with task.locked() if changes and module.params.get("name") else contextlib.nullcontext():
            result = handler(task)
    except LivemigError as exc:
        module.fail_json(msg=str(exc), **exc.fields())
    module.exit_json(**result)


class Task:
    """One run of a module as its handler sees it: parameters, check mode, the VM's paths, programs and QMP."""

    def __init__(self, module: AnsibleModule):
        self._module = module
        self.params: dict[str, Any] = module.params
        self.check_mode: bool = module.check_mode

    def with_params(self, **params: Any) -> Task:
        """The same run with other parameters: one module call that does several modules' work (one per host and
        phase of a move) hands each step the parameters that step's own module would get."""
        step = Task(self._module)
        step.params = {**self.params, **params}
        return step

    @property
    def host(self) -> dict[str, Any]:
        """The host's locations and QEMU, from the `host` option or from the separate options."""
        given = self.params.get("host")
        if given:
            return given
        return {**{key: self.params.get(key) for key in LOCATIONS},
                "qemu_binary": self.params.get("qemu_binary") or DEFAULT_QEMU}

    @functools.cached_property
    def paths(self) -> VMPaths:
        """The VM's paths on this host; a record livemig.qemu 0.3 left is moved into the VM's directory first (even
        in check mode: the move changes where the record is, not what it says)."""
        host = self.host
        paths = VMPaths.on_host(check_vm_name(self.params["name"]), host["run_dir"], host.get("image_dir"),
                                host.get("state_dir"), host.get("shared_dir"))
        adopt_legacy(paths)
        return paths

    def locked(self) -> contextlib.AbstractContextManager:
        """The VM's lease on this host for this run; in check mode only the check that no one else holds it."""
        if self.check_mode:
            held = _lock.current(self.paths)
            if held and held["id"] != self.params.get("lock_id"):
                raise _lock.refusal(self.paths, held)
            return contextlib.nullcontext()
        return _lock.held(self.paths, self.params.get("lock_id"), self._module._name or "livemig.qemu module",
                          give_back=bool(self.params.get("lock_release")))

    @contextlib.contextmanager
    def qmp(self, path: str) -> Iterator[QMPSession]:
        """A QMP session; any QMP failure inside fails the task naming the socket."""
        try:
            with QMPSession(path, connect_timeout=self.params.get("connect_timeout") or 10.0) as session:
                yield session
        except QMPError as exc:
            raise LivemigError(f"QMP on {path}: {exc}", details={"qmp_command": exc.command,
                                                                 "qmp_error_class": exc.error_class}) from exc

    def program(self, name: str, fix: str) -> Program:
        """`name` as get_bin_path finds it on this host; missing, the task fails saying `fix`."""
        path = self._module.get_bin_path(name)
        if not path:
            raise LivemigError(f"{name} not found on this host: {fix}")
        return Program(path, functools.partial(run_with_deadline, self._module))

    def tool(self, name: str) -> Program:
        """qemu-img or qemu-nbd."""
        return self.program(name, "install the Debian package qemu-utils")

    def qemu(self) -> Program:
        """The QEMU system emulator of this host."""
        binary = self.host["qemu_binary"]
        package = "the Debian package qemu-system-x86" if binary == DEFAULT_QEMU else "QEMU"
        return self.program(binary, f"install {package} or set qemu_binary to its path")

    def warn(self, text: str) -> None:
        self._module.warn(text)


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
