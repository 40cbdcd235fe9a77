from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = tempfile.mkdtemp(prefix="livemig-unit-")
os.makedirs(os.path.join(COLLECTIONS, "ansible_collections", "livemig"))
os.symlink(REPO, os.path.join(COLLECTIONS, "ansible_collections", "livemig", "qemu"))
sys.path.insert(0, COLLECTIONS)

from ansible_collections.livemig.qemu.plugins.module_utils._command import Completed, Program  # noqa: E402
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths  # noqa: E402

QEMU = shutil.which("qemu-system-x86_64")
MODULES = os.path.join(REPO, "plugins", "modules")


def run_module(module: str, workdir, check_mode: bool = False, process_timeout: float = 60,
               env: dict[str, str] | None = None, prefix: tuple[str, ...] = (), **args) -> dict:
    """Run a module the way Ansible does: its own Python process, its arguments as ANSIBLE_MODULE_ARGS.

    `env` overrides variables of the module's environment, for example PATH; `prefix` runs it through another
    command, for example `ip netns exec NAME` to run it on a network namespace "host".
    """
    args_file = os.path.join(str(workdir), f"{module}-args.json")
    with open(args_file, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check_mode}}, handle)
    done = subprocess.run([*prefix, sys.executable, os.path.join(MODULES, f"{module}.py"), args_file],
                          capture_output=True,
                          text=True, check=False, timeout=process_timeout,
                          env={**os.environ, "PYTHONPATH": COLLECTIONS, **(env or {})})
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return json.loads(done.stdout)


def path_with(directory, *programs: str) -> str:
    """A PATH of one directory holding links to only these programs of this machine."""
    os.makedirs(directory, exist_ok=True)
    for name in programs:
        os.symlink(shutil.which(name), os.path.join(directory, name))
    return str(directory)


def qemu_program() -> Program:
    """This machine's QEMU for module_utils tests that only start it as a child of their own (the probe QEMU).

    A short run through the Program's runner, which modules build on run_command, fails the test.
    """
    def no_short_runs(argv: list[str], timeout: float, umask: int | None = None) -> Completed:
        raise AssertionError(f"unexpected run of {argv} (timeout {timeout}, umask {umask})")
    if QEMU is None:
        pytest.fail("qemu-system-x86_64 is required for the unit tests")
    return Program(QEMU, no_short_runs)


class Qemu:
    """A QEMU process started by a test, ended by pid when the test is done. Its monitor is where the collection
    looks for VM `name` with `directory` as the host's run directory (`paths`)."""

    def __init__(self, directory: str, name: str, *extra: str, binary: str | None = None):
        self.paths = VMPaths.on_host(name, directory)
        self.qmp = self.paths.qmp
        os.makedirs(self.paths.vm_run_dir, mode=0o700, exist_ok=True)
        argv = [binary or QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-accel", "tcg",
                "-chardev", f"socket,id=qmp,path={self.qmp},server=on,wait=off", "-mon", "chardev=qmp,mode=control",
                *extra]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.qmp):
            assert self.process.poll() is None, self.process.stderr.read().decode()
            assert time.monotonic() < deadline, "QEMU did not create its QMP socket"
            time.sleep(0.01)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def qemu(tmp_path):
    if QEMU is None:
        pytest.fail("qemu-system-x86_64 is required for the unit tests")
    started = []

    def start(name: str, *extra: str, binary: str | None = None) -> Qemu:
        process = Qemu(str(tmp_path), name, *extra, binary=binary)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


QEMU_72 = "/opt/livemig/qemu-7.2/bin/qemu-system-x86_64"


@pytest.fixture
def qemu_72():
    """The older peer that scripts/setup.sh unpacks; its absence is a failure, not a skip."""
    if not os.access(QEMU_72, os.X_OK):
        pytest.fail(f"QEMU 7.2 is missing at {QEMU_72}: run scripts/setup.sh")
    return QEMU_72


def guest_value(session, address: int, unit: str = "b") -> int:
    """A byte (unit b) or 32-bit word (unit w) of guest memory, read with the human monitor's xp."""
    reply = session.execute("human-monitor-command", {"command-line": f"xp /1{unit}x {address:#x}"})
    return int(reply.split(":")[1], 16)


def guest_keeps_changing(session, address: int, unit: str = "b", timeout: float = 10.0) -> bool:
    """Whether the guest changes the value at `address` within `timeout` seconds: it runs its loop there."""
    deadline = time.monotonic() + timeout
    first = guest_value(session, address, unit)
    while guest_value(session, address, unit) == first:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def loop_device(tmp_path):
    """Make block devices (loop devices over sparse files of `size_mb`); they are detached at the end."""
    attached = []

    def make(size_mb: int, label: str = "blk") -> str:
        backing = tmp_path / f"{label}.img"
        with open(backing, "wb") as handle:
            handle.truncate(size_mb << 20)
        device = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                                check=True).stdout.strip()
        attached.append(device)
        return device

    yield make
    for device in attached:
        subprocess.run(["losetup", "-d", device], check=False)
