"""Drive the documented playbooks against the two-host lab with the test guest: used by the integration tests,
the demo and the measurements."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_DIR = os.environ.get("LAB_DIR", "/var/lib/livemig-lab")
HOSTS = ("hv1", "hv2")
RING_BLOCKS = 4096
GUEST_BRIDGE = "lmguest"  # the guest network's bridge, the same name on both lab hosts
# Inside a lab host, /etc/livemig-blk is that host's own directory (lab/lab-up.sh): the same path holds another
# file, or another block device, on each host.
HOST_OWN_DIR = "/etc/livemig-blk"
sys.path.insert(0, os.path.join(REPO, "tests", "guest"))
import guestcheck  # noqa: E402  pylint: disable=wrong-import-position

WORKLOADS = {
    "idle": {"memory_mb": 256, "append": "lm.wss_mb=64 lm.dirty_mbps=0 lm.writes_ps=0"},
    "light": {"memory_mb": 256, "append": "lm.wss_mb=64 lm.dirty_mbps=16 lm.writes_ps=20"},
    "heavy": {"memory_mb": 512, "append": "lm.wss_mb=256 lm.dirty_mbps=128 lm.writes_ps=100"},
}


def collections_path() -> str:
    """The installed collection under test (CI installs the built tarball), else the work tree."""
    path = os.environ.get("LIVEMIG_COLLECTIONS_PATH")
    if path:
        return path
    path = os.path.join(REPO, "collections")
    link = os.path.join(path, "ansible_collections", "livemig", "qemu")
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(REPO, link)
    return path


sys.path.insert(0, collections_path())
from ansible_collections.livemig.qemu.plugins.module_utils._qmp import QMPSession  # noqa: E402  pylint: disable=wrong-import-position


def lab_path(host: str, kind: str, name: str) -> str:
    return os.path.join(LAB_DIR, host, kind, name)


def vm_file(host: str, kind: str, name: str, filename: str) -> str:
    """A file in VM `name`'s own directory of a lab host's run or state directory, e.g. run/web1/qmp."""
    return os.path.join(LAB_DIR, host, kind, name, filename)


@dataclass
class PlayResult:
    rc: int
    output: str
    recap: dict = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return sum(host["changed"] for host in self.recap.values())

    @property
    def failed(self) -> bool:
        return self.rc != 0


class Lab:
    def __init__(self, guest: dict[str, str], workdir: str):
        self.guest = guest
        self.workdir = workdir
        self.vms: dict[str, dict] = {}
        self.host_vars: dict[str, dict] = {}

    def define_vm(self, name: str, workload: str = "light", disk_mb: int = 1024, memory_mb: int | None = None,
                  machine: str = "q35", shared: bool = False, more_disks: tuple = (), fill: str = "words",
                  **devices) -> str:
        """A VM of the tiny test guest; `more_disks` come after its root disk, `devices` are further spec keys
        (nics, firmware, cdrom, rng, guest_agent). `fill="random"` fills the working set with pseudo-random
        bytes instead of two words a page (tests/guest/README.md, lm.fill)."""
        load = WORKLOADS[workload]
        knobs = load["append"] + ("" if fill == "words" else f" lm.fill={fill}")  # a typo: the guest says PCFAIL 0
        self.vms[name] = {
            "memory_mb": memory_mb or load["memory_mb"], "vcpus": 1, "machine": machine, "cpu_model": "qemu64",
            "accel": "auto", "kernel": self.guest["kernel"], "initrd": self.guest["initrd"],
            "append": f"console=ttyS0 quiet loglevel=0 {knobs} lm.ring_blocks={RING_BLOCKS}",
            "disks": [{"name": "root", "size_mb": disk_mb, "format": "qcow2", "shared": shared}, *more_disks],
            **devices,
        }
        self.write_inventory()
        return name

    def define_debian_vm(self, name: str, image: str, firmware: str = "bios", memory_mb: int = 768) -> str:
        """A VM of the Debian guest (tests/guest/build-debian.sh): its root disk a copy of the image, a raw disk for
        the workload's ring (/dev/vdb), a NIC on the guest network, an agent channel and virtio-rng."""
        size = json.loads(subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True,
                                         text=True, check=True).stdout)["virtual-size"]
        self.vms[name] = {
            "memory_mb": memory_mb, "vcpus": 1, "machine": "q35", "cpu_model": "qemu64", "accel": "auto",
            "firmware": firmware, "rng": True, "guest_agent": True,
            "disks": [{"name": "root", "size_mb": -(-size // (1 << 20)), "format": "qcow2"},
                      {"name": "ring", "size_mb": 32, "format": "raw"}],
            "nics": [{"name": "lan", "bridge": GUEST_BRIDGE}],
        }
        self.write_inventory()
        return name

    def start_debian(self, name: str, image: str, host: str = "hv1") -> None:
        subprocess.run(["cp", "--sparse=always", image, lab_path(host, "images", f"{name}-root.qcow2")], check=True)
        result = self.play("start", livemig_vm=name, livemig_host=host)
        assert not result.failed, result.output

    def update_vm(self, name: str, **spec) -> None:
        """Change a VM's spec in the inventory (as an operator editing it would)."""
        self.vms[name].update(spec)
        self.write_inventory()

    def set_host_vars(self, host: str, **host_vars) -> None:
        """Override inventory variables of one lab host (e.g. an older QEMU binary); no arguments resets them."""
        if host_vars:
            self.host_vars[host] = host_vars
        else:
            self.host_vars.pop(host, None)
        self.write_inventory()

    def write_inventory(self) -> None:
        content = {"all": {"vars": {"livemig_vms": self.vms}}}
        if self.host_vars:
            content["all"]["hosts"] = self.host_vars
        with open(self.vms_inventory, "w", encoding="utf-8") as handle:
            yaml.safe_dump(content, handle)

    @property
    def vms_inventory(self) -> str:
        return os.path.join(self.workdir, "vms.yml")

    def env(self) -> dict[str, str]:
        return {**os.environ, "ANSIBLE_COLLECTIONS_PATH": collections_path(), "ANSIBLE_HOST_KEY_CHECKING": "False",
                "ANSIBLE_PIPELINING": "True", "ANSIBLE_STDOUT_CALLBACK": "default",
                "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_DEPRECATION_WARNINGS": "False"}

    def play_command(self, playbook: str, check: bool, extra_vars: dict) -> list[str]:
        command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                   "-i", os.path.join(LAB_DIR, "inventory.yml"), "-i", self.vms_inventory,
                   f"livemig.qemu.{playbook}", "-e", json.dumps(extra_vars)]
        return command + (["--check"] if check else [])

    def play_in_background(self, playbook: str, **extra_vars) -> subprocess.Popen:
        """Start a playbook in its own process group, so that a test can kill the whole controller side."""
        return subprocess.Popen(self.play_command(playbook, False, extra_vars), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=self.env(), start_new_session=True)

    def play(self, playbook: str, check: bool = False, **extra_vars) -> PlayResult:
        command = self.play_command(playbook, check, extra_vars)
        process = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=self.env(),
                                 check=False, timeout=900)
        output = process.stdout + process.stderr
        recap = {}
        for match in re.finditer(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                                 output, re.M):
            recap[match[1]] = {"ok": int(match[2]), "changed": int(match[3]), "failed": int(match[5])}
        return PlayResult(process.returncode, output, recap)

    def module(self, host: str, module: str, **arguments) -> dict:
        """Run one livemig.qemu module on a lab host, ad hoc; returns its JSON result (with "rc")."""
        command = [os.path.join(os.path.dirname(sys.executable), "ansible"), host, "-o", "-i",
                   os.path.join(LAB_DIR, "inventory.yml"), "-m", f"livemig.qemu.{module}", "-a", json.dumps(arguments)]
        process = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300,
                                 env={**self.env(), "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
        line = next(line for line in process.stdout.splitlines() if line.startswith(f"{host} | "))
        return {**json.loads(line.split(" => ", 1)[1]), "rc": process.returncode}

    def host_dirs(self, host: str) -> dict[str, str]:
        return {"run_dir": os.path.join(LAB_DIR, host, "run"), "image_dir": os.path.join(LAB_DIR, host, "images"),
                "state_dir": os.path.join(LAB_DIR, host, "state")}

    def disk_path(self, name: str, host: str) -> str:
        if self.vms[name]["disks"][0]["shared"]:
            return os.path.join(LAB_DIR, "shared", f"{name}-root.qcow2")
        return lab_path(host, "images", f"{name}-root.qcow2")

    def start(self, name: str, host: str = "hv1", prefill: bool = True) -> str | None:
        """Start a VM with the documented playbook; returns the hash of its disk outside the ring."""
        digest = None
        if prefill:
            image = self.disk_path(name, host)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image,
                            f"{self.vms[name]['disks'][0]['size_mb']}M"], check=True)
            guestcheck.prefill(image, RING_BLOCKS, seed=name)
            digest = guestcheck.hash_outside_ring(image, RING_BLOCKS)
        result = self.play("start", livemig_vm=name, livemig_host=host)
        assert not result.failed, result.output
        return digest

    def migrate(self, name: str, source: str, target: str, **extra) -> PlayResult:
        return self.play("migrate", livemig_vm=name, livemig_source=source, livemig_target=target,
                         livemig_report_dir=self.workdir, **{"livemig_keep_source_disks": True, **extra})

    def report(self, name: str) -> dict:
        reports = sorted(entry for entry in os.listdir(self.workdir) if entry.startswith(f"{name}-")
                         and entry.endswith(".json"))
        with open(os.path.join(self.workdir, reports[-1]), encoding="utf-8") as handle:
            return json.load(handle)

    def stop(self, name: str) -> None:
        result = self.play("stop", livemig_vm=name, livemig_powerdown_timeout=0)
        assert not result.failed, result.output

    def tap(self, name: str) -> guestcheck.SerialTap:
        return guestcheck.SerialTap([(host, vm_file(host, "run", name, "serial")) for host in HOSTS]).start()

    def pid(self, host: str, name: str) -> int | None:
        try:
            with open(vm_file(host, "run", name, "pid"), encoding="ascii") as handle:
                pid = int(handle.read())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                alive = handle.read().split(") ", 1)[1][0] != "Z"
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                ours = f"/{name}/qmp".encode() in handle.read()
        except (OSError, IndexError):
            return None
        return pid if alive and ours else None

    def record(self, host: str, name: str) -> dict | None:
        try:
            with open(vm_file(host, "state", name, "record.json"), encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None

    def lease_workers(self, host: str, name: str) -> list[int]:
        """The module runs (a move's source-side job) that still work under the VM's lease on `host`."""
        try:
            with open(vm_file(host, "state", name, "lock.json"), encoding="utf-8") as handle:
                pids = json.load(handle).get("pids") or []
        except FileNotFoundError:
            return []
        return [pid for pid in pids if os.path.exists(f"/proc/{pid}")]

    def qmp(self, host: str, name: str, command: str, arguments: dict | None = None):
        with QMPSession(vm_file(host, "run", name, "qmp"), connect_timeout=10) as session:
            return session.execute(command, arguments)

    def vm_dirs(self, name: str) -> list[str]:
        """The VM's own directories on the lab hosts (run/<vm>, state/<vm>) that exist."""
        candidates = [os.path.join(LAB_DIR, host, kind, name) for host in HOSTS for kind in ("run", "state")]
        return [path for path in candidates if os.path.isdir(path)]

    def files(self, name: str) -> dict[str, float]:
        """Every lab file of a VM, with its modification time: a change shows up here. Its images and their token
        files, and everything in its own directories."""
        found = {}
        directories = [os.path.join(LAB_DIR, host, kind) for host in HOSTS for kind in ("images", "run", "state")]
        for directory in directories + [os.path.join(LAB_DIR, "shared")]:
            for entry in os.listdir(directory) if os.path.isdir(directory) else []:
                path = os.path.join(directory, entry)
                if entry.startswith((f"{name}-", f".{name}-")) and not os.path.isdir(path):
                    found[path] = os.stat(path).st_mtime
        for directory in self.vm_dirs(name):
            for entry in os.listdir(directory):
                found[os.path.join(directory, entry)] = os.stat(os.path.join(directory, entry)).st_mtime
        return found

    def taps(self, host: str, bridge: str = GUEST_BRIDGE) -> set[str]:
        """The taps on a lab host's guest bridge."""
        done = subprocess.run(["ip", "-n", host, "-d", "-j", "link", "show", "master", bridge], capture_output=True,
                              text=True, check=True)
        return {link["ifname"] for link in json.loads(done.stdout or "[]")
                if (link.get("linkinfo") or {}).get("info_kind") == "tun"}

    def remove(self, name: str) -> None:
        """End the VM's QEMUs (started by these tests) and delete its files on both hosts."""
        for host in HOSTS:
            pid = self.pid(host, name)
            if pid:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        for path in self.files(name):
            os.unlink(path)
        for directory in self.vm_dirs(name):
            os.rmdir(directory)


def build_guest() -> dict[str, str]:
    subprocess.run([os.path.join(REPO, "tests", "guest", "build.sh")], check=True, capture_output=True)
    out = os.path.join(REPO, "tests", "guest", "out")
    return {"kernel": os.path.join(out, "vmlinuz"), "initrd": os.path.join(out, "initrd.img")}


def build_debian_guest() -> dict[str, str]:
    """The Debian 12 test guest (built once, then cached): its image and root's SSH key."""
    done = subprocess.run([os.path.join(REPO, "tests", "guest", "build-debian.sh")], check=True, capture_output=True,
                          text=True)
    directory = done.stdout.strip().splitlines()[-1]
    return {"image": os.path.join(directory, "debian12.qcow2"), "key": os.path.join(directory, "id_ed25519")}


def lab_up() -> None:
    """Bring the lab up and prepare its hosts with livemig.qemu.prepare, run by this venv's Ansible on the
    collection under test."""
    environment = {**os.environ, "LAB_DIR": LAB_DIR, "LAB_VENV": sys.prefix,
                   "LIVEMIG_COLLECTIONS_PATH": collections_path()}
    done = subprocess.run([os.path.join(REPO, "lab", "lab-up.sh")], env=environment, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"lab/lab-up.sh failed (exit {done.returncode}):\n{done.stderr}")


def lab_down() -> None:
    subprocess.run([os.path.join(REPO, "lab", "lab-down.sh")], check=True, env={**os.environ, "LAB_DIR": LAB_DIR},
                   capture_output=True)


def link(host: str, action: str, *arguments: str) -> None:
    """Cut, restore, rate-limit or unlimit a lab host's migration link (lab/link.sh)."""
    subprocess.run([os.path.join(REPO, "lab", "link.sh"), host, action, *arguments], check=True, capture_output=True)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")
