# Copyright: livemig.qemu contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Both hosts' facts plus the user's wishes -> a migration plan: which method, and why not the others.

Private to the livemig.qemu collection. Pure functions: no I/O, so every branch is unit-tested from tables.
Facts are what `qemu_facts` returns (`ansible_facts.livemig_qemu`) on each host. The plan holds everything the
live_migration role needs to act: the situation, the disks to copy and where, the state files, the target's address.
"""
from __future__ import annotations

from typing import Any

from ansible_collections.livemig.qemu.plugins.module_utils import _forecast
from ansible_collections.livemig.qemu.plugins.module_utils._convergence import POLICIES
from ansible_collections.livemig.qemu.plugins.module_utils._errors import LivemigError
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.module_utils._placement import (
    ANNOUNCE_DEFAULTS, address_problems, announce_plan, cdrom_plan, check_announce, firmware_problems, room_problems,
    whole_number)
from ansible_collections.livemig.qemu.plugins.module_utils._situation import refusal, situation
from ansible_collections.livemig.qemu.plugins.module_utils._vmspec import VMSpec, parse_spec

METHODS = ("live-shared", "live-mirror", "stateful", "cold")
CHOICES = ("auto", "live", "stateful", "cold")
TRANSPORTS = ("tls", "tcp")
TLS_FIX = "run livemig.qemu.certificates, or livemig_transport: tcp to move in cleartext"
# Where each choice starts in the fallback chain live -> stateful -> cold.
CHAIN = ("live", "stateful", "cold")
START = {"auto": "live", "live": "live", "stateful": "stateful", "cold": "cold"}
# Capabilities the move turns on in any case: events drive every wait; the source pauses before the switchover
# so that the disk mirrors can finish while nothing writes.
REQUIRED_BOTH = ("events",)
REQUIRED_SOURCE_MIRROR = ("pause-before-switchover",)
# Optional capabilities: those set on both ends must be supported by both QEMUs.
OPTIONAL_BOTH = ("postcopy-ram", "multifd", "xbzrle", "return-path")
OPTIONAL_SOURCE = ("auto-converge",)
OPTIONAL = OPTIONAL_BOTH + OPTIONAL_SOURCE
# QEMU refuses these together; the one asked for first wins.
INCOMPATIBLE = (("multifd", "xbzrle"), ("multifd", "postcopy-ram"))
# QEMU 10.0 refuses multifd with postcopy-ram ("Postcopy is not yet compatible with multifd"), 10.1 takes both.
# 7.2 takes the capabilities but does not work with both.
MULTIFD_WITH_POSTCOPY = (10, 1)
# Switched on with postcopy-ram where the QEMUs have them: the preempt channel (both ends, they must match) lets
# the target's page requests overtake the background stream; blocktime (the target's only) measures the vCPUs'
# waits for pages.
POSTCOPY_BOTH = ("postcopy-preempt",)
POSTCOPY_TARGET = ("postcopy-blocktime",)
POLICY_KEYS = ("methods", "deny_capabilities")
QMP_INT_MAX = 2 ** 63 - 1
# The role's other numbers: (lowest, highest or None, unit). Checked with the plan, so that a bad one stops the move
# before anything changes, not in the middle of it.
NUMBER_LIMITS: dict[str, tuple[int, int | None, str]] = {
    "max_bandwidth": (0, QMP_INT_MAX, " (bytes per second, 0 for no cap)"),
    "max_downtime_ms": (1, 2000000, " (milliseconds; QEMU allows at most 2000 s)"),
    "progress_interval": (1, 3600, " (seconds between two progress lines)"),
    "migration_timeout": (1, None, " (seconds)"),
    "mirror_timeout": (1, None, " (seconds)"),
    "stall_timeout": (1, None, " (seconds)"),
    "guest_ping_timeout": (1, None, " (seconds)"),
    "powerdown_timeout": (0, None, " (seconds, 0 to quit the guest at once)"),
}
NUMBER_DEFAULTS = {"max_bandwidth": 0, "max_downtime_ms": 300, "progress_interval": 3, "migration_timeout": 3600,
                   "mirror_timeout": 3600, "stall_timeout": 60, "guest_ping_timeout": 30, "powerdown_timeout": 120}
# `convergence` and `allow_postcopy` add the capabilities their policy needs; left out, they add none.
WISH_DEFAULTS: dict[str, Any] = {"method": "auto", "transport": "tls", "allow_fallback": True, "allow_cold": False,
                                 "capabilities": [], "capabilities_allow": list(OPTIONAL), "capabilities_deny": [],
                                 "multifd_channels": 0, "multifd_compression": "none", "xbzrle_cache_mb": 0,
                                 "convergence": "defaults", "allow_postcopy": False, "predict": True,
                                 **ANNOUNCE_DEFAULTS,
                                 **NUMBER_DEFAULTS}


class PlanError(LivemigError, ValueError):
    """The request itself is malformed; the message says what to fix."""


def _names(items: Any, what: str) -> list[str]:
    if items is None:
        return []
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise PlanError(f"{what} must be a list of names, got {items!r}")
    return list(items)


def check_wishes(raw: dict[str, Any] | None) -> dict[str, Any]:
    wishes = {**WISH_DEFAULTS, **{key: value for key, value in (raw or {}).items() if value is not None}}
    unknown = set(wishes) - set(WISH_DEFAULTS)
    if unknown:
        raise PlanError(f"unknown wishes {sorted(unknown)}; known: {sorted(WISH_DEFAULTS)}")
    if wishes["method"] not in CHOICES:
        raise PlanError(f"livemig_method must be one of {', '.join(CHOICES)}, got {wishes['method']!r}")
    if wishes["transport"] not in TRANSPORTS:
        raise PlanError(f"livemig_transport must be one of {', '.join(TRANSPORTS)}, got {wishes['transport']!r}")
    if wishes["convergence"] not in POLICIES:
        raise PlanError(f"livemig_convergence must be one of {', '.join(POLICIES)}, got {wishes['convergence']!r}")
    for key in ("allow_fallback", "allow_cold", "allow_postcopy", "predict"):
        if not isinstance(wishes[key], bool):
            raise PlanError(f"livemig_{key} must be true or false, got {wishes[key]!r}")
    for key in ("multifd_channels", "xbzrle_cache_mb"):
        if isinstance(wishes[key], bool) or not isinstance(wishes[key], int) or wishes[key] < 0:
            raise PlanError(f"livemig_{key} must be a whole number, 0 for off, got {wishes[key]!r}")
    if not isinstance(wishes["multifd_compression"], str):
        raise PlanError(f"livemig_multifd_compression must be a name such as zstd, got {wishes['multifd_compression']!r}")
    for key in ("capabilities", "capabilities_allow", "capabilities_deny"):
        names = _names(wishes[key], f"livemig_{key}")
        strange = sorted(set(names) - set(OPTIONAL))
        if strange:
            raise PlanError(f"livemig_{key}: unknown capabilities {strange}; known: {', '.join(OPTIONAL)}")
        wishes[key] = names
    try:
        wishes.update(check_announce(wishes))
        wishes.update({key: whole_number(key, wishes[key], *limits) for key, limits in NUMBER_LIMITS.items()})
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    return wishes


def check_policy(host: str, raw: Any) -> dict[str, list[str]]:
    if raw in (None, {}):
        return {"methods": list(CHAIN), "deny_capabilities": []}
    if not isinstance(raw, dict) or set(raw) - set(POLICY_KEYS):
        raise PlanError(f"livemig_host_policy of {host} must be a dict with keys {', '.join(POLICY_KEYS)}")
    methods = _names(raw.get("methods", list(CHAIN)), f"livemig_host_policy.methods of {host}")
    if set(methods) - set(CHAIN):
        raise PlanError(f"livemig_host_policy.methods of {host}: use {', '.join(CHAIN)}")
    return {"methods": methods,
            "deny_capabilities": _names(raw.get("deny_capabilities"), f"livemig_host_policy.deny_capabilities of {host}")}


def family(method: str | None) -> str | None:
    """live, stateful or cold: the step of the fallback chain a method belongs to."""
    if method is None:
        return None
    return "live" if method.startswith("live") else method


def wanted_capabilities(wishes: dict[str, Any]) -> list[str]:
    """The optional capabilities asked for, in the order asked: the list, then what the convergence policy needs,
    then multifd and XBZRLE when their settings are on."""
    wanted = list(wishes["capabilities"])
    wanted += ["auto-converge"] * (wishes["convergence"] == "auto")
    wanted += ["postcopy-ram"] * (wishes["allow_postcopy"] or wishes["convergence"] == "postcopy-early")
    return wanted + ["multifd"] * bool(wishes["multifd_channels"]) + ["xbzrle"] * bool(wishes["xbzrle_cache_mb"])


def needs_kvm_check(vm: str, source_facts: dict[str, Any], spec: dict[str, Any], method: str, allow_cold: bool) -> bool:
    """Whether the target's facts must find out if a KVM guest boots there: the VM runs under KVM, or a cold move
    may boot it under KVM (its spec does not ask for TCG)."""
    running = (source_facts.get("vms") or {}).get(vm) or {}
    may_go_cold = bool(allow_cold) or method == "cold"
    return running.get("accel") == "kvm" or (may_go_cold and spec.get("accel", "auto") != "tcg")


def _vm_on(side: dict[str, Any], vm: str) -> dict[str, Any]:
    """What a host's facts say about the VM: its record and QEMU there, {} when the host knows nothing of it."""
    return (side["facts"].get("vms") or {}).get(vm) or {}


