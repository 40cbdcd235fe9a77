#!/usr/bin/env python
"""Print the figures the architecture is judged by: code lines per module beside its docs, and the
live_migration role's set_fact tasks and _livemig_* variables. --json FILE also saves them."""
from __future__ import annotations

import argparse
import ast
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC_NAMES = {"DOCUMENTATION", "EXAMPLES", "RETURN"}


def code_lines(path: pathlib.Path) -> int:
    """Non-blank, non-comment lines outside the DOCUMENTATION/EXAMPLES/RETURN strings."""
    text = path.read_text()
    doc_lines: set[int] = set()
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) in DOC_NAMES for t in node.targets):
            doc_lines.update(range(node.lineno, node.end_lineno + 1))
    count = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if number in doc_lines or not stripped or stripped.startswith("#"):
            continue
        count += 1
    return count


def role_figures(role: pathlib.Path) -> dict:
    yaml_text = "\n".join(p.read_text() for p in sorted(role.rglob("*.yml")))
    return {
        "set_fact_tasks": len(re.findall(r"^\s*(?:-\s+)?ansible\.builtin\.set_fact:", yaml_text, re.M)),
        "private_variables": len(set(re.findall(r"\b_livemig_[a-z0-9_]+", yaml_text))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    modules = {p.stem: code_lines(p) for p in sorted((ROOT / "plugins/modules").glob("*.py"))}
    figures = {"module_code_lines": modules, "role": role_figures(ROOT / "roles/live_migration")}
    width = max(map(len, modules))
    for name, lines in modules.items():
        print(f"{name:<{width}}  {lines:4d}")
    print(f"{'total':<{width}}  {sum(modules.values()):4d}")
    for key, value in figures["role"].items():
        print(f"role live_migration {key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
