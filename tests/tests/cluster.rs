//! A scheduler and its agents form a cluster, visible and manageable from the scheduler CLI.
//! Everything here runs the real binaries on loopback.

use std::{
    io::Write,
    net::TcpStream,
    time::{Duration, Instant},
};

use ladle_tests::{Agent, Scheduler, SchedulerOptions, bin, clean_command, show, wait_for};
use serde_json::Value;

const JOIN: Duration = Duration::from_secs(20);

fn rows_alive(scheduler: &Scheduler, ids: &[&str]) -> Option<Vec<Value>> {
    let agents = scheduler.try_agents()?;
    let rows: Vec<Value> = ids
        .iter()
        .filter_map(|id| {
            agents
                .iter()
                .find(|a| a["id"] == *id && a["state"] == "alive")
                .cloned()
        })
        .collect();
    (rows.len() == ids.len()).then_some(rows)
}

fn cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

#[test]
fn two_agents_join_and_are_listed_with_their_real_cpus_and_no_gpus() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let a = Agent::start(&scheduler, None, &[]);
    let b = Agent::start(
        &scheduler,
        None,
        &["--hostname", "second", "--label", "zone=b"],
    );
    let (ida, idb) = (a.id(), b.id());
    assert_ne!(ida, idb);

    let rows = wait_for("both agents alive", JOIN, || {
        rows_alive(&scheduler, &[&ida, &idb])
    });
    for row in &rows {
        assert_eq!(row["cpus"], cpus(), "{}", show(row));
        assert_eq!(
            row["cpu_slots"],
            cpus(),
            "slots default to the CPU count: {}",
            show(row)
        );
        assert_eq!(row["gpus"], Value::Array(vec![]), "{}", show(row));
        assert!(
            row["memory_bytes"].as_u64().unwrap_or(0) > 0,
            "{}",
            show(row)
        );
        assert_eq!(row["version"], env!("CARGO_PKG_VERSION"));
    }
    assert_eq!(rows[1]["hostname"], "second");
    assert_eq!(rows[1]["labels"]["zone"], "b");

    // The table and the summary name the same agents.
    let table = scheduler.cli(&["agents"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("second") && table.contains(&ida[..12]),
        "{table}"
    );
    let status = scheduler.cli(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status --json is JSON");
    assert_eq!(status["agents"]["alive"], 2);
    assert_eq!(status["cpu_slots"]["total"], 2 * cpus());
    assert!(
        a.process.output().contains("no GPU"),
        "the agent says it found no GPU: {}",
        a.process.output()
    );
}

#[test]
fn a_killed_agent_is_lost_within_the_timeout_and_the_other_stays_alive() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let mut a = Agent::start(&scheduler, None, &[]);
    let b = Agent::start(&scheduler, None, &[]);
    let (ida, idb) = (a.id(), b.id());
    wait_for("both agents alive", JOIN, || {
        rows_alive(&scheduler, &[&ida, &idb])
    });

    a.process.kill9();
    scheduler.wait_state(&ida, "lost", Duration::from_secs(6));
    let agents = scheduler.agents();
    let other = agents
        .iter()
        .find(|r| r["id"] == idb.as_str())
        .expect("listed");
    assert_eq!(other["state"], "alive", "{}", show(&agents));

    // Draining a lost agent works, and says when the agent will hear of it.
    let out = scheduler.cli(&["drain", &ida]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("it is not connected"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_stopped_agent_is_lost_by_its_silence_and_rejoins_when_continued() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let a = Agent::start(&scheduler, None, &[]);
    let id = a.id();
    scheduler.wait_state(&id, "alive", JOIN);

    // SIGSTOP keeps the socket open: only the heartbeat timeout can notice.
    a.process.signal("STOP");
    scheduler.wait_state(&id, "lost", Duration::from_secs(10));
    a.process.signal("CONT");
    scheduler.wait_state(&id, "alive", Duration::from_secs(10));
}

#[test]
fn agents_rejoin_a_restarted_scheduler_under_the_same_ids_and_a_drained_one_stays_drained() {
    let mut scheduler = Scheduler::start(SchedulerOptions::default());
    let a = Agent::start(&scheduler, None, &[]);
    let b = Agent::start(&scheduler, None, &[]);
    let mut c = Agent::start(&scheduler, None, &[]);
    let (ida, idb, idc) = (a.id(), b.id(), c.id());
    wait_for("the agents alive", JOIN, || {
        rows_alive(&scheduler, &[&ida, &idb, &idc])
    });
    assert!(scheduler.cli(&["drain", &idc]).status.success());
    wait_for("the agent to hear of its drain", JOIN, || {
        c.process
            .output()
            .contains("drained this agent")
            .then_some(())
    });

    scheduler.restart();
    let rows = wait_for("both agents alive again", Duration::from_secs(10), || {
        rows_alive(&scheduler, &[&ida, &idb])
    });
    assert_eq!(rows.len(), 2);
    // The new scheduler never heard of the drain: the agent told it.
    scheduler.wait_state(&idc, "draining", Duration::from_secs(10));
    assert_eq!(
        scheduler.agents().len(),
        3,
        "no agent joined twice: {}",
        show(&scheduler.agents())
    );

    // Both restarted, the agent while the scheduler was down: its state directory remembers.
    c.process.kill9();
    scheduler.restart();
    let again = Agent::start_in(&scheduler, None, c.state_dir.clone(), &[]);
    scheduler.wait_state(&idc, "draining", Duration::from_secs(10));
    drop(again);
    std::mem::forget(c); // its directory was `again`'s
}

#[test]
fn an_agent_restarted_on_its_state_directory_keeps_its_id() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let mut a = Agent::start(&scheduler, None, &[]);
    let id = a.id();
    scheduler.wait_state(&id, "alive", JOIN);
    a.process.kill9();
    let again = Agent::start_in(&scheduler, None, a.state_dir.clone(), &[]);
    assert_eq!(again.id(), id);
    scheduler.wait_state(&id, "alive", JOIN);
    assert_eq!(scheduler.agents().len(), 1);
    // A second agent on the same directory is refused, naming the directory.
    let mut twin = Agent::start_in(&scheduler, None, a.state_dir.clone(), &[]);
    assert!(!twin.process.wait_exit(JOIN).success());
    assert!(
        twin.process
            .output()
            .contains("in use by another running agent"),
        "{}",
        twin.process.output()
    );
    std::mem::forget(a); // its directory is `again`'s now
}

#[test]
fn drain_and_undrain_change_the_listed_state() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let a = Agent::start(&scheduler, None, &["--hostname", "drainme"]);
    let id = a.id();
    scheduler.wait_state(&id, "alive", JOIN);

    let out = scheduler.cli(&["drain", &id[..8]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("draining"));
    // It was the only agent taking work: the operator is warned.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no agent accepts work now"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    scheduler.wait_state(&id, "draining", Duration::from_secs(5));
    wait_for(
        "the agent to hear of its drain",
        Duration::from_secs(5),
        || {
            a.process
                .output()
                .contains("drained this agent")
                .then_some(())
        },
    );

    // Kept in the agent's state directory, for a scheduler that restarts meanwhile.
    let drained = a.state_dir.join("drained");
    wait_for(
        "the agent to record its drain",
        Duration::from_secs(5),
        || drained.exists().then_some(()),
    );

    let out = scheduler.cli(&["undrain", "drainme"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    scheduler.wait_state(&id, "alive", Duration::from_secs(5));
    wait_for(
        "the agent to forget its drain",
        Duration::from_secs(5),
        || (!drained.exists()).then_some(()),
    );

    let out = scheduler.cli(&["drain", "no-such-agent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent matches \"no-such-agent\""));
}

#[test]
fn a_wrong_credential_is_refused_with_a_reason_and_the_agent_is_not_listed() {
    let options = SchedulerOptions {
        token: Some("right-token".into()),
        ..Default::default()
    };
    let scheduler = Scheduler::start(options);
    let good = Agent::start(&scheduler, Some("right-token"), &[]);
    let mut bad = Agent::start(&scheduler, Some("wrong-token"), &[]);
    let mut none = Agent::start(&scheduler, None, &[]);
    let good_id = good.id();
    scheduler.wait_state(&good_id, "alive", JOIN);

    for (agent, why) in [
        (&mut bad, "does not know this credential"),
        (&mut none, "no credential presented"),
    ] {
        let status = agent.process.wait_exit(JOIN);
        assert!(!status.success());
        let log = agent.process.output();
        assert!(
            log.contains("refused this agent") && log.contains(why),
            "{log}"
        );
    }
    let agents = scheduler.agents();
    assert_eq!(agents.len(), 1, "{}", show(&agents));
    assert_eq!(agents[0]["id"], good_id.as_str());
    assert!(
        // Refusals are logged at a bounded rate: the first one at least.
        scheduler.log().contains("refused a call from 127.0.0.1"),
        "{}",
        scheduler.log()
    );

    // The CLI is held to the same rule.
    let out = scheduler.cli_with_token(Some("wrong-token"), &["agents"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not know this credential"));
}

#[test]
fn bad_settings_stop_both_binaries_with_exit_code_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("ladle-scheduler", "prot = 7070\n", "prot"),
        ("ladle-scheduler", "port = 70000\n", "port"),
        (
            "ladle-scheduler",
            "heartbeat_timeout = \"soon\"\n",
            "heartbeat_timeout",
        ),
        ("ladle-agent", "cpu_slot = 4\n", "cpu_slot"),
        ("ladle-agent", "cpu_slots = -1\n", "cpu_slots"),
    ];
    for (i, (binary, text, key)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).expect("write");
        let mut command = clean_command(&bin(binary));
        command.arg("--config").arg(&file);
        if binary == "ladle-scheduler" {
            command.arg("serve");
        }
        let out = command.output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{binary} with {text:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("`{key}`")),
            "{binary} with {text:?} should name {key}: {stderr}"
        );
    }
    let missing = dir.path().join("missing.toml");
    let out = clean_command(&bin("ladle-agent"))
        .arg("--config")
        .arg(&missing)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn the_cli_fails_fast_naming_the_address_when_no_scheduler_listens() {
    // A port that was free a moment ago: nobody listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let address = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = clean_command(&bin("ladle-scheduler"))
        .args(["agents", "--scheduler", &address])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&address) && stderr.contains("cannot reach"),
        "{stderr}"
    );
    // Not a timing assertion on speed: a hang would be a bug, so bound it generously.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn garbage_and_half_open_connections_do_not_disturb_joined_agents() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let a = Agent::start(&scheduler, None, &[]);
    let b = Agent::start(&scheduler, None, &[]);
    let (ida, idb) = (a.id(), b.id());
    let before = wait_for("both agents alive", JOIN, || {
        rows_alive(&scheduler, &[&ida, &idb])
    });
    let joined_ms: Vec<u64> = before
        .iter()
        .map(|r| r["connected_ms_ago"].as_u64().unwrap_or(0))
        .collect();

    let target = format!("127.0.0.1:{}", scheduler.port());
    let mut garbage = TcpStream::connect(&target).expect("connect");
    garbage
        .write_all(b"\x16\x03\x01\x02\x00 this is not http/2 \xff\xfe\x00\x01")
        .expect("write");
    let mut preface_only = TcpStream::connect(&target).expect("connect");
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("write");
    let _half_open = TcpStream::connect(&target).expect("connect");
    let mut http1 = TcpStream::connect(&target).expect("connect");
    http1
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let sent = Instant::now();

    // Across several heartbeat timeouts, with the bad connections still open, the agents stay
    // alive on their original streams, and the CLI is served.
    let timeout = Duration::from_secs(2);
    let after = wait_for(
        "the agents to be seen well past the garbage",
        Duration::from_secs(30),
        || {
            // Read the clock before asking: the rows describe the moment the scheduler answered,
            // which is no earlier than this.
            let asked = sent.elapsed();
            let rows = rows_alive(&scheduler, &[&ida, &idb])?;
            (asked > 2 * timeout).then_some(rows)
        },
    );
    for (row, joined) in after.iter().zip(joined_ms) {
        let connected = row["connected_ms_ago"].as_u64().unwrap_or(0);
        assert!(
            connected >= joined + 2 * 2000,
            "agent reconnected: {}",
            show(row)
        );
    }
    assert!(
        !scheduler.log().contains("agent lost"),
        "{}",
        scheduler.log()
    );
    drop((garbage, preface_only, http1));
}

#[test]
fn out_of_open_files_the_scheduler_says_so_and_serves_again_once_some_close() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    // The scheduler raised its own soft limit at start: lower both limits under its feet.
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &scheduler.process.pid().to_string(),
            "--nofile=64:64",
        ])
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            println!("SKIPPED: prlimit cannot lower the scheduler's limit here ({other:?})");
            return;
        }
    }
    // More connections than it has descriptors: the rest wait in its backlog.
    let address = scheduler.address.trim_start_matches("http://").to_owned();
    let flood: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(&address).ok())
        .collect();
    assert!(flood.len() >= 64, "only {} connections", flood.len());
    wait_for(
        "the scheduler to say it cannot accept",
        Duration::from_secs(20),
        || {
            let log = scheduler.process.output();
            log.contains("cannot accept connections").then_some(())
        },
    );
    drop(flood);
    // With descriptors free again it answers (the status query is a new connection).
    wait_for(
        "the scheduler to answer again",
        Duration::from_secs(20),
        || scheduler.try_agents(),
    );
}