def _qemu(side: dict[str, Any]) -> str:
    return f"QEMU {side['facts'].get('version', '?')} on {side['name']}"


def find_machine(facts: dict[str, Any], wanted: str) -> str | None:
    """The versioned machine type `wanted` names on this host (itself, or the type behind an alias)."""
    for machine in facts.get("machines", []):
        if wanted in (machine.get("name"), machine.get("alias")):
            return machine["name"]
    return None


def cpu_problem(target: dict[str, Any], model: str, keeps_guest: bool, source: dict[str, Any]) -> str | None:
    """Whether the target gives the guest the CPU it has. QEMU runs a model without the features the host lacks: a
    restarted guest (cold) does with what it gets, a moving one must find on the target every feature it has on the
    source, and a model whose state can move."""
    cpu = _cpu_model(target, model)
    if cpu is None:
        return f"{_qemu(target)} has no CPU model {model}"
    if not keeps_guest:
        return None
    lacking = _lacks(cpu) - _lacks(_cpu_model(source, model))
    if lacking:
        return (f"CPU model {model} on {target['name']} lacks {', '.join(sorted(lacking))}, which the guest has on "
                f"{source['name']}")
    if cpu.get("migration_safe") is False:
        return f"CPU model {model} is not migration-safe (its state cannot move between hosts)"
    return None


