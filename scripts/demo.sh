#!/usr/bin/env bash
# The demo: set up this Debian 12 machine, build the test guest, bring the two-host lab up, start a VM with a
# 1 GiB local disk and a light workload on hv1, live-migrate it to hv2, print the report, tear the lab down.
# Extra arguments go to scripts/demo.py (--workload heavy, --runs 3, --json FILE).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup.sh"
trap '"$repo/lab/lab-down.sh" >/dev/null' EXIT
"$repo/.venv/bin/python" "$repo/scripts/demo.py" "$@"
