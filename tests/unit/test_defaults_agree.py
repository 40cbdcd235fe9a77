"""One default per setting: a role variable that feeds a module option, or that a playbook defaults with
`default(...)`, has the same default in the role's defaults, its argument specs, every playbook and the module."""
from __future__ import annotations

import ast
import glob
import os
import re

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# An option's whole value is one variable, optionally with a default: "{{ livemig_x }}", "{{ livemig_x | default(3) }}".
FED = re.compile(r"^\{\{\s*(livemig_[a-z0-9_]+)\s*(?:\|\s*default\((.+)\)\s*)?\}\}$")
TASK_LISTS = ("tasks", "block", "rescue", "always", "pre_tasks", "post_tasks", "handlers")


def load_yaml(path: str):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def role_defaults() -> dict[str, tuple[str, object]]:
    found = {}
    for path in glob.glob(os.path.join(REPO, "roles", "*", "defaults", "main.yml")):
        for name, value in (load_yaml(path) or {}).items():
            found[name] = (os.path.relpath(path, REPO), value)
    return found


def module_defaults(module: str) -> dict[str, object]:
    path = os.path.join(REPO, "plugins", "modules", f"{module}.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    documentation = next(node.value.value for node in tree.body if isinstance(node, ast.Assign)
                         and any(getattr(target, "id", None) == "DOCUMENTATION" for target in node.targets))
    options = dict(yaml.safe_load(documentation).get("options") or {})
    for fragment in yaml.safe_load(documentation).get("extends_documentation_fragment") or []:
        options = {**fragment_options(fragment), **options}
    return {name: option["default"] for name, option in options.items() if "default" in option}


def fragment_options(fragment: str) -> dict:
    name, variant = (fragment.removeprefix("livemig.qemu.").split(".", 1) + [""])[:2]
    path = os.path.join(REPO, "plugins", "doc_fragments", f"{name}.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    wanted = variant.upper() or "DOCUMENTATION"
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == wanted for target in node.targets):
            return yaml.safe_load(node.value.value).get("options") or {}
    return {}


def tasks_in(node) -> list[dict]:
    """Every task of a play, a task list or a block, blocks included, recursively."""
    found = []
    items = node if isinstance(node, list) else [node]
    for item in items:
        if not isinstance(item, dict):
            continue
        found.append(item)
        for key in TASK_LISTS:
            found += tasks_in(item.get(key) or [])
    return found


def feeds() -> list[tuple[str, str, str, str, str | None]]:
    """(file, variable, module, option, the default written in the file or None) for every option fed by a var."""
    files = glob.glob(os.path.join(REPO, "playbooks", "*.yml"))
    files += glob.glob(os.path.join(REPO, "roles", "*", "tasks", "*.yml"))
    found = []
    for path in sorted(files):
        for task in tasks_in(load_yaml(path) or []):
            for key, arguments in task.items():
                if not key.startswith("livemig.qemu.") or not isinstance(arguments, dict):
                    continue
                for option, value in arguments.items():
                    match = FED.match(str(value).strip())
                    if match:
                        found.append((os.path.relpath(path, REPO), match.group(1), key.split(".")[-1], option,
                                      match.group(2)))
    return found


def same(left, right) -> bool:
    if isinstance(left, (int, float)) and isinstance(right, (int, float)) and not isinstance(left, bool):
        return float(left) == float(right)
    return left == right


FEEDS = feeds()


def test_the_scan_finds_what_the_role_feeds():
    """A scan that found nothing would pass the test below trivially."""
    pairs = {(feed[1], feed[2], feed[3]) for feed in FEEDS}
    assert ("livemig_powerdown_timeout", "qemu_vm", "powerdown_timeout") in pairs
    assert ("livemig_stall_timeout", "qemu_migrate", "stall_timeout") in pairs
    assert any(feed[4] is not None for feed in FEEDS), "no playbook default(...) found"


@pytest.mark.parametrize("where,variable,module,option,written", FEEDS,
                         ids=[f"{feed[0]}:{feed[1]}->{feed[2]}.{feed[3]}" for feed in FEEDS])
def test_one_default_per_setting(where, variable, module, option, written):
    defaults = role_defaults()
    module_default = module_defaults(module).get(option)
    values = {f"module {module} option {option}": module_default}
    if variable in defaults:
        values[f"{defaults[variable][0]} {variable}"] = defaults[variable][1]
    if written is not None and written.strip() != "omit":
        values[f"{where} default({written})"] = ast.literal_eval(written)
    known = {place: value for place, value in values.items() if value is not None}
    first = next(iter(known.values()), None)
    assert all(same(first, value) for value in known.values()), f"defaults disagree: {known}"
