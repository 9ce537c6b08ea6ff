//! Big values and bounded memory, through the real SDK against the real `ladle-scheduler` and two
//! `ladle-agent` processes: arguments and results beyond an inline value travel through the blob
//! store and go when their job ends, a value over the limit fails only its own future, a driver
//! far beyond its budget waits instead of growing the scheduler, and an output flood is capped.
//! In each, the agents' streams stay up (no reconnection in their logs).

use std::time::Duration;

use ladle_tests::{
    Agent, Process, Scheduler, SchedulerOptions, clean_command, last_json, show, stdout_of,
    test_driver, two_slot_agents, wait_for,
};

fn cluster(extra: &'static str) -> (Scheduler, Vec<Agent>) {
    let scheduler = Scheduler::start(SchedulerOptions {
        extra,
        ..Default::default()
    });
    let agents = two_slot_agents(&scheduler, 2);
    (scheduler, agents)
}

/// No agent lost its stream to the scheduler.
fn assert_streams_unbroken(agents: &[Agent]) {
    for agent in agents {
        let log = agent.process.output();
        assert!(
            !log.contains("lost the scheduler") && !log.contains("reconnecting"),
            "an agent's stream broke:\n{log}"
        );
    }
}

#[test]
fn big_arguments_and_results_travel_by_reference_and_go_when_their_job_ends() {
    let (scheduler, agents) = cluster("");
    let found = last_json(&scheduler.run_driver(&test_driver(), &["big_values"]));
    for key in ["five", "sixty", "map", "result"] {
        assert_eq!(found[key], true, "{key}: {}", show(&found));
    }
    // The job ended with the driver: its values are gone from the scheduler.
    let status = wait_for(
        "the job's values to be deleted",
        Duration::from_secs(10),
        || {
            let status = scheduler.status();
            (status["job_values"]["blobs"] == 0).then_some(status)
        },
    );
    assert_eq!(status["job_values"]["bytes"], 0, "{}", show(&status));
    let stored = std::fs::read_dir(scheduler.dir().join("state/blobs"))
        .expect("the blob store")
        .count();
    assert_eq!(stored, 1, "only the executable is kept");
    assert_streams_unbroken(&agents);

    // The same on the embedded cluster (no scheduler configured).
    let embedded = last_json(&stdout_of(
        clean_command(&test_driver())
            .arg("big_values")
            .env("RUST_LOG", "warn"),
    ));
    for key in ["five", "sixty", "map", "result"] {
        assert_eq!(embedded[key], true, "embedded {key}: {}", show(&embedded));
    }
}

#[test]
fn a_value_over_the_limit_fails_only_its_future_while_another_job_finishes() {
    let (scheduler, agents) = cluster("max_value_bytes = 8388608");
    let mut other = scheduler.spawn_driver(&test_driver(), &["map100k"]);
    let found = last_json(&scheduler.run_driver(&test_driver(), &["too_big"]));
    let refused = found["refused"].as_str().unwrap_or_default();
    assert!(
        // 9 MiB and the few bytes of postcard's framing around it.
        refused.contains("is 94371") && refused.contains("limit of 8388608"),
        "{}",
        show(&found)
    );
    assert_eq!(found["error"]["kind"], "TooLarge", "{}", show(&found));
    let text = found["error"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("result is 94371")
            && text.contains("limit of 8388608")
            && text.contains("on agent agent-"),
        "{text}"
    );
    assert_eq!(
        found["map"],
        serde_json::json!(["ok 1000", "TooLarge", "ok 2000"]),
        "{}",
        show(&found)
    );
    assert_eq!(found["after"], 1000);
    other.wait_exit(Duration::from_secs(120));
    let other = last_json(&other.output());
    assert_eq!(other["count"], 100_000, "{}", show(&other));
    assert_eq!(other["correct"], true);
    assert_streams_unbroken(&agents);
}

#[test]
fn a_driver_far_beyond_its_budget_waits_and_the_scheduler_holds_no_more() {
    let (scheduler, agents) = cluster("session_max_tasks = 20");
    let found = last_json(&scheduler.run_driver(&test_driver(), &["budget"]));
    assert_eq!(found["submitted"], 300, "{}", show(&found));
    assert_eq!(found["correct"], true);
    assert_eq!(found["mapped"], 500);
    let status = scheduler.status();
    let peak = status["tasks"]["session_unfinished_peak"]
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(peak <= 20 && peak > 0, "{}", show(&status));
    assert_eq!(status["tasks"]["refused"], 0, "{}", show(&status));
    assert_streams_unbroken(&agents);
}

#[test]
fn an_output_flood_is_capped_and_the_driver_told_what_was_dropped() {
    let (scheduler, agents) = cluster("");
    let done = scheduler.dir().join("flood-seen");
    let done_arg = done.display().to_string();
    let mut driver = Process::spawn(
        scheduler.driver(&test_driver(), &["flood", &done_arg]),
        scheduler.dir().join("flood.log"),
    );
    // Its stdout and stderr share one log: wait for the result and the note of the drop.
    let note = "of this job's output dropped";
    let log = wait_for(
        "the note of the dropped output",
        Duration::from_secs(60),
        || {
            let log = driver.output();
            (log.contains("\"printed\"") && log.contains(note)).then_some(log)
        },
    );
    std::fs::write(&done, "seen").expect("write");
    assert!(driver.wait_exit(Duration::from_secs(30)).success(), "{log}");
    let stdout = driver.output();
    assert_eq!(last_json(&stdout)["printed"], 20_000);
    assert!(
        stdout.contains("lines ("),
        "the note counts the lines: {log}"
    );
    let carried = stdout.lines().filter(|l| l.contains("flood line")).count();
    assert!(
        (1000..20_000).contains(&carried),
        "{carried} of 20000 lines carried"
    );
    assert!(
        stdout.lines().all(|l| l.len() < 20_000),
        "a line longer than the cap was carried"
    );
    assert_streams_unbroken(&agents);
}
