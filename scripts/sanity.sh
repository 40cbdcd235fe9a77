#!/usr/bin/env bash
# Run `ansible-test sanity` on this collection.
#
# ansible-test only works from a tree at .../ansible_collections/<namespace>/<name>, so the repo is copied
# (without its venv, git data and generated files) into a temporary one. The copy has no .git, so ansible-test
# tests every file in it, committed or not.
#
# Environment:
#   VENV            the venv with ansible-core (default: <repo>/.venv)
#   SANITY_PYTHON   Python version to test with (default: 3.11)
#   SANITY_KEEP=1   keep the temporary tree (its path is printed)
# Extra arguments go to `ansible-test sanity` (for example `--test pep8`).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$REPO/.venv}
case $VENV in /*) ;; *) VENV=$REPO/$VENV ;; esac
PYVER=${SANITY_PYTHON:-3.11}

if [[ ! -x $VENV/bin/ansible-test ]]; then
    echo "sanity: no ansible-test in $VENV (set VENV)" >&2
    exit 2
fi

# --requirements makes ansible-test bootstrap pip in its sanity venvs with a script it downloads from a host this
# machine cannot reach. It first looks in its cache, so put a stand-in there: bundled pip (ensurepip), then pip
# itself installs the packages it was asked for (the pinned pip version included).
PIP_VERSION=$("$VENV/bin/python" - <<'EOF'
import re, pathlib, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", src.read_text()).group(1))
EOF
)
GET_PIP=$HOME/.ansible/test/cache/get_pip_${PIP_VERSION//./_}.py
if [[ ! -s $GET_PIP ]]; then
    mkdir -p "$(dirname "$GET_PIP")"
    cat >"$GET_PIP" <<'EOF'
"""Offline stand-in for pip's get-pip.py, written by livemig.qemu's scripts/sanity.sh.

Bootstraps pip with ensurepip, then lets pip install what get-pip.py was asked to install.
"""
import subprocess
import sys

args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
if "--no-setuptools" in sys.argv[1:]:
    # ensurepip of Python < 3.12 also installs setuptools; get-pip.py would not have.
    subprocess.call([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"])
EOF
    echo "sanity: wrote the offline pip bootstrap stand-in $GET_PIP"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/livemig-sanity.XXXXXX")
if [[ ${SANITY_KEEP:-0} == 1 ]]; then
    echo "sanity: keeping $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
TREE=$WORK/ansible_collections/livemig/qemu
mkdir -p "$TREE"
rsync -a --delete \
    --exclude=/.git --exclude=/.venv --exclude=/collections --exclude=/tests/output --exclude=/tests/guest/out \
    --exclude=/.lab --exclude=/reports --exclude=/benchmarks/results --exclude=/.ansible \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.pyc' --exclude='*.tar.gz' \
    "$REPO/" "$TREE/"

if ! command -v shellcheck >/dev/null; then
    echo "sanity: WARNING: shellcheck is not installed (Debian: apt-get install shellcheck); ansible-test skips its shell checks" >&2
fi

export PATH=$VENV/bin:$PATH
export ANSIBLE_COLLECTIONS_PATH=$WORK
unset ANSIBLE_CONFIG
cd "$TREE"
start=$SECONDS
status=0
ansible-test sanity --local --python "$PYVER" --requirements --color no "$@" || status=$?
echo "sanity: exit $status after $((SECONDS - start))s"
exit "$status"
