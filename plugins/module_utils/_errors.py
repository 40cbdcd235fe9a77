# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one base class of every failure the collection reports.

Private to the livemig.qemu collection. Besides its message (what went wrong and what to fix), a failure says
what the caller needs to decide a rollback: where it happened (`phase`), whether the VM still runs on the host
that failed (`source_running`) and whether the VM may have run on the target (`target_may_have_run`). Unknown is
None. `details` are further fields a module returns with the failure.
"""
from __future__ import annotations

from typing import Any


class LivemigError(Exception):
    def __init__(self, message: str, *, phase: str | None = None, source_running: bool | None = None,
                 target_may_have_run: bool | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.phase = phase
        self.source_running = source_running
        self.target_may_have_run = target_may_have_run
        self.details = dict(details or {})

    def about(self, subject: str) -> LivemigError:
        """The same failure, its message prefixed with what it is about, e.g. 'VM web1'."""
        return LivemigError(f"{subject}: {self}", phase=self.phase, source_running=self.source_running,
                            target_may_have_run=self.target_may_have_run, details=self.details)

    def fields(self) -> dict[str, Any]:
        """What a module returns with the failure besides `msg`: the known rollback facts and the details."""
        known = {"phase": self.phase, "source_running": self.source_running,
                 "target_may_have_run": self.target_may_have_run}
        return {**{key: value for key, value in known.items() if value is not None}, **self.details}
