//! Tasks that submit tasks (nested futures), through the real binaries and the real SDK: a
//! waiting parent gives its slot back, so recursion deeper than the slots completes; a parent
//! whose agent is killed runs again without running its finished children again; a cancelled
//! job leaves nothing running.

use std::{collections::HashMap, fs, path::Path, time::Duration};

use ladle_tests::{
    Scheduler, SchedulerOptions, last_json, show, test_driver, two_slot_agents, wait_for,
};

#[test]
fn twelve_tasks_that_each_wait_for_a_task_complete_on_six_slots() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _agents = two_slot_agents(&scheduler, 3);
    let found = last_json(&scheduler.run_driver(&test_driver(), &["nested_pairs"]));
    assert_eq!(found["results"], 12, "{}", show(&found));
    assert_eq!(found["correct"], true, "{}", show(&found));
}

#[test]
fn a_binary_recursion_of_depth_twelve_completes_on_two_slots() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _agents = two_slot_agents(&scheduler, 1);
    // 2^11 leaves below the root: 4,095 tasks, twelve levels, on one agent of two slots.
    let found = last_json(&scheduler.run_driver(&test_driver(), &["nested_tree", "11", "1"]));
    assert_eq!(found["leaves"], 2048, "{}", show(&found));
    assert_eq!(found["sent_twice"], 0, "{}", show(&found));
    // Every task is over: nothing of the job is left in the scheduler.
    wait_for("the job to end", Duration::from_secs(20), || {
        let status = scheduler.status();
        (status["tasks"]["running"] == 0 && status["tasks"]["queued"] == 0).then_some(())
    });
}

/// Each execution noted in a file of `dir`: `(what, agent, pid, ms)`.
fn notes(dir: &Path, name: &str) -> Vec<(String, String, u32, u128)> {
    fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            Some((
                fields.next()?.to_owned(),
                fields.next()?.to_owned(),
                fields.next()?.parse().ok()?,
                fields.next()?.parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn a_parent_whose_agent_is_killed_runs_again_without_running_its_finished_children_again() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let mut agents = two_slot_agents(&scheduler, 2);
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let mut driver = scheduler.spawn_driver(&test_driver(), &["nested_family", &dir_arg]);
    // The parent runs, and some of its eight children (400 ms each, on four slots) are done.
    let done = |i: u64| {
        notes(dir.path(), &format!("child-{i}"))
            .iter()
            .any(|(what, ..)| what == "done")
    };
    let root_agent = wait_for(
        "half the children to finish",
        Duration::from_secs(60),
        || {
            let root = notes(dir.path(), "root");
            let finished = (0..8).filter(|&i| done(i)).count();
            (finished >= 3).then(|| root.first().map(|(_, agent, ..)| agent.clone()))?
        },
    );
    let victim = agents
        .iter()
        .position(|a| {
            scheduler
                .agents()
                .iter()
                .any(|r| r["id"] == a.id().as_str() && r["hostname"] == root_agent.as_str())
        })
        .expect("the parent's agent is one of ours");
    // The children finished by now: their results are the scheduler's, whoever ran them.
    let finished_before: Vec<u64> = (0..8).filter(|&i| done(i)).collect();
    agents[victim].process.kill9();
    let status = driver.wait_exit(Duration::from_secs(120));
    let output = driver.output();
    assert!(status.success(), "{output}");
    let found = last_json(&output);
    assert_eq!(found["sum"], 28, "the sum of 0..8: {}", show(&found));
    assert_eq!(found["sent_twice"], 0, "{}", show(&found));
    let root_runs = notes(dir.path(), "root")
        .iter()
        .filter(|(what, ..)| what == "start")
        .count();
    assert_eq!(
        root_runs, 2,
        "the parent ran again once its agent was killed"
    );
    let mut starts: HashMap<u64, usize> = HashMap::new();
    for i in 0..8u64 {
        let runs = notes(dir.path(), &format!("child-{i}"))
            .iter()
            .filter(|(what, ..)| what == "start")
            .count();
        starts.insert(i, runs);
    }
    for i in &finished_before {
        assert_eq!(
            starts[i], 1,
            "child {i} had finished before the kill and ran again: {starts:?}"
        );
    }
    // Only children that were running on the killed agent may have run twice.
    assert!(starts.values().all(|&n| (1..=2).contains(&n)), "{starts:?}");
}

#[test]
fn a_job_cancelled_mid_recursion_leaves_no_task_running_anywhere() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let agents = two_slot_agents(&scheduler, 2);
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    // Seven levels of 200 ms leaves: 64 leaves over four slots, several seconds of work.
    let mut driver = scheduler.spawn_driver(&test_driver(), &["nested_tree", "6", "200", &dir_arg]);
    wait_for("leaves to be running", Duration::from_secs(60), || {
        (notes(dir.path(), "pids").len() >= 4).then_some(())
    });
    let jobs = scheduler.cli(&["jobs", "--json"]);
    let jobs: serde_json::Value =
        serde_json::from_slice(&jobs.stdout).expect("jobs --json prints JSON");
    let job = jobs
        .as_array()
        .and_then(|rows| rows.first())
        .and_then(|row| row["id"].as_str())
        .expect("the job is listed")
        .to_owned();
    let cancelled = scheduler.cli(&["cancel", &job]);
    assert!(
        cancelled.status.success(),
        "{}",
        String::from_utf8_lossy(&cancelled.stderr)
    );
    let status = driver.wait_exit(Duration::from_secs(60));
    let found = last_json(&driver.output());
    assert!(status.success(), "{}", driver.output());
    assert_eq!(found["kind"], "Cancelled", "{}", show(&found));
    wait_for(
        "no task of the job to be left anywhere",
        Duration::from_secs(30),
        || {
            let status = scheduler.status();
            let idle = scheduler
                .agents()
                .iter()
                .all(|r| r["cpu_slots_busy"].as_u64() == Some(0));
            (status["tasks"]["running"] == 0 && status["tasks"]["queued"] == 0 && idle)
                .then_some(())
        },
    );
    // The processes that ran its tasks are gone: nothing of the job still spins anywhere.
    let pids: Vec<u32> = notes(dir.path(), "pids").iter().map(|n| n.2).collect();
    wait_for(
        "the job's workers to be gone",
        Duration::from_secs(30),
        || {
            pids.iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
                .then_some(())
        },
    );
    let leaves_started = notes(dir.path(), "pids").len();
    assert!(
        leaves_started < 64,
        "the job was cancelled before all its leaves ran ({leaves_started} of 64)"
    );
    drop(agents);
}
