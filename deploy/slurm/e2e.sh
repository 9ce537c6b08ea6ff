#!/usr/bin/env bash
# The end-to-end test of deploy/slurm/ladle-job.sbatch on a real Slurm (Debian's slurm-wlm, with
# munge): two nodes, each a network, UTS and mount namespace of its own (its own address,
# hostname and /etc/hosts) on one bridge, slurmctld and one slurmd in the first, a slurmd in the
# second. It checks that
#   1. a two-node job runs a real Ladle program (the pi example) on both nodes' agents, ends
#      COMPLETED with nothing left behind (no process, no run directory, the daemons stopped by
#      SIGTERM rather than killed); the cluster the job made for itself speaks TLS with
#      credentials per role, refuses plaintext and anonymous calls, and the program's file
#      (driver.cluster, in a run directory of mode 0700) may not drain an agent;
#   2. a job whose second node's agent cannot start fails, saying which node is missing;
#   3. a job cancelled mid-run (scancel) leaves nothing behind either.
# Needs root; installs slurm-wlm and munge when missing. LADLE_BIN (default target/debug, under
# CARGO_TARGET_DIR when set) holds the binaries, built first if absent.
#
#   deploy/slurm/e2e.sh
set -euo pipefail
E2E="slurm e2e"
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/../lib.sh"
cd "$(dirname "$0")/../.."
repo=$PWD

if [[ $(id -u) != 0 ]]; then
  echo "slurm e2e: needs root (network namespaces, slurmd)" >&2
  exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
