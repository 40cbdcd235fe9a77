"""libvirt as the benchmark's peer (docs/benchmarks.md, DESIGN.md section 10): the test guest of our moves, from the
same spec, run and moved between the lab hosts by their own libvirtd (lab/libvirt.sh) with `virsh migrate --live
--copy-storage-all`, in cleartext or with `--tls`, and measured and checked the way tests/harness/measure.py measures
ours."""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from datetime import datetime
from xml.sax.saxutils import escape, quoteattr

from lab import HOSTS, LAB_DIR, REPO, RING_BLOCKS, guestcheck
from measure import move_checks, other, outside_switchover

MANAGEMENT = {"hv1": "198.18.0.1", "hv2": "198.18.0.2"}
MIGRATION = {"hv1": "198.18.0.101", "hv2": "198.18.0.102"}  # the link lab/link.sh limits, as for our moves
MACHINE = "pc-q35-10.0"
# Paths inside a lab host, where /var/lib/libvirt is that host's own directory (lab/libvirt.sh).
LIBVIRT_LIB = "/var/lib/libvirt"
# virsh migrate returns this long after its --timeout, else it is aborted (`domjobabort`).
GRACE_S = 60
_EVENT = re.compile(r"^(\S+ \S+): event '([\w-]+)' for domain '[^']*': (.*)$")


def libvirt_up() -> None:
    """Start a libvirtd in each lab host (idempotent)."""
    done = subprocess.run([os.path.join(REPO, "lab", "libvirt.sh"), "up"], env={**os.environ, "LAB_DIR": LAB_DIR},
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"lab/libvirt.sh up failed (exit {done.returncode}):\n{done.stderr}")


def uri(host: str) -> str:
    return f"qemu+tcp://{MANAGEMENT[host]}/system"


def virsh(host: str, *arguments: str, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(["virsh", "-q", "-c", uri(host), *arguments], capture_output=True, text=True, check=False,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(arguments)} on {host} failed: {done.stderr.strip()}")
    return done.stdout


def on_this_machine(host: str, path: str) -> str:
    """Where a path under a lab host's /var/lib/libvirt is, seen from outside the host's mount namespace."""
    return os.path.join(LAB_DIR, host, "libvirt", "lib", os.path.relpath(path, LIBVIRT_LIB))


def job_stats(host: str, name: str, completed: bool = False) -> dict:
    """`virsh domjobinfo --rawstats` as a dict of integers (empty when there is no job)."""
    flags = ["--completed"] if completed else []
    text = virsh(host, "domjobinfo", name, "--rawstats", *flags, check=False, timeout=20)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): int(value) for key, value in pairs if value.strip().lstrip("-").isdigit()}


