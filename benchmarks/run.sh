#!/usr/bin/env bash
# The benchmarks (docs/benchmarks.md): set up this Debian 12 machine, build the test guest, bring the lab up, run
# benchmarks/run.py (the migration matrix), or with `network` as the first argument benchmarks/network.py (what a
# client of the Debian guest sees), passing the other arguments through (e.g. --smoke or --runs 1), then tear the
# lab down.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
script=run.py
if [ "${1:-}" = network ]; then
    script=network.py
    shift
fi
"$repo/scripts/setup.sh"
trap '"$repo/lab/lab-down.sh" >/dev/null' EXIT
"$repo/.venv/bin/python" "$repo/benchmarks/$script" "$@"
