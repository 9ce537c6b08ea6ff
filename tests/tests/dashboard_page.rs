//! The dashboard page (scheduler/src/server/http/dashboard.html) in a real headless Chromium, fed by a
//! stand-in for the scheduler's HTTP port: `api/overview` and an `api/events` stream whose
//! snapshots the test sends one at a time, so each step waits on what the page shows.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ladle_tests::browser::{Browser, BrowserError, Page};
use serde_json::{Value, json};

const PAGE: &str = include_str!("../../scheduler/src/server/http/dashboard.html");
const WAIT: Duration = Duration::from_secs(20);
const PREFIX: &str = "/ladle";

#[derive(Default)]
struct State {
    overview: String,
    events: Vec<String>,
    /// Bumped to end every open event stream.
    generation: u64,
    /// While false, event streams are cut as soon as they connect (a scheduler that is down).
    events_up: bool,
}

/// The scheduler's HTTP port as the page sees it.
struct Fixture {
    url: String,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl Fixture {
    fn start(overview: &Value) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fixture server");
        let url = format!(
            "http://{}/",
            listener.local_addr().expect("the fixture's address")
        );
        let state = Arc::new((
            Mutex::new(State {
                overview: overview.to_string(),
                events_up: true,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let shared = state.clone();
        // Lives as long as the test process; each connection gets a thread of its own because
        // an event stream holds its connection open.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Fixture { url, state }
    }

    /// A new snapshot: the answer of `api/overview` and the next event on every stream.
    fn push(&self, overview: &Value) {
        let (lock, changed) = &*self.state;
        let mut state = lock.lock().expect("fixture state");
        state.overview = overview.to_string();
        let event = state.overview.clone();
        state.events.push(event);
        changed.notify_all();
    }

    fn set_events_up(&self, up: bool) {
        let (lock, changed) = &*self.state;
        let mut state = lock.lock().expect("fixture state");
        state.events_up = up;
        state.generation += 1;
        changed.notify_all();
    }
}

fn serve(stream: TcpStream, shared: &(Mutex<State>, Condvar)) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" || header == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    // The page may sit behind a path prefix (a proxy's); its own requests are relative to it.
    let path = path.strip_prefix(PREFIX).unwrap_or(path);
    let mut stream = stream;
    let (lock, changed) = shared;
    match path {
        "/" => respond(&mut stream, "200 OK", "text/html; charset=utf-8", PAGE),
        "/api/overview" => {
            let body = lock.lock().expect("fixture state").overview.clone();
            respond(&mut stream, "200 OK", "application/json", &body);
        }
        "/api/events" => {
            let mut state = lock.lock().expect("fixture state");
            if !state.events_up {
                // Dropped without an answer: a network error, which EventSource retries.
                return;
            }
            let generation = state.generation;
            // A short retry, so the page's reconnection is quick to see.
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                        Cache-Control: no-store\r\nConnection: close\r\n\r\nretry: 200\n\n";
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut sent = 0;
            loop {
                while sent < state.events.len() {
                    let frame = format!("event: overview\ndata: {}\n\n", state.events[sent]);
                    sent += 1;
                    if stream.write_all(frame.as_bytes()).is_err() {
                        return;
                    }
                }
                if state.generation != generation {
                    return;
                }
                // Woken by push and set_events_up; the timeout only bounds a thread whose
                // browser went away without closing.
                state = changed
                    .wait_timeout(state, Duration::from_secs(30))
                    .expect("fixture state")
                    .0;
            }
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found"),
    }
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

/// The browser, or None (printed as skipped) where no Chromium is installed.
fn browser() -> Option<Browser> {
    match Browser::launch() {
        Ok(browser) => Some(browser),
        Err(BrowserError::NotFound) => {
            eprintln!("skipped: {}", BrowserError::NotFound);
            None
        }
        Err(other) => panic!("chromium is installed but does not start: {other}"),
    }
}

/// target/ of this build, where the screenshots go (target/<profile>/deps/<test binary>).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit in u64")
}

const JOB: &str = "2f9c41d07e5b4a4f9d3c8e1a6b2f0c11";
const SMALL_JOB: &str = "7a0be2c94d1f4e3b8c5d6e7f8a9b0c1d";
const CURSED: &str = "panicked: input 500 is cursed";
/// A job name as a user might type it, which must show as text and never become markup.
const SNEAKY_NAME: &str = "<img src=x onerror=\"window.ladlePwned=1\">squares";

/// Two agents, one busy job and one finished one; `step` moves the busy job along, and from
/// step 2 it has an error.
fn small_snapshot(now: u64, step: u64) -> Value {
    let done = [1000, 5000, 12000][usize::try_from(step).expect("a small step")];
    let failed = u64::from(step >= 2);
    let running = 8;
    let total = 20000;
    let errors = if step >= 2 {
        json!([{ "task": "my_crate::fragile", "message": CURSED, "agent": "node1", "attempt": 1 }])
    } else {
        json!([])
    };
    let stream: Vec<Value> = (0..120)
        .map(|i| {
            let start = now - 59_000 + i * 480;
            json!({
                "agent": if i % 2 == 0 { "node1" } else { "node2" },
                "job": if i % 7 == 0 { SMALL_JOB } else { JOB },
                "start_ms": start,
                "end_ms": start + 300 + (i % 5) * 150,
                "ok": !(step >= 2 && i == 100),
            })
        })
        .collect();
    let throughput: Vec<Value> = (0..120)
        .map(|i| json!({ "t_ms": now - (119 - i) * 1000, "items": 600 + (i * 37) % 400 }))
        .collect();
    json!({
        "cluster": "ladle-test",
        "version": "0.1.0",
        "now_ms": now,
        "uptime_s": 3725.5 + step as f64,
        "totals": { "agents_alive": 2, "agents_draining": 0, "agents_lost": 0,
                    "cpu_slots": 8, "cpu_busy": 5, "gpu_slots": 0, "gpu_busy": 0,
                    "tasks_queued": 120, "tasks_running": 5, "jobs_open": 1 },
        "agents": [
            { "id": "agent-1f3a9b", "host": "node1", "state": "alive", "cpu_slots": 4, "cpu_busy": 3,
              "gpu_slots": 0, "gpu_busy": 0, "memory_bytes": 17_179_869_184_u64,
              "memory_available_bytes": 8_000_000_000_u64, "tasks_done": 1234 + step * 100 },
            { "id": "agent-7c2d44", "host": "node2", "state": "alive", "cpu_slots": 4, "cpu_busy": 2,
              "gpu_slots": 2, "gpu_busy": 1, "memory_bytes": 34_359_738_368_u64,
              "memory_available_bytes": 30_000_000_000_u64, "tasks_done": 987 + step * 100 },
        ],
        "jobs": [
            { "id": JOB, "name": SNEAKY_NAME, "state": "running", "driver_connected": true,
              "items_total": total, "items_done": done, "items_failed": failed,
              "items_running": running, "items_queued": total - done - failed - running,
              "retries": step, "started_ms": now - 30_000, "ended_ms": null,
              "items_per_s": 812.5, "errors": errors },
            { "id": SMALL_JOB, "name": "warm-up", "state": "done", "driver_connected": false,
              "items_total": 500, "items_done": 500, "items_failed": 0, "items_running": 0,
              "items_queued": 0, "retries": 0, "started_ms": now - 80_000,
              "ended_ms": now - 50_000, "items_per_s": 0.0, "errors": [] },
        ],
        "stream": stream,
        "throughput": throughput,
    })
}

fn wait(page: &Page, js: &str) -> Value {
    page.wait_for(js, WAIT)
        .unwrap_or_else(|e| panic!("the page did not get there: {e}"))
}

fn eval(page: &Page, js: &str) -> Value {
    page.eval(js)
        .unwrap_or_else(|e| panic!("evaluating in the page: {e}"))
}

fn progress_is(done: u64) -> String {
    format!(
        "document.querySelector('[data-job=\"{JOB}\"] .progress-text')\
         .textContent.includes('{done}/20000')"
    )
}

#[test]
fn dashboard_follows_the_event_stream() {
    let Some(browser) = browser() else { return };
    let now = now_ms();
    let fixture = Fixture::start(&small_snapshot(now, 0));
    // Under a prefix, with the credential query a user's link carries (the server's business).
    let url = format!(
        "{}{}/?credential=not-for-the-page",
        fixture.url,
        &PREFIX[1..]
    );
    let page = browser.open(&url).expect("the dashboard opens");

    // The first picture comes from api/overview alone; no event has been sent yet.
    wait(&page, &progress_is(1000));
    fixture.push(&small_snapshot(now + 1000, 1));
    wait(&page, &progress_is(5000));
    fixture.push(&small_snapshot(now + 2000, 2));
    wait(&page, &progress_is(12000));
    assert_eq!(
        eval(
            &page,
            &format!("document.querySelector('[data-job=\"{JOB}\"]').dataset.done")
        ),
        json!("12000")
    );
    wait(
        &page,
        &format!(
            "Array.from(document.querySelectorAll('[data-job=\"{JOB}\"] .job-error'))\
             .some(e => e.textContent.includes({CURSED:?}))"
        ),
    );
    wait(
        &page,
        "['node1', 'node2'].every(h => document.querySelector('#agents').innerText.includes(h))",
    );
    assert_eq!(
        eval(
            &page,
            "document.querySelectorAll('#agents [data-agent]').length"
        ),
        json!(2)
    );
    assert_eq!(
        eval(&page, "document.querySelector('#status').textContent"),
        json!("live")
    );

    // User text stays text.
    assert_eq!(
        eval(
            &page,
            "document.querySelector('#jobs img') === null && !window.ladlePwned"
        ),
        json!(true)
    );
    assert_eq!(
        eval(
            &page,
            &format!("document.querySelector('[data-job=\"{JOB}\"] .job-name').textContent")
        ),
        json!(SNEAKY_NAME)
    );
    let renders = eval(&page, "window.ladleRenders")
        .as_u64()
        .expect("the page counts its renders");
    assert!(renders >= 3, "{renders} renders for three snapshots");

    let shot = target_dir().join("dashboard-page.png");
    page.screenshot(&shot).expect("a screenshot");
    eprintln!("screenshot: {}", shot.display());

    // The scheduler goes away: the badge says so, and goes once events flow again.
    fixture.set_events_up(false);
    wait(
        &page,
        "document.querySelector('#status').textContent.includes('disconnected, retrying')",
    );
    fixture.set_events_up(true);
    wait(
        &page,
        "document.querySelector('#status').textContent === 'live'",
    );
}

/// A big cluster: 1,000 agents (some draining or lost), 2,000 spans, a dozen jobs.
fn big_snapshot(now: u64, step: u64) -> Value {
    let jobs: Vec<String> = (0..12)
        .map(|j| format!("{j:02x}{:030x}", j * 7919 + 1))
        .collect();
    let agents: Vec<Value> = (0..1000u64)
        .map(|i| {
            let state = match i % 97 {
                13 => "lost",
                41 | 42 => "draining",
                _ => "alive",
            };
            json!({
                "id": format!("agent-{i:04}"), "host": format!("host{i:04}"), "state": state,
                "cpu_slots": 8, "cpu_busy": (i * 7 + step) % 9, "gpu_slots": if i % 10 == 0 { 4 } else { 0 },
                "gpu_busy": if i % 10 == 0 { (i + step) % 5 } else { 0 },
                "memory_bytes": 68_719_476_736_u64,
                "memory_available_bytes": 68_719_476_736_u64 / 100 * ((i * 13 + step) % 100),
                "tasks_done": i * 31 + step * 8,
            })
        })
        .collect();
    let stream: Vec<Value> = (0..2000u64)
        .map(|i| {
            let start = now - 60_000 + (i * 29) % 59_000;
            json!({
                "agent": format!("host{:04}", (i * 37 + step) % 1000),
                "job": jobs[usize::try_from(i % 12).expect("a job index")],
                "start_ms": start, "end_ms": start + 200 + (i % 11) * 90, "ok": i % 53 != 0,
            })
        })
        .collect();
    let job_list: Vec<Value> = jobs
        .iter()
        .enumerate()
        .map(|(j, id)| {
            let j = j as u64;
            let total = 100_000;
            let done = (j * 9000 + step * 500).min(total - j - 64);
            let errors: Vec<Value> = (0..(j % 4) * 5)
                .map(|e| json!({ "task": "bench::work", "message": format!("error {e} of job {j}"),
                                  "agent": format!("host{:04}", e * 17), "attempt": 1 + e % 3 }))
                .collect();
            json!({
                "id": id, "name": format!("sweep-{j}"),
                "state": if j < 10 { "running" } else { "done" }, "driver_connected": true,
                "items_total": total, "items_done": done, "items_failed": j,
                "items_running": 64, "items_queued": total.saturating_sub(done + j + 64), "retries": j,
                "started_ms": now - 100_000, "ended_ms": null, "items_per_s": 400.0 + j as f64,
                "errors": errors,
            })
        })
        .collect();
    let throughput: Vec<Value> = (0..120)
        .map(|i| json!({ "t_ms": now - (119 - i) * 1000, "items": 4000 + (i * 97 + step) % 900 }))
        .collect();
    json!({
        "cluster": "ladle-big", "version": "0.1.0", "now_ms": now, "uptime_s": 86_400.0,
        "totals": { "agents_alive": 969, "agents_draining": 21, "agents_lost": 10,
                    "cpu_slots": 8000, "cpu_busy": 3990, "gpu_slots": 400, "gpu_busy": 200,
                    "tasks_queued": 1_000_000, "tasks_running": 3990, "jobs_open": 10 },
        "agents": agents, "jobs": job_list, "stream": stream, "throughput": throughput,
    })
}

#[test]
fn dashboard_keeps_up_with_a_thousand_agents() {
    let Some(browser) = browser() else { return };
    let now = now_ms();
    let fixture = Fixture::start(&big_snapshot(now, 0));
    let page = browser.open(&fixture.url).expect("the dashboard opens");
    wait(&page, "window.ladleRenders >= 1");
    wait(
        &page,
        "document.querySelector('#agents').innerText.includes('1,000 agents')",
    );
    // Drawn, not a thousand tiles; the hosts that need attention are still text.
    assert_eq!(
        eval(
            &page,
            "[document.querySelectorAll('#agents [data-agent]').length, \
             !!document.querySelector('#agents canvas')]"
        ),
        json!([0, true])
    );
    wait(
        &page,
        "document.querySelector('#agents').innerText.includes('host0013')",
    );

    let mut times = Vec::new();
    for step in 1..=5 {
        let before = eval(&page, "window.ladleRenders")
            .as_u64()
            .expect("a render count");
        let started = Instant::now();
        fixture.push(&big_snapshot(now + step * 1000, step));
        wait(&page, &format!("window.ladleRenders > {before}"));
        let ms = eval(&page, "window.ladleLastRenderMs")
            .as_f64()
            .expect("a render time");
        let frame = wait(&page, "window.ladleLastFrameMs");
        eprintln!(
            "render {step}: {ms:.1} ms of script, {frame} ms to the next frame, {:?} from push to seen",
            started.elapsed()
        );
        times.push(ms);
    }
    wait(
        &page,
        &format!(
            "document.querySelector('[data-job] .progress-text').textContent.includes('{}/100000')",
            5 * 500
        ),
    );
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    eprintln!("median render at 1,000 agents and 2,000 spans: {median:.1} ms");
    // A second per update is what the page has; a tenth of it leaves room for a slow machine.
    assert!(median < 100.0, "a render takes {median:.1} ms");

    let shot = target_dir().join("dashboard-page-1000.png");
    page.screenshot(&shot).expect("a screenshot");
    eprintln!("screenshot: {}", shot.display());
}
