//! GPU-tagged work through the real binaries and the real SDK. The agents declare GPU slots in
//! their settings (there is no GPU here); the real-CUDA test runs where a CUDA driver exists.

use std::time::Duration;

use ladle_tests::{
    Agent, Scheduler, SchedulerOptions, clean_command, example, last_json, show, test_driver,
    wait_for,
};
use serde_json::Value;

const JOIN: Duration = Duration::from_secs(20);

fn agent(scheduler: &Scheduler, name: &str, extra: &[&str]) -> Agent {
    let mut args = vec!["--hostname", name];
    args.extend_from_slice(extra);
    let agent = Agent::start(scheduler, None, &args);
    scheduler.wait_state(&agent.id(), "alive", JOIN);
    agent
}

/// The most tasks running at once, from their (start, end) times.
fn max_overlap(runs: &[Value]) -> usize {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for r in runs {
        edges.push((r["start_ms"].as_u64().unwrap_or(0), 1));
        edges.push((r["end_ms"].as_u64().unwrap_or(0), -1));
    }
    // An end and a start at the same millisecond do not overlap.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn gpu_tasks_run_on_the_gpu_agent_two_at_a_time_one_device_each_and_cpu_tasks_elsewhere() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _gpu = agent(
        &scheduler,
        "gpu-node",
        &["--gpu-slots", "2", "--cpu-slots", "2"],
    );
    let _cpu = agent(&scheduler, "cpu-node", &["--cpu-slots", "2"]);

    // The operator sees the GPU slots.
    let rows = scheduler.agents();
    let gpu_row = rows
        .iter()
        .find(|r| r["hostname"] == "gpu-node")
        .expect("listed");
    assert_eq!(
        gpu_row["gpus"].as_array().map(Vec::len),
        Some(2),
        "{}",
        show(gpu_row)
    );
    let table = String::from_utf8_lossy(&scheduler.cli(&["agents"]).stdout).into_owned();
    assert!(table.contains("0/2 (2× declared)"), "{table}");

    let found = last_json(&scheduler.run_driver(&test_driver(), &["gpu_mix"]));
    let gpu_runs = found["gpu"].as_array().cloned().unwrap_or_default();
    assert_eq!(gpu_runs.len(), 8, "{}", show(&found));
    for run in &gpu_runs {
        assert_eq!(run["agent"], "gpu-node", "{}", show(run));
        let ordinal = run["gpu"].as_u64().expect("a GPU task knows its GPU");
        assert!(ordinal < 2, "{}", show(run));
        // The worker sees that one device and no other.
        assert_eq!(run["visible"], ordinal.to_string(), "{}", show(run));
    }
    assert!(
        max_overlap(&gpu_runs) <= 2,
        "more GPU tasks ran at once than there are GPU slots: {}",
        show(&gpu_runs)
    );
    // CPU tasks of the same job went to the agent without GPUs, in CPU workers.
    for run in found["cpu"].as_array().cloned().unwrap_or_default() {
        assert_eq!(run["agent"], "cpu-node", "{}", show(&run));
        assert!(
            run["gpu"].is_null() && run["visible"].is_null(),
            "{}",
            show(&run)
        );
    }
}