def domain_xml(name: str, spec: dict, image: str, serial: str) -> str:
    """The domain of our VM spec (tests/harness/lab.py define_vm): direct kernel boot, TCG, qcow2 disk on virtio,
    the serial console on a unix socket the harness taps, nothing else."""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{int(spec['memory_mb'])}</memory>
  <vcpu>{int(spec['vcpus'])}</vcpu>
  <os>
    <type arch='x86_64' machine='{MACHINE}'>hvm</type>
    <kernel>{escape(spec['kernel'])}</kernel>
    <initrd>{escape(spec['initrd'])}</initrd>
    <cmdline>{escape(spec['append'])}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='forbid'>{escape(spec['cpu_model'])}</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file={quoteattr(image)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='unix'>
      <source mode='bind' path={quoteattr(serial)}/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class Events:
    """`virsh event --all --loop --timestamp` on a host while a move runs: (monotonic time, event, detail)."""

    def __init__(self, host: str):
        self.process = subprocess.Popen(["virsh", "-c", uri(host), "event", "--all", "--loop", "--timestamp"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> list[tuple[float, str, str]]:
        self.process.terminate()
        output = self.process.communicate(timeout=10)[0]
        offset = time.time() - time.monotonic()
        found = []
        for line in output.splitlines():
            match = _EVENT.match(line.strip())
            if match:
                wall = datetime.strptime(match[1].replace("+0000", "+00:00"), "%Y-%m-%d %H:%M:%S.%f%z").timestamp()
                found.append((wall - offset, match[2], match[3]))
        return found


class JobPoller(threading.Thread):
    """The source's job statistics twice a second while a move runs: the disk figures are only there (the target's
    completed job has the RAM figures only)."""

    def __init__(self, host: str, name: str):
        super().__init__(daemon=True)
        self.host, self.name, self.last = host, name, {}
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.5):
            stats = job_stats(self.host, self.name)
            if stats.get("disk_total"):
                self.last = stats

    def stop(self) -> dict:
        self.done.set()
        self.join(30)
        return self.last


class LibvirtVM:
    """One libvirt domain of the test guest: booted once, moved back and forth, each move measured and checked."""

    def __init__(self, name: str, spec: dict, workload: str):
        self.name, self.spec, self.workload = name, spec, workload
        self.image = f"{LIBVIRT_LIB}/images/{name}.qcow2"
        self.serial = f"{LIBVIRT_LIB}/qemu/{name}.serial"
        self.host = "hv1"
        self.digest = None
        self.tap = guestcheck.SerialTap([(host, on_this_machine(host, self.serial)) for host in HOSTS])

    def create_image(self, host: str) -> str:
        """A new, empty image on `host`, of the spec's size: the source's, or the target of --copy-storage-all."""
        path = on_this_machine(host, self.image)
        if os.path.exists(path):
            os.unlink(path)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, f"{self.spec['disks'][0]['size_mb']}M"],
                       check=True)
        return path

    def boot(self, host: str = "hv1") -> None:
        image = self.create_image(host)
        guestcheck.prefill(image, RING_BLOCKS, seed=self.name)
        self.digest = guestcheck.hash_outside_ring(image, RING_BLOCKS)
        xml = os.path.join(os.path.dirname(image), f"{self.name}.xml")
        with open(xml, "w", encoding="utf-8") as handle:
            handle.write(domain_xml(self.name, self.spec, self.image, self.serial))
        # Persistent, and moved with --persistent: each host keeps the domain when it leaves, with its completed job
        # (a target has none after post-copy).
        virsh(host, "define", xml)
        virsh(host, "start", self.name)
        self.host = host
        self.tap.start()
        self.tap.wait_for(r"^PC \d+ OK", label=host, timeout=90)

    def suspend(self) -> None:
        virsh(self.host, "suspend", self.name)

    def resume(self) -> None:
        virsh(self.host, "resume", self.name)

    def state(self, host: str) -> str:
        """`running`, `paused`, ... or '' when the host has no such domain."""
        return virsh(host, "domstate", self.name, check=False, timeout=20).strip()

    def migrate(self, source: str, target: str, flags: list[str], timeout_s: int) -> subprocess.CompletedProcess:
        command = ["virsh", "-c", uri(source), "migrate", "--live", "--persistent", "--copy-storage-all", "--p2p",
                   *flags, "--timeout", str(timeout_s), "--migrateuri", f"tcp://{MIGRATION[target]}", self.name,
                   uri(target)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output = process.communicate(timeout=timeout_s + GRACE_S)[0]
        except subprocess.TimeoutExpired:
            # SIGINT to virsh may be ignored: abort the job on the source (DESIGN.md section 10).
            virsh(source, "domjobabort", self.name, check=False)
            output = process.communicate(timeout=GRACE_S)[0]
            output += f"\naborted with domjobabort after {timeout_s + GRACE_S} s"
        return subprocess.CompletedProcess(command, process.returncode, output)

    def check_disk(self, host: str, min_seq: int) -> dict:
        """Pause the guest (QEMU flushes its image), check the ring and the rest of the disk, resume it."""
        virsh(host, "suspend", self.name)
        try:
            image = on_this_machine(host, self.image)
            ring = guestcheck.check_ring(image, RING_BLOCKS, min_seq=min_seq, force_share=True)
            identical = guestcheck.hash_outside_ring(image, RING_BLOCKS, force_share=True) == self.digest
        finally:
            virsh(host, "resume", self.name)
        return {"disk_ring_intact": ring["ok"], "rest_of_disk_identical": identical,
                "ring_problems": ring["problems"][:5]}

    def move(self, flags: list[str], timeout_s: int) -> dict:
        """Move the running domain to the other host with `virsh migrate ... flags`; measured and checked like
        measure.moves(). A move whose --timeout fired (libvirt then suspends the guest and finishes offline) or
        that failed counts as not completed."""
        source, target = self.host, other(self.host)
        self.create_image(target)
        events = {host: Events(host) for host in (source, target)}
        time.sleep(0.5)  # the event loops registered
        poller = JobPoller(source, self.name)
        began = time.monotonic()
        done = self.migrate(source, target, flags, timeout_s)
        ended = time.monotonic()
        disk_job = poller.stop()
        time.sleep(0.5)  # the last events arrived
        seen = {host: loop.stop() for host, loop in events.items()}
        moved = self.state(target) == "running"
        where = target if moved else source
        if not moved and self.state(source) == "paused":
            self.resume()  # a failed move that --timeout had suspended: the guest goes on where it was
        stats = job_stats(source, self.name, completed=True) if moved else {}
        precopy_ms = stats.get("time_elapsed", 0) - stats.get("downtime", 0)
        timed_out = moved and precopy_ms >= timeout_s * 1000 - 100
        completed = moved and done.returncode == 0 and not timed_out
        stop = next((t for t, kind, detail in seen[source] if kind == "lifecycle" and detail.startswith("Suspended")),
                    None)
        resume = next((t for t, kind, detail in seen[target] if kind == "lifecycle" and detail.startswith("Resumed")),
                      None)
        heartbeat = self.wait(r"^HB \d+", where, ended, 30)
        self.wait(r"^PC \d+ OK", where, ended, 90)
        lines = [line for line in self.tap.snapshot() if line[0] >= began]
        summary = guestcheck.analyze(lines)
        outside, before_stop, after_resume = outside_switchover(lines, source, stop or ended)
        disk = self.check_disk(where, summary["last_ring_seq"])
        self.host = where
        failure = None
        if timed_out:
            failure = f"virsh --timeout {timeout_s} fired: libvirt suspended the guest and finished the move offline"
        elif not completed:
            failure = done.stdout[-600:]
        return {
            "workload": self.workload, "from": source, "to": target, "completed": completed, "method": "libvirt",
            "virsh_flags": flags, "failure": failure,
            "guest_visible_downtime_ms": round(summary["max_gap_s"] * 1000, 1),
            "guest_disturbance_ms": round(outside * 1000, 1),
            "disturbance_before_stop_ms": round(before_stop * 1000, 1),
            "disturbance_after_resume_ms": round(after_resume * 1000, 1),
            "qemu_downtime_ms": stats.get("downtime"),
            "stop_to_resume_ms": round((resume - stop) * 1000, 1) if stop and resume and moved else None,
            "total_time_s": round(ended - began, 2),
            "migration_time_ms": stats.get("time_elapsed"),
            "ram_bytes": stats.get("memory_processed"),
            "disk_bytes": disk_job.get("disk_processed") if moved else None,
            "passes": stats.get("memory_iteration"),
            "postcopy": any("Post-copy" in detail for _t, _kind, detail in seen[source]) if moved else None,
            "postcopy_requests": stats.get("memory_postcopy_requests"),
            "checks": move_checks(where, heartbeat, summary, disk),
            "ring_problems": disk["ring_problems"],
        }

    def wait(self, pattern: str, host: str, since: float, timeout: float) -> bool:
        try:
            self.tap.wait_for(pattern, label=host, timeout=timeout, since=since)
        except TimeoutError:
            return False
        return True

    def remove(self) -> None:
        """Destroy the domain wherever it runs and delete its files on both hosts."""
        self.tap.stop()
        for host in HOSTS:
            if self.state(host):
                virsh(host, "destroy", self.name, check=False)
                virsh(host, "undefine", self.name, check=False)
            for path in (self.image, f"{LIBVIRT_LIB}/images/{self.name}.xml"):
                if os.path.exists(on_this_machine(host, path)):
                    os.unlink(on_this_machine(host, path))
