#!/usr/bin/env bash
# Starts a scheduler and two agents on this machine, as a real cluster is run (a cluster's files
# from `ladle-scheduler init`, TLS, a credential per role), prints the agent table and the
# cluster's status, then stops them. The scheduler listens on loopback only. Builds the binaries
# first. Usage: deploy/local/cluster.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bins -q -p ladle-scheduler -p ladle-agent
bin="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# Nothing of the caller's environment speaks for this cluster.
unset LADLE_TOKEN LADLE_TOKEN_FILE LADLE_CLUSTER_FILE LADLE_CONFIG LADLE_SCHEDULER_FILE

"$bin/ladle-scheduler" init --out "$work/cluster" --cluster local >/dev/null
"$bin/ladle-scheduler" serve --cluster-file "$work/cluster/scheduler.cluster" --cluster local \
  --bind 127.0.0.1 --port 0 --address-file "$work/address" --state-dir "$work/scheduler" \
  2>"$work/scheduler.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/address" ] && break; sleep 0.1; done
address=$(cat "$work/address")
export LADLE_SCHEDULER=$address
for n in 1 2; do
  "$bin/ladle-agent" --cluster-file "$work/cluster/agent.cluster" --state-dir "$work/agent-$n" \
    --hostname "$(hostname)-agent-$n" 2>"$work/agent-$n.log" &
  pids+=($!)
done
# The CLI as an operator: the admin's file.
export LADLE_CLUSTER_FILE="$work/cluster/admin.cluster"
for _ in $(seq 100); do
  [ "$("$bin/ladle-scheduler" status --json | grep -c '"alive": 2')" = 1 ] && break
  sleep 0.1
done
echo "scheduler at $address"
"$bin/ladle-scheduler" agents
echo
"$bin/ladle-scheduler" status
if [ "${1:-}" = "--keep" ]; then
  echo
  echo "running; Ctrl-C stops the cluster. Run jobs with"
  echo "  LADLE_SCHEDULER=$address LADLE_CLUSTER_FILE=$work/cluster/driver.cluster"
  echo "and manage it with LADLE_CLUSTER_FILE=$work/cluster/admin.cluster"
  "$bin/ladle-scheduler" dashboard
  wait
fi
