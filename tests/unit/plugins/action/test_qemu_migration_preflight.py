"""qemu_migration_preflight's action in a real play: a failure's message starts with the host the step ran on (the
delegated one too), and the lease of a controller that ended on this machine is taken over, as qemu_vm_lock's is."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import conftest

from ansible_collections.livemig.qemu.plugins.module_utils import _lock
from ansible_collections.livemig.qemu.plugins.module_utils._paths import VMPaths
from ansible_collections.livemig.qemu.plugins.plugin_utils import _controller

PLAYBOOK = """
- name: The source step of two VMs, one of them delegated
  hosts: hv1
  gather_facts: false
  vars:
    spec: {{memory_mb: 32, vcpus: 1, machine: pc, cpu_model: qemu64, accel: tcg}}
    lease: {{lock_id: move-2, operation: migrate from hv1 to hv2, holder: bob@ctl}}
  tasks:
    - name: Web1, whose lease another controller machine holds
      livemig.qemu.qemu_migration_preflight:
        step: source
        name: web1
        run_dir: {run_dir}
        spec: "{{{{ spec }}}}"
        lease: "{{{{ lease }}}}"
      delegate_to: hv2
      register: refused
      ignore_errors: true
    - name: Web2, whose lease a controller that ended on this machine holds
      livemig.qemu.qemu_migration_preflight:
        step: source
        name: web2
        run_dir: {run_dir}
        spec: "{{{{ spec }}}}"
        lease: "{{{{ lease }}}}"
      register: taken
    - name: Keep both results
      ansible.builtin.copy:
        content: "{{{{ {{'refused': refused, 'taken': taken}} | to_json }}}}"
        dest: {results}
        mode: "0600"
"""


def test_the_failure_names_the_host_and_an_ended_controllers_lease_is_taken_over(tmp_path):
    run_dir, results = tmp_path / "run", tmp_path / "results.json"
    me = _controller.identity()
    ended = subprocess.Popen(["true"])
    ended.wait()
    _lock.acquire(VMPaths.on_host("web1", str(run_dir)), "move-1", "migrate from hv1 to hv2", "alice@ctl", 600,
                  controller={**me, "host": "another-controller"})
    _lock.acquire(VMPaths.on_host("web2", str(run_dir)), "move-1", "migrate from hv1 to hv2", "alice@ctl", 600,
                  controller={**me, "pid": ended.pid})
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"hv1": local, "hv2": local, "localhost": local}}}),
                         encoding="utf-8")
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.format(run_dir=run_dir, results=results), encoding="utf-8")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": conftest.COLLECTIONS, "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local-tmp")}
    env.pop("ANSIBLE_CONFIG", None)
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                           str(playbook)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    registered = json.loads(results.read_text(encoding="utf-8"))
    refused, taken = registered["refused"], registered["taken"]
    assert refused["failed"] is True and refused["failed_step"] == "lease", refused
    assert refused["msg"].startswith("on hv2, taking the lease: VM web1 is locked on this host by migrate from hv1 "
                                     "to hv2 move-1 of alice@ctl"), refused["msg"]
    assert _lock.current(VMPaths.on_host("web1", str(run_dir)))["id"] == "move-1"
    assert taken["failed"] is False and taken["lease"]["replaced"]["id"] == "move-1", taken
    lease = taken["lease"]["lock"]
    assert lease["id"] == "move-2" and lease["controller"]["host"] == socket.gethostname(), lease
    assert lease["controller"]["pid"] != ended.pid
