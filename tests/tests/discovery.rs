//! Agents and drivers find the scheduler with no configuration: multicast between test hosts
//! (network namespaces on one bridge), and the address file and DNS names on loopback.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use ladle_tests::{
    Agent, Process, Scheduler, SchedulerOptions, bin, clean_command, init_cluster, last_json,
    netns::Host, netns::Lab, show, stdout_of, test_driver, wait_for,
};
use serde_json::Value;

/// A scheduler on `host` serving the cluster whose files are in `files` (from
/// `ladle-scheduler init`), listening on every interface there, on a free port.
fn scheduler_on(host: &Host, files: &Path, dir: &Path) -> (Process, u16) {
    let tag = format!(
        "{}-{}",
        host.ns,
        files.file_name().unwrap_or_default().to_string_lossy()
    );
    let address_file = dir.join(format!("address-{tag}"));
    let mut command = host.command(&bin("ladle-scheduler"));
    command
        .args(["serve", "--port", "0", "--cluster-file"])
        .arg(files.join("scheduler.cluster"))
        .arg("--address-file")
        .arg(&address_file)
        .env("LADLE_STATE_DIR", dir.join(format!("state-{tag}")))
        .env("LADLE_HEARTBEAT_INTERVAL", "250ms")
        .env("LADLE_ANNOUNCE_INTERVAL", "250ms");
    let process = Process::spawn(command, dir.join(format!("scheduler-{tag}.log")));
    let port = ladle_tests::listening_port(&address_file);
    (process, port)
}

/// An agent on `host` given no scheduler address, only its cluster's agent file.
fn agent_on(host: &Host, name: &str, files: &Path, dir: &Path) -> Process {
    let mut command = host.command(&bin("ladle-agent"));
    command
        .args(["--hostname", name, "--cpu-slots", "2", "--state-dir"])
        .arg(dir.join(format!("state-{name}")))
        .arg("--cluster-file")
        .arg(files.join("agent.cluster"))
        .env("LADLE_DISCOVERY_WAIT", "1s");
    Process::spawn(command, dir.join(format!("{name}.log")))
}

/// `agents --json` of the scheduler on `host`, asked from inside that host with its own file.
fn agents_of(host: &Host, port: u16, files: &Path) -> Vec<Value> {
    let out = host
        .command(&bin("ladle-scheduler"))
        .args(["agents", "--json", "--scheduler"])
        .arg(format!("127.0.0.1:{port}"))
        .env("LADLE_CLUSTER_FILE", files.join("scheduler.cluster"))
        .output()
        .expect("the CLI runs");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The files of a new cluster, made in `dir`.
fn cluster(dir: &Path, name: &str, tag: &str) -> PathBuf {
    init_cluster(&dir.join(tag), name, None)
}

fn alive<'a>(rows: &'a [Value], names: &[&str]) -> Option<Vec<&'a Value>> {
    let found: Vec<&Value> = names
        .iter()
        .filter_map(|n| {
            rows.iter()
                .find(|r| r["hostname"] == *n && r["state"] == "alive")
        })
        .collect();
    (found.len() == names.len()).then_some(found)
}