#[test]
fn a_killed_gpu_agents_tasks_wait_and_then_run_on_a_gpu_agent_that_joins_later() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let mut first = agent(
        &scheduler,
        "gpu-1",
        &["--gpu-slots", "2", "--cpu-slots", "1"],
    );
    let _cpu = agent(&scheduler, "cpu-node", &["--cpu-slots", "2"]);
    let mut driver = scheduler.spawn_driver(&test_driver(), &["gpu_wait"]);
    wait_for("GPU tasks to be running", Duration::from_secs(60), || {
        (scheduler.status()["tasks"]["running"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    first.process.kill9();

    // With no GPU left, the tasks wait (the CPU agent takes none), and the status says so.
    let status = wait_for("the GPU tasks to wait", Duration::from_secs(30), || {
        let status = scheduler.status();
        (status["tasks"]["gpu_queued"].as_u64().unwrap_or(0) > 0
            && status["gpu_slots"]["total"] == 0)
            .then_some(status)
    });
    assert_eq!(status["tasks"]["running"], 0, "{}", show(&status));
    let text = String::from_utf8_lossy(&scheduler.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("GPU tasks waiting: no agent has a GPU"),
        "{text}"
    );
    wait_for("the driver to be told", Duration::from_secs(30), || {
        driver
            .output()
            .contains("no agent in the cluster has a GPU")
            .then_some(())
    });
    assert!(driver.try_exit().is_none(), "{}", driver.output());

    let _second = agent(
        &scheduler,
        "gpu-2",
        &["--gpu-slots", "2", "--cpu-slots", "1"],
    );
    let exit = driver.wait_exit(Duration::from_secs(120));
    let output = driver.output();
    assert!(exit.success(), "{output}");
    let found = last_json(&output);
    assert_eq!(
        found["once"],
        6,
        "every result exactly once: {}",
        show(&found)
    );
    assert_eq!(
        found["errors"].as_array().map(Vec::len),
        Some(0),
        "{}",
        show(&found)
    );
    let runs = found["runs"].as_array().cloned().unwrap_or_default();
    assert!(
        runs.iter()
            .all(|r| r["agent"] == "gpu-1" || r["agent"] == "gpu-2"),
        "{}",
        show(&runs)
    );
    assert!(
        runs.iter().any(|r| r["agent"] == "gpu-2"),
        "{}",
        show(&runs)
    );
    assert_eq!(
        output.matches("no agent in the cluster has a GPU").count(),
        1,
        "told once: {output}"
    );
}

#[test]
fn a_gpu_preferring_job_completes_on_the_cpus_of_a_cluster_without_gpus() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _a = agent(&scheduler, "cpu-a", &["--cpu-slots", "2", "--gpus", "none"]);
    let _b = agent(&scheduler, "cpu-b", &["--cpu-slots", "2", "--gpus", "none"]);
    let out = scheduler
        .driver(&test_driver(), &["gpu_prefer"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let found = last_json(&stdout);
    assert_eq!(found["count"], 40, "{}", show(&found));
    assert_eq!(found["correct"], true, "{}", show(&found));
    assert_eq!(found["on_gpu"], 0, "{}", show(&found));
    assert!(
        !stderr.contains("no agent in the cluster has a GPU"),
        "{stderr}"
    );
}

/// Without a CUDA driver, the SAXPY example says plainly that no GPU agent is available (the
/// embedded cluster's agent has none).
#[test]
fn without_a_gpu_the_saxpy_example_says_so_plainly() {
    if ladle::gpu::driver_present() {
        println!(
            "not applicable: this machine has a CUDA driver (the_saxpy_example_runs_on_a_real_gpu, \
             ignored by default, runs the example on it)"
        );
        return;
    }
    let out = clean_command(&example("saxpy")).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no GPU agent is available"), "{stderr}");
}

/// Runs the SAXPY example on a real CUDA device through an agent that found it itself. Shown as
/// ignored in every summary where there is none; on a machine with a GPU:
/// `cargo test -p ladle-tests --test gpu -- --ignored`.
#[test]
#[ignore = "needs a CUDA GPU and its driver: run with -- --ignored on a machine with one"]
fn the_saxpy_example_runs_on_a_real_gpu() {
    assert!(
        ladle::gpu::driver_present(),
        "no CUDA driver on this machine (libcuda not found)"
    );
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let gpu = agent(&scheduler, "cuda-node", &["--cpu-slots", "2"]);
    let row = scheduler
        .agents()
        .into_iter()
        .find(|r| r["hostname"] == "cuda-node")
        .expect("listed");
    assert!(
        row["gpus"].as_array().is_some_and(|g| !g.is_empty()),
        "a CUDA driver is installed but the agent found no device: {}",
        gpu.process.output()
    );
    println!("GPUs: {}", row["gpus"]);
    let stdout = scheduler.run_driver(&example("saxpy"), &[]);
    println!("{stdout}");
    assert!(stdout.contains("matches the CPU"), "{stdout}");
}
