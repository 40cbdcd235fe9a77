"""The host preparation (playbook livemig.qemu.prepare, role livemig.qemu.hypervisor) on the lab's hosts, which
lab_up() prepared with it."""
from __future__ import annotations

import os
import re
import stat
import subprocess

import yaml

from conftest import LAB_DIR

HOSTS = ("hv1", "hv2")


def test_prepared_hosts_run_the_modules_from_their_venv(lab):
    with open(os.path.join(LAB_DIR, "inventory.yml"), encoding="utf-8") as handle:
        hosts = yaml.safe_load(handle)["all"]["children"]["hypervisors"]["hosts"]
    for host in HOSTS:
        venv = os.path.join(LAB_DIR, host, "venv")
        assert hosts[host]["ansible_python_interpreter"] == os.path.join(venv, "bin", "python")
        done = subprocess.run([os.path.join(venv, "bin", "python"), "-c", "import jmespath, qemu.qmp"],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        for kind in ("images", "run", "state"):
            assert stat.S_IMODE(os.stat(os.path.join(LAB_DIR, host, kind)).st_mode) == 0o700

    again = lab.play("prepare")
    assert not again.failed, again.output
    assert again.changed == 0, again.output
    for host in HOSTS:
        assert re.search(rf"ok: \[{host}\] =>\s+msg: 'QEMU \d+\.\d+\.\d+ \(.*\), Python {LAB_DIR}/{host}/venv/bin/python,"
                         rf"\s+KVM (usable|not usable: [^,]+),\s+accel auto -> (kvm|tcg)'", again.output), again.output


def test_check_mode_on_a_fresh_host_changes_nothing(lab, tmp_path):
    fresh = {"livemig_hypervisor_venv": str(tmp_path / "venv"), "livemig_image_dir": str(tmp_path / "images"),
             "livemig_run_dir": str(tmp_path / "run"), "livemig_state_dir": str(tmp_path / "state"),
             "livemig_hypervisor_hostvars_dir": str(tmp_path / "host_vars")}
    result = lab.play("prepare", check=True, **fresh)
    assert not result.failed, result.output
    assert result.changed > 0, "check mode must tell what a real run would change"
    assert "so no report" in result.output
    assert os.listdir(tmp_path) == []


def test_host_vars_on_the_controller_point_to_the_venv(lab, tmp_path):
    host_vars = tmp_path / "host_vars"
    host_vars.mkdir()
    (host_vars / "hv1.yml").write_text("---\nlivemig_migration_address: 192.0.2.1\nansible_python_interpreter: /x\n")
    (host_vars / "hv1.yml").chmod(0o600)
    (host_vars / "hv2").mkdir()

    first = lab.play("prepare", livemig_hypervisor_hostvars_dir=str(host_vars))
    assert not first.failed, first.output
    assert first.changed == 2, first.output
    hv1 = yaml.safe_load((host_vars / "hv1.yml").read_text())
    assert hv1 == {"livemig_migration_address": "192.0.2.1",
                   "ansible_python_interpreter": f"{LAB_DIR}/hv1/venv/bin/python"}
    assert stat.S_IMODE((host_vars / "hv1.yml").stat().st_mode) == 0o600, "the file keeps its mode"
    hv2 = yaml.safe_load((host_vars / "hv2" / "livemig_hypervisor.yml").read_text())
    assert hv2 == {"ansible_python_interpreter": f"{LAB_DIR}/hv2/venv/bin/python"}
    assert stat.S_IMODE((host_vars / "hv2" / "livemig_hypervisor.yml").stat().st_mode) == 0o644
    assert sorted(os.listdir(host_vars)) == ["hv1.yml", "hv2"], "a file beside the directory would be ignored"

    again = lab.play("prepare", livemig_hypervisor_hostvars_dir=str(host_vars))
    assert not again.failed, again.output
    assert again.changed == 0, again.output

    (host_vars / "hv1.yml").unlink()
    (host_vars / "hv1.json").write_text('{"livemig_migration_address": "192.0.2.1"}')
    json_vars = lab.play("prepare", livemig_hypervisor_hostvars_dir=str(host_vars))
    assert json_vars.failed
    assert "hv1.json is JSON, which the role does not edit" in json_vars.output, json_vars.output
    assert not (host_vars / "hv1.yml").exists()


def test_packages_only_on_the_debian_family(lab):
    # Extra vars outrank the gathered facts: the hosts look like Fedora to the role.
    fedora = {"ansible_facts": {"os_family": "RedHat", "distribution": "Fedora"}}
    refused = lab.play("prepare", **fedora)
    assert refused.failed
    assert "runs Fedora: the role installs packages on the Debian family only" in refused.output, refused.output

    without_packages = lab.play("prepare", livemig_hypervisor_install_packages=False, **fedora)
    assert not without_packages.failed, without_packages.output
    assert without_packages.changed == 0, without_packages.output
