"""The workloads of ../shared/WORKLOADS.md on Dask distributed and on Ray, in the shape of Ladle's
own benchmark: one JSON line per workload. Run by bench/compare/run.sh, which makes the virtual
environment; each system gets one scheduler and two single-threaded worker processes, on
loopback, as Ladle's benchmark has one scheduler and two one-slot agents.

    python peers.py dask|ray [--reps 3] [--only W8,W8r,W10]

W8 and W8r run each repetition in a child process (this script again, with --big-child) on a
system of its own, so that the driver's peak RSS is theirs alone, as Ladle's benchmark does.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time


def identity(x):
    return x


def spin10ms(i):
    until = time.perf_counter() + 0.010
    while time.perf_counter() < until:
        pass
    return i


# W10: nested futures. A task at depth d > 0 submits two tasks at depth d - 1, waits for both and
# returns the sum of their results; a task at depth 0 spins 1 ms and returns 1. The root is at
# depth 11: 2,048 leaves, 4,095 tasks in all (WORKLOADS.md's "depth 12" counts the levels).
W10_ROOT_DEPTH = 11
W10_LEAVES = 1 << W10_ROOT_DEPTH
W10_TASKS = (1 << (W10_ROOT_DEPTH + 1)) - 1
W10_LEAF_S = 0.001
W10_LIMIT_S = 300


def spin_leaf():
    until = time.perf_counter() + W10_LEAF_S
    while time.perf_counter() < until:
        pass
    return 1


def dask_node(d):
    """W10's task on Dask: the children are submitted through worker_client, which secedes this
    task's thread from the worker's pool while it waits (and rejoins after), so that the waiting
    parents do not hold the two slots."""
    if d == 0:
        return spin_leaf()
    from distributed import worker_client

    with worker_client() as client:
        # pure=False: the two children have the same arguments, and would otherwise share a key.
        children = [client.submit(dask_node, d - 1, pure=False) for _ in range(2)]
        return sum(client.gather(children))


RAY_NODE = None  # ray.remote(ray_node), made by Ray() (ray is imported only when it runs)


def ray_node(d):
    """W10's task on Ray: nested remote calls; Ray releases the CPU of a task blocked in ray.get."""
    if d == 0:
        return spin_leaf()
    import ray

    return sum(ray.get([RAY_NODE.remote(d - 1), RAY_NODE.remote(d - 1)]))


def sum_of_squares(items):
    return sum(x * x for x in items)


# W8 and W8r: 64 values of 16 MiB, 1 GiB in all.
BIG_ITEMS = 64
BIG_BYTES = 16 << 20


def fill(i):
    return i % 251


def byte_sum(data):
    """W8's task: the sum of the bytes (numpy, which Ray brings into the shared environment, so
    that the figure is the transfer's and not a Python loop's)."""
    try:
        import numpy
    except ImportError:
        return sum(data)
    return int(numpy.frombuffer(data, dtype=numpy.uint8).sum(dtype=numpy.uint64))


def pattern(i):
    """W8r's task: 16 MiB derived from its index."""
    return bytes([fill(i)]) * BIG_BYTES


def emit(system, workload, params, metrics):
    print(json.dumps({"system": system, "workload": workload, "params": params, "metrics": metrics}), flush=True)


def summary(values):
    values = sorted(values)
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "reps": len(values)}


W3_TOTAL = 333332833333500000
# The items themselves travel, in 64 chunks, as Ladle's map_reduce sends them (it chunks by
# itself); only the partial sums come back.
W3_CHUNKS = [list(range(lo, min(lo + 15625, 1_000_000))) for lo in range(0, 1_000_000, 15625)]


class Dask:
    name = "dask"

    def __init__(self):
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        self.client = Client(self.cluster)

    def submit_many(self, n):
        futures = [self.client.submit(identity, i, pure=False) for i in range(n)]
        return self.client.gather(futures)

    def map(self, fn, items):
        return self.client.gather(self.client.map(fn, items, pure=False))

    def one(self, x):
        return self.client.submit(identity, x, pure=False).result()

    def map_reduce(self):
        parts = self.client.map(sum_of_squares, W3_CHUNKS, pure=False)
        return self.client.submit(sum, parts).result()

    def nested(self, depth, limit):
        """W10: the root's result, or TimeoutError after `limit` seconds (the tree is cancelled)."""
        root = self.client.submit(dask_node, depth, pure=False)
        try:
            return root.result(timeout=limit)
        except TimeoutError:
            self.client.cancel([root])
            raise

    def close(self):
        self.client.close()
        self.cluster.close()


