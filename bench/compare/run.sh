#!/usr/bin/env bash
# Runs the shared workloads on Ladle, Dask distributed and Ray, one after the other on this
# machine, and prints the figures side by side with Ladle's ratios. Makes its own virtual
# environment (target/compare-venv) with the pinned peers from PyPI.
#
#   bench/compare/run.sh [--reps 3]
set -euo pipefail
cd "$(dirname "$0")/../.."
reps=3
if [[ "${1:-}" == "--reps" ]]; then reps="$2"; fi

venv=target/compare-venv
out=target/compare
mkdir -p "$out"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/compare/requirements.txt

cargo build --release --bins --quiet
echo "== ladle" >&2
target/release/ladle-bench --reps "$reps" --only W1a,W1b,W2,W3,W4,W6,W7,W8,W8r,W10 | tee "$out/ladle.jsonl" >&2
for system in dask ray; do
  echo "== $system" >&2
  "$venv/bin/python" bench/compare/peers.py "$system" --reps "$reps" | tee "$out/$system.jsonl" >&2
done
python3 bench/compare/table.py "$out/ladle.jsonl" "$out/dask.jsonl" "$out/ray.jsonl"
