#!/usr/bin/env bash
# Starts a scheduler and two agents on this machine, prints the agent table and the cluster's
# status, then stops them. Builds the binaries first. Usage: deploy/local/cluster.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bins -q -p ladle-scheduler -p ladle-agent
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin/ladle-scheduler" serve --port 0 --address-file "$work/address" 2>"$work/scheduler.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/address" ] && break; sleep 0.1; done
address=$(cat "$work/address")
export LADLE_SCHEDULER=$address
for n in 1 2; do
  "$bin/ladle-agent" --state-dir "$work/agent-$n" --hostname "$(hostname)-agent-$n" 2>"$work/agent-$n.log" &
  pids+=($!)
done
for _ in $(seq 100); do
  [ "$("$bin/ladle-scheduler" status --json | grep -c '"alive": 2')" = 1 ] && break
  sleep 0.1
done
echo "scheduler at $address"
"$bin/ladle-scheduler" agents
echo
"$bin/ladle-scheduler" status
if [ "${1:-}" = "--keep" ]; then
  echo; echo "running; LADLE_SCHEDULER=$address; Ctrl-C stops the cluster"
  wait
fi