class Ray:
    name = "ray"

    def __init__(self):
        import ray

        self.ray = ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        self.identity = ray.remote(identity)
        self.spin = ray.remote(spin10ms)
        self.squares = ray.remote(sum_of_squares)
        self.remotes = {spin10ms: self.spin, byte_sum: ray.remote(byte_sum), pattern: ray.remote(pattern)}
        global RAY_NODE
        RAY_NODE = ray.remote(ray_node)

    def submit_many(self, n):
        return self.ray.get([self.identity.remote(i) for i in range(n)])

    def map(self, fn, items):
        remote = self.remotes.get(fn, self.identity)
        return self.ray.get([remote.remote(i) for i in items])

    def one(self, x):
        return self.ray.get(self.identity.remote(x))

    def map_reduce(self):
        return sum(self.ray.get([self.squares.remote(c) for c in W3_CHUNKS]))

    def nested(self, depth, limit):
        """W10: the root's result, or TimeoutError after `limit` seconds (the tree is cancelled)."""
        root = RAY_NODE.remote(depth)
        try:
            return self.ray.get(root, timeout=limit)
        except self.ray.exceptions.GetTimeoutError as e:
            self.ray.cancel(root, force=True, recursive=True)
            raise TimeoutError(str(e)) from e

    def close(self):
        self.ray.shutdown()


def status_bytes(pid, field):
    """A size line of /proc/<pid>/status (VmHWM, VmRSS) in bytes; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.split(":")[0] == field:
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def descendants(root):
    """Every process under `root`, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Watch:
    """The peak RSS (VmHWM) of every process under this one (the system's scheduler and workers),
    polled, summed over processes."""

    def __init__(self):
        self.peaks = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            last = self.stopping.is_set()
            for pid in descendants(os.getpid()):
                hwm = status_bytes(pid, "VmHWM")
                if hwm is not None:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)
            if last:
                return
            time.sleep(0.02)

    def finish(self):
        self.stopping.set()
        self.thread.join()
        return sum(self.peaks.values())


def make(name):
    return Dask() if name == "dask" else Ray()


def big_child(name, workload):
    """One repetition of W8 or W8r on a system of its own; prints its figures as one JSON line."""
    system = make(name)
    system.one(0)  # the first task starts the workers
    watch = Watch()
    if workload == "W8":
        inputs = [bytes([fill(i)]) * BIG_BYTES for i in range(BIG_ITEMS)]
        t = time.perf_counter()
        sums = system.map(byte_sum, inputs)
        wall = time.perf_counter() - t
        assert sums == [fill(i) * BIG_BYTES for i in range(BIG_ITEMS)], "W8: wrong sums"
    else:
        t = time.perf_counter()
        results = system.map(pattern, range(BIG_ITEMS))
        wall = time.perf_counter() - t
        assert len(results) == BIG_ITEMS, "W8r: wrong count"
        for i, r in enumerate(results):
            assert len(r) == BIG_BYTES and r == bytes([fill(i)]) * BIG_BYTES, f"W8r: result {i} is wrong"
    cluster_peak = watch.finish()
    driver_peak = status_bytes(os.getpid(), "VmHWM")
    print(json.dumps({"wall_s": wall, "driver_peak_rss_bytes": driver_peak, "cluster_peak_rss_bytes": cluster_peak}), flush=True)
    system.close()


def big(name, workload, reps):
    """W8 or W8r: one child process per repetition."""
    runs = []
    for _ in range(reps):
        out = subprocess.run([sys.executable, __file__, name, "--big-child", workload],
                             stdout=subprocess.PIPE, text=True, timeout=600, check=True).stdout
        runs.append(json.loads([line for line in out.splitlines() if line.startswith("{")][-1]))
    wall = summary([r["wall_s"] for r in runs])
    how = ("client.map" if name == "dask" else "one remote call each") + (" over the values" if workload == "W8" else "")
    emit(name, workload,
         {"items": BIG_ITEMS, "item_bytes": BIG_BYTES, "values": "arguments" if workload == "W8" else "results", "how": how,
          "rss": "VmHWM; the driver is a child process, one per repetition"
                 + (" (Dask's scheduler runs inside it)" if name == "dask" else "")
                 + "; the cluster is every process under the driver, summed"},
         {"gb_per_s": (BIG_ITEMS * BIG_BYTES / (1 << 30)) / wall["median"], "wall_s": wall["median"],
          "driver_peak_rss_bytes": statistics.median(r["driver_peak_rss_bytes"] for r in runs),
          "cluster_peak_rss_bytes": statistics.median(r["cluster_peak_rss_bytes"] for r in runs),
          "spread": wall})


