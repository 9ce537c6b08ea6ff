//! Runs the workloads of WORKLOADS.md against a cluster of one scheduler and two one-slot agents
//! that it starts itself (W7: two slots each; W6 drives the scheduler's core alone, in this
//! process; W8 and W8r each repetition in a child process with a cluster of its own; W9 a real
//! scheduler with simulated agents), and prints one JSON line per workload.
//!
//! cargo build --release --bins && target/release/ladle-bench [--reps 3] [--only W1a,W3]

mod cluster;
mod observer;
mod sim_agent;
mod w6;
mod w8;
mod w9;

#[global_allocator]
static ALLOCATOR: w6::Counting = w6::Counting;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use clap::Parser;
use cluster::LocalCluster;
use ladle::Cluster;
use serde_json::{Value, json};

#[ladle::task]
fn identity(x: u64) -> u64 {
    x
}

#[ladle::task]
fn square(x: u64) -> u64 {
    x * x
}

#[ladle::task]
fn sum(a: u64, b: u64) -> u64 {
    a + b
}

/// Spins on the clock for 10 ms (not sleeping: the slot is busy), returns its index.
#[ladle::task]
fn spin10ms(i: u64) -> u64 {
    let until = Instant::now() + Duration::from_millis(10);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    i
}

/// W4's task: spins for 10 ms like [`spin10ms`], and says which process ran it and when (µs of
/// the wall clock), so that the pauses between one slot's tasks can be measured.
#[ladle::task]
fn spin10ms_timed(_: u64) -> (u32, u64, u64) {
    let started = wall_us();
    spin10ms::call(0);
    (std::process::id(), started, wall_us())
}

fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The pauses, in µs, between the end of a task and the start of the next in the same worker
/// (each worker of W4's cluster has one slot).
fn boundary_gaps(spans: &[(u32, u64, u64)]) -> Vec<f64> {
    let mut by_worker: std::collections::HashMap<u32, Vec<(u64, u64)>> = Default::default();
    for &(pid, start, end) in spans {
        by_worker.entry(pid).or_default().push((start, end));
    }
    let mut gaps = Vec::new();
    for spans in by_worker.values_mut() {
        spans.sort_unstable();
        gaps.extend(
            spans
                .windows(2)
                .map(|w| w[1].0.saturating_sub(w[0].1) as f64),
        );
    }
    gaps.sort_by(f64::total_cmp);
    gaps
}

/// W10's task: a node of a binary recursion. An inner node submits its two children and waits
/// for them (its slot is free meanwhile); a leaf spins 1 ms. Returns the leaves below it.
#[ladle::task]
fn w10_node(depth: u32) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    if depth == 0 {
        let until = Instant::now() + Duration::from_millis(1);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        return Ok(1);
    }
    let cluster = ladle::cluster()?;
    let left = cluster.submit(w10_node, depth - 1)?;
    let right = cluster.submit(w10_node, depth - 1)?;
    let (left, right) = ladle::block_on(async { (left.await, right.await) });
    Ok(left? + right?)
}

/// W10's depth below the root: 2^11 = 2,048 leaves, 4,095 tasks.
const W10_DEPTH: u32 = 11;

/// Sleeps 10 ms (W7: four slots on this 2-core machine could not all spin at once).
#[ladle::task]
fn sleep10ms(i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(10));
    i
}

/// W4's ideal wall time: its work spread perfectly over the cluster's slots.
fn ideal_w4_s() -> f64 {
    const TASKS: f64 = 200.0;
    const TASK_S: f64 = 0.010;
    const SLOTS: f64 = 2.0;
    TASKS * TASK_S / SLOTS
}

