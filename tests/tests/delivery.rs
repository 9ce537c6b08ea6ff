//! Each task of a job runs once and its result reaches the driver once, whatever the network
//! does to the driver's connection: counted by the task bodies themselves, below the SDK's own
//! bookkeeping, with the real binaries on test hosts (network namespaces on one bridge).

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use ladle_tests::{
    Process, bin, init_cluster, last_json,
    netns::{Host, Lab},
    show, test_driver, wait_for,
};
use serde_json::Value;

/// Tasks in the job: 20 ms each.
const TASKS: u64 = 2000;

/// How long the driver's host is cut off.
const PARTITION: Duration = Duration::from_secs(20);

/// The cluster's files (from `ladle-scheduler init`), made by the first caller.
fn files(dir: &Path) -> std::path::PathBuf {
    let files = dir.join("cluster");
    if !files.join("scheduler.cluster").exists() {
        init_cluster(&files, "default", None);
    }
    files
}

/// A scheduler on `host`, listening on every interface there (it has TLS and credentials), on a
/// free port, with the default `driver_grace` (30 s: the job waits for its driver). Returns it
/// and its port.
fn scheduler_on(host: &Host, dir: &Path) -> (Process, u16) {
    let settings = dir.join("scheduler.toml");
    let address_file = dir.join("scheduler-address");
    fs::write(
        &settings,
        format!(
            "port = 0\naddress_file = {address_file:?}\nstate_dir = {:?}\n\
             heartbeat_interval = \"250ms\"\nheartbeat_timeout = \"2s\"\nmulticast = false\n",
            dir.join("scheduler-state"),
        ),
    )
    .expect("settings file");
    let mut command = host.command(&bin("ladle-scheduler"));
    command
        .arg("--config")
        .arg(&settings)
        .arg("serve")
        .env("LADLE_CLUSTER_FILE", files(dir).join("scheduler.cluster"));
    let process = Process::spawn(command, dir.join("scheduler.log"));
    let port = ladle_tests::listening_port(&address_file);
    (process, port)
}

/// A two-slot agent on `host`, joining the scheduler there.
fn agent_on(host: &Host, name: &str, port: u16, dir: &Path) -> Process {
    let mut command = host.command(&bin("ladle-agent"));
    command
        .args(["--hostname", name, "--cpu-slots", "2", "--no-multicast"])
        .arg("--scheduler")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(dir.join(format!("state-{name}")))
        .env("LADLE_CLUSTER_FILE", files(dir).join("agent.cluster"));
    Process::spawn(command, dir.join(format!("{name}.log")))
}

/// The management CLI's `--json` answer to `what`, asked from inside `host`; None while it
/// does not answer.
fn ask(host: &Host, port: u16, what: &str, dir: &Path) -> Option<Value> {
    let out = host
        .command(&bin("ladle-scheduler"))
        .args([what, "--json", "--scheduler"])
        .arg(format!("127.0.0.1:{port}"))
        .env("LADLE_CLUSTER_FILE", files(dir).join("scheduler.cluster"))
        .output()
        .expect("the CLI runs");
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Executions noted by the task bodies: index -> how many times it ran.
fn executions(dir: &Path) -> BTreeMap<u64, usize> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let index = entry.file_name().to_str()?.parse().ok()?;
            let runs = fs::read_to_string(entry.path()).ok()?.lines().count();
            Some((index, runs))
        })
        .collect()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn total(runs: &BTreeMap<u64, usize>) -> usize {
    runs.values().sum()
}

