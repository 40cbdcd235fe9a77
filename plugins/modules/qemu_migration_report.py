#!/usr/bin/python
# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: qemu_migration_report
short_description: Save a migration's report, and a chart of its progress, on the controller
version_added: 0.2.0
description:
  - Runs on the controller (it is an action plugin), whatever host the task is for.
  - Writes the result of a move (the C(livemig_result) of the role C(livemig.qemu.live_migration)) as pretty JSON
    to C(<dest_dir>/<vm>-<finished>.json), where C(<finished>) is the whole epoch second the move finished.
  - With O(chart=true), also draws C(<dest_dir>/<vm>-<finished>.png), where the time went - over the seconds since
    the play started (else the move), each phase as a band with its duration (plan, target start, disk mirror, the
    pre-copy passes, switchover from source stop to target resume, post-copy, hand-over), RAM and disk left to
    copy (MiB), the link rate (RAM sent per second) and the guest's dirty rate (MiB/s) on a second axis, a dashed
    line where the prediction put the migration's end, and a title naming the VM, both hosts, the method and how
    long the guest was frozen.
  - The chart needs matplotlib on the controller. Without it the JSON is still written and the task warns
    instead of failing.
  - Files are replaced atomically; O(dest_dir) is created when missing.
extends_documentation_fragment:
  - livemig.qemu.attributes
  - livemig.qemu.attributes.changes
  - livemig.qemu.attributes.controller
attributes:
  check_mode:
    details: In check mode nothing is written; the task reports the paths it would write.
options:
  result:
    description:
      - The migration result. It must have C(vm) and C(finished) (epoch seconds); the chart also uses C(source),
        C(target), C(method), C(play_started), C(started), C(source_stop_time), C(target_resume_time) (epoch
        seconds), C(frozen_ms), C(prediction) (C(predicted_total_s) counted from C(measured_from), epoch seconds)
        and C(statistics).
      - C(statistics.history) is a list of progress samples as M(livemig.qemu.qemu_migrate_progress) returns them,
        each with C(t), C(phase), C(passes), C(remaining) and C(transferred) (RAM bytes), C(mbps), C(dirty_rate)
        (bytes/s) and C(disk_remaining) (bytes). C(statistics.mirror_history), a list of C(t), C(disk_remaining)
        and C(disk_total), covers the disk mirror before the RAM migration. C(statistics.completed_time) and
        C(statistics.wall_time_s) place the RAM migration; C(statistics.postcopy_started) and
        C(statistics.postcopy_time_ms) its post-copy.
      - A sample time C(t) is epoch seconds; a small one (before 2001) counts from the migration's start.
    type: dict
    required: true
  dest_dir:
    description: The controller directory for the report's files.
    type: path
    required: true
  chart:
    description: Whether to draw the PNG chart as well.
    type: bool
    default: true
requirements:
  - matplotlib (on the controller, for O(chart=true); optional)
seealso:
  - module: livemig.qemu.qemu_migrate_progress
author:
  - livemig.qemu contributors (@livemig)
"""

EXAMPLES = r"""
- name: Save the migration report on the controller
  livemig.qemu.qemu_migration_report:
    result: "{{ livemig_result }}"
    dest_dir: "{{ playbook_dir }}/reports"
  run_once: true
  register: report

- name: Say where it is
  ansible.builtin.debug:
    msg: "report {{ report.json_path }}, chart {{ report.png_path | default('none', true) }}"
"""

RETURN = r"""
json_path:
  description: The JSON report (written, or to be written in check mode).
  returned: success
  type: str
  sample: /srv/reports/web1-1767225600.json
png_path:
  description: The chart; V(null) when O(chart=false) or when matplotlib is missing on the controller.
  returned: success
  type: str
  sample: /srv/reports/web1-1767225600.png
"""

from ansible.module_utils.basic import AnsibleModule

ARGUMENT_SPEC = {
    "result": {"type": "dict", "required": True},
    "dest_dir": {"type": "path", "required": True},
    "chart": {"type": "bool", "default": True},
}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(msg="livemig.qemu.qemu_migration_report runs on the controller as an action plugin; "
                         "call it from a task, not as a module on a host")


if __name__ == "__main__":
    main()