bin="${LADLE_BIN:-${CARGO_TARGET_DIR:-target}/debug}"
[[ "$bin" == /* ]] || bin="$repo/$bin"
if [[ ! -x "$bin/ladle-scheduler" || ! -x "$bin/ladle-agent" || ! -x "$bin/examples/pi" || ! -x "$bin/ladle-test-driver" ]]; then
  cargo build --quiet -p ladle-scheduler -p ladle-agent -p ladle-tests --bins
  cargo build --quiet -p ladle --example pi
fi

id=$(( $$ % 200 + 20 ))
lab=$(mktemp -d /tmp/ladle-slurm-XXXXXX)
chmod 755 "$lab"
subnet="10.231.$id"
switch="ladle-slurm-sw-$id"
nodes=(node1 node2)
declare -A ip=([node1]="$subnet.1" [node2]="$subnet.2")
pids=()

cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for node in "${nodes[@]}"; do ip netns delete "ladle-slurm-$node-$id" 2>/dev/null || true; done
  ip netns delete "$switch" 2>/dev/null || true
  if [[ $status != 0 ]]; then
    for log in "$lab"/*.log "$lab"/*.out "$lab"/work/*.out; do
      [[ -s "$log" ]] && { echo "== $log" >&2; tail -n 40 "$log" >&2; }
    done
  fi
  rm -rf "$lab"
  exit "$status"
}
trap cleanup EXIT

# The network: a bridge in a namespace of its own, one veth port per node.
ip netns add "$switch"
ip -n "$switch" link add br0 type bridge
ip -n "$switch" link set br0 up
hosts="$lab/hosts"
printf '127.0.0.1 localhost\n' > "$hosts"
for node in "${nodes[@]}"; do
  ns="ladle-slurm-$node-$id"
  ip netns add "$ns"
  ip -n "$switch" link add "p-$node" type veth peer name eth0 netns "$ns"
  ip -n "$switch" link set "p-$node" master br0
  ip -n "$switch" link set "p-$node" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "${ip[$node]}/24" dev eth0
  ip -n "$ns" link set eth0 up
  printf '%s %s\n' "${ip[$node]}" "$node" >> "$hosts"
done

# Runs a command on a node: in its network namespace, with its hostname and its /etc/hosts.
# (nsenter rather than `ip netns exec`, which mounts a sysfs of its own and so hides the
# cgroup hierarchy slurmd needs.)
on() {
  local node="$1"
  shift
  unshare --uts --mount -- nsenter --net="/run/netns/ladle-slurm-$node-$id" -- bash -c \
    'hostname "$0"; mount --bind "$1" /etc/hosts; shift; exec "$@"' "$node" "$hosts" "$@"
}

# munge: one key, one daemon (its socket is shared by every node's processes). Whether it
# answers is what counts, not whether a process of that name exists.
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_works; then
  [[ -s /etc/munge/munge.key ]] || { mungekey --create --force 2>/dev/null || create-munge-key -f; }
  install -d -o munge -g munge /run/munge 2>/dev/null || mkdir -p /run/munge
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged --force
  else
    munged --force
  fi
  for _ in $(seq 1 20); do munge_works && break; sleep 0.5; done
  munge_works || { echo "slurm e2e: munged does not answer" >&2; exit 1; }
fi

mkdir -p "$lab/state" "$lab/work"
conf="$lab/slurm.conf"
cat > "$conf" <<EOF
ClusterName=ladle-ci
SlurmctldHost=node1(${ip[node1]})
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$lab/state
SlurmdSpoolDir=$lab/spool-%n
SlurmctldPidFile=$lab/slurmctld.pid
SlurmdPidFile=$lab/slurmd-%n.pid
SlurmctldLogFile=$lab/slurmctld.log
SlurmdLogFile=$lab/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=node1 NodeAddr=${ip[node1]} CPUs=$(nproc) State=UNKNOWN
NodeName=node2 NodeAddr=${ip[node2]} CPUs=$(nproc) State=UNKNOWN
PartitionName=ci Nodes=node1,node2 Default=YES MaxTime=10 State=UP OverSubscribe=YES
EOF
export SLURM_CONF="$conf"

on node1 slurmctld -D -f "$conf" >"$lab/slurmctld.out" 2>&1 &
pids+=($!)
for node in "${nodes[@]}"; do
  mkdir -p "$lab/spool-$node"
  on "$node" slurmd -D -f "$conf" -N "$node" >"$lab/slurmd-$node.out" 2>&1 &
  pids+=($!)
done

idle_nodes() { [[ $(on node1 sinfo -h -N -t idle -o "%N" | sort -u | wc -l) -eq 2 ]]; }
wait_for "both nodes idle" 30 idle_nodes
echo "slurm e2e: slurmctld and two slurmd up ($(on node1 sinfo -V))"

# No Ladle process may outlive its job.
no_ladle_left() { ! pgrep -f "$bin/ladle-(agent|scheduler)" >/dev/null; }
state_of() { on node1 scontrol show job "$1" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
ended() { [[ $(state_of "$1") =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT)$ ]]; }

# Submits the sbatch script on both nodes with binaries from $1, $2 seconds for the agents to
# join, and the job "${@:3}"; prints the job's id.
submit() {
  local from="$1" agent_wait="$2"
  shift 2
  on node1 sbatch --parsable --nodes=2 --ntasks-per-node=1 --chdir="$lab/work" \
    --export=ALL,LADLE_BIN="$from",LADLE_AGENT_WAIT="$agent_wait" \
    "$repo/deploy/slurm/ladle-job.sbatch" "$@"
}

# 1. A real job on both nodes, its program first checking what the job handed it.
secured="$lab/secured"
cat > "$secured" <<EOF
#!/usr/bin/env bash
set -euo pipefail
E2E="slurm e2e"
source "$repo/deploy/lib.sh"
run_dir=\$(dirname "\$LADLE_CLUSTER_FILE")
[[ \$(stat -c %a "\$run_dir") == 700 && \$(stat -c %a "\$LADLE_CLUSTER_FILE") == 600 ]] ||
  { echo "slurm e2e: the run directory or driver.cluster is readable by others" >&2; exit 1; }
[[ "\$LADLE_CLUSTER_FILE" == */driver.cluster && "\$LADLE_SCHEDULER" == https://* ]] ||
  { echo "slurm e2e: the program was handed \$LADLE_CLUSTER_FILE and \$LADLE_SCHEDULER" >&2; exit 1; }
assert_secured "$bin/ladle-scheduler" "\$LADLE_SCHEDULER" "\$LADLE_CLUSTER_FILE"
if "$bin/ladle-scheduler" drain node2 >/dev/null 2>&1; then
  echo "slurm e2e: the driver's file drained an agent" >&2; exit 1
fi
echo "slurm e2e: the driver's file may not drain an agent"
exec "\$@"
EOF
chmod +x "$secured"
cd "$lab/work"
job=$(submit "$bin" 60 "$secured" "$bin/examples/pi" 64)
wait_for "job $job to end" 180 ended "$job"
out="$lab/work/ladle-$job.out"
[[ $(state_of "$job") == COMPLETED ]] || { echo "slurm e2e: job $job ended $(state_of "$job")" >&2; cat "$out" >&2; exit 1; }
grep -q "3.14" "$out" || { echo "slurm e2e: job $job printed no pi" >&2; cat "$out" >&2; exit 1; }
grep -q "slurm e2e: the cluster is secured: TLS, credentials per role" "$out" ||
  { echo "slurm e2e: job $job's cluster was not shown secured" >&2; cat "$out" >&2; exit 1; }
grep -q "^ladle: scheduler at https://" "$out" ||
  { echo "slurm e2e: job $job's scheduler did not speak TLS" >&2; cat "$out" >&2; exit 1; }
for node in "${nodes[@]}"; do
  grep -q "$node .*alive" "$out" || { echo "slurm e2e: $node's agent is not listed alive" >&2; cat "$out" >&2; exit 1; }
done
if grep -Eq "forcing job termination|Killed|srun: error" "$out"; then
  echo "slurm e2e: job $job's log shows a forced ending" >&2; cat "$out" >&2; exit 1
fi
[[ ! -e "$lab/work/.ladle-$job" ]] || { echo "slurm e2e: the run directory was left behind" >&2; exit 1; }
wait_for "no Ladle process left after job $job" 30 no_ladle_left
sed 's/^/  | /' "$out"
echo "slurm e2e: job $job COMPLETED on two nodes, pi printed, nothing left behind"

# 2. The second node's agent cannot start: the job fails and says which node is missing.
broken="$lab/broken-bin"
mkdir -p "$broken/examples"
ln -s "$bin/ladle-scheduler" "$broken/ladle-scheduler"
cat > "$broken/ladle-agent" <<EOF
#!/usr/bin/env bash
if [[ \$(hostname) == node2 ]]; then echo "this test's agent will not start on node2" >&2; exit 1; fi
exec "$bin/ladle-agent" "\$@"
EOF
chmod +x "$broken/ladle-agent"
job=$(submit "$broken" 10 "$bin/examples/pi" 64)
wait_for "job $job to end" 120 ended "$job"
out="$lab/work/ladle-$job.out"
[[ $(state_of "$job") == FAILED ]] || { echo "slurm e2e: job $job ended $(state_of "$job"), not FAILED" >&2; cat "$out" >&2; exit 1; }
grep -q "only 1 of 2 nodes' agents joined.*missing: node2" "$out" ||
  { echo "slurm e2e: job $job did not say node2's agent was missing" >&2; cat "$out" >&2; exit 1; }
wait_for "no Ladle process left after job $job" 30 no_ladle_left
echo "slurm e2e: job $job FAILED saying node2's agent did not join"

# 3. Cancelled mid-run: nothing left behind.
job=$(submit "$bin" 60 "$bin/ladle-test-driver" hang)
# The agents' table is printed just before the program starts.
running_job() { grep -q "alive" "$lab/work/ladle-$job.out" && pgrep -f "ladle-test-driver hang" >/dev/null; }
wait_for "job $job to run its program" 120 running_job
on node1 scancel "$job"
wait_for "job $job to end" 60 ended "$job"
[[ $(state_of "$job") == CANCELLED ]] || { echo "slurm e2e: job $job ended $(state_of "$job")" >&2; exit 1; }
wait_for "no Ladle process left after job $job" 60 no_ladle_left
gone() { [[ ! -e "$lab/work/.ladle-$job" ]]; }
wait_for "job $job's run directory to go" 30 gone
echo "slurm e2e: job $job cancelled, nothing left behind"
echo "slurm e2e: passed"
