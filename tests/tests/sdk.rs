//! Futures-based map/reduce through the real SDK against the real `ladle-scheduler` and two
//! `ladle-agent` processes (and, for the examples, the embedded cluster too).

use std::time::Duration;

use ladle_tests::{
    Agent, Scheduler, SchedulerOptions, clean_command, example, last_json, show, stdout_of,
    test_driver, wait_for,
};
use serde_json::Value;

/// A scheduler with two agents of two CPU slots each, both joined.
fn cluster(options: SchedulerOptions) -> (Scheduler, Vec<Agent>) {
    let scheduler = Scheduler::start(options);
    let agents = ladle_tests::two_slot_agents(&scheduler, 2);
    (scheduler, agents)
}

fn busy_slots(scheduler: &Scheduler) -> u64 {
    scheduler
        .agents()
        .iter()
        .map(|a| a["cpu_slots_busy"].as_u64().unwrap_or(0))
        .sum()
}

/// Output lines the program printed itself (not those of its tasks, prefixed by the agent).
fn own_lines(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| !l.starts_with('['))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_examples_give_exact_results_on_a_cluster_and_embedded() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    std::fs::write(&a, "Ladle ladle spoon\nfork").expect("write");
    std::fs::write(&b, "spoon, SPOON; ladle").expect("write");
    let (a, b) = (a.display().to_string(), b.display().to_string());
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "pi",
            vec!["8"],
            vec!["pi ≈ 3.141355 from 8000000 darts (6282711 inside)"],
        ),
        (
            "wordcount",
            vec![],
            vec!["       5 the", "14 distinct words, 23 in all"],
        ),
        (
            "wordcount",
            vec![&a, &b],
            vec![
                "       3 ladle",
                "       3 spoon",
                "       1 fork",
                "3 distinct words, 7 in all",
            ],
        ),
        ("completed", vec![], vec!["sum of squares: 285"]),
        // Tasks that submit tasks, deeper than the slots.
        (
            "quicksort",
            vec!["100000"],
            vec!["sorted 100000 numbers: first 4829, last 999998880"],
        ),
    ];
    for (name, args, expected) in cases {
        let on_cluster = own_lines(&scheduler.run_driver(&example(name), &args));
        let embedded = own_lines(&stdout_of(clean_command(&example(name)).args(&args)));
        for line in expected {
            assert!(
                on_cluster.lines().any(|l| l == line),
                "{name} on the cluster lacks {line:?}:\n{on_cluster}"
            );
            assert!(
                embedded.lines().any(|l| l == line),
                "{name} embedded lacks {line:?}:\n{embedded}"
            );
        }
    }
    // Both agents took part in the cluster runs.
    let status = scheduler.status();
    assert_eq!(status["agents"]["alive"], 2, "{}", show(&status));
}

#[test]
fn a_map_of_100000_items_returns_them_all_in_order() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    let found = last_json(&scheduler.run_driver(&test_driver(), &["map100k"]));
    assert_eq!(found["count"], 100_000);
    assert_eq!(found["correct"], true);
}

#[test]
fn a_panic_on_one_input_fails_that_future_only() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    let found = last_json(&scheduler.run_driver(&test_driver(), &["panic"]));
    assert_eq!(found["ok"], 999, "{}", show(&found));
    let errors = found["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{}", show(&found));
    let error = &errors[0];
    assert_eq!(error["kind"], "Failed");
    assert!(
        error["task"]
            .as_str()
            .is_some_and(|t| t.ends_with("::fragile")),
        "{}",
        show(error)
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("input 500 is cursed")),
        "{}",
        show(error)
    );
    assert!(
        error["agent"]
            .as_str()
            .is_some_and(|a| a.starts_with("agent-")),
        "{}",
        show(error)
    );
    assert_eq!(error["attempt"], 1);
    // A task returning Err gives its message.
    assert!(
        found["single"]
            .as_str()
            .is_some_and(|m| m.contains("3 is odd")),
        "{}",
        show(&found)
    );
}