#[derive(Parser)]
struct Args {
    /// Repetitions of each workload (the median and spread are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Comma-separated workloads to run (W1a,W1b,W2,W3,W4,W5,W5w,W6,W7,W8,W8r,W9,W9s,W10); all
    /// when omitted.
    #[arg(long)]
    only: Option<String>,
    /// Write the cluster's logs (at RUST_LOG's level) to this directory.
    #[arg(long)]
    logs: Option<std::path::PathBuf>,
    /// W9's simulated agents (8 slots each).
    #[arg(long, default_value_t = 1_000)]
    w9_agents: usize,
    /// W9's tasks.
    #[arg(long, default_value_t = 1_000_000)]
    w9_tasks: u64,
    /// Run one repetition of a big-value workload (W8, W8r) and print its figures: how the
    /// benchmark runs those in a child process.
    #[arg(long, hide = true)]
    big_child: Option<String>,
    /// Run the clusters with TLS and a credential per role (`ladle-scheduler init`), as on
    /// several machines; without it, plaintext on loopback.
    #[arg(long)]
    tls: bool,
    /// W1a–W4 and W10 with a dashboard open and Prometheus scraping `/metrics` every second
    /// (plaintext only); without it, the scheduler serves no HTTP port at all.
    #[arg(long)]
    observed: bool,
    /// W1b and W2 on one cluster serving its HTTP port, each repetition in turn with and
    /// without an open dashboard and a scrape every second: what watching costs, without the
    /// spread between one cluster's start and another's.
    #[arg(long)]
    observed_ab: bool,
}

/// Runs blocking set-up work without stalling other tasks, whatever the runtime.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn emit(workload: &str, params: Value, metrics: Value) {
    println!(
        "{}",
        json!({ "system": "ladle", "workload": workload, "params": params, "metrics": metrics })
    );
}

/// Median and spread of repeated measurements.
fn summary(values: &mut [f64]) -> Value {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    json!({ "median": median, "min": values[0], "max": values[values.len() - 1], "reps": values.len() })
}

