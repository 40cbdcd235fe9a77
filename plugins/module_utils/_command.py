# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A program on this host as module_utils see it: a path, and a way to run it with a deadline.

The module finds the program (AnsibleModule.get_bin_path) and supplies the runner (AnsibleModule.run_command,
see _module.find_program), so module_utils never touch AnsibleModule.

Private to the livemig.qemu collection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError

TOOL_TIMEOUT = 60.0  # seconds a quick tool (qemu-img info, create, map) may take before it counts as hung
PRIVATE_UMASK = 0o077


@dataclass(frozen=True)
class Completed:
    rc: int
    stdout: str
    stderr: str


class CommandTimeout(LivemigError):
    """The program was still running at its deadline and was killed."""


class Runner(Protocol):
    def __call__(self, argv: list[str], timeout: float, umask: int | None = None) -> Completed:
        """Run argv to its end, stdout and stderr captured; raise CommandTimeout after `timeout` seconds."""


@dataclass(frozen=True)
class Program:
    path: str
    runner: Runner

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def run(self, *args: str, timeout: float, umask: int | None = None) -> Completed:
        return self.runner([self.path, *args], timeout, umask)


def run_tool(program: Program, *args: str, timeout: float = TOOL_TIMEOUT,
             error: type[LivemigError] = CommandTimeout) -> Completed:
    """Run a QEMU tool (qemu-img, qemu-nbd) to its end; past its deadline raise `error` naming the tool's step.

    With umask 077: whatever the tool creates (an image, a pid file) only this user may read.
    """
    try:
        return program.run(*args, timeout=timeout, umask=PRIVATE_UMASK)
    except CommandTimeout:
        raise error(f"{program.name} {args[0]} did not finish within {timeout:.0f}s") from None


def stderr_tail(result: Completed, lines: int = 10) -> str:
    """The last lines of what the program said, for an error message (its exit status when it said nothing)."""
    return "\n".join(result.stderr.strip().splitlines()[-lines:]) or f"exit status {result.rc}"