def _cpu_model(side: dict[str, Any], model: str) -> dict[str, Any] | None:
    return next((cpu for cpu in side["facts"].get("cpu_models", []) if cpu.get("name") == model), None)


def _lacks(cpu: dict[str, Any] | None) -> set[str]:
    """The features a host's QEMU cannot give model `cpu` (facts of livemig.qemu 0.3 say only "not runnable")."""
    if not cpu:
        return set()
    if "unavailable_features" in cpu:
        return set(cpu["unavailable_features"])
    return set() if cpu.get("runnable", True) else {"some of its features"}


def accel_problem(target: dict[str, Any], accel: str) -> str | None:
    kvm = target["facts"].get("accelerators", {}).get("kvm", {})
    if accel == "kvm" and not kvm.get("usable"):
        return f"the VM needs KVM but KVM is not usable on {target['name']}: {kvm.get('reason', 'unknown')}"
    return None


def disk_actions(spec: VMSpec, storage: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per volume: shared (the same on both hosts) or local (to mirror or copy); and blocking problems.

    A file is shared when the target finds the source's token next to its image. A block device has no room for a
    token: it is shared only when declared so (a SAN LUN both hosts see), which is trusted.
    """
    disks, problems = [], []
    for disk in spec.volumes:
        name = disk.name
        entry = {"name": name, "format": disk.format, "kind": disk.kind}
        same_file = bool((storage.get(name) or {}).get("same_file"))
        what = {"block": f"disk {name} (block device {disk.path})", "nvram": "the UEFI variable store"}.get(
            disk.kind, f"disk {name}")
        if disk.kind == "block":
            local_reason = f"{what} is local to each host"
            disks.append({**entry, "shared": disk.shared,
                          "reason": f"{what} is declared shared, no copy needed" if disk.shared else local_reason})
        elif disk.shared and not same_file:
            problems.append(f"{what} is declared shared but is not the same file on both hosts "
                            "(the source's token file was not found next to the target's image)")
            disks.append({**entry, "shared": False, "reason": "declared shared, not shared"})
        elif same_file:
            why = "is shared" if disk.shared else "is the same file on both hosts (shared storage detected)"
            disks.append({**entry, "shared": True, "reason": f"{what} {why}, no copy needed"})
        else:
            disks.append({**entry, "shared": False, "reason": f"{what} is local to the source"})
    return disks, problems


def plan_spec(spec: dict[str, Any], parsed: VMSpec, shared_by_name: dict[str, bool]) -> dict[str, Any]:
    """The spec both hosts' modules get: every volume says whether it is shared, as found out for this move."""
    result = {**spec, "disks": [{**disk, "shared": shared_by_name[disk["name"]]} for disk in spec.get("disks") or []]}
    if parsed.firmware == "uefi":
        result["nvram"] = {"shared": shared_by_name["nvram"]}
    return result


def supported(source: dict[str, Any], target: dict[str, Any]) -> dict[str, set[str]]:
    """The migration capabilities each host's QEMU has, by host name."""
    return {side["name"]: set(side["facts"].get("migration_capabilities", [])) for side in (source, target)}


def capabilities(source: dict[str, Any], target: dict[str, Any], wishes: dict[str, Any],
                 policies: dict[str, dict[str, list[str]]]) -> tuple[list[str], dict[str, str]]:
    """Optional capabilities this move may use, and why each other one may not."""
    have = supported(source, target)
    usable, unusable = [], {}
    for cap in OPTIONAL:
        sides = (source,) if cap in OPTIONAL_SOURCE else (source, target)
        missing = [side for side in sides if cap not in have[side["name"]]]
        denied_by = [side["name"] for side in sides if cap in policies[side["name"]]["deny_capabilities"]]
        if missing:
            unusable[cap] = f"{cap} not supported by {_qemu(missing[0])}"
        elif denied_by:
            unusable[cap] = f"{cap} disabled by host policy on {denied_by[0]}"
        elif cap in wishes["capabilities_deny"]:
            unusable[cap] = f"{cap} denied by livemig_capabilities_deny"
        elif cap not in wishes["capabilities_allow"]:
            unusable[cap] = f"{cap} not in livemig_capabilities_allow"
        else:
            usable.append(cap)
    return usable, unusable


def enabled_features(source: dict[str, Any], target: dict[str, Any], wishes: dict[str, Any], usable: list[str],
                     unusable: dict[str, str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The optional capabilities to switch on at the start, and the parameters that go with them.

    Adds to `unusable` why a wanted one is left out.
    """
    enabled: list[str] = []
    combinable = _multifd_with_postcopy(source, target)
    for cap in dict.fromkeys(wanted_capabilities(wishes)):
        clash = next((first for first, second in INCOMPATIBLE if second == cap and first in enabled), None) or \
            next((second for first, second in INCOMPATIBLE if first == cap and second in enabled), None)
        if cap not in usable:
            continue
        if clash and {cap, clash} == {"multifd", "postcopy-ram"} and combinable is None:
            enabled.append(cap)
        elif clash:
            unusable[cap] = f"{cap} left out: QEMU cannot combine it with {clash}" + (
                f" ({combinable})" if {cap, clash} == {"multifd", "postcopy-ram"} else "")
        else:
            enabled.append(cap)
    both: dict[str, Any] = {}
    source_only: dict[str, Any] = {}
    if "multifd" in enabled:
        if wishes["multifd_channels"]:
            both["multifd-channels"] = wishes["multifd_channels"]
        compression = wishes["multifd_compression"]
        if compression != "none":
            lacking = [side for side in (source, target)
                       if compression not in side["facts"].get("multifd_compressions", [])]
            if lacking:
                unusable[f"multifd-compression {compression}"] = \
                    f"multifd-compression {compression} not supported by {_qemu(lacking[0])}"
            else:
                both["multifd-compression"] = compression
    elif wishes["multifd_compression"] != "none":
        unusable[f"multifd-compression {wishes['multifd_compression']}"] = \
            "multifd-compression needs multifd (livemig_multifd_channels)"
    if "xbzrle" in enabled:
        source_only["xbzrle-cache-size"] = wishes["xbzrle_cache_mb"] * 1048576
    return enabled, {"source": {**both, **source_only}, "target": dict(both)}


def _version(facts: dict[str, Any]) -> tuple[int, ...]:
    numbers = []
    for part in str(facts.get("version", "")).split(".")[:2]:
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def _multifd_with_postcopy(source: dict[str, Any], target: dict[str, Any]) -> str | None:
    """None when both QEMUs take multifd and postcopy-ram together; else why not."""
    older = [side for side in (source, target) if _version(side["facts"]) < MULTIFD_WITH_POSTCOPY]
    if not older:
        return None
    wanted = ".".join(map(str, MULTIFD_WITH_POSTCOPY))
    return f"multifd and post-copy together need QEMU {wanted} on both hosts; {_qemu(older[0])}"


def postcopy_companions(source: dict[str, Any], target: dict[str, Any],
                        enabled: list[str]) -> tuple[list[str], list[str]]:
    """The post-copy capabilities (source's, target's) that go with postcopy-ram where the QEMUs have them."""
    if "postcopy-ram" not in enabled:
        return [], []
    have = supported(source, target)
    both = [cap for cap in POSTCOPY_BOTH if cap in have[source["name"]] and cap in have[target["name"]]]
    return both, both + [cap for cap in POSTCOPY_TARGET if cap in have[target["name"]]]


def _method_policy(method: str, source: dict[str, Any], target: dict[str, Any],
                   policies: dict[str, dict[str, list[str]]]) -> list[str]:
    step = family(method)
    return [f"{step} migration disabled by host policy on {side['name']}"
            for side in (source, target) if step not in policies[side["name"]]["methods"]]


def make_plan(request: dict[str, Any]) -> dict[str, Any]:
    """The plan for one VM from `request`: vm, spec, source, target, storage, source_storage, wishes.

    source/target: {name, facts, policy, address, locations}; the source's facts include `vms[vm]` with the
    machine type and accelerator the VM runs with; locations are the host's run_dir, image_dir, state_dir and
    shared_dir. storage: {disk: {path, same_file}}, qemu_storage_check's `checked` result on the target;
    source_storage: {disk: {path, virtual_size}}, its `marked` result on the source. tls_check: for transport tls,
    what the controller found comparing both hosts' TLS directories (`_tlscert.tls_problems`): {problems,
    source_dn, target_dn, target_hostname}.
    """
    vm, spec = request["vm"], request["spec"]
    source, target = request["source"], request["target"]
    wishes = check_wishes(request.get("wishes"))
    policies = {side["name"]: check_policy(side["name"], side.get("policy")) for side in (source, target)}
    parsed = parse_spec(vm, spec)
    checks = request.get("host_checks") or {}
    source_check, target_check = checks.get("source") or {}, checks.get("target") or {}
    running = _vm_on(source, vm)
    pinned_machine, pinned_accel = running.get("machine"), running.get("accel")
    disks, storage_problems = disk_actions(parsed, request.get("storage") or {})
    local = [disk["name"] for disk in disks if not disk["shared"]]
    shared_by_name = {disk["name"]: disk["shared"] for disk in disks}
    usable, unusable = capabilities(source, target, wishes, policies)
    have = supported(source, target)

    common = list(storage_problems) + list(target_check.get("problems") or [])
    cdrom, cdrom_problems = cdrom_plan(parsed, source_check, target_check, target["name"])
    common += cdrom_problems
    firmware_keep, firmware_cold = firmware_problems(parsed, source_check, target_check, target["name"])
    room = room_problems(parsed, local, source_check, target_check, target["name"], cdrom)
    available = target["facts"].get("memory", {}).get("available_mb")
    if available is not None and int(spec["memory_mb"]) > available:
        common.append(f"the VM needs {spec['memory_mb']} MiB of memory but {target['name']} has only "
                      f"{available} MiB available")
    no_address = address_problems(target["name"], target.get("address"), target_check)

    # Live and stateful keep the running guest, so its ABI is pinned: same machine type, accelerator, CPU.
    keep_guest = list(common) + firmware_keep
    if not pinned_machine or find_machine(target["facts"], pinned_machine) != pinned_machine:
        keep_guest.append(f"{_qemu(target)} has no machine type {pinned_machine}")
    for problem in (accel_problem(target, pinned_accel or "tcg"),
                    cpu_problem(target, spec["cpu_model"], True, source)):
        if problem:
            keep_guest.append(problem)

    live = keep_guest + no_address
    for cap in REQUIRED_BOTH:
        live += [f"{_qemu(side)} lacks the {cap} capability" for side in (source, target)
                 if cap not in have[side["name"]]]
    mirror = list(live)
    for cap in REQUIRED_SOURCE_MIRROR:
        if cap not in have[source["name"]]:
            mirror.append(f"{_qemu(source)} lacks the {cap} capability (needed to finish the disk mirrors)")
    reasons = {
        "live-shared": live + [f"disk {name} is local" for name in local],
        "live-mirror": mirror + room["images"] + ([] if local else ["no local disk to mirror (all disks are shared)"]),
        "stateful": keep_guest + no_address + room["images"] + room["state"],
    }
    cold_machine = find_machine(target["facts"], spec["machine"])
    cold_accel = spec.get("accel", "auto")
    cold_accel = target["facts"].get("auto_accel", "tcg") if cold_accel == "auto" else cold_accel
    copies_something = bool(local) or bool(cdrom and cdrom["action"] == "copy")
    cold = list(common) + firmware_cold + room["images"] + (no_address if copies_something else [])
    if not cold_machine:
        cold.append(f"{_qemu(target)} has no machine type {spec['machine']}")
    for problem in (accel_problem(target, cold_accel), cpu_problem(target, spec["cpu_model"], False, source)):
        if problem:
            cold.append(problem)
    reasons["cold"] = cold
    for method in METHODS:
        reasons[method] += _method_policy(method, source, target, policies)

    chosen, considered = None, []
    start = CHAIN.index(START[wishes["method"]])
    allowed = {}
    for position, step in enumerate(CHAIN):
        if position < start:
            allowed[step] = f"not tried: livemig_method is {wishes['method']}"
        elif position > start and not wishes["allow_fallback"]:
            allowed[step] = "not tried: livemig_allow_fallback is false"
        elif step == "cold" and wishes["method"] != "cold" and not wishes["allow_cold"]:
            allowed[step] = "not tried: a cold move (guest restarted) needs livemig_allow_cold=true"
        else:
            allowed[step] = ""
    for method in METHODS:
        if allowed[family(method)]:
            continue
        considered.append(method)
        if chosen is None and not reasons[method]:
            chosen = method

    abi = {method: (cold_machine, cold_accel) if method == "cold" else (pinned_machine, pinned_accel)
           for method in METHODS}
    methods = {method: {"possible": not reasons[method], "reasons": reasons[method],
                        "tried": method in considered, "not_tried": allowed[family(method)],
                        "machine": abi[method][0], "accel": abi[method][1]}
               for method in METHODS}
    live_chosen = chosen in ("live-shared", "live-mirror")
    announce = announce_plan(parsed, wishes)
    enabled, parameters = enabled_features(source, target, wishes, usable, unusable)
    postcopy_source, postcopy_target = postcopy_companions(source, target, enabled)
    source_caps = sorted(set(REQUIRED_BOTH) | set(enabled) | set(postcopy_source)
                         | (set(REQUIRED_SOURCE_MIRROR) if chosen == "live-mirror" else set()))
    target_caps = sorted(set(REQUIRED_BOTH) | {cap for cap in enabled if cap not in OPTIONAL_SOURCE}
                         | set(postcopy_target))
    storage_action = {"live-shared": "shared", "live-mirror": "mirror", "stateful": "copy", "cold": "copy"}
    plan = {
        "vm": vm,
        "source": source["name"],
        "target": target["name"],
        "versions": {source["name"]: source["facts"].get("version"), target["name"]: target["facts"].get("version")},
        "method": chosen,
        "family": family(chosen),
        "possible": chosen is not None,
        "methods": methods,
        "machine": abi.get(chosen, (pinned_machine, pinned_accel))[0],
        "cpu_model": spec["cpu_model"],
        "accel": abi.get(chosen, (pinned_machine, pinned_accel))[1],
        "disks": [{**disk, "action": "shared" if disk["shared"] else storage_action.get(chosen or "", "none")}
                  for disk in disks],
        "capabilities": {"source": source_caps if live_chosen else [],
                         "target": target_caps if live_chosen else [],
                         "usable": usable, "unusable": unusable},
        "parameters": {"source": parameters["source"], "target": {**parameters["target"], **announce["parameters"]}}
        if live_chosen else {"source": {}, "target": {}},
        "transport": wishes["transport"],
        "tls": tls_plan(wishes["transport"], source_check, target_check, request.get("tls_check")),
        "streams": _streams(chosen, target, source, bool(local)),
        "spec": plan_spec(spec, parsed, shared_by_name),
        "local_disks": local,
        "cdrom": cdrom,
        "cdrom_copy": [{"label": "cdrom", "source": cdrom["path"], "target": cdrom["path"], "format": "raw",
                        "size": cdrom["size"], "kind": "file"}] if cdrom and cdrom["action"] == "copy" else [],
        "firmware": parsed.firmware,
        "announce": announce,
        "target_address": target.get("address"),
        "state_files": {"source": state_file(vm, source), "target": state_file(vm, target)},
    }
    plan["prediction"] = _forecast.forecast(request.get("measurements"), chosen, wishes, plan["capabilities"]["source"])
    plan["convergence"] = plan["prediction"]["convergence"]
    plan["copies"] = copies(plan, request.get("source_storage") or {}, request.get("storage") or {})
    plan["disk_sizes"] = disk_sizes(plan, request.get("source_storage") or {})
    plan["receivers"] = receivers(plan)
    plan["summary"] = summary(plan)
    plan["situation"] = situation(vm, source["name"], target["name"], running, _vm_on(target, vm))
    # A stale target QEMU holds the target's devices: the role removes it and plans again before judging the plan.
    if plan["situation"]["kind"] == "start" and not plan["situation"]["stale_target"]:
        if not plan["possible"]:
            plan["situation"] = refusal(vm, source["name"], target["name"], no_method_reason(plan), show_plan=True)
        elif plan["tls"]["problems"] and (chosen != "cold" or copies_something):
            plan["situation"] = refusal(vm, source["name"], target["name"], f"TLS is not ready: "
                                        f"{'; '.join(plan['tls']['problems'])}. To fix: {TLS_FIX}", show_plan=True)
        elif plan["prediction"]["refusal"]:
            plan["situation"] = refusal(vm, source["name"], target["name"], plan["prediction"]["refusal"],
                                        show_plan=True)
    return plan


def tls_plan(transport: str, source_check: dict[str, Any], target_check: dict[str, Any],
             tls_check: dict[str, Any] | None) -> dict[str, Any]:
    """What the streams' ends need for TLS: each host's TLS directory, the subject of each host's client
    certificate, and the name the source checks in the target's server certificate (its migration address); all
    None for tcp. `problems`: why the streams cannot be TLS."""
    if transport == "tcp":
        return dict.fromkeys(("source_dir", "target_dir", "source_dn", "target_dn", "hostname"), None) | {
            "problems": []}
    found = tls_check or {"problems": ["the hosts' TLS directories were not compared"]}
    return {"source_dir": (source_check.get("tls") or {}).get("dir"),
            "target_dir": (target_check.get("tls") or {}).get("dir"),
            "source_dn": found.get("source_dn"), "target_dn": found.get("target_dn"),
            "hostname": found.get("target_hostname"), "problems": list(found.get("problems") or [])}


def state_file(vm: str, side: dict[str, Any]) -> str | None:
    """Where a host keeps the VM's saved state, from its locations (run_dir, image_dir, state_dir, shared_dir)."""
    where = side.get("locations") or {}
    if not where.get("run_dir"):
        return None
    return VMPaths.on_host(vm, where["run_dir"], where.get("image_dir"), where.get("state_dir"),
                           where.get("shared_dir")).state_file


def copies(plan: dict[str, Any], source_storage: dict[str, Any], storage: dict[str, Any]) -> list[dict[str, Any]]:
    """What a stateful or cold move copies, per local disk: from the source's image to the target's, with the
    source's virtual size (source_storage is qemu_storage_check's `marked` result, storage its `checked` one)."""
    if plan["family"] not in ("stateful", "cold"):
        return []
    volumes = {disk["name"]: disk for disk in plan["disks"]}
    found = {name: (source_storage.get(name) or {}, storage.get(name) or {}) for name in plan["local_disks"]}
    return [{"label": name, "source": there.get("path"), "target": here.get("path"), "format": volumes[name]["format"],
             "size": there.get("virtual_size"), "kind": volumes[name]["kind"]} for name, (there, here) in found.items()]


def disk_sizes(plan: dict[str, Any], source_storage: dict[str, Any]) -> dict[str, int]:
    """The virtual size of each local volume on the source, by name: the fresh volumes of a live move's target get
    it, whatever the inventory's size_mb says (a disk grown or made elsewhere, the UEFI variable store)."""
    if plan["family"] != "live":
        return {}
    found = {name: (source_storage.get(name) or {}).get("virtual_size") for name in plan["local_disks"]}
    return {name: int(size) for name, size in found.items() if size}


STATE_MARGIN = 256 * 1024 * 1024  # device state and the RAM blocks besides the guest's RAM (video memory, ROMs)


def receivers(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The files the target receives, by copy label: the local disks, and for a stateful move the state file. The
    state receiver is opened before the save, so it gets room for the guest's RAM and a margin (a sparse file: only
    what the state holds takes space)."""
    disks = [{"label": copy["label"], "path": copy["target"], "format": copy["format"], "size": copy["size"]}
             for copy in plan["copies"]]
    if plan["family"] != "stateful":
        return disks
    room = int(plan["spec"]["memory_mb"]) * 1024 * 1024 + STATE_MARGIN
    return [*disks, {"label": "state", "path": plan["state_files"]["target"], "format": "raw", "size": room}]


def _streams(method: str | None, target: dict[str, Any], source: dict[str, Any], has_local: bool) -> dict:
    if method in ("live-shared", "live-mirror"):
        return {"kind": "tcp", "address": target.get("address"), "disks": "nbd" if method == "live-mirror" else None}
    if method == "stateful":
        save = "file" if "file" in source["facts"].get("state_transports", []) else "exec"
        load = "file" if "file" in target["facts"].get("state_transports", []) else "exec"
        return {"kind": "state file", "save": save, "load": load, "copy": "nbd", "address": target.get("address")}
    if method == "cold":
        return {"kind": "restart", "copy": "nbd" if has_local else None,
                "address": target.get("address") if has_local else None}
    return {}


def summary(plan: dict[str, Any]) -> list[str]:
    """The plan as lines a person reads before anything happens."""
    head = f"{plan['vm']}: {plan['source']} ({plan['versions'][plan['source']]}) -> " \
           f"{plan['target']} ({plan['versions'][plan['target']]})"
    if not plan["possible"]:
        lines = [f"{head}: no method is possible"]
    else:
        lines = [f"{head}: {plan['method']}",
                 f"  machine {plan['machine']}, CPU {plan['cpu_model']}, accel {plan['accel']}"]
        lines += [f"  disk {disk['name']}: {disk['action']} ({disk['reason']})" for disk in plan["disks"]]
        lines += device_lines(plan)
        if plan["capabilities"]["source"]:
            lines.append(f"  capabilities: source {', '.join(plan['capabilities']['source'])}; "
                         f"target {', '.join(plan['capabilities']['target'])}")
            spare = [cap for cap in plan["capabilities"]["usable"] if cap not in plan["capabilities"]["source"]]
            lines.append(f"  also possible (not asked for): {', '.join(spare) or 'none'}")
            if plan["parameters"]["source"]:
                lines.append("  parameters: " + ", ".join(f"{key}={value}"
                                                          for key, value in plan["parameters"]["source"].items()))
        lines.append("  streams: " + ", ".join(f"{key} {value}" for key, value in plan["streams"].items() if value))
        lines.append(f"  transport: {transport_line(plan)}")
        lines += [f"  {line}" for line in plan["prediction"]["lines"]]
    for method, verdict in plan["methods"].items():
        if method == plan["method"]:
            continue
        why = verdict["reasons"] + ([verdict["not_tried"]] if verdict["not_tried"] else [])
        lines.append(f"  {method}: " + ("possible, " if verdict["possible"] else "rejected: ") + "; ".join(why)
                     if why else f"  {method}: possible, not needed")
    lines += [f"  {reason}" for reason in plan["capabilities"]["unusable"].values()]
    return lines


def transport_line(plan: dict[str, Any]) -> str:
    tls = plan["tls"]
    if plan["transport"] == "tcp":
        return "tcp (cleartext, asked for)"
    if tls["problems"]:
        return f"tls, not ready: {'; '.join(tls['problems'])}"
    return f"tls (source DN {tls['source_dn']}, target DN {tls['target_dn']}, target certificate names " \
           f"{tls['hostname']})"


def device_lines(plan: dict[str, Any]) -> list[str]:
    """The plan's lines for the CD-ROM, the firmware and the NICs with their announcement."""
    lines = []
    if plan["cdrom"]:
        lines.append(f"  CD-ROM {plan['cdrom']['path']}: {plan['cdrom']['action']} ({plan['cdrom']['reason']})")
    if plan["firmware"] == "uefi":
        lines.append("  firmware: UEFI; the variable store moves with the disks")
    announce = plan["announce"]
    for nic in announce["nics"]:
        lines.append(f"  NIC {nic['name']}: {nic['mac']} on bridge {nic['bridge']}")
    if announce["nics"] and plan["family"] in ("live", "stateful"):
        timing = announce["self"]
        lines.append(f"  announce: {timing['rounds']} rounds of RARP from the target as the guest resumes, again "
                     "with announce-self at the hand-over" if announce["enabled"]
                     else "  announce: off (the network learns the new port from the guest's own traffic)")
    return lines


def no_method_reason(plan: dict[str, Any]) -> str:
    """Why nothing can move the VM, every method in one line: `method: reason; reason. ` each."""
    why = {method: verdict["reasons"] + ([verdict["not_tried"]] if verdict["not_tried"] else [])
           for method, verdict in plan["methods"].items()}
    return "".join(f"{method}: {'; '.join(reasons)}. " for method, reasons in why.items())