/// [`summary`] of one figure of each repetition.
fn summary_of<T>(runs: &[T], figure: impl Fn(&T) -> f64) -> Value {
    let mut values: Vec<f64> = runs.iter().map(figure).collect();
    summary(&mut values)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

/// One repetition of W1b: tasks per second.
async fn w1b_once(cluster: &ladle::Cluster) -> anyhow::Result<f64> {
    let t = Instant::now();
    let results = cluster.map(identity, 0..10_000u64).await?;
    anyhow::ensure!(results.len() == 10_000, "W1b: wrong count");
    Ok(10_000.0 / t.elapsed().as_secs_f64())
}

/// One repetition of W2: each round trip's µs, sorted.
async fn w2_once(cluster: &ladle::Cluster) -> anyhow::Result<Vec<f64>> {
    let mut lat = Vec::with_capacity(1000);
    for x in 0..1000u64 {
        let t = Instant::now();
        cluster.submit(identity, x)?.await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

#[ladle::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    cluster::set_tls(args.tls);
    cluster::set_http(args.observed);
    tokio::spawn(async {
        cluster::interrupted().await;
        cluster::kill_all();
        std::process::exit(130);
    });
    if let Some(workload) = &args.big_child {
        return w8::child(workload, args.logs.clone()).await;
    }
    let wanted: Option<HashSet<String>> =
        args.only.map(|o| o.split(',').map(str::to_owned).collect());
    let run = |w: &str| wanted.as_ref().is_none_or(|set| set.contains(w));
    let reps = args.reps.max(1);

    if run("W6") {
        let (mut rates, mut bytes, mut placements) = (Vec::new(), Vec::new(), 0);
        for _ in 0..reps {
            let figures = blocking(|| w6::run(1_000, 8, 1_000_000));
            rates.push(figures.placements_per_s);
            bytes.push(figures.bytes_per_queued_task);
            placements = figures.placements;
        }
        let (r, b) = (summary(&mut rates), summary(&mut bytes));
        emit(
            "W6",
            json!({ "agents": 1_000, "slots_per_agent": 8, "tasks": 1_000_000 }),
            json!({ "placements_per_s": r["median"], "bytes_per_queued_task": b["median"], "placements": placements, "spread": r }),
        );
    }
    if args.observed_ab {
        cluster::set_http(true);
        let local = blocking(|| LocalCluster::start(2, 1, args.logs.clone()))?;
        let cluster = local.connect().await?;
        cluster.submit(identity, 0)?.await?;
        let url = local.dashboard_url()?;
        let (mut w1b, mut w2) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
        for rep in 0..reps * 2 {
            let watched = rep % 2 == 1;
            let observer = if watched {
                Some(observer::Observer::start(&url)?)
            } else {
                None
            };
            // A second of watching before the measurement: the stream is open, a scrape done.
            if watched {
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }
            w1b[usize::from(watched)].push(w1b_once(&cluster).await?);
            w2[usize::from(watched)].push(percentile(&w2_once(&cluster).await?, 0.5));
            if let Some(observer) = observer {
                observer.finish("observed");
            }
        }
        let [w1b_off, w1b_on] = &mut w1b;
        let [w2_off, w2_on] = &mut w2;
        emit(
            "W1b observed A/B",
            json!({ "tasks": 10_000, "reps_each": reps }),
            json!({ "unwatched_tasks_per_s": summary(w1b_off), "watched_tasks_per_s": summary(w1b_on) }),
        );
        emit(
            "W2 observed A/B",
            json!({ "round_trips": 1000, "reps_each": reps }),
            json!({ "unwatched_median_us": summary(w2_off), "watched_median_us": summary(w2_on) }),
        );
        return Ok(());
    }
    if ["W1a", "W1b", "W2", "W3", "W4", "W10"].into_iter().any(run) {
        let started = Instant::now();
        let local = blocking(|| LocalCluster::start(2, 1, args.logs.clone()))?;
        let cluster = local.connect().await?;
        // The first task starts the workers: part of start-up, not of any workload.
        cluster.submit(identity, 0)?.await?;
        let observer = if args.observed {
            Some(observer::Observer::start(&local.dashboard_url()?)?)
        } else {
            None
        };
        let startup_s = started.elapsed().as_secs_f64();
        emit(
            "startup",
            json!({ "agents": 2, "slots_per_agent": 1 }),
            json!({ "startup_s": startup_s }),
        );

        if run("W1a") {
            let mut rates = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                let futures: Vec<_> = (0..10_000u64)
                    .map(|x| cluster.submit(identity, x))
                    .collect::<Result<_, _>>()?;
                let results = ladle::gather(futures).await?;
                anyhow::ensure!(
                    results.iter().enumerate().all(|(i, &r)| r == i as u64),
                    "W1a: wrong results"
                );
                rates.push(10_000.0 / t.elapsed().as_secs_f64());
            }
            let s = summary(&mut rates);
            emit(
                "W1a",
                json!({ "tasks": 10_000 }),
                json!({ "tasks_per_s": s["median"], "spread": s }),
            );
        }
        if run("W1b") {
            let mut rates = Vec::new();
            for _ in 0..reps {
                rates.push(w1b_once(&cluster).await?);
            }
            let s = summary(&mut rates);
            emit(
                "W1b",
                json!({ "tasks": 10_000 }),
                json!({ "tasks_per_s": s["median"], "spread": s }),
            );
        }
        if run("W2") {
            let (mut medians, mut p99s) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let lat = w2_once(&cluster).await?;
                medians.push(percentile(&lat, 0.5));
                p99s.push(percentile(&lat, 0.99));
            }
            let (m, p) = (summary(&mut medians), summary(&mut p99s));
            emit(
                "W2",
                json!({ "round_trips": 1000 }),
                json!({ "median_us": m["median"], "p99_us": p["median"], "spread_median": m, "spread_p99": p }),
            );
        }
        if run("W3") {
            let mut walls = Vec::new();
            let mut correct = true;
            for _ in 0..reps {
                let t = Instant::now();
                let total = cluster.map_reduce(square, sum, 0..1_000_000u64).await?;
                walls.push(t.elapsed().as_secs_f64());
                correct &= total == 333_332_833_333_500_000;
            }
            let s = summary(&mut walls);
            emit(
                "W3",
                json!({ "n": 1_000_000 }),
                json!({ "wall_s": s["median"], "correct": correct, "spread": s }),
            );
        }
        if run("W4") {
            let (mut walls, mut gaps) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let t = Instant::now();
                let results = cluster.map(spin10ms_timed, 0..200u64).await?;
                anyhow::ensure!(results.len() == 200, "W4: wrong count");
                walls.push(t.elapsed().as_secs_f64());
                let boundaries = boundary_gaps(&results);
                if !boundaries.is_empty() {
                    gaps.push(percentile(&boundaries, 0.5));
                }
            }
            let s = summary(&mut walls);
            let wall = s["median"].as_f64().unwrap_or(f64::NAN);
            let gap = (!gaps.is_empty()).then(|| summary(&mut gaps)["median"].clone());
            emit(
                "W4",
                json!({ "tasks": 200, "task_ms": 10, "slots": 2 }),
                json!({ "wall_s": wall, "efficiency": ideal_w4_s() / wall, "boundary_gap_us": gap, "spread": s }),
            );
        }
        if run("W10") {
            let mut walls = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                let leaves = cluster.submit(w10_node, W10_DEPTH)?.await?;
                anyhow::ensure!(leaves == 1 << W10_DEPTH, "W10: {leaves} leaves");
                walls.push(t.elapsed().as_secs_f64());
            }
            let s = summary(&mut walls);
            let wall = s["median"].as_f64().unwrap_or(f64::NAN);
            let ideal = f64::from(1u32 << W10_DEPTH) * 0.001 / 2.0;
            emit(
                "W10",
                json!({ "depth": 12, "tasks": (1u32 << (W10_DEPTH + 1)) - 1, "leaf_ms": 1, "slots": 2 }),
                json!({ "wall_s": wall, "efficiency": ideal / wall, "spread": s }),
            );
        }
        if let Some(observer) = observer {
            observer.finish("observed");
        }
        drop(cluster);
        drop(local);
    }

    if run("W7") {
        let local = blocking(|| LocalCluster::start(2, 2, args.logs.clone()))?;
        let (mut fairness, mut walls_a, mut walls_b) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let a = local.connect().await?;
            let b = local.connect().await?;
            a.submit(identity, 0)?.await?;
            b.submit(identity, 0)?.await?;
            let t = Instant::now();
            let timed = |c: Cluster| async move {
                let results = c.map(sleep10ms, 0..2_000u64).await?;
                anyhow::ensure!(results.len() == 2_000, "W7: wrong count");
                Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64())
            };
            let (wa, wb) = tokio::try_join!(timed(a), timed(b))?;
            fairness.push(wa.min(wb) / wa.max(wb));
            walls_a.push(wa);
            walls_b.push(wb);
        }
        let (f, a, b) = (
            summary(&mut fairness),
            summary(&mut walls_a),
            summary(&mut walls_b),
        );
        emit(
            "W7",
            json!({ "drivers": 2, "tasks_each": 2_000, "task_ms": 10, "slots": 4, "task": "sleep" }),
            json!({ "fairness": f["median"], "wall_s_a": a["median"], "wall_s_b": b["median"], "spread": f }),
        );
        drop(local);
    }

    for (name, node) in [("W5", true), ("W5w", false)] {
        if !run(name) {
            continue;
        }
        let mut walls = Vec::new();
        let (mut all_completed, mut all_once) = (true, true);
        let mut completed = 0;
        for _ in 0..reps {
            let mut local = blocking(|| LocalCluster::start(2, 1, args.logs.clone()))?;
            let cluster = local.connect().await?;
            cluster.submit(identity, 0)?.await?;
            let t = Instant::now();
            let map = cluster.map(spin10ms, 0..400u64);
            let results = tokio::spawn(map.into_future());
            tokio::time::sleep(Duration::from_millis(500)).await;
            if node {
                local.kill_node(0);
            } else {
                local.kill_workers(0);
            }
            let results = results.await??;
            walls.push(t.elapsed().as_secs_f64());
            completed = results.len();
            let unique: HashSet<u64> = results.iter().copied().collect();
            all_completed &= results.len() == 400;
            all_once &=
                unique.len() == 400 && results.iter().enumerate().all(|(i, &r)| r == i as u64);
        }
        let s = summary(&mut walls);
        emit(
            name,
            json!({ "tasks": 400, "task_ms": 10, "kill_at_s": 0.5, "kill": if node { "agent and workers" } else { "workers only" } }),
            json!({ "completed": completed, "all_completed": all_completed, "exactly_once": all_once, "wall_s": s["median"], "spread": s }),
        );
    }

    for name in ["W8", "W8r"] {
        if !run(name) {
            continue;
        }
        let figures = w8::run(name, reps, args.logs.clone()).await?;
        let pick = |key: &str| summary_of(&figures, |f| f[key].as_f64().unwrap_or(f64::NAN));
        let (wall, driver, cluster, beyond) = (
            pick("wall_s"),
            pick("driver_peak_rss_bytes"),
            pick("cluster_peak_rss_bytes"),
            pick("driver_peak_beyond_before_bytes"),
        );
        let gib = (w8::ITEMS * w8::ITEM_BYTES as u64) as f64 / f64::from(1 << 30);
        let wall_s = wall["median"].as_f64().unwrap_or(f64::NAN);
        emit(
            name,
            json!({
                "items": w8::ITEMS, "item_bytes": w8::ITEM_BYTES, "agents": 2, "slots_per_agent": 1,
                "values": if name == "W8" { "arguments" } else { "results" },
                "rss": "VmHWM; the driver is a child process of the benchmark, one per repetition; the cluster is the scheduler, the agents and their workers, summed; beyond_before: the driver's peak less its VmRSS just before the workload (its inputs made)",
            }),
            json!({
                "gb_per_s": gib / wall_s, "wall_s": wall_s,
                "driver_peak_rss_bytes": driver["median"], "cluster_peak_rss_bytes": cluster["median"],
                "driver_peak_beyond_before_bytes": beyond["median"],
                "spread": wall,
            }),
        );
    }

    for (name, variant) in [("W9", w9::Variant::Map), ("W9s", w9::Variant::Submit)] {
        if !run(name) {
            continue;
        }
        let (agents, tasks) = (args.w9_agents, args.w9_tasks);
        let mut runs = Vec::new();
        for _ in 0..reps {
            runs.push(w9::run(variant, agents, tasks, args.logs.clone(), args.observed).await?);
        }
        let pick = |f: &dyn Fn(&w9::Figures) -> f64| summary_of(&runs, f);
        let rate = pick(&|f| tasks as f64 / f.wall_s);
        let wall = pick(&|f| f.wall_s);
        let first = pick(&|f| f.first_result_s);
        let startup = pick(&|f| f.startup_s);
        let peak = pick(&|f| f.scheduler_peak_rss_bytes as f64);
        let base = pick(&|f| f.scheduler_base_rss_bytes as f64);
        let per_task = pick(&w9::Figures::bytes_per_queued_task);
        let unfinished = pick(&|f| f.peak_unfinished as f64);
        let chunks = pick(&|f| f.chunks as f64);
        emit(
            name,
            json!({
                "agents": agents, "slots_per_agent": sim_agent::SLOTS, "tasks": tasks,
                "how": if variant == w9::Variant::Map { "one map" } else { "one submit each" },
                "agents_are": "simulated in the benchmark's process, over gRPC to a real ladle-scheduler",
                "note": "placements_per_s counts items; chunks and peak_unfinished count the scheduler's tasks (chunks of items, in a map); bytes_per_queued_task = (scheduler VmHWM - its VmRSS before the first submission) / peak_unfinished",
            }),
            json!({
                "placements_per_s": rate["median"], "wall_s": wall["median"],
                "first_result_s": first["median"], "startup_s": startup["median"],
                "chunks": chunks["median"],
                "scheduler_peak_rss_bytes": peak["median"],
                "scheduler_base_rss_bytes": base["median"],
                "bytes_per_queued_task": per_task["median"],
                "peak_unfinished": unfinished["median"],
                "spread": rate,
            }),
        );
    }
    Ok(())
}

use std::future::IntoFuture;
