"""The workloads of ../shared/WORKLOADS.md on Dask distributed and on Ray, in the shape of Ladle's
own benchmark: one JSON line per workload. Run by bench/compare/run.sh, which makes the virtual
environment; each system gets one scheduler and two single-threaded worker processes, on
loopback, as Ladle's benchmark has one scheduler and two one-slot agents.

    python peers.py dask|ray [--reps 3]
"""

import argparse
import json
import statistics
import time


def identity(x):
    return x


def spin10ms(i):
    until = time.perf_counter() + 0.010
    while time.perf_counter() < until:
        pass
    return i


def sum_of_squares(items):
    return sum(x * x for x in items)


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

    def submit_many(self, n):
        return self.ray.get([self.identity.remote(i) for i in range(n)])

    def map(self, fn, items):
        remote = self.spin if fn is spin10ms else self.identity
        return self.ray.get([remote.remote(i) for i in items])

    def one(self, x):
        return self.ray.get(self.identity.remote(x))

    def map_reduce(self):
        return sum(self.ray.get([self.squares.remote(c) for c in W3_CHUNKS]))

    def close(self):
        self.ray.shutdown()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["dask", "ray"])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    system = Dask() if args.system == "dask" else Ray()
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
    system.close()


if __name__ == "__main__":
    main()
