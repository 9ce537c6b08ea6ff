//! What a task can reach beyond its own work, through the real SDK against the real
//! `ladle-scheduler` and `ladle-agent` processes: none of its agent's credentials, and no
//! control of its driver's terminal.

use std::time::Duration;

use ladle_tests::{
    Agent, Process, Scheduler, SchedulerOptions, last_json, show, test_driver, two_slot_agents,
    wait_for,
};

const TOKEN: &str = "isolation-test-token";

/// Whether a variable's name speaks of a credential, by the rule workers are held to.
fn looks_like_a_credential(name: &str) -> bool {
    ["TOKEN", "KEY", "SECRET", "CREDENTIAL", "CLUSTER_FILE"]
        .iter()
        .any(|mark| name.to_ascii_uppercase().contains(mark))
}

#[test]
fn a_task_cannot_open_a_cluster_of_its_own() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _agents = two_slot_agents(&scheduler, 1);
    let found = last_json(&scheduler.run_driver(&test_driver(), &["open_inside"]));
    let got = found["got"].as_array().expect("one answer per try");
    assert_eq!(got.len(), 2, "{}", show(&found));
    for answer in got {
        assert!(
            answer
                .as_str()
                .is_some_and(|a| a.contains("a task cannot open a cluster of its own")),
            "{}",
            show(&found)
        );
    }
}

#[test]
fn a_worker_sees_none_of_its_agents_credentials() {
    let scheduler = Scheduler::start(SchedulerOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("write the token file");
    let token_file = token_file.display().to_string();
    let state_dir = || tempfile::tempdir().expect("temp dir").keep();
    // One agent given the token itself, one a file holding it; each has other variables too,
    // secret by their names, and one that is not.
    let agents = [
        Agent::start_with_env(
            &scheduler,
            Some(TOKEN),
            state_dir(),
            &["--cpu-slots", "2", "--hostname", "by-variable"],
            &[
                ("LADLE_TEST_SECRET", "hidden"),
                ("LADLE_TEST_PLAIN", "kept"),
            ],
        ),
        Agent::start_with_env(
            &scheduler,
            None,
            state_dir(),
            &["--cpu-slots", "2", "--hostname", "by-file"],
            &[
                ("LADLE_TOKEN_FILE", &token_file),
                ("LADLE_TEST_API_KEY", "hidden"),
                ("LADLE_TEST_PLAIN", "kept"),
            ],
        ),
    ];
    for agent in &agents {
        scheduler.wait_state(&agent.id(), "alive", Duration::from_secs(20));
    }
    let found = last_json(&scheduler.run_driver(&test_driver(), &["worker_env"]));
    let seen = found["seen"].as_object().expect("seen");
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["by-file", "by-variable"],
        "a task ran on each agent: {}",
        show(&found)
    );
    for (agent, names) in seen {
        let names: Vec<&str> = names
            .as_array()
            .expect("names")
            .iter()
            .filter_map(|n| n.as_str())
            .collect();
        let leaked: Vec<&&str> = names
            .iter()
            .filter(|n| looks_like_a_credential(n))
            .collect();
        assert!(leaked.is_empty(), "{agent}'s worker sees {leaked:?}");
        // What makes it a worker is there, and so is the rest of the agent's environment.
        for needed in [
            "LADLE_WORKER_SOCKET",
            "LADLE_WORKER_JOB",
            "LADLE_WORKER_THREADS",
            "LADLE_AGENT",
            "LADLE_TEST_PLAIN",
        ] {
            assert!(
                names.contains(&needed),
                "{agent}'s worker lacks {needed}: {names:?}"
            );
        }
    }
}

#[test]
fn escape_sequences_a_task_prints_reach_the_driver_written_out() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _agents = two_slot_agents(&scheduler, 1);
    let done = scheduler.dir().join("escapes-seen");
    let done_arg = done.display().to_string();
    let log = scheduler.dir().join("escapes.log");
    let mut driver = Process::spawn(
        scheduler.driver(&test_driver(), &["escapes", &done_arg]),
        log.clone(),
    );
    // Its stdout and stderr share one log: wait for both of the task's lines.
    let shown = [
        "[agent-0] \\x1b[31mred\\x1b[0m\\x07",
        "[agent-0] \\u{9b}2Jcleared",
    ];
    let text = wait_for("the task's output", Duration::from_secs(60), || {
        let text = driver.output();
        shown
            .iter()
            .all(|line| text.lines().any(|l| l == *line))
            .then_some(text)
    });
    std::fs::write(&done, "seen").expect("write");
    assert!(
        driver.wait_exit(Duration::from_secs(30)).success(),
        "{text}"
    );
    assert_eq!(last_json(&driver.output())["value"], 0);
    let bytes = std::fs::read(&log).expect("the driver's log");
    for (raw, what) in [
        (&b"\x1b"[..], "ESC"),
        (b"\x07", "BEL"),
        ("\u{9b}".as_bytes(), "CSI"),
    ] {
        assert!(
            !bytes.windows(raw.len()).any(|w| w == raw),
            "a raw {what} reached the driver's output: {text}"
        );
    }
}