#[test]
fn wait_returns_at_the_first_completion_and_at_its_timeout() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    let found = last_json(&scheduler.run_driver(&test_driver(), &["wait"]));
    assert_eq!(found["first_done"], 1, "{}", show(&found));
    assert_eq!(found["value"], 1);
    assert_eq!(found["after_timeout_done"], 0, "{}", show(&found));
    assert_eq!(found["after_timeout_pending"], 3, "{}", show(&found));
}

#[test]
fn cancelling_a_long_map_leaves_the_agents_idle() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    let mut driver = scheduler.spawn_driver(&test_driver(), &["cancel"]);
    wait_for("the map to be cancelled", Duration::from_secs(60), || {
        driver.output().contains("\"waiting\"").then_some(())
    });
    let found = last_json(
        driver
            .output()
            .lines()
            .find(|l| l.contains("cancelled"))
            .unwrap_or_default(),
    );
    assert_eq!(found["first_ok"], true);
    assert_eq!(found["abandoned"], true, "{}", show(&found));
    assert!(
        found["cancelled"].as_u64().unwrap_or(0) > 4000,
        "{}",
        show(&found)
    );
    // The driver is still connected: only the cancel, and the abandoned map's, can have freed
    // the slots.
    wait_for("the agents to go idle", Duration::from_secs(10), || {
        (busy_slots(&scheduler) == 0).then_some(())
    });
    let status = scheduler.status();
    assert_eq!(status["tasks"]["queued"], 0, "{}", show(&status));
    assert_eq!(status["tasks"]["running"], 0, "{}", show(&status));
    driver.stop();
}

#[test]
fn a_driver_killed_mid_job_has_its_tasks_stopped() {
    // A short grace (30 s by default), so that the test need not wait it out.
    let (scheduler, _agents) = cluster(SchedulerOptions {
        extra: "driver_grace = \"3s\"",
        ..SchedulerOptions::default()
    });
    let mut driver = scheduler.spawn_driver(&test_driver(), &["hang"]);
    wait_for("the agents to be busy", Duration::from_secs(60), || {
        (busy_slots(&scheduler) == 4).then_some(())
    });
    driver.kill9();
    // The job waits out the driver's grace period, then stops everywhere.
    wait_for("the agents to go idle", Duration::from_secs(30), || {
        (busy_slots(&scheduler) == 0).then_some(())
    });
    wait_for("the job to be gone", Duration::from_secs(10), || {
        (scheduler.status()["jobs"] == 0).then_some(())
    });
}

#[test]
fn a_panic_in_a_maps_own_code_fails_the_map_instead_of_a_shorter_ok() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    let found = last_json(&scheduler.run_driver(&test_driver(), &["stop_in_serialize"]));
    for what in ["map", "map_reduce"] {
        assert!(
            found[what]["Err"]
                .as_str()
                .is_some_and(|e| e.contains("57 cannot be encoded")),
            "{what}: {}",
            show(&found)
        );
    }
    // Every input gets an outcome; those not sent before the panic fail.
    assert_eq!(found["as_completed"]["outcomes"], 100, "{}", show(&found));
    assert!(
        found["as_completed"]["failed"].as_u64().unwrap_or(0) > 0,
        "{}",
        show(&found)
    );
}

#[test]
fn a_main_that_blocks_holds_up_neither_its_tasks_nor_their_results() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    let found = last_json(&stdout_of(
        scheduler
            .driver(&test_driver(), &["blocking"])
            .env("LADLE_RUNTIME", "current_thread"),
    ));
    assert_eq!(found["done_while_blocked"], true, "{}", show(&found));
    assert_eq!(found["value"], 100);
}

#[test]
fn a_driver_that_ends_with_tasks_left_has_them_stopped_at_once() {
    // A grace far longer than the test: only the driver's goodbye can end its job in time.
    let (scheduler, _agents) = cluster(SchedulerOptions {
        extra: "driver_grace = \"10m\"",
        ..SchedulerOptions::default()
    });
    let found = last_json(&scheduler.run_driver(&test_driver(), &["leave"]));
    assert_eq!(found["left"], 20, "{}", show(&found));
    wait_for("the job to be gone", Duration::from_secs(30), || {
        (scheduler.status()["jobs"] == 0).then_some(())
    });
    wait_for("the agents to go idle", Duration::from_secs(30), || {
        (busy_slots(&scheduler) == 0).then_some(())
    });
}

