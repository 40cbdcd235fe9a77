"""A host that does not answer fails a livemig.qemu task (so that the role's rescue runs), where Ansible would mark
the play's host unreachable and skip the rescue."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import conftest

PLAYBOOK = """
- name: A move's step on a peer that does not answer
  hosts: source
  gather_facts: false
  tasks:
    - name: Ask the dead peer, then record what the rescue saw
      block:
        - name: Facts from the peer
          livemig.qemu.qemu_facts:
            run_dir: /nonexistent
            probe: false
          delegate_to: deadpeer
      rescue:
        - name: Keep the failure the rescue got
          ansible.builtin.copy:
            content: "{{{{ ansible_failed_result | to_json }}}}"
            dest: {results}
            mode: "0600"
          delegate_to: localhost
"""

FAKE_SSH = """#!/bin/sh
echo "ssh: connect to host 198.18.0.250 port 22: No route to host" >&2
exit 255
"""


def test_a_peer_that_does_not_answer_fails_the_task_and_the_rescue_runs(tmp_path):
    ssh = tmp_path / "ssh"
    ssh.write_text(FAKE_SSH, encoding="utf-8")
    ssh.chmod(0o700)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {
        "source": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "deadpeer": {"ansible_host": "198.18.0.250", "ansible_connection": "ssh",
                     "ansible_ssh_executable": str(ssh), "ansible_python_interpreter": sys.executable},
        "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}),
        encoding="utf-8")
    results = tmp_path / "results.json"
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.format(results=results), encoding="utf-8")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": conftest.COLLECTIONS, "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local-tmp"), "ANSIBLE_HOST_KEY_CHECKING": "False"}
    env.pop("ANSIBLE_CONFIG", None)
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                           str(playbook)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr  # the rescue handled it: no unreachable host
    assert "unreachable=0" in done.stdout, done.stdout
    failure = json.loads(results.read_text(encoding="utf-8"))
    assert failure["failed"] is True and failure["host_unreachable"] is True, failure
    assert failure["msg"].startswith("deadpeer did not answer: ") and "No route to host" in failure["msg"], failure
