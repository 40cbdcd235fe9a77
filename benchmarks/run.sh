#!/usr/bin/env bash
# The benchmark matrix (docs/benchmarks.md): set up this Debian 12 machine, build the test guest, bring the lab up,
# run benchmarks/run.py (arguments pass through, e.g. --smoke or --runs 1), tear the lab down.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup.sh"
trap '"$repo/lab/lab-down.sh" >/dev/null' EXIT
"$repo/.venv/bin/python" "$repo/benchmarks/run.py" "$@"
