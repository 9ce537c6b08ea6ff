"""Prints the side-by-side table of bench/compare/run.sh from the JSON lines of each system."""

import json
import sys

ROWS = [
    ("W1a", "tasks_per_s", "tasks/s", True),
    ("W1b", "tasks_per_s", "tasks/s", True),
    ("W2", "median_us", "median µs", False),
    ("W2", "p99_us", "p99 µs", False),
    ("W3", "wall_s", "wall s", False),
    ("W4", "efficiency", "efficiency", True),
    ("W8", "gb_per_s", "GiB/s", True),
    ("W8", "driver_peak_rss_bytes", "driver peak RSS bytes", False),
    ("W8", "cluster_peak_rss_bytes", "cluster peak RSS bytes", False),
    ("W8r", "gb_per_s", "GiB/s", True),
    ("W8r", "driver_peak_rss_bytes", "driver peak RSS bytes", False),
    ("W8r", "cluster_peak_rss_bytes", "cluster peak RSS bytes", False),
    ("W10", "efficiency", "efficiency", True),
    ("W10", "wall_s", "wall s", False),
    ("startup", "startup_s", "start-up s", False),
]


def load(path):
    figures = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                row = json.loads(line)
                figures[(row["workload"])] = row
    return figures


def main():
    systems = [load(p) for p in sys.argv[1:]]
    names = [next(iter(s.values()))["system"] for s in systems]
    print("| workload | metric | " + " | ".join(names) + " | " + " | ".join(f"ladle ÷ {n}" for n in names[1:]) + " |")
    print("|---" * (2 + 2 * len(names) - 1) + "|")
    for workload, metric, label, higher in ROWS:
        values = [s.get(workload, {}).get("metrics", {}).get(metric) for s in systems]
        cells = [f"{v:,.3g}" if isinstance(v, float) else str(v) for v in values]
        ratios = []
        for v in values[1:]:
            if isinstance(v, (int, float)) and isinstance(values[0], (int, float)) and v and values[0]:
                r = values[0] / v if higher else v / values[0]
                ratios.append(f"{r:,.1f}× {'more' if higher else 'less'}")
            else:
                ratios.append("")
        print(f"| {workload} | {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    ladle_only = [("W6", "placements_per_s"), ("W6", "bytes_per_queued_task"), ("W7", "fairness"),
                  ("W9", "placements_per_s"), ("W9", "first_result_s"), ("W9", "scheduler_peak_rss_bytes"),
                  ("W9", "bytes_per_queued_task"), ("W9s", "placements_per_s"), ("W9s", "bytes_per_queued_task")]
    for workload, metric in ladle_only:
        v = systems[0].get(workload, {}).get("metrics", {}).get(metric)
        if v is not None:
            print(f"| {workload} | {metric} | {v:,.3g} | " + " | ".join("—" for _ in names[1:]) + " | " + " | ".join("" for _ in names[1:]) + " |")


if __name__ == "__main__":
    main()