#[test]
fn a_shared_constant_travels_to_each_agent_once() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    let found = last_json(&scheduler.run_driver(&test_driver(), &["shared"]));
    assert_eq!(found["count"], 1000);
    assert_eq!(found["correct"], true);
    let sha = found["sha256"].as_str().expect("sha256");
    let status = scheduler.status();
    assert_eq!(
        status["blob_fetches"][sha],
        2,
        "one fetch per agent: {}",
        show(&status["blob_fetches"])
    );
}

#[test]
fn a_worker_without_the_requested_task_fails_it_clearly() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    // Agents run another program (the `completed` example), which has no such task.
    let mut command = scheduler.driver(&test_driver(), &["unknown"]);
    command.env("LADLE_WORKER_EXECUTABLE", example("completed"));
    let found = last_json(&stdout_of(&mut command));
    assert_eq!(found["error"]["kind"], "UnknownTask", "{}", show(&found));
    let text = found["error"]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("no task named")
            && text.contains("triple_plus_one")
            && text.contains("different build"),
        "{text}"
    );
}

#[test]
fn an_argument_over_the_message_limit_is_refused_at_submit() {
    let options = SchedulerOptions {
        extra: "max_value_bytes = 1048576",
        ..Default::default()
    };
    let (scheduler, _agents) = cluster(options);
    let found = last_json(&scheduler.run_driver(&test_driver(), &["too_large"]));
    let refused = found["refused"].as_str().unwrap_or_default();
    assert!(
        refused.contains("limit of 1048576") && refused.contains("length"),
        "{}",
        show(&found)
    );
    assert_eq!(found["small"], 1000);
}

#[test]
fn the_tasks_output_reaches_the_driver_prefixed_by_agent() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    let stdout = scheduler.run_driver(&test_driver(), &["output"]);
    for x in 0..3 {
        let line = stdout
            .lines()
            .find(|l| l.ends_with(&format!("hello from task {x}")));
        let line = line.unwrap_or_else(|| panic!("no output of task {x} in {stdout}"));
        assert!(line.starts_with("[agent-"), "{line}");
    }
    assert_eq!(last_json(&stdout)["results"], Value::from(vec![0, 1, 2]));
}

#[test]
fn an_operator_lists_jobs_and_cancels_one_from_the_cli() {
    let (scheduler, _agents) = cluster(SchedulerOptions::default());
    let mut driver = scheduler.spawn_driver(&test_driver(), &["hang"]);
    wait_for("the agents to be busy", Duration::from_secs(60), || {
        (busy_slots(&scheduler) == 4).then_some(())
    });

    let out = scheduler.cli(&["jobs", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("jobs --json prints JSON");
    assert_eq!(jobs.len(), 1, "{}", show(&jobs));
    assert_eq!(jobs[0]["name"], "ladle-test-driver");
    assert_eq!(jobs[0]["driver_connected"], true);
    assert!(
        jobs[0]["unfinished"].as_u64().unwrap_or(0) > 0,
        "{}",
        show(&jobs)
    );
    let id = jobs[0]["id"].as_str().expect("id").to_owned();

    let out = scheduler.cli(&["cancel", &id[..8]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It counts the items the scheduler held (the map's chunks are single items here).
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("unfinished items cancelled"),
        "the CLI said: {said}"
    );
    // The driver's map ends, failing as cancelled by an operator, and the agents go idle.
    driver.wait_exit(Duration::from_secs(30));
    let found = last_json(&driver.output());
    assert_eq!(found["error"]["kind"], "Cancelled", "{}", show(&found));
    assert!(
        found["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("by an operator")),
        "{}",
        show(&found)
    );
    wait_for("the agents to go idle", Duration::from_secs(10), || {
        (busy_slots(&scheduler) == 0).then_some(())
    });

    let out = scheduler.cli(&["cancel", "no-such-job"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no job matches"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
