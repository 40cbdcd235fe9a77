# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for livemig.qemu.qemu_migration_report: the report's JSON and chart, written on the controller."""
from __future__ import annotations

import json
import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.livemig.qemu.plugins.module_utils import _files
from ansible_collections.livemig.qemu.plugins.module_utils._chart import (
    REPORT_MODE, ChartUnavailable, ReportError, chart_data, render_png, report_basename)
from ansible_collections.livemig.qemu.plugins.modules.qemu_migration_report import ARGUMENT_SPEC

NO_MATPLOTLIB = ("no chart: matplotlib is not installed on the controller ({cause}); "
                 "the JSON report is written. Install it with: pip install matplotlib")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        report, dest_dir = args["result"], args["dest_dir"]
        try:
            base = os.path.join(dest_dir, report_basename(report))
        except ReportError as exc:
            raise AnsibleActionFail(str(exc)) from exc
        json_path, png_path = f"{base}.json", f"{base}.png" if args["chart"] else None
        result.update(changed=True, json_path=json_path, png_path=png_path)
        if self._task.check_mode:
            return result
        text = json.dumps(report, indent=4, sort_keys=True, default=str) + "\n"
        try:
            os.makedirs(dest_dir, exist_ok=True)
            _files.atomic_write(json_path, text, mode=REPORT_MODE, durable=False)
        except OSError as exc:
            raise AnsibleActionFail(f"cannot write the migration report in {dest_dir}: {exc}") from exc
        if png_path is not None:
            warning = self._chart(report, png_path)
            if warning:
                result["png_path"] = None
                result.setdefault("warnings", []).append(warning)
        return result

    @staticmethod
    def _chart(report, png_path):
        """Draw the chart; a warning instead of a failure when it cannot be drawn (the JSON is what matters)."""
        try:
            render_png(chart_data(report), png_path)
        except ChartUnavailable as exc:
            return NO_MATPLOTLIB.format(cause=exc)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            return f"no chart: drawing {png_path} failed: {type(exc).__name__}: {exc}; the JSON report is written"
        return None
