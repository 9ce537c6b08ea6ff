//! What an operator sees, through the real binaries: the dashboard in a real headless Chromium
//! while a job runs, `/metrics` read by Prometheus' own checker and compared with the job's
//! counts, and `jobs --all`, `tasks` and `logs` after the driver has gone.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use ladle_tests::{
    Scheduler, SchedulerOptions, browser::Browser, last_json, show, test_driver, two_slot_agents,
    wait_for,
};
use serde_json::Value;

/// A plain HTTP/1.1 GET on loopback: the status code and the body.
fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("a plain http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = TcpStream::connect(host).expect("the dashboard's port answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// The value of the sample `name{labels…}` (labels as they appear, in order) in a scrape.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name_and_labels).then(|| value.parse().ok())?
    })
}

fn promtool_check(metrics: &str) -> Result<(), String> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Err(format!(
                "skipped: promtool cannot run ({e}): apt-get install prometheus"
            ));
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("metrics written to promtool");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics refused the scrape:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn an_operator_watches_a_job_live_and_reads_its_record_after_its_driver_has_gone() {
    let scheduler = Scheduler::start(SchedulerOptions::default());
    let _agents = two_slot_agents(&scheduler, 2);
    let url = scheduler.status()["dashboard"]
        .as_str()
        .expect("status names the dashboard")
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let gate: PathBuf = scheduler.dir().join("second-round");
    let mut driver = scheduler.spawn_driver(
        &test_driver(),
        &["observed", gate.to_str().expect("utf-8 path")],
    );
    let job = wait_for("the job to be listed", Duration::from_secs(30), || {
        let out = scheduler.cli(&["jobs", "--json"]);
        let jobs: Value = serde_json::from_slice(&out.stdout).ok()?;
        jobs.as_array()?.first()?["id"].as_str().map(str::to_owned)
    });

    // The dashboard, in a real browser, while the job runs.
    let browser = match Browser::launch() {
        Ok(browser) => Some(browser),
        Err(e) => {
            eprintln!("skipped: the dashboard's browser check ({e})");
            None
        }
    };
    let page = browser
        .as_ref()
        .map(|b| b.open(&url).expect("the dashboard opens"));
    let done = format!("document.querySelector('[data-job=\"{job}\"]')?.dataset.done");
    if let Some(page) = &page {
        page.wait_for(
            "document.querySelector('#agents').innerText.includes('agent-0') && document.querySelector('#agents').innerText.includes('agent-1')",
            Duration::from_secs(30),
        )
        .expect("the agents are shown");
        // The task stream, as the server sends it compact, read back by the page.
        page.wait_for(
            "window.ladleLast.stream.length > 0 && window.ladleLast.stream.every(s => s.agent.startsWith('agent-') && s.end_ms >= s.start_ms && typeof s.ok === 'boolean')",
            Duration::from_secs(30),
        )
        .expect("the task stream is shown");
        // The first map: 299 items done and one failed, its error shown.
        page.wait_for(&format!("Number({done}) === 299"), Duration::from_secs(60))
            .expect("the first map's progress is shown");
        page.wait_for(
            &format!("[...document.querySelectorAll('[data-job=\"{job}\"] .job-error')].some(e => e.textContent.includes('input 123 is cursed'))"),
            Duration::from_secs(30),
        )
        .expect("the failed item's error is shown");
    }
    std::fs::write(&gate, b"go").expect("gate file");
    if let Some(page) = &page {
        // The second map: the page follows without a reload.
        page.wait_for(&format!("Number({done}) === 599"), Duration::from_secs(60))
            .expect("the page follows the job's progress");
        let text = page
            .eval("document.querySelector('[data-job] .progress-text').textContent")
            .expect("progress text");
        assert!(
            show(&text).contains("599/600") || show(&text).contains("600/600"),
            "{}",
            show(&text)
        );
        let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
        page.screenshot(&shot).expect("screenshot");
        eprintln!("the dashboard: {}", shot.display());
    }
    let status = driver.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "the driver failed: {}", driver.output());
    let found = last_json(&driver.output());
    assert_eq!(found["ok"], 599, "{}", show(&found));
    drop(page);
    drop(browser);

    // The job's record, its driver gone.
    let out = scheduler.cli(&["jobs", "--all", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs: Value = serde_json::from_slice(&out.stdout).expect("jobs --json");
    let row = jobs
        .as_array()
        .and_then(|j| j.iter().find(|r| r["id"] == job.as_str()))
        .unwrap_or_else(|| panic!("the finished job is listed: {}", show(&jobs)));
    assert_eq!(row["state"], "done", "{}", show(row));
    assert_eq!(row["items"]["total"], 600, "{}", show(row));
    assert_eq!(row["items"]["done"], 599, "{}", show(row));
    assert_eq!(row["items"]["failed"], 1, "{}", show(row));
    assert_eq!(row["progress"], 1.0, "{}", show(row));
    let table = String::from_utf8_lossy(&scheduler.cli(&["jobs", "--all"]).stdout).into_owned();
    assert!(
        table.contains("600/600") && table.contains("100%"),
        "{table}"
    );

    let out = scheduler.cli(&["tasks", &job[..8], "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tasks: Value = serde_json::from_slice(&out.stdout).expect("tasks --json");
    let failed = tasks["failed"].as_array().expect("failed tasks");
    assert_eq!(failed.len(), 1, "{}", show(&tasks));
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("input 123 is cursed")),
        "{}",
        show(&failed[0])
    );
    assert!(
        failed[0]["agent"]
            .as_str()
            .is_some_and(|a| a.starts_with("agent-"))
    );
    assert_eq!(failed[0]["attempt"], 1);
    assert!(!tasks["recent"].as_array().expect("recent").is_empty());

    let out = scheduler.cli(&["logs", &job, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs: Value = serde_json::from_slice(&out.stdout).expect("logs --json");
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    for x in (0..600).step_by(50) {
        assert!(
            lines.contains(&format!("watched item {x}").as_str()),
            "line of item {x} kept: {lines:?}"
        );
    }
    let text = String::from_utf8_lossy(&scheduler.cli(&["logs", &job]).stdout).into_owned();
    assert!(text.contains("] watched item 550"), "{text}");

    // The metrics: well-formed to Prometheus' own checker, and the job's true counts.
    let metrics_url = format!("{url}metrics");
    let (code, metrics) = http_get(&metrics_url);
    assert_eq!(code, 200, "{metrics}");
    match promtool_check(&metrics) {
        Ok(()) => {}
        Err(skipped) => eprintln!("{skipped}"),
    }
    let labels = format!("{{job_id=\"{job}\",name=\"ladle-test-driver\"}}");
    // The job's true counts, and the cluster's.
    for (series, want) in [
        (format!("ladle_job_items_submitted_total{labels}"), 600.0),
        (format!("ladle_job_items_done_total{labels}"), 599.0),
        (format!("ladle_job_items_failed_total{labels}"), 1.0),
        (
            "ladle_items_finished_total{outcome=\"done\"}".to_owned(),
            599.0,
        ),
        (
            "ladle_items_finished_total{outcome=\"failed\"}".to_owned(),
            1.0,
        ),
        ("ladle_agents{state=\"alive\"}".to_owned(), 2.0),
        ("ladle_slots{kind=\"cpu\"}".to_owned(), 4.0),
        ("ladle_jobs_ended_total".to_owned(), 1.0),
    ] {
        assert_eq!(sample(&metrics, &series), Some(want), "{series}: {metrics}");
    }
    // Every chunk was placed at least once and finished once.
    let placed = sample(&metrics, "ladle_placements_total").expect("placements");
    let finished =
        sample(&metrics, "ladle_tasks_finished_total{outcome=\"done\"}").expect("finished");
    assert!(placed >= finished && finished > 0.0, "{metrics}");
    assert!(
        sample(
            &metrics,
            "ladle_core_event_seconds_count{event=\"agent_results\"}"
        )
        .is_some_and(|n| n > 0.0),
        "{metrics}"
    );
    // Asked for nothing else, the scrape is Prometheus' own text format, not OpenMetrics.
    assert!(metrics.lines().all(|l| l != "# EOF"));
}
