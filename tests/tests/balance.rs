//! Load balancing across uneven agents, and fair sharing between drivers, through the real
//! binaries and the real SDK. Behaviour, not speed: shares and overlaps, with wide margins.

use std::time::Duration;

use ladle_tests::{Agent, Scheduler, SchedulerOptions, last_json, sched_policy, show, test_driver};

fn agent(scheduler: &Scheduler, name: &str) -> Agent {
    let agent = Agent::start(scheduler, None, &["--cpu-slots", "1", "--hostname", name]);
    scheduler.wait_state(&agent.id(), "alive", Duration::from_secs(20));
    agent
}

#[test]
fn an_agent_three_times_slower_runs_about_a_quarter_of_the_tasks() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _fast = agent(&scheduler, "fast");
    let _slow = agent(&scheduler, "slow");
    let found = last_json(&scheduler.run_driver(&test_driver(), &["uneven"]));
    assert_eq!(found["count"], 600, "{}", show(&found));
    println!("split: {found}");
    let fast = found["fast"].as_f64().unwrap_or(0.0) / 600.0;
    // Three quarters in a perfect world; the margin absorbs start-up and chunking.
    assert!(
        (0.62..=0.88).contains(&fast),
        "the fast agent ran {:.0}% of the tasks: {}",
        fast * 100.0,
        show(&found)
    );
}

#[test]
fn an_agent_that_joins_mid_map_is_used_by_that_map() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _small = agent(&scheduler, "small");
    let mut driver = scheduler.spawn_driver(&test_driver(), &["widen"]);
    ladle_tests::wait_for("the map to run", Duration::from_secs(60), || {
        (scheduler.status()["tasks"]["running"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    // The map opened its window for one slot; eight more join now.
    let big = Agent::start(&scheduler, None, &["--cpu-slots", "8", "--hostname", "big"]);
    scheduler.wait_state(&big.id(), "alive", Duration::from_secs(20));
    let status = driver.wait_exit(Duration::from_secs(120));
    let output = driver.output();
    assert!(status.success(), "{output}");
    let found = last_json(&output);
    assert_eq!(found["count"], 300, "{}", show(&found));
    assert_eq!(found["slots_seen"], 9, "{}", show(&found));
    // A window frozen at one slot keeps at most four tasks out at once; one that follows the
    // cluster fills most of the new agent's eight slots.
    let big_at_once = found["most_at_once"]["big"].as_u64().unwrap_or(0);
    assert!(big_at_once >= 6, "{}", show(&found));
}

#[test]
fn two_drivers_at_once_both_complete_interleaved_rather_than_one_after_the_other() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _a = agent(&scheduler, "a");
    let _b = agent(&scheduler, "b");
    let mut first = scheduler.spawn_driver(&test_driver(), &["interleave"]);
    let mut second = scheduler.spawn_driver(&test_driver(), &["interleave", "again"]);
    for driver in [&mut first, &mut second] {
        let status = driver.wait_exit(Duration::from_secs(120));
        assert!(status.success(), "{}", driver.output());
    }
    let (x, y) = (last_json(&first.output()), last_json(&second.output()));
    for found in [&x, &y] {
        assert_eq!(found["count"], 200, "{}", show(found));
    }
    let span = |v: &serde_json::Value| {
        (
            v["first_ms"].as_u64().unwrap_or(0),
            v["last_ms"].as_u64().unwrap_or(0),
        )
    };
    let ((x0, x1), (y0, y1)) = (span(&x), span(&y));
    // Shared, each job's results span most of the other's; one after the other, they would
    // barely touch.
    let overlap = x1.min(y1).saturating_sub(x0.max(y0));
    let shorter = (x1 - x0).min(y1 - y0).max(1);
    assert!(
        overlap * 2 >= shorter,
        "the jobs ran one after the other: {} and {}",
        show(&x),
        show(&y)
    );
}

#[test]
fn a_finished_result_leaves_while_the_next_task_runs_on_the_slot() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _only = agent(&scheduler, "only");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("first-result-seen");
    let path = path.display().to_string();
    let found = last_json(&scheduler.run_driver(&test_driver(), &["handoff", &path]));
    assert_eq!(
        found["second_saw_the_file"],
        true,
        "the first task's result was held back until the second ended: {}",
        show(&found)
    );
}

#[test]
fn the_agent_gives_way_to_its_tasks_and_its_workers_keep_the_normal_policy() {
    const NORMAL: u32 = 0;
    const BATCH: u32 = 3;
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let agent = agent(&scheduler, "only");
    let found = last_json(&scheduler.run_driver(&test_driver(), &["policy"]));
    if agent
        .process
        .output()
        .contains("cannot run under SCHED_BATCH")
    {
        println!("skipped: this machine does not let a process choose SCHED_BATCH");
        return;
    }
    assert_eq!(found["worker"], NORMAL, "{}", show(&found));
    // Every thread of the agent, those it started after it set its policy included (a thread
    // that ends between the listing and the reading is skipped).
    let threads = std::fs::read_dir(format!("/proc/{}/task", agent.process.pid()))
        .expect("the agent's threads")
        .filter_map(Result::ok)
        .filter_map(|thread| sched_policy(&thread.path().join("stat")))
        .collect::<Vec<_>>();
    assert!(!threads.is_empty());
    assert!(
        threads.iter().all(|&p| p == BATCH),
        "the agent's threads' policies: {threads:?}"
    );
}
