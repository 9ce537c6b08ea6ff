//! Nothing is lost when the scheduler fails: through the real binaries and the real SDK.

use std::time::Duration;

use ladle_tests::{Agent, Scheduler, SchedulerOptions, last_json, show, test_driver, wait_for};

#[test]
fn a_job_survives_a_scheduler_restart_with_no_code_in_the_driver() {
    let mut scheduler = Scheduler::start(SchedulerOptions::default());
    let _agents = ladle_tests::two_slot_agents(&scheduler, 2);
    let mut driver = scheduler.spawn_driver(&test_driver(), &["long_map"]);
    // Mid-job: tasks are running on the agents.
    wait_for("the job to be running", Duration::from_secs(60), || {
        let status = scheduler.status();
        (status["tasks"]["running"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    scheduler.restart();
    let status = driver.wait_exit(Duration::from_secs(120));
    let output = driver.output();
    assert!(status.success(), "the driver failed: {output}");
    let found = last_json(&output);
    assert_eq!(found["count"], 2000, "{}", show(&found));
    assert_eq!(found["correct"], true, "{}", show(&found));
    assert!(
        output.contains("reconnecting"),
        "the driver should say it reconnected: {output}"
    );
}

fn agent(scheduler: &Scheduler, i: usize) -> Agent {
    Agent::start(
        scheduler,
        None,
        &["--cpu-slots", "2", "--hostname", &format!("agent-{i}")],
    )
}

fn assert_exactly_once(found: &serde_json::Value, n: u64) {
    assert_eq!(found["n"], n, "{}", show(found));
    assert_eq!(
        found["once"],
        n,
        "every result exactly once: {}",
        show(found)
    );
    assert_eq!(found["duplicated"], 0, "{}", show(found));
    assert_eq!(found["wrong"], 0, "{}", show(found));
    assert_eq!(found["errors"], serde_json::json!([]), "{}", show(found));
    // Below the SDK's own de-duplication too: the scheduler sent each result once.
    assert_eq!(found["sent_twice"], 0, "{}", show(found));
}

#[test]
fn agents_killed_every_second_lose_no_result_and_duplicate_none() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let mut agents: Vec<Agent> = (0..3).map(|i| agent(&scheduler, i)).collect();
    for a in &agents {
        scheduler.wait_state(&a.id(), "alive", Duration::from_secs(20));
    }
    let mut driver = scheduler.spawn_driver(&test_driver(), &["exactly_once", "5000"]);
    wait_for("the job to be running", Duration::from_secs(60), || {
        (scheduler.status()["tasks"]["running"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    // The chaos loop: every second or so, SIGKILL the oldest agent and start a new one.
    let mut next = 3;
    let mut kills = 0;
    while driver.try_exit().is_none() && kills < 6 {
        let started = std::time::Instant::now();
        wait_for(
            "a second to pass (or the job to end)",
            Duration::from_secs(5),
            || {
                (started.elapsed() >= Duration::from_secs(1) || driver.try_exit().is_some())
                    .then_some(())
            },
        );
        let mut victim = agents.remove(0);
        victim.process.kill9();
        kills += 1;
        agents.push(agent(&scheduler, next));
        next += 1;
    }
    let status = driver.wait_exit(Duration::from_secs(180));
    let output = driver.output();
    assert!(status.success(), "{output}");
    assert!(
        kills >= 2,
        "the job ended before the chaos began ({kills} kills)"
    );
    assert_exactly_once(&last_json(&output), 5000);
}

#[test]
fn a_stopped_agents_tasks_run_elsewhere_and_its_late_results_are_dropped() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let agents: Vec<Agent> = (0..2).map(|i| agent(&scheduler, i)).collect();
    for a in &agents {
        scheduler.wait_state(&a.id(), "alive", Duration::from_secs(20));
    }
    let mut driver = scheduler.spawn_driver(&test_driver(), &["exactly_once", "1500"]);
    wait_for(
        "the stopped agent to be busy",
        Duration::from_secs(60),
        || {
            let rows = scheduler.agents();
            let row = rows.iter().find(|r| r["id"] == agents[0].id().as_str())?;
            (row["cpu_slots_busy"].as_u64().unwrap_or(0) > 0).then_some(())
        },
    );
    agents[0].process.signal("STOP");
    scheduler.wait_state(&agents[0].id(), "lost", Duration::from_secs(20));
    agents[0].process.signal("CONT");
    let status = driver.wait_exit(Duration::from_secs(120));
    let output = driver.output();
    assert!(status.success(), "{output}");
    assert_exactly_once(&last_json(&output), 1500);
    // The continued agent comes back.
    scheduler.wait_state(&agents[0].id(), "alive", Duration::from_secs(20));
}

#[test]
fn a_task_that_aborts_its_worker_fails_alone_after_its_attempts() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let agents: Vec<Agent> = (0..2).map(|i| agent(&scheduler, i)).collect();
    for a in &agents {
        scheduler.wait_state(&a.id(), "alive", Duration::from_secs(20));
    }
    let found = last_json(&scheduler.run_driver(&test_driver(), &["abort"]));
    assert_eq!(
        found["ok"],
        299,
        "every other future succeeds: {}",
        show(&found)
    );
    let errors = found["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{}", show(&found));
    assert_eq!(errors[0]["kind"], "WorkerCrashed");
    let text = errors[0]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("abort_on_123") && text.contains("SIGABRT") && text.contains("3 times"),
        "{text}"
    );
    assert!(
        text.contains("agent-"),
        "the error names the agents it ran on: {text}"
    );
}

#[test]
fn retries_run_again_a_task_whose_function_failed() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let agents: Vec<Agent> = (0..2).map(|i| agent(&scheduler, i)).collect();
    for a in &agents {
        scheduler.wait_state(&a.id(), "alive", Duration::from_secs(20));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let found = last_json(&scheduler.run_driver(
        &test_driver(),
        &["retries", &dir.path().display().to_string()],
    ));
    assert_eq!(found["retried"]["Ok"], 1, "{}", show(&found));
    let plain = found["plain"]["Err"].as_str().unwrap_or_default();
    assert!(
        plain.contains("first try") && plain.contains("fails"),
        "without retries the error stands: {}",
        show(&found)
    );
    assert_eq!(found["mapped"]["Ok"], 20, "{}", show(&found));

    // retries(2) on a task that always fails: three runs, noted by the task itself, and the
    // error names the third attempt.
    let runs = dir.path().join("always");
    let found = last_json(&scheduler.run_driver(
        &test_driver(),
        &["always_fails", &runs.display().to_string()],
    ));
    assert_eq!(found["runs"], 3, "{}", show(&found));
    assert_eq!(found["attempt"], 3, "{}", show(&found));
    assert!(
        found["error"]
            .as_str()
            .is_some_and(|e| e.contains("(attempt 3)") && e.contains("always fails")),
        "{}",
        show(&found)
    );
}

#[test]
fn a_task_that_crashes_its_worker_on_one_agent_runs_again_on_the_other() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _agents = ladle_tests::two_slot_agents(&scheduler, 2);
    let dir = tempfile::tempdir().expect("temp dir");
    let found = last_json(&scheduler.run_driver(
        &test_driver(),
        &["crash_on", "agent-0", &dir.path().display().to_string()],
    ));
    assert_eq!(found["errors"], serde_json::json!([]), "{}", show(&found));
    assert_eq!(
        found["ran_on"],
        serde_json::json!({ "agent-1": 20 }),
        "{}",
        show(&found)
    );
    // Some of them did crash a worker on agent-0 first (noted by the task itself).
    let crashes = std::fs::read_dir(dir.path()).map_or(0, Iterator::count);
    assert!(
        crashes > 0,
        "no task was placed on agent-0: {}",
        show(&found)
    );
}

#[test]
fn a_task_that_outlives_its_timeout_fails_and_frees_its_slot() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    // One slot each: their workers run tasks on the thread that reads them (the inline path).
    let agents: Vec<Agent> = (0..2)
        .map(|i| {
            Agent::start(
                &scheduler,
                None,
                &["--cpu-slots", "1", "--hostname", &format!("agent-{i}")],
            )
        })
        .collect();
    for a in &agents {
        scheduler.wait_state(&a.id(), "alive", Duration::from_secs(20));
    }
    let found = last_json(&scheduler.run_driver(&test_driver(), &["timeout"]));
    assert_eq!(found["slow"]["kind"], "TimedOut", "{}", show(&found));
    let text = found["slow"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("timeout of 500ms") && text.contains("nap"),
        "{text}"
    );
    assert_eq!(found["quick"], 10);
    wait_for("the agents to be idle", Duration::from_secs(10), || {
        let busy: u64 = scheduler
            .agents()
            .iter()
            .map(|a| a["cpu_slots_busy"].as_u64().unwrap_or(0))
            .sum();
        (busy == 0).then_some(())
    });
}

#[test]
fn a_driver_gives_up_after_its_reconnect_timeout_and_its_futures_say_why() {
    let mut scheduler = Scheduler::start(SchedulerOptions::default());
    let a = agent(&scheduler, 0);
    scheduler.wait_state(&a.id(), "alive", Duration::from_secs(20));
    let mut command = scheduler.driver(&test_driver(), &["long_map"]);
    command.env("LADLE_RECONNECT_TIMEOUT", "2s");
    let mut driver = ladle_tests::Process::spawn(command, scheduler.dir().join("give-up.log"));
    wait_for("the job to be running", Duration::from_secs(60), || {
        (scheduler.status()["tasks"]["running"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    // The scheduler dies for good: the driver retries for 2 s, then fails what is pending.
    scheduler.process.kill9();
    let status = driver.wait_exit(Duration::from_secs(60));
    let output = driver.output();
    assert!(!status.success(), "{output}");
    assert!(output.contains("reconnecting"), "{output}");
    assert!(
        output.contains("could not be reached for 2s"),
        "the futures should fail saying why: {output}"
    );
}
