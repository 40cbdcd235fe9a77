"""The roles' defaults agree with their argument specs, and the hypervisor role pins what requirements-host.txt pins."""
from __future__ import annotations

import glob
import os

import conftest
import pytest
import yaml

REPO = conftest.REPO
ROLES = sorted(os.path.basename(os.path.dirname(path)) for path in glob.glob(os.path.join(REPO, "roles", "*", "meta")))


def load(*parts: str):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.mark.parametrize("role", ROLES)
def test_defaults_agree_with_argument_specs(role):
    options = load("roles", role, "meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    defaults = load("roles", role, "defaults", "main.yml")
    assert set(defaults) <= set(options), "defaults/main.yml sets variables the argument specs do not describe"
    for name, option in options.items():
        assert option.get("description"), f"{name} has no description"
        if "default" in option:
            assert name in defaults, f"{name} has a default in the argument specs but not in defaults/main.yml"
            assert defaults[name] == option["default"], f"{name}: defaults/main.yml and argument specs disagree"


def test_hypervisor_pins_are_the_host_requirements():
    with open(os.path.join(REPO, "requirements-host.txt"), encoding="utf-8") as handle:
        pins = [line.split("#")[0].strip() for line in handle if line.split("#")[0].strip()]
    assert load("roles", "hypervisor", "defaults", "main.yml")["livemig_hypervisor_pip_packages"] == pins
