#!/usr/bin/env bash
# The end-to-end test of deploy/systemd: systemd 252 as PID 1 in two containers built from a
# Debian rootfs made by debootstrap (cached as the image ladle-systemd-base:bookworm), installed
# as the README's systemd section says (`ladle-scheduler init --out /etc/ladle` on machine A, its
# agent.cluster copied to machine B; root's, mode 600). Machine A runs both units, machine B an
# agent. It checks that
#   1. both units start, the agents join (B's by multicast, checking the announcements with the
#      cluster's discovery key), and the cluster files, /run/ladle and the open-file limit are as
#      the units say; the cluster speaks TLS with credentials per role and refuses plaintext and
#      anonymous calls;
#   2. a job runs, and `systemctl stop ladle-agent` on B mid-job leaves it to finish on A, every
#      result exactly once;
#   3. kill -9 of each daemon is followed by its restart (and the agents rejoin);
#   4. `systemd-analyze security` rates both units under 5.
# Needs root and Docker; installs debootstrap when missing. LADLE_BIN (default target/debug)
# (default target/debug under CARGO_TARGET_DIR's parent, or the repository) holds the binaries,
# built first if absent.
#
#   deploy/systemd/e2e.sh
set -euo pipefail
E2E="systemd e2e"
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/../lib.sh"
cd "$(dirname "$0")/../.."
repo=$PWD
bin="${LADLE_BIN:-${CARGO_TARGET_DIR:-target}/debug}"
[[ "$bin" == /* ]] || bin="$repo/$bin"
base=ladle-systemd-base:bookworm
image=ladle-systemd-e2e
project="ladle-systemd-$$"
network="$project"

if [[ ! -x "$bin/ladle-scheduler" || ! -x "$bin/ladle-agent" || ! -x "$bin/ladle-test-driver" ]]; then
  cargo build --quiet -p ladle-scheduler -p ladle-agent -p ladle-tests --bins
fi

# The base: a minimal Debian with systemd, made once and kept as an image.
if ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || {
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  }
  rootfs=$(mktemp -d /tmp/ladle-rootfs-XXXXXX)
  echo "systemd e2e: making the base image with debootstrap (once; a few minutes)"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iproute2,procps \
    bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  tar -C "$rootfs" -c . | docker import --change 'CMD ["/sbin/init"]' - "$base" >/dev/null
  rm -rf "$rootfs"
fi

# The test image: the binaries, the units and settings as the README installs them.
context=$(mktemp -d /tmp/ladle-systemd-XXXXXX)
containers=()
cleanup() {
  local status=$?
  if [[ $status != 0 ]]; then
    for c in "${containers[@]}"; do
      echo "== journal of $c" >&2
      docker exec "$c" journalctl --no-pager -n 60 -u ladle-scheduler -u ladle-agent >&2 2>/dev/null || true
    done
  fi
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  docker network rm "$network" >/dev/null 2>&1 || true
  rm -rf "$context"
  exit "$status"
}
trap cleanup EXIT

mkdir -p "$context/bin" "$context/units" "$context/config"
cp "$bin/ladle-scheduler" "$bin/ladle-agent" "$bin/ladle-test-driver" "$context/bin/"
cp deploy/systemd/*.service "$context/units/"
# A container cannot raise its open-file limit past its runtime's (no CAP_SYS_RESOURCE; 32,768
# here), so the units' LimitNOFILE= (a million, and 65,536) is lowered by a drop-in, the way an
# operator would change it.
for unit in ladle-scheduler ladle-agent; do
  mkdir -p "$context/units/$unit.service.d"
  printf '[Service]\nLimitNOFILE=16384\n' > "$context/units/$unit.service.d/limits.conf"
done
cp deploy/config/scheduler.toml deploy/config/agent.toml "$context/config/"
# The address file the sample settings suggest, under the unit's RuntimeDirectory, turned on as
# an operator would. The agents find the scheduler by multicast (no `scheduler` in agent.toml).
sed -i 's|^# address_file = "/run/ladle/scheduler.address"|address_file = "/run/ladle/scheduler.address"|' \
  "$context/config/scheduler.toml"
grep -q '^address_file' "$context/config/scheduler.toml"
cat > "$context/Dockerfile" <<EOF
FROM $base
COPY bin/ /usr/local/bin/
COPY units/ /etc/systemd/system/
COPY config/ /etc/ladle/
RUN useradd --system --home-dir /var/lib/ladle --shell /usr/sbin/nologin ladle
EOF
docker build --quiet --tag "$image" "$context" >/dev/null

docker network create "$network" >/dev/null
# systemd as PID 1 needs most capabilities; not --privileged, which also asks for some a
# container host may not have (CAP_SYS_RESOURCE, here).
caps=()
for cap in SYS_ADMIN NET_ADMIN SYS_PTRACE MKNOD AUDIT_WRITE AUDIT_CONTROL SETPCAP SYS_NICE \
  DAC_READ_SEARCH IPC_LOCK SYS_CHROOT LINUX_IMMUTABLE; do
  caps+=(--cap-add "$cap")
done
start_machine() {
  local name="$1"
  shift
  docker run -d --name "$project-$name" --hostname "$name" --network "$network" \
    --network-alias "$name" "${caps[@]}" --security-opt seccomp=unconfined \
    --security-opt apparmor=unconfined --cgroupns=host \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
    "$image" /sbin/init >/dev/null
  containers+=("$project-$name")
}
start_machine machine-a
start_machine machine-b
a="$project-machine-a"
b="$project-machine-b"

booted() { [[ $(docker exec "$1" systemctl is-system-running 2>/dev/null) =~ ^(running|degraded)$ ]]; }
wait_for "machine A to boot" 60 booted "$a"
wait_for "machine B to boot" 60 booted "$b"
echo "systemd e2e: both machines booted ($(docker exec "$a" systemctl --version | head -n 1))"

# The cluster's files, as the README says: made on A (root's, mode 600), agent.cluster copied to B.
docker exec "$a" ladle-scheduler init --out /etc/ladle >/dev/null
mkdir -p "$context/from-a"
docker cp "$a:/etc/ladle/agent.cluster" "$context/from-a/agent.cluster"
docker cp "$context/from-a/agent.cluster" "$b:/etc/ladle/agent.cluster"
docker exec "$b" sh -c 'chown root:root /etc/ladle/agent.cluster && chmod 600 /etc/ladle/agent.cluster'
# For this machine's checks below: a read-only operator's file.
docker cp "$a:/etc/ladle/view.cluster" "$context/from-a/view.cluster"

docker exec "$a" systemctl enable --now ladle-scheduler ladle-agent >/dev/null 2>&1
docker exec "$b" systemctl enable --now ladle-agent >/dev/null 2>&1

cli() { docker exec "$a" env LADLE_CLUSTER_FILE=/etc/ladle/admin.cluster ladle-scheduler "$@" --scheduler https://127.0.0.1:7070; }
alive() { [[ $(cli agents --json | grep -c '"state": "alive"') -eq "$1" ]]; }
wait_for "both agents to join" 60 alive 2
echo "systemd e2e: both units active, both agents joined"
[[ $(cli agents --json | grep -c '"discovery": "multicast"') -eq 2 ]] ||
  { echo "systemd e2e: the agents did not find the scheduler by multicast" >&2; cli agents >&2; exit 1; }

# 1. The cluster files are root's, mode 600, and reached the services anyway, each service's
# copy its user's alone (0400); B holds the agent's file only; /run/ladle exists; the scheduler
# may open a million files.
for file in scheduler agent driver admin view; do
  [[ $(docker exec "$a" stat -c '%U %a' "/etc/ladle/$file.cluster") == "root 600" ]]
done
[[ $(docker exec "$b" sh -c 'ls /etc/ladle/*.cluster') == /etc/ladle/agent.cluster ]]
[[ $(docker exec "$a" stat -c '%U %a' /run/ladle/scheduler.cluster) == "ladle 400" ]]
for machine in "$a" "$b"; do
  [[ $(docker exec "$machine" stat -c '%U %a' /run/ladle-agent/agent.cluster) == "ladle 400" ]]
done
docker exec "$a" test -s /run/ladle/scheduler.address ||
  { echo "systemd e2e: no address file in /run/ladle" >&2; exit 1; }
docker exec "$a" grep -q '^https://' /run/ladle/scheduler.address ||
  { echo "systemd e2e: the address file says $(docker exec "$a" cat /run/ladle/scheduler.address)" >&2; exit 1; }
pid=$(docker exec "$a" systemctl show -p MainPID --value ladle-scheduler)
limit=$(docker exec "$a" awk '/Max open files/ {print $4}' "/proc/$pid/limits")
[[ "$limit" -eq 16384 ]] || { echo "systemd e2e: the scheduler may open $limit files, not the unit's 16384" >&2; exit 1; }
echo "systemd e2e: cluster files root's (600) yet read by the services (their copies 400, the service user's), /run/ladle made, open files $limit"
# From this machine, across the network: TLS and credentials, nothing plaintext or anonymous.
a_ip=$(docker inspect --format "{{(index .NetworkSettings.Networks \"$network\").IPAddress}}" "$a")
assert_secured "$bin/ladle-scheduler" "https://$a_ip:7070" "$context/from-a/view.cluster"

# 2. A job; B's agent stopped mid-job; everything exactly once.
log=$(mktemp)
docker exec "$a" env LADLE_SCHEDULER=https://127.0.0.1:7070 LADLE_CLUSTER_FILE=/etc/ladle/driver.cluster \
  ladle-test-driver exactly_once 3000 >"$log" 2>&1 &
driver=$!
running() { [[ $(cli status --json | grep -o '"running": [0-9]*' | head -n 1 | grep -o '[0-9]*$') -gt 0 ]]; }
wait_for "the job to run" 60 running
docker exec "$b" systemctl stop ladle-agent
echo "systemd e2e: stopped B's agent mid-job"
if ! wait "$driver"; then cat "$log" >&2; exit 1; fi
python3 - "$log" <<'PY'
import json, sys
found = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])
ok = found["once"] == 3000 and found["duplicated"] == 0 and not found["errors"] and found["sent_twice"] == 0
print(f"systemd e2e: job finished: {found['once']} of {found['n']} exactly once, {found['duplicated']} duplicated, {len(found['errors'])} errors")
sys.exit(0 if ok else 1)
PY
rm -f "$log"
docker exec "$b" systemctl start ladle-agent

# 3. kill -9 of each daemon: systemd starts it again.
for unit in ladle-scheduler ladle-agent; do
  before=$(docker exec "$a" systemctl show -p MainPID --value "$unit")
  docker exec "$a" kill -9 "$before"
  restarted() {
    local now
    now=$(docker exec "$a" systemctl show -p MainPID --value "$unit")
    [[ "$now" != 0 && "$now" != "$before" ]] && docker exec "$a" systemctl is-active --quiet "$unit"
  }
  wait_for "$unit to be restarted" 30 restarted
  echo "systemd e2e: $unit killed with SIGKILL and restarted"
done
wait_for "both agents to rejoin" 60 alive 2

# 4. Hardening.
for unit in ladle-scheduler ladle-agent; do
  score=$(docker exec "$a" systemd-analyze security "$unit.service" 2>/dev/null |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  python3 -c "import sys; sys.exit(0 if float('$score') < 5 else 1)" ||
    { echo "systemd e2e: $unit rated $score by systemd-analyze security" >&2; exit 1; }
  echo "systemd e2e: $unit rated $score by systemd-analyze security"
done
echo "systemd e2e: passed"