#[test]
fn agents_on_other_hosts_join_their_clusters_scheduler_by_multicast_and_follow_it_when_it_moves() {
    let lab = match Lab::new(5) {
        Ok(lab) => lab,
        Err(why) => {
            println!("skipped: cannot make network namespaces here ({why})");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let [home, a, b, other, new_home] = &lab.hosts[..] else {
        panic!("five hosts")
    };
    let ours = cluster(dir.path(), "default", "ours");

    // Agents first: with nothing announced, they say so in their logs.
    let agent_a = agent_on(a, "agent-a", &ours, dir.path());
    let agent_b = agent_on(b, "agent-b", &ours, dir.path());
    wait_for(
        "the agent to say it hears nothing",
        Duration::from_secs(30),
        || {
            agent_a
                .output()
                .contains("no scheduler of cluster \"default\" announced itself")
                .then_some(())
        },
    );
    assert!(agent_a.output().contains("eth0"), "{}", agent_a.output());

    let theirs = cluster(dir.path(), "other", "theirs");
    let (_other, other_port) = scheduler_on(other, &theirs, dir.path());
    let (mut scheduler, port) = scheduler_on(home, &ours, dir.path());
    let rows = wait_for("both agents to join", Duration::from_secs(30), || {
        let rows = agents_of(home, port, &ours);
        alive(&rows, &["agent-a", "agent-b"])
            .map(|found| found.into_iter().cloned().collect::<Vec<_>>())
    });
    for row in &rows {
        assert_eq!(row["discovery"], "multicast", "{}", show(row));
        assert!(
            row["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with(&a.ip) || p.starts_with(&b.ip)),
            "{}",
            show(row)
        );
    }
    // The scheduler of another cluster attracted neither, and they said why once.
    assert_eq!(agents_of(other, other_port, &theirs), Vec::<Value>::new());
    let log = agent_a.output();
    assert_eq!(
        log.matches("ignoring the scheduler of cluster \"other\"")
            .count(),
        1,
        "{log}"
    );

    // A driver on a third host finds it too.
    let stdout = stdout_of(
        b.command(&test_driver())
            .arg("panic")
            .env("LADLE_SCHEDULER", "discover")
            .env("LADLE_CLUSTER_FILE", ours.join("driver.cluster")),
    );
    assert_eq!(last_json(&stdout)["ok"], 999, "{stdout}");

    // A scheduler of the same name but not of this cluster (another init, or an impostor
    // collecting credentials) is not believed: its announcements are not signed with the
    // cluster's key (and it could not pass TLS against the agents' trust anchor).
    let impostor = cluster(dir.path(), "default", "impostor");
    let (mut rogue, _) = scheduler_on(new_home, &impostor, dir.path());
    wait_for(
        "the agents to dismiss the impostor",
        Duration::from_secs(30),
        || {
            agent_a
                .output()
                .contains("it is signed with another key")
                .then_some(())
        },
    );
    assert!(alive(&agents_of(home, port, &ours), &["agent-a", "agent-b"]).is_some());
    rogue.signal("TERM");
    rogue.wait_exit(Duration::from_secs(20));

    // The scheduler moves to another host: the agents follow it there.
    scheduler.signal("TERM");
    // A stopping scheduler ends the agents' streams rather than waiting on them.
    assert!(
        scheduler.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        scheduler.output()
    );
    let (_moved, new_port) = scheduler_on(new_home, &ours, dir.path());
    wait_for("both agents to follow", Duration::from_secs(30), || {
        alive(
            &agents_of(new_home, new_port, &ours),
            &["agent-a", "agent-b"],
        )
        .map(drop)
    });
    drop((agent_a, agent_b));
}

#[test]
fn an_agent_finds_the_scheduler_through_its_address_file_and_through_a_dns_name() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let shared = tempfile::tempdir().expect("temp dir");
    let file = shared.path().join("scheduler-address");

    // The file does not exist yet when the agent starts: it waits for it.
    // Dropped after the agent (declared before it): the directory goes with the test.
    let state_dir = tempfile::tempdir().expect("temp dir");
    let state = state_dir.path().to_owned();
    let mut command = clean_command(&bin("ladle-agent"));
    command
        .args(["--hostname", "by-file", "--no-multicast", "--state-dir"])
        .arg(&state)
        .arg("--scheduler-file")
        .arg(&file);
    let by_file = Process::spawn(command, state.join("agent.log"));
    fs::write(&file, format!("{}\n", scheduler.address)).expect("write");

    // `localhost` resolves to ::1 (where nothing listens) and 127.0.0.1: both are tried.
    let by_dns = Agent::start_without_address(
        &scheduler,
        &[
            "--hostname",
            "by-dns",
            "--scheduler",
            &format!("http://localhost:{}", scheduler.port()),
        ],
    );
    let rows = wait_for("both agents to join", Duration::from_secs(30), || {
        let rows = scheduler.try_agents()?;
        alive(&rows, &["by-file", "by-dns"])
            .map(|found| found.into_iter().cloned().collect::<Vec<_>>())
    });
    assert_eq!(rows[0]["discovery"], "file", "{}", show(&rows[0]));
    assert_eq!(rows[1]["discovery"], "dns", "{}", show(&rows[1]));
    let table = String::from_utf8_lossy(&scheduler.cli(&["agents"]).stdout).into_owned();
    assert!(
        table.contains("FOUND BY") && table.contains("file"),
        "{table}"
    );
    drop((by_file, by_dns));
}
