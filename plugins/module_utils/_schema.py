# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What this QEMU's QMP schema offers, beyond what a version number says.

Private to the livemig.qemu collection. Type names are masked in query-qmp-schema, so each type is found
by its place: the command, its argument, the member's type.
"""
from __future__ import annotations

import weakref
from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession

_SCHEMA: weakref.WeakKeyDictionary[QMPSession, dict[str, Any]] = weakref.WeakKeyDictionary()


def _members(schema: dict[str, dict[str, Any]], name: str | None) -> dict[str, str]:
    entry = schema.get(name or "", {})
    return {member["name"]: member["type"] for member in entry.get("members", []) if "type" in member}


def _enum_values(entry: dict[str, Any]) -> list[str]:
    return list(entry.get("values", []))


def schema_features(session: QMPSession) -> dict[str, Any]:
    """`file`: the MigrationAddressType enum has it (migrate's `channels` -> MigrationChannel `addr` -> the
    MigrationAddress `transport` tag); `exit_on_error`: migrate-incoming takes it; `multifd_compressions`:
    the values migrate-set-parameters' `multifd-compression` accepts (zstd only when QEMU was built with it)."""
    if session not in _SCHEMA:
        schema = {entry["name"]: entry for entry in session.execute("query-qmp-schema")}
        channels = _members(schema, schema.get("migrate", {}).get("arg-type")).get("channels")
        channel = schema.get(channels or "", {}).get("element-type")
        address = schema.get(_members(schema, channel).get("addr", ""), {})
        transport = schema.get(_members(schema, address.get("name")).get(address.get("tag", ""), ""), {})
        incoming = _members(schema, schema.get("migrate-incoming", {}).get("arg-type"))
        parameters = _members(schema, schema.get("migrate-set-parameters", {}).get("arg-type"))
        compression = schema.get(parameters.get("multifd-compression", ""), {})
        _SCHEMA[session] = {"file": "file" in _enum_values(transport), "exit_on_error": "exit-on-error" in incoming,
                            "multifd_compressions": _enum_values(compression)}
    return _SCHEMA[session]
