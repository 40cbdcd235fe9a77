"""The action group livemig.qemu.qemu (meta/runtime.yml): module_defaults reach its members in a real play."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import conftest
import yaml

from ansible_collections.livemig.qemu.plugins.module_utils._state import HostRecord, save_record

PLAYBOOK = """
- name: Defaults for the whole group
  hosts: localhost
  gather_facts: false
  module_defaults:
    group/livemig.qemu.qemu:
      run_dir: {run_dir}
      image_dir: {image_dir}
  tasks:
    - name: Facts, which read the VMs from the run and image directories
      livemig.qemu.qemu_facts:
        probe: false
      register: facts
    - name: Progress, which needs a run directory
      livemig.qemu.qemu_migrate_progress:
        name: vm1
        wait: 0
      register: progress
    - name: Keep both results
      ansible.builtin.copy:
        content: "{{{{ {{'facts': facts, 'progress': progress}} | to_json }}}}"
        dest: {results}
        mode: "0600"
"""


def test_module_defaults_for_the_group_reach_its_members(tmp_path):
    run_dir, image_dir, results = tmp_path / "run", tmp_path / "images", tmp_path / "results.json"
    (run_dir / "vm2").mkdir(parents=True)
    save_record(str(image_dir / "vm1" / "record.json"), HostRecord(vm="vm1", owner=True))
    (run_dir / "vm2" / "pid").write_text("999999999\n", encoding="ascii")
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK.format(run_dir=run_dir, image_dir=image_dir, results=results), encoding="utf-8")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": conftest.COLLECTIONS,
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local-tmp"), "ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote-tmp"),
           "ANSIBLE_NOCOLOR": "1"}
    env.pop("ANSIBLE_CONFIG", None)
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
                           "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(results, encoding="utf-8") as handle:
        registered = json.load(handle)
    vms = registered["facts"]["ansible_facts"]["livemig_qemu"]["vms"]
    assert sorted(vms) == ["vm1", "vm2"] and vms["vm1"]["owner"] is True and vms["vm2"]["running"] is False
    assert registered["progress"]["path"] == str(run_dir / "vm1" / "progress.json")


def test_the_group_holds_the_modules_that_document_its_membership():
    with open(os.path.join(conftest.REPO, "meta", "runtime.yml"), encoding="utf-8") as handle:
        group = yaml.safe_load(handle)["action_groups"]["qemu"]
    documented = []
    for path in sorted(glob.glob(os.path.join(conftest.MODULES, "*.py"))):
        with open(path, encoding="utf-8") as handle:
            if "  - livemig.qemu.attributes.action_group\n" in handle.read():
                documented.append(os.path.basename(path)[:-len(".py")])
    assert sorted(group) == documented
    assert len(documented) == 17
