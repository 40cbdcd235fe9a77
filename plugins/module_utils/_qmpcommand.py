# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Any one QMP command on a VM's monitor, its answer optionally filtered by a JMESPath query.

Private to the livemig.qemu collection. `run` is the qemu_qmp module's handler.
"""
from __future__ import annotations

import traceback
from typing import Any

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._module import Task

try:
    import jmespath

    JMESPATH_IMPORT_ERROR = None
except ImportError:
    JMESPATH_IMPORT_ERROR = traceback.format_exc()


def compile_query(query: str) -> Any:
    """The compiled JMESPath expression; jmespath missing or a bad expression fails the task."""
    if JMESPATH_IMPORT_ERROR is not None:
        raise LivemigError(missing_required_lib("jmespath"), details={"exception": JMESPATH_IMPORT_ERROR})
    try:
        return jmespath.compile(query)
    except jmespath.exceptions.JMESPathError as exc:
        raise LivemigError(f"invalid JMESPath query {query!r}: {exc}") from None


def run(task: Task) -> dict[str, Any]:
    """The qemu_qmp module: `query-*` commands only read and also run in check mode; others change."""
    params = task.params
    read_only = params["command"].startswith("query-")
    expression = compile_query(params["query"]) if params["query"] else None
    if task.check_mode and not read_only:
        return {"changed": True, "skipped_reason": "check mode: only query-* commands run"}
    paths = task.paths
    with task.qmp(paths.job_qmp if params["monitor"] == "job" else paths.qmp) as session:
        result = session.execute(params["command"], params["arguments"], timeout=params["timeout"])
    output = {"changed": not read_only, "result": result}
    if expression is not None:
        output["queried"] = expression.search(result)
    return output