def nested(system, reps):
    """W10 on a running system; one JSON line. A repetition past W10_LIMIT_S is reported (with
    the repetitions before it) instead of waited on, and ends the workload."""
    params = {"depth": 12, "tasks": W10_TASKS, "leaf_ms": 1, "slots": 2,
              "how": "worker_client (secede/rejoin) in each inner task" if system.name == "dask"
              else "nested remote calls, ray.get in each inner task"}
    walls = []
    for _ in range(reps):
        t = time.perf_counter()
        try:
            result = system.nested(W10_ROOT_DEPTH, W10_LIMIT_S)
        except TimeoutError:
            emit(system.name, "W10", params,
                 {"error": f"repetition {len(walls) + 1} had no result after {W10_LIMIT_S} s; cancelled",
                  "completed_walls_s": walls})
            return
        walls.append(time.perf_counter() - t)
        assert result == W10_LEAVES, f"W10: the root returned {result}, not {W10_LEAVES}"
    s = summary(walls)
    emit(system.name, "W10", params,
         {"wall_s": s["median"], "efficiency": (W10_LEAVES * W10_LEAF_S / 2) / s["median"], "spread": s})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["dask", "ray"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--big-child", choices=["W8", "W8r"], help=argparse.SUPPRESS)
    parser.add_argument("--only", help="run only W8, W8r and/or W10 (comma-separated), e.g. --only W8,W8r")
    args = parser.parse_args()
    if args.big_child:
        big_child(args.system, args.big_child)
        return
    if args.only:
        workloads = args.only.split(",")
        for workload in workloads:
            if workload not in ("W8", "W8r", "W10"):
                parser.error(f"--only takes W8, W8r and W10, not {workload}")
        for workload in workloads:
            if workload == "W10":
                system = make(args.system)
                system.one(0)  # the first task starts the workers
                nested(system, args.reps)
                system.close()
            else:
                big(args.system, workload, args.reps)
        return

    started = time.perf_counter()
    system = make(args.system)
    system.one(0)  # the first task starts the workers
    emit(system.name, "startup", {"workers": 2, "threads_per_worker": 1}, {"startup_s": time.perf_counter() - started})

    rates = []
    for _ in range(args.reps):
        t = time.perf_counter()
        assert system.submit_many(10_000) == list(range(10_000))
        rates.append(10_000 / (time.perf_counter() - t))
    s = summary(rates)
    emit(system.name, "W1a", {"tasks": 10_000}, {"tasks_per_s": s["median"], "spread": s})

    rates = []
    for _ in range(args.reps):
        t = time.perf_counter()
        assert len(system.map(identity, range(10_000))) == 10_000
        rates.append(10_000 / (time.perf_counter() - t))
    s = summary(rates)
    emit(system.name, "W1b", {"tasks": 10_000, "how": "client.map" if system.name == "dask" else "one remote call each (no map)"},
         {"tasks_per_s": s["median"], "spread": s})

    medians, p99s = [], []
    for _ in range(args.reps):
        lat = []
        for x in range(1000):
            t = time.perf_counter()
            system.one(x)
            lat.append((time.perf_counter() - t) * 1e6)
        lat.sort()
        medians.append(lat[len(lat) // 2])
        p99s.append(lat[int(round((len(lat) - 1) * 0.99))])
    m, p = summary(medians), summary(p99s)
    emit(system.name, "W2", {"round_trips": 1000}, {"median_us": m["median"], "p99_us": p["median"], "spread_median": m})

    walls, correct = [], True
    for _ in range(args.reps):
        t = time.perf_counter()
        correct &= system.map_reduce() == W3_TOTAL
        walls.append(time.perf_counter() - t)
    s = summary(walls)
    emit(system.name, "W3", {"n": 1_000_000, "chunks": len(W3_CHUNKS)}, {"wall_s": s["median"], "correct": correct, "spread": s})

    walls = []
    for _ in range(args.reps):
        t = time.perf_counter()
        assert len(system.map(spin10ms, range(200))) == 200
        walls.append(time.perf_counter() - t)
    s = summary(walls)
    emit(system.name, "W4", {"tasks": 200, "task_ms": 10, "slots": 2},
         {"wall_s": s["median"], "efficiency": (200 * 0.010 / 2) / s["median"], "spread": s})

    nested(system, args.reps)
    system.close()

    for workload in ["W8", "W8r"]:
        big(args.system, workload, args.reps)


if __name__ == "__main__":
    main()