#[test]
fn a_driver_cut_off_for_20_s_mid_job_gets_every_result_once_and_no_task_runs_twice() {
    let lab = match Lab::new(2) {
        Ok(lab) => lab,
        Err(why) => {
            println!("SKIPPED: cannot make network namespaces here ({why})");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let runs_dir = dir.path().join("runs");
    fs::create_dir(&runs_dir).expect("runs dir");
    // The scheduler and its agents on one host, the driver on the other, across the switch.
    let [cluster_host, driver_host] = &lab.hosts[..] else {
        panic!("two hosts")
    };
    let (scheduler, port) = scheduler_on(cluster_host, dir.path());
    let agents: Vec<Process> = (0..2)
        .map(|i| agent_on(cluster_host, &format!("agent-{i}"), port, dir.path()))
        .collect();
    wait_for("both agents to join", Duration::from_secs(30), || {
        let rows = ask(cluster_host, port, "agents", dir.path())?;
        let alive = rows
            .as_array()?
            .iter()
            .filter(|row| row["state"] == "alive")
            .count();
        (alive == 2).then_some(())
    });

    let began = Instant::now();
    let mut driver = Process::spawn(
        {
            let mut command = driver_host.command(&test_driver());
            command
                .arg("counted")
                .arg(TASKS.to_string())
                .arg(&runs_dir)
                // All submitted up front: the scheduler holds the whole job through the cut.
                .arg("submit")
                .env("LADLE_SCHEDULER", format!("{}:{port}", cluster_host.ip))
                .env(
                    "LADLE_CLUSTER_FILE",
                    files(dir.path()).join("driver.cluster"),
                )
                .env("LADLE_RECONNECT_TIMEOUT", "60s")
                .env("RUST_LOG", "warn");
            command
        },
        dir.path().join("driver.log"),
    );

    // Mid-job: some tasks have run, most have not.
    let before_cut = wait_for("the job to be under way", Duration::from_secs(60), || {
        let done = total(&executions(&runs_dir));
        (done >= 200).then_some(done)
    });
    assert!(
        driver.try_exit().is_none(),
        "the driver ended before the cut: {}",
        driver.output()
    );
    lab.disconnect(1).expect("cut the driver's host off");
    // The fault itself, not a synchronisation: the network is down for this long.
    std::thread::sleep(PARTITION);
    let during_cut = total(&executions(&runs_dir));
    lab.reconnect(1).expect("plug the driver's host back");

    // Within a deadline; the figures are worth reporting either way.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = driver.try_exit() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            driver.stop();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = began.elapsed();
    let output = driver.output();
    // Whatever still runs for the job ends with it; count once the cluster is quiet.
    wait_for("the job to end", Duration::from_secs(90), || {
        let status = ask(cluster_host, port, "status", dir.path())?;
        let busy: u64 = ask(cluster_host, port, "agents", dir.path())?
            .as_array()?
            .iter()
            .map(|row| row["cpu_slots_busy"].as_u64().unwrap_or(0))
            .sum();
        (status["jobs"] == 0 && busy == 0).then_some(())
    });

    let runs = executions(&runs_dir);
    let twice: Vec<u64> = runs
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(&i, _)| i)
        .collect();
    let never = (0..TASKS).filter(|i| !runs.contains_key(i)).count();
    let most = runs.values().copied().max().unwrap_or(0);
    let figures = format!(
        "{TASKS} tasks; {} executions ({} extra): {} indices ran once, {} more than once \
         (at most {most} times), {never} never; {before_cut} executions before the cut, \
         {during_cut} by its end; wall time {:.1} s with a {} s partition; driver {}",
        total(&runs),
        total(&runs).saturating_sub(TASKS as usize),
        runs.values().filter(|&&n| n == 1).count(),
        twice.len(),
        wall.as_secs_f64(),
        PARTITION.as_secs(),
        status.map_or("still running after 180 s".into(), |s| s.to_string()),
    );
    println!("delivery: {figures}");
    let sdk_lines: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("reconnect") || line.contains("reopened"))
        .collect();
    println!("delivery: the SDK said: {}", show(&sdk_lines));

    assert!(
        twice.is_empty() && never == 0,
        "every task runs exactly once: {figures}; first indices run more than once: {:?}\n\
         driver output: {output}\nscheduler log: {}",
        &twice[..twice.len().min(20)],
        tail(&scheduler.output(), 40)
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "{figures}\ndriver output: {output}"
    );
    let found = last_json(&output);
    println!("delivery: the driver saw {found}");
    assert_eq!(found["once"], TASKS, "{}", show(&found));
    assert_eq!(found["duplicated"], 0, "{}", show(&found));
    assert_eq!(found["missing"], 0, "{}", show(&found));
    assert_eq!(found["wrong"], 0, "{}", show(&found));
    assert_eq!(found["failed"], 0, "{}", show(&found));
    drop(agents);
}
