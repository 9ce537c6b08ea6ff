#!/usr/bin/env bash
# End-to-end test of the container deployment, run by .ci/run: make a cluster's files with
# `ladle-scheduler init`, compose up a scheduler and three agents with them; check that the
# cluster speaks TLS with credentials per role and refuses plaintext and anonymous calls; run a
# job of 6,000 tasks from this machine (with driver.cluster); `docker kill` an agent mid-job and
# check every result came back exactly once; `docker network disconnect` a second agent until it
# is listed lost, reconnect it and see it alive again. Everything is torn down however it ends.
set -euo pipefail
E2E="e2e"
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/../lib.sh"
cd "$(dirname "$0")/../.."

compose_cmd=()
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  echo "e2e: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi
project="ladle-e2e-$$"
compose() { "${compose_cmd[@]}" -p "$project" -f deploy/docker/compose.yaml "$@"; }

# The cluster's files, as the compose file's comment says to make them.
LADLE_CLUSTER_DIR=$(mktemp -d /tmp/ladle-e2e-cluster-XXXXXX)
export LADLE_CLUSTER_DIR LADLE_TAG=e2e LADLE_PUBLISH=127.0.0.1: LADLE_PUBLISH_HTTP=127.0.0.1: LADLE_HEARTBEAT_TIMEOUT=3s
unset LADLE_TOKEN LADLE_TOKEN_FILE LADLE_CONFIG

cleanup() {
  local status=$?
  if [[ $status -ne 0 ]]; then
    echo "e2e: failed; the cluster's logs:" >&2
    compose logs --no-color --tail 40 >&2 || true
  fi
  compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
  rm -rf "$LADLE_CLUSTER_DIR"
  exit $status
}
trap cleanup EXIT

target_dir="${CARGO_TARGET_DIR:-target}"
deploy/docker/build.sh --tag e2e
cargo build --quiet --release -p ladle-scheduler
cargo build --quiet -p ladle-tests --bin ladle-test-driver
cli="$target_dir/release/ladle-scheduler"
driver="$target_dir/debug/ladle-test-driver"

"$cli" init --out "$LADLE_CLUSTER_DIR" >/dev/null
# The containers' user (10001) reads its file through the bind mount; nobody else may.
chown 10001:10001 "$LADLE_CLUSTER_DIR/scheduler.cluster" "$LADLE_CLUSTER_DIR/agent.cluster"
chmod 0400 "$LADLE_CLUSTER_DIR/scheduler.cluster" "$LADLE_CLUSTER_DIR/agent.cluster"

compose up -d --scale agent=3
port=$(compose port scheduler 7070 | tail -1 | cut -d: -f2)
# This machine's CLI and the driver: an operator's file, and one for whoever runs jobs.
export LADLE_SCHEDULER="https://127.0.0.1:$port" LADLE_CLUSTER_FILE="$LADLE_CLUSTER_DIR/admin.cluster"

# How many agents are listed in STATE, or whether the agent with HOST is in STATE.
agents_in() {
  "$cli" agents --json | python3 -c '
import json, sys
rows = json.load(sys.stdin)
state, host = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
if host:
    sys.exit(0 if any(r["hostname"] == host and r["state"] == state for r in rows) else 1)
print(sum(r["state"] == state for r in rows))' "$@"
}
three_alive() { [[ "$(agents_in alive)" -ge 3 ]]; }
running() {
  "$cli" status --json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["tasks"]["running"] > 0 else 1)'
}
wait_for "three agents alive" 60 three_alive
wait_for "the containers healthy" 60 bash -c \
  "[[ \$(docker ps --filter label=com.docker.compose.project=$project --filter health=healthy -q | wc -l) -ge 4 ]]"
assert_secured "$cli" "$LADLE_SCHEDULER" "$LADLE_CLUSTER_DIR/view.cluster"
# Each container is handed its own file and no other.
mounts_of() { docker inspect --format '{{range .Mounts}}{{.Source}} {{end}}' "$1"; }
[[ $(mounts_of "$(compose ps -q scheduler)") == "$LADLE_CLUSTER_DIR/scheduler.cluster " ]] ||
  { echo "e2e: the scheduler's container mounts $(mounts_of "$(compose ps -q scheduler)")" >&2; exit 1; }
for agent in $(compose ps -q agent); do
  [[ $(mounts_of "$agent") == "$LADLE_CLUSTER_DIR/agent.cluster " ]] ||
    { echo "e2e: agent container ${agent:0:12} mounts $(mounts_of "$agent")" >&2; exit 1; }
done
echo "e2e: the scheduler's container holds scheduler.cluster only, each agent's agent.cluster only"

log=$(mktemp)
LADLE_CLUSTER_FILE="$LADLE_CLUSTER_DIR/driver.cluster" "$driver" exactly_once 6000 >"$log" 2>&1 &
driver_pid=$!
wait_for "the job running" 60 running
# Read whole lists, never through `head`: under pipefail a writer cut short by SIGPIPE fails
# the script.
mapfile -t agents < <(compose ps -q agent)
victim="${agents[0]}"
docker kill "$victim" >/dev/null
echo "e2e: killed agent container ${victim:0:12} mid-job"
if ! wait "$driver_pid"; then
  cat "$log" >&2
  exit 1
fi
python3 - "$log" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
found = json.loads(lines[-1])
# sent_twice: results the scheduler sent for tasks that had theirs, below the SDK's de-duplication.
ok = found["n"] == 6000 and found["once"] == 6000 and found["duplicated"] == 0 and found["wrong"] == 0 and not found["errors"] and found["sent_twice"] == 0
print(f"e2e: job finished: {found['once']} of {found['n']} results exactly once, {found['duplicated']} duplicated, {found['sent_twice']} sent twice by the scheduler, {found['wrong']} wrong, {len(found['errors'])} errors")
sys.exit(0 if ok else 1)
PY

network="${project}_ladle"
second="${agents[1]}"
host=$(docker inspect --format '{{.Config.Hostname}}' "$second")
docker network disconnect "$network" "$second"
wait_for "agent $host listed lost after its network was cut" 60 agents_in lost "$host"
docker network connect "$network" "$second"
wait_for "agent $host alive again after reconnection" 120 agents_in alive "$host"
echo "e2e: passed"
