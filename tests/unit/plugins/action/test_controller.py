"""A lease names the ansible-playbook process that took it: a later play on the same controller machine takes over
the lease of one that was killed, and never that of one that still runs or that ran on another machine."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import conftest

from ansible_collections.livemig.qemu.plugins.plugin_utils import _controller

PLAYBOOK = """
- name: Take web1's lease and keep it, as a play that was killed would
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Lease
      livemig.qemu.qemu_vm_lock:
        name: web1
        run_dir: {run_dir}
        lock_id: "{{{{ lock_id }}}}"
        operation: migrate from hv1 to hv2
        holder: "{{{{ lock_id }}}}@ctl"
      register: taken
    - name: Keep what the task returned
      ansible.builtin.copy:
        content: "{{{{ taken | to_json }}}}"
        dest: "{{{{ result_file }}}}"
        mode: "0600"
"""


def play(tmp_path, lock_id: str) -> tuple[subprocess.CompletedProcess, dict]:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}), encoding="utf-8")
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.format(run_dir=tmp_path / "run"), encoding="utf-8")
    result_file = tmp_path / f"{lock_id}.json"
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": conftest.COLLECTIONS, "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local-tmp")}
    env.pop("ANSIBLE_CONFIG", None)
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                           str(playbook), "-e", f"lock_id={lock_id}", "-e", f"result_file={result_file}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120)
    return done, json.loads(result_file.read_text()) if result_file.exists() else {}


def lease_file(tmp_path) -> str:
    return str(tmp_path / "run" / "web1" / "lock.json")


def test_a_later_play_takes_over_the_lease_of_a_controller_that_ended(tmp_path):
    done, first = play(tmp_path, "move-1")
    assert done.returncode == 0, done.stdout + done.stderr
    controller = first["lock"]["controller"]
    assert controller["host"] == socket.gethostname() and controller["started"], controller
    done, second = play(tmp_path, "move-2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert second["lock"]["id"] == "move-2" and second["replaced"]["id"] == "move-1", second


def test_the_lease_of_another_machines_controller_is_refused(tmp_path):
    done, first = play(tmp_path, "move-1")
    assert done.returncode == 0, done.stdout + done.stderr
    with open(lease_file(tmp_path), encoding="utf-8") as handle:
        lease = json.load(handle)
    lease["controller"]["host"] = "another-controller"
    with open(lease_file(tmp_path), "w", encoding="utf-8") as handle:
        json.dump(lease, handle)
    done = play(tmp_path, "move-2")[0]
    assert done.returncode != 0 and "is locked on this host by migrate from hv1 to hv2 move-1 of move-1@ctl" in \
        done.stdout, done.stdout


def test_a_controller_is_gone_when_its_process_or_its_boot_has_ended():
    me = _controller.identity()
    assert not _controller.gone(me), "the process that runs this test's parent still runs"
    ended = subprocess.Popen(["true"])
    ended.wait()
    assert _controller.gone({**me, "pid": ended.pid})
    assert _controller.gone({**me, "boot_id": "an earlier boot"})
    assert not _controller.gone({**me, "host": "another-controller", "pid": ended.pid})
    assert not _controller.gone({**me, "started": None}), "without a start time nothing is proven"
    assert not _controller.gone(None)
