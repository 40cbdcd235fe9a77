#!/usr/bin/env bash
# All the tests, on a fresh Debian 12 machine as root: set-up, unit tests, the collection built and installed from
# its tarball, integration tests and the molecule scenario over the two-host lab (playbooks run from the installed
# copy), then sanity and lint. Exits non-zero on the first failure.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "set-up"
scripts/setup.sh
export PATH="$repo/.venv/bin:$PATH"
tests/guest/build.sh >/dev/null

step "unit tests"
python -m pytest -q -p no:cacheprovider tests/unit

step "fresh Debian 12 root: scripts/setup.sh from nothing"
scripts/check-fresh-root.sh

step "build and install the collection"
work=$(mktemp -d /tmp/livemig-test.XXXXXX)
cleanup() { LAB_DIR="${LAB_DIR:-/var/lib/livemig-lab}" lab/lab-down.sh >/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ansible-galaxy collection build --output-path "$work/dist" "$repo" >/dev/null
ansible-galaxy collection install --offline --force -p "$work/collections" "$work"/dist/livemig-qemu-*.tar.gz >/dev/null
export LIVEMIG_COLLECTIONS_PATH="$work/collections" ANSIBLE_COLLECTIONS_PATH="$work/collections"
ansible-doc livemig.qemu.qemu_migrate >/dev/null

step "package check (tarball allow-list, execution environment)"
scripts/check-package.sh

step "two-host lab"
lab/lab-up.sh  # the lab, its hosts prepared by livemig.qemu.prepare from the installed collection

step "integration tests (installed collection)"
python -m pytest -q -p no:cacheprovider --durations=15 tests/integration

step "molecule scenario (installed collection)"
molecule reset >/dev/null 2>&1 || true  # forget any earlier run's state (prepare would be skipped)
molecule test

step "sanity and lint"
scripts/lint.sh

step "done"
