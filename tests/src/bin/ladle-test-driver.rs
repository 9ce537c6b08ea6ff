//! A driver program for the end-to-end tests: each subcommand is one scenario, run through the
//! real SDK against the cluster in LADLE_SCHEDULER, printing one JSON line of findings.

use std::time::{Duration, Instant};

use ladle::{Cluster, ErrorKind, Options, ReturnWhen, Shared, StreamExt};
use serde_json::json;

/// Slow enough to watch, chatty (a line every 50 inputs) and failing at input 123.
#[ladle::task]
fn watched(x: u64) -> u64 {
    if x.is_multiple_of(50) {
        println!("watched item {x}");
    }
    std::thread::sleep(Duration::from_millis(5));
    if x == 123 {
        panic!("input 123 is cursed");
    }
    x
}

#[ladle::task]
fn triple_plus_one(x: u64) -> u64 {
    3 * x + 1
}

#[ladle::task]
fn fragile(x: u64) -> u64 {
    if x == 500 {
        panic!("input 500 is cursed");
    }
    x
}

#[ladle::task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[ladle::task]
fn checked(x: u64) -> Result<u64, String> {
    if x % 2 == 1 {
        Err(format!("{x} is odd"))
    } else {
        Ok(x / 2)
    }
}

#[ladle::task]
fn byte_at(args: (Shared<Vec<u8>>, u64)) -> (u64, u8) {
    let (data, i) = args;
    (data.len() as u64, data[(i as usize * 4099) % data.len()])
}

#[ladle::task]
fn length(data: Vec<u8>) -> usize {
    data.len()
}

/// Takes 5 ms, returns its input.
#[ladle::task]
fn slow_id(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    x
}

/// Kills its worker process on input 123.
#[ladle::task]
fn abort_on_123(x: u64) -> u64 {
    if x == 123 {
        std::process::abort();
    }
    std::thread::sleep(Duration::from_millis(2));
    x
}

/// Fails the first time it is called for a path (it leaves the file behind), then succeeds.
#[ladle::task]
fn fails_once(path: String) -> Result<u64, String> {
    if std::path::Path::new(&path).exists() {
        Ok(1)
    } else {
        std::fs::write(&path, b"tried").map_err(|e| e.to_string())?;
        Err(format!("first try at {path} fails"))
    }
}

/// Kills its worker on the agent named `agent`, noting it in `dir` first; elsewhere returns
/// the agent it ran on.
#[ladle::task]
fn abort_on(args: (String, String)) -> String {
    let (agent, dir) = args;
    let here = ladle::current_agent().unwrap_or_default();
    if here == agent {
        let _ = std::fs::write(format!("{dir}/crash-{}", std::process::id()), b"");
        std::process::abort();
    }
    here
}

/// Takes 50 ms; returns where it ran and when (ms since the epoch) it started and ended.
#[ladle::task]
fn stamped(_: u64) -> (String, u128, u128) {
    let start = now_ms();
    std::thread::sleep(Duration::from_millis(50));
    (ladle::current_agent().unwrap_or_default(), start, now_ms())
}

/// Notes each run in the file at `path`, and fails.
#[ladle::task]
fn fails_always(path: String) -> Result<u64, String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| e.to_string())?;
    writeln!(file, "ran").map_err(|e| e.to_string())?;
    Err("this task always fails".into())
}

/// A number whose encoding panics at 57 (in the driver, as the map encodes it).
#[derive(serde::Deserialize)]
struct Cursed(u64);

impl serde::Serialize for Cursed {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 == 57 {
            panic!("57 cannot be encoded");
        }
        serializer.serialize_u64(self.0)
    }
}

#[ladle::task]
fn cursed_id(x: Cursed) -> u64 {
    x.0
}

#[ladle::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[ladle::task]
fn chatty(x: u64) -> u64 {
    println!("hello from task {x}");
    x
}

/// Prints colours, a bell and a C1 CSI: none may reach the driver's terminal as such.
#[ladle::task]
fn garish(_: u64) -> u64 {
    println!("\x1b[31mred\x1b[0m\x07");
    eprintln!("\u{9b}2Jcleared");
    0
}

/// The agent it ran on, and the names of the LADLE_* variables its worker was started with.
#[ladle::task]
fn ladle_vars(_: u64) -> (String, Vec<String>) {
    let mut names: Vec<String> = std::env::vars_os()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .filter(|name| name.to_ascii_uppercase().starts_with("LADLE_"))
        .collect();
    names.sort();
    (ladle::current_agent().unwrap_or_default(), names)
}

/// Tries to open a cluster from inside a task, with `LADLE_SCHEDULER` pointing at `address`
/// (and, with an empty one, none: the embedded default): what it got.
#[ladle::task]
fn open_inside(address: String) -> String {
    let opened = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                if address.is_empty() {
                    Cluster::local().await
                } else {
                    Cluster::connect(&address).await
                }
            })
            .map_err(|e| e.to_string())
        });
    match opened {
        Ok(_) => "opened a cluster".into(),
        Err(message) => message,
    }
}

/// What a nested task may fail with.
type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Nested futures, the deadlock case: `outer` submits `inner` (alone, in a `map_reduce` and in
/// a `map`) and waits for them.
#[ladle::task]
fn inner(i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(50));
    i * 10
}

#[ladle::task]
fn outer(i: u64) -> Result<u64, Failure> {
    // `from_env` inside a task is the job's handle, as `ladle::cluster()` is.
    let cluster = ladle::block_on(Cluster::from_env())?;
    let child = cluster.submit(inner, i)?;
    let folded = cluster.map_reduce(inner, add, [i, i]);
    let listed = cluster.map(inner, [i]);
    let (child, folded, listed) =
        ladle::block_on(async { (child.await, folded.await, listed.await) });
    Ok(child? + folded? + listed?.iter().sum::<u64>() + 1)
}

/// A node of a binary recursion of `depth` levels below it: an inner node submits its two
/// children and waits for them; a leaf spins `leaf_ms` and, when `dir` is given, notes its
/// process in `<dir>/pids` first. Returns the leaves below it.
#[ladle::task]
fn tree(args: (u32, u64, String)) -> Result<u64, Failure> {
    let (depth, leaf_ms, dir) = args;
    if depth == 0 {
        if !dir.is_empty() {
            note(&dir, "pids", "leaf")?;
        }
        let until = Instant::now() + Duration::from_millis(leaf_ms);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        return Ok(1);
    }
    let cluster = ladle::cluster()?;
    let left = cluster.submit(tree, (depth - 1, leaf_ms, dir.clone()))?;
    let right = cluster.submit(tree, (depth - 1, leaf_ms, dir))?;
    let (left, right) = ladle::block_on(async { (left.await, right.await) });
    Ok(left? + right?)
}

/// Appends `<what> <agent> <pid> <ms>` to `<dir>/<name>`: one line per execution, below
/// anything the SDK does.
fn note(dir: &str, name: &str, what: &str) -> Result<(), String> {
    use std::io::Write;
    let line = format!(
        "{what} {} {} {}\n",
        ladle::current_agent().unwrap_or_default(),
        std::process::id(),
        now_ms()
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{dir}/{name}"))
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map_err(|e| format!("cannot note {what} in {dir}/{name}: {e}"))
}

/// A child of [`family`]: notes its start and its end, 400 ms apart.
#[ladle::task]
fn member(args: (String, u64)) -> Result<u64, String> {
    let (dir, i) = args;
    note(&dir, &format!("child-{i}"), "start")?;
    std::thread::sleep(Duration::from_millis(400));
    note(&dir, &format!("child-{i}"), "done")?;
    Ok(i)
}

/// A parent of eight [`member`]s: notes each of its runs, and waits for them all.
#[ladle::task]
fn family(dir: String) -> Result<u64, Failure> {
    note(&dir, "root", "start")?;
    let cluster = ladle::cluster()?;
    let children = (0..8u64)
        .map(|i| cluster.submit(member, (dir.clone(), i)))
        .collect::<Result<Vec<_>, _>>()?;
    let results = ladle::block_on(ladle::gather(children))?;
    note(&dir, "root", "done")?;
    Ok(results.iter().sum())
}

/// Where and when a task ran, as the worker saw it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Seen {
    input: u64,
    agent: String,
    /// LADLE_GPU and CUDA_VISIBLE_DEVICES in the worker.
    gpu: Option<u32>,
    visible: Option<String>,
    /// Wall-clock milliseconds (the agents share this machine's clock).
    start_ms: u128,
    end_ms: u128,
}

fn seen(input: u64, ms: u64) -> Seen {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    };
    let start_ms = now();
    std::thread::sleep(Duration::from_millis(ms));
    Seen {
        input,
        agent: ladle::current_agent().unwrap_or_default(),
        gpu: ladle::gpu::ordinal(),
        visible: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        start_ms,
        end_ms: now(),
    }
}

#[ladle::task(gpu)]
fn on_gpu(x: u64) -> Seen {
    seen(x, 150)
}

#[ladle::task]
fn on_cpu(x: u64) -> Seen {
    seen(x, 150)
}

/// Long enough to be caught running when its agent is killed.
#[ladle::task(gpu)]
fn on_gpu_slow(x: u64) -> Seen {
    seen(x, 1500)
}

#[ladle::task(prefer_gpu)]
fn gpu_or_cpu(x: u64) -> Seen {
    seen(x, 20)
}

/// 5 ms, or 15 ms on the agent named "slow": a machine three times slower.
#[ladle::task]
fn uneven(_: u64) -> String {
    let agent = ladle::current_agent().unwrap_or_default();
    let ms = if agent == "slow" { 15 } else { 5 };
    std::thread::sleep(Duration::from_millis(ms));
    agent
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Sleeps 10 ms; returns when it ended (wall clock, ms).
#[ladle::task]
fn ten_ms(_: u64) -> u128 {
    std::thread::sleep(Duration::from_millis(10));
    now_ms()
}

/// Waits (up to 20 s) for a file that the driver writes only once it has another task's result.
#[ladle::task]
fn wait_for_file(path: String) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if std::path::Path::new(&path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The scheduling policy of the thread that runs the task.
#[ladle::task]
fn policy(_: u64) -> Option<u32> {
    ladle_tests::sched_policy(std::path::Path::new("/proc/thread-self/stat"))
}

/// The length of its argument and the sum of its bytes.
#[ladle::task]
fn checksum(data: Vec<u8>) -> (u64, u64) {
    (data.len() as u64, data.iter().map(|&b| u64::from(b)).sum())
}

/// `n` bytes of a pattern [`expected_sum`] knows.
#[ladle::task]
fn bytes_of(n: u64) -> Vec<u8> {
    pattern(n as usize)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn expected(data: &[u8]) -> (u64, u64) {
    (data.len() as u64, data.iter().map(|&b| u64::from(b)).sum())
}

/// Prints `lines` lines as fast as it can, then one line of 100,000 bytes.
#[ladle::task]
fn flood(lines: u64) -> u64 {
    for i in 0..lines {
        println!("flood line {i}");
    }
    println!("{}", "y".repeat(100_000));
    lines
}

/// Notes that it runs, below anything the SDK does (a line appended to `<dir>/<index>`: one
/// line per execution, see [`note`]), then takes 20 ms and returns its index.
#[ladle::task]
fn counted(args: (String, u64)) -> Result<u64, String> {
    let (dir, index) = args;
    note(&dir, &index.to_string(), "run")?;
    std::thread::sleep(Duration::from_millis(20));
    Ok(index)
}

/// How many times each index's result reached the program, and what went wrong.
struct Tally {
    seen: Vec<u32>,
    wrong: u64,
    failed: u64,
    errors: Vec<String>,
}

impl Tally {
    fn new(n: u64) -> Self {
        Self {
            seen: vec![0; n as usize],
            wrong: 0,
            failed: 0,
            errors: Vec::new(),
        }
    }

    /// One result, of `index` where known.
    fn note(&mut self, index: Option<usize>, result: Result<u64, ladle::TaskError>) {
        match result {
            Err(e) => {
                self.failed += 1;
                if self.errors.len() < 10 {
                    self.errors.push(e.to_string());
                }
            }
            Ok(value) => match index.filter(|&i| i as u64 == value && i < self.seen.len()) {
                Some(i) => self.seen[i] += 1,
                None => self.wrong += 1,
            },
        }
    }

    fn report(&self, elapsed: Duration) -> serde_json::Value {
        let count = |f: fn(u32) -> bool| self.seen.iter().filter(|&&c| f(c)).count();
        json!({
            "n": self.seen.len(),
            "once": count(|c| c == 1),
            "duplicated": count(|c| c > 1),
            "missing": count(|c| c == 0),
            "wrong": self.wrong,
            "failed": self.failed,
            "errors": self.errors,
            "elapsed_ms": elapsed.as_millis(),
        })
    }
}

/// Keeps the program (and its session) alive until the test writes `path`, for at most a
/// minute: a driver cannot see its own output, the test can.
async fn stay_until_written(path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(path).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn out(value: serde_json::Value) {
    println!("{value}");
}

/// Opens a session under another driver's session id, as a hostile holder of a driver
/// credential would (by hand, the SDK never does): prints how the scheduler answered.
async fn claim_session(session_id: String) -> Result<(), Box<dyn std::error::Error>> {
    use ladle_common::client::{self, ClientAuth, ClientKeys};
    use ladle_proto::v1::{
        DriverMessage, OpenSession, driver_message, driver_service_client::DriverServiceClient,
    };
    let file = std::env::var_os("LADLE_CLUSTER_FILE").map(std::path::PathBuf::from);
    let auth = ClientAuth::resolve(&ClientKeys {
        cluster_file: file.as_deref(),
        ..ClientKeys::default()
    })?;
    let address = std::env::var("LADLE_SCHEDULER")?;
    let channel = client::connect(&address, &auth).await?;
    let mut driver = DriverServiceClient::with_interceptor(channel, auth.interceptor());
    // The job's own executable (this program), which its driver uploaded.
    let executable = ladle_common::blobs::describe(&std::fs::read(std::env::current_exe()?)?);
    let open = DriverMessage {
        body: Some(driver_message::Body::Open(OpenSession {
            protocol_version: ladle_proto::PROTOCOL_VERSION,
            session_id,
            job_name: "impostor".into(),
            executable: Some(executable),
            driver_host: "impostor".into(),
            resume_secret: String::new(),
        })),
    };
    let answer = async {
        let mut down = driver
            .session(tokio_stream::iter([open]))
            .await?
            .into_inner();
        down.message().await
    };
    match answer.await {
        Ok(event) => out(json!({ "code": "Ok", "message": format!("{event:?}") })),
        Err(status) => out(json!({
            "code": format!("{:?}", status.code()),
            "message": status.message(),
        })),
    }
    Ok(())
}

#[ladle::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    if scenario == "claim_session" {
        return claim_session(std::env::args().nth(2).unwrap_or_default()).await;
    }
    let cluster = Cluster::from_env().await?;
    match scenario.as_str() {
        "observed" => {
            // Two maps of 300, the second once the file named by the second argument exists:
            // whoever watches sees the job stand still between them, then move.
            let gate = std::path::PathBuf::from(std::env::args().nth(2).unwrap_or_default());
            let (mut ok, mut failed) = (0u64, Vec::new());
            for (round, inputs) in [(0, 0..300u64), (1, 300..600u64)] {
                if round == 1 {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !gate.exists() {
                        if Instant::now() > deadline {
                            return Err(
                                format!("{} did not appear within 120 s", gate.display()).into()
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let mut results = cluster.map(watched, inputs);
                while let Some(result) = results.next().await {
                    match result {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e.message),
                    }
                }
            }
            out(json!({ "ok": ok, "failed": failed }));
        }
        "map100k" => {
            let results = cluster.map(triple_plus_one, 0..100_000u64).await?;
            let correct = results
                .iter()
                .enumerate()
                .all(|(i, &r)| r == 3 * i as u64 + 1);
            out(json!({ "count": results.len(), "correct": correct }));
        }
        "panic" => {
            let mut results = cluster.map(fragile, 0..1000u64);
            let (mut ok, mut errors) = (0, Vec::new());
            while let Some(result) = results.next().await {
                match result {
                    Ok(_) => ok += 1,
                    Err(e) => errors.push(json!({ "kind": format!("{:?}", e.kind), "task": e.task, "message": e.message, "agent": e.agent, "attempt": e.attempt, "text": e.to_string() })),
                }
            }
            let single = cluster.submit(checked, 3)?.await.map_err(|e| e.to_string());
            out(json!({ "ok": ok, "errors": errors, "single": single.err() }));
        }
        "wait" => {
            let mut futures = vec![cluster.submit(nap, 1)?];
            for _ in 0..3 {
                futures.push(cluster.submit(nap, 30_000)?);
            }
            let first = ladle::wait(futures, ReturnWhen::FirstCompleted, None).await;
            let first_done = first.done.len();
            let timed = ladle::wait(
                first.pending,
                ReturnWhen::AllCompleted,
                Some(Duration::from_millis(300)),
            )
            .await;
            for f in &timed.pending {
                f.cancel();
            }
            let mut done = first.done;
            let value = done.pop().ok_or("nothing done")?.await?;
            out(
                json!({ "first_done": first_done, "value": value, "after_timeout_done": timed.done.len(), "after_timeout_pending": timed.pending.len() }),
            );
        }
        "cancel" => {
            // Long enough to keep every slot busy for minutes, unless cancelled.
            let map = cluster.map_with(nap, std::iter::repeat_n(200u64, 5000), &Options::new());
            let canceller = map.canceller();
            let mut map = map;
            let first = map.next().await;
            canceller.cancel();
            let mut cancelled = 0;
            while let Some(result) = map.next().await {
                if matches!(result, Err(ref e) if e.kind == ErrorKind::Cancelled) {
                    cancelled += 1;
                }
            }
            // A collected map whose caller stops waiting is cancelled as well.
            let abandoned = tokio::time::timeout(
                Duration::from_secs(1),
                cluster.map(nap, std::iter::repeat_n(200u64, 5000)),
            )
            .await;
            out(json!({
                "first_ok": matches!(first, Some(Ok(_))),
                "cancelled": cancelled,
                "abandoned": abandoned.is_err(),
            }));
            // Stay connected so that only the cancel can have freed the slots.
            println!("{}", json!({ "waiting": true }));
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        "hang" => {
            let map = cluster.map(nap, std::iter::repeat_n(500u64, 5000));
            println!("{}", json!({ "started": true }));
            let error = map
                .await
                .err()
                .map(|e| json!({ "kind": format!("{:?}", e.kind), "message": e.message }));
            out(json!({ "error": error }));
        }
        "stop_in_serialize" => {
            // A map whose own driving code panics (in an input's `Serialize`) gives `Err`,
            // never a shorter `Ok`; every input of `map_as_completed` gets an outcome.
            let inputs = || (0..100u64).map(Cursed);
            let mapped = cluster.map(cursed_id, inputs()).await;
            let reduced = cluster.map_reduce(cursed_id, add, inputs()).await;
            let mut outcomes = 0;
            let mut failed = 0;
            let mut stream = cluster.map_as_completed(cursed_id, inputs());
            while let Some((_, result)) = stream.next().await {
                outcomes += 1;
                failed += usize::from(result.is_err());
            }
            out(json!({
                "map": mapped.map(|v| v.len()).map_err(|e| e.to_string()),
                "map_reduce": reduced.map_err(|e| e.to_string()),
                "as_completed": { "outcomes": outcomes, "failed": failed },
            }));
        }
        "widen" => {
            // Started on a one-slot cluster; the test adds a bigger agent mid-map. Reports the
            // most tasks that ran at once on each agent.
            let mut stream = cluster.map_as_completed(stamped, 0..300u64);
            println!("{}", json!({ "started": true }));
            let mut spans: Vec<(String, u128, u128)> = Vec::new();
            while let Some((_, result)) = stream.next().await {
                spans.push(result?);
            }
            let mut most = std::collections::BTreeMap::<String, usize>::new();
            for (agent, start, _) in &spans {
                let at_once = spans
                    .iter()
                    .filter(|(a, s, e)| a == agent && s <= start && start < e)
                    .count();
                let best = most.entry(agent.clone()).or_default();
                *best = (*best).max(at_once);
            }
            out(
                json!({ "count": spans.len(), "most_at_once": most, "slots_seen": cluster.slots() }),
            );
        }
        "crash_on" => {
            // Tasks that kill their worker on one agent only: each runs again on the other.
            let agent = std::env::args().nth(2).ok_or("an agent")?;
            let dir = std::env::args().nth(3).ok_or("a directory")?;
            let futures: Vec<_> = (0..20)
                .map(|_| cluster.submit(abort_on, (agent.clone(), dir.clone())))
                .collect::<Result<_, _>>()?;
            let mut ran_on = std::collections::BTreeMap::<String, u32>::new();
            let mut errors = Vec::new();
            for future in futures {
                match future.await {
                    Ok(here) => *ran_on.entry(here).or_default() += 1,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            out(json!({ "ran_on": ran_on, "errors": errors }));
        }
        "always_fails" => {
            // retries(2): three runs in all, each noted by the task itself; the error names the
            // last attempt.
            let path = std::env::args().nth(2).ok_or("a file")?;
            let result = cluster
                .submit_with(fails_always, path.clone(), &Options::new().retries(2))?
                .await;
            let runs = std::fs::read_to_string(&path)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            out(json!({
                "runs": runs,
                "attempt": result.as_ref().err().map(|e| e.attempt),
                "error": result.err().map(|e| e.to_string()),
            }));
        }
        "blocking" => {
            // `main` never yields to its runtime here (run it with LADLE_RUNTIME=current_thread):
            // only the SDK's own thread can send the task and take in its result.
            let mut future = cluster.submit(nap, 100)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !future.is_done() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let done = future.is_done();
            let value = if done { Some(future.await?) } else { None };
            out(json!({ "done_while_blocked": done, "value": value }));
        }
        "leave" => {
            // Long tasks submitted and never awaited: the program's end must stop them.
            let left = (0..20)
                .map(|_| cluster.submit(nap, 60_000))
                .collect::<Result<Vec<_>, _>>()?;
            // And a map, whose feeding task holds a handle on the cluster of its own.
            let _map = cluster.map(nap, std::iter::repeat_n(60_000u64, 100));
            out(json!({ "left": left.len() }));
        }
        "shared" => {
            let data: Vec<u8> = (0..50_000_000u64).map(|i| (i % 251) as u8).collect();
            let shared = cluster.share(data).await?;
            let inputs: Vec<_> = (0..1000u64).map(|i| (shared.clone(), i)).collect();
            let results = cluster.map(byte_at, inputs).await?;
            let correct = results.iter().enumerate().all(|(i, &(len, b))| {
                len == 50_000_000 && b == ((i * 4099 % 50_000_000) % 251) as u8
            });
            out(json!({ "count": results.len(), "correct": correct, "sha256": shared.sha256() }));
        }
        "unknown" => {
            let result = cluster.submit(triple_plus_one, 1)?.await;
            let error = result
                .err()
                .map(|e| json!({ "kind": format!("{:?}", e.kind), "text": e.to_string() }));
            out(json!({ "error": error }));
        }
        "too_large" => {
            let refused = cluster
                .submit(length, vec![7u8; 2 << 20])
                .map(|_| ())
                .map_err(|e| e.to_string());
            let small = cluster.submit(length, vec![7u8; 1000])?.await?;
            out(json!({ "refused": refused.err(), "small": small }));
        }
        "output" => {
            let results = cluster.map(chatty, 0..3u64).await?;
            out(json!({ "results": results }));
        }
        "escapes" => {
            // As "flood": connected until the test has seen the output and writes `path`.
            let path = std::env::args().nth(2).ok_or("escapes needs a path")?;
            let value = cluster.submit(garish, 0)?.await?;
            out(json!({ "value": value }));
            stay_until_written(&path).await;
        }
        "nested_pairs" => {
            // Twelve tasks that each wait for tasks of their own.
            let results = cluster.map(outer, 0..12u64).await?;
            let correct = results
                .iter()
                .enumerate()
                .all(|(i, &r)| r == i as u64 * 40 + 1);
            out(json!({ "results": results.len(), "correct": correct }));
        }
        "nested_tree" => {
            let depth: u32 = std::env::args()
                .nth(2)
                .and_then(|d| d.parse().ok())
                .ok_or("nested_tree needs a depth")?;
            let leaf_ms: u64 = std::env::args()
                .nth(3)
                .and_then(|d| d.parse().ok())
                .unwrap_or(1);
            let dir = std::env::args().nth(4).unwrap_or_default();
            let started = Instant::now();
            let root = cluster.submit(tree, (depth, leaf_ms, dir))?;
            println!("{}", json!({ "started": true }));
            match root.await {
                Ok(leaves) => out(json!({
                    "leaves": leaves,
                    "seconds": started.elapsed().as_secs_f64(),
                    "sent_twice": cluster.duplicate_results(),
                })),
                Err(e) => out(json!({ "error": e.to_string(), "kind": format!("{:?}", e.kind) })),
            }
        }
        "nested_family" => {
            let dir = std::env::args()
                .nth(2)
                .ok_or("nested_family needs a directory")?;
            let sum = cluster.submit(family, dir)?.await?;
            out(json!({ "sum": sum, "sent_twice": cluster.duplicate_results() }));
        }
        "open_inside" => {
            let address = cluster.address().to_owned();
            let got = cluster.map(open_inside, [String::new(), address]).await?;
            out(json!({ "got": got }));
        }
        "worker_env" => {
            // Single tasks, which placement spreads over the agents (the test checks it did).
            let futures = (0..8u64)
                .map(|i| cluster.submit(ladle_vars, i))
                .collect::<Result<Vec<_>, _>>()?;
            let mut seen = std::collections::BTreeMap::<String, Vec<String>>::new();
            for (agent, names) in ladle::gather(futures).await? {
                seen.insert(agent, names);
            }
            out(json!({ "seen": seen }));
        }
        "long_map" => {
            let map = cluster.map(slow_id, 0..2000u64);
            println!("{}", json!({ "started": true }));
            let results = map.await?;
            let correct = results.iter().enumerate().all(|(i, &r)| r == i as u64);
            out(json!({ "count": results.len(), "correct": correct }));
        }
        "exactly_once" => {
            // Every input's result, in completion order: a duplicate or a gap would show here.
            let n: u64 = std::env::args()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .unwrap_or(5000);
            let mut seen = vec![0u32; n as usize];
            let mut wrong = 0;
            let mut errors = Vec::new();
            let mut results = cluster.map_as_completed(slow_id, 0..n);
            println!("{}", json!({ "started": true }));
            while let Some((index, result)) = results.next().await {
                seen[index] += 1;
                match result {
                    Ok(value) if value == index as u64 => {}
                    Ok(_) => wrong += 1,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            let once = seen.iter().filter(|&&c| c == 1).count();
            let twice = seen.iter().filter(|&&c| c > 1).count();
            // Below the SDK's own de-duplication: results the scheduler sent twice.
            let sent_twice = cluster.duplicate_results();
            out(
                json!({ "n": n, "once": once, "duplicated": twice, "wrong": wrong, "errors": errors, "sent_twice": sent_twice }),
            );
        }
        "counted" => {
            // `n` tasks that note each of their executions under `dir`; here, how many times
            // each index's result reached the program. All submitted up front ("submit", the
            // scheduler then holds them all), or as a map ("map", a few in flight per slot).
            let n: u64 = std::env::args()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .ok_or("counted needs a number of tasks")?;
            let dir = std::env::args().nth(3).ok_or("counted needs a directory")?;
            let mode = std::env::args().nth(4).unwrap_or_else(|| "submit".into());
            let started = Instant::now();
            let mut tally = Tally::new(n);
            let inputs = (0..n).map(|i| (dir.clone(), i));
            match mode.as_str() {
                "map" => {
                    let mut results = cluster.map_as_completed(counted, inputs);
                    println!("{}", json!({ "started": true }));
                    while let Some((index, result)) = results.next().await {
                        tally.note(Some(index), result);
                    }
                }
                "submit" => {
                    let futures = inputs
                        .map(|input| cluster.submit(counted, input))
                        .collect::<Result<Vec<_>, _>>()?;
                    println!("{}", json!({ "started": true }));
                    let mut results = ladle::as_completed(futures);
                    while let Some(result) = results.next().await {
                        // A future resolves once: its value says which index it was.
                        let index = result.as_ref().ok().map(|&v| v as usize);
                        tally.note(index, result);
                    }
                }
                other => return Err(format!("counted: unknown mode {other:?}").into()),
            }
            out(tally.report(started.elapsed()));
        }
        "abort" => {
            let mut results = cluster.map(abort_on_123, 0..300u64);
            let (mut ok, mut errors) = (0, Vec::new());
            while let Some(result) = results.next().await {
                match result {
                    Ok(_) => ok += 1,
                    Err(e) => errors
                        .push(json!({ "kind": format!("{:?}", e.kind), "text": e.to_string() })),
                }
            }
            out(json!({ "ok": ok, "errors": errors }));
        }
        "retries" => {
            let dir = std::env::args().nth(2).ok_or("a directory")?;
            let path = |name: &str| format!("{dir}/{name}");
            let retried = cluster
                .submit_with(fails_once, path("a"), &Options::new().retries(1))?
                .await;
            let plain = cluster.submit(fails_once, path("b"))?.await;
            let mapped = cluster
                .map_with(
                    fails_once,
                    (0..20).map(|i| path(&format!("m{i}"))),
                    &Options::new().retries(2),
                )
                .await;
            out(json!({
                "retried": retried.map_err(|e| e.to_string()),
                "plain": plain.map_err(|e| e.to_string()),
                "mapped": mapped.map(|v| v.iter().sum::<u64>()).map_err(|e| e.to_string()),
            }));
        }
        "timeout" => {
            let slow = cluster.submit_with(
                nap,
                60_000,
                &Options::new().timeout(Duration::from_millis(500)),
            )?;
            let quick = cluster.submit(nap, 10)?;
            let slow = slow.await;
            let quick = quick.await?;
            let error = slow
                .err()
                .map(|e| json!({ "kind": format!("{:?}", e.kind), "text": e.to_string() }));
            out(json!({ "slow": error, "quick": quick }));
        }
        "handoff" => {
            // Two tasks on one slot: the second can end only once the first one's result has
            // reached the driver, so that result must not wait for the task behind it (even
            // though the first is tiny: the second is another task, of unknown length).
            let path = std::env::args().nth(2).ok_or("handoff needs a path")?;
            let first = cluster.submit(nap, 0)?;
            let second = cluster.submit(wait_for_file, path.clone())?;
            first.await?;
            std::fs::write(&path, "seen")?;
            out(json!({ "second_saw_the_file": second.await? }));
        }
        "policy" => {
            let worker = cluster.submit(policy, 0)?.await?;
            out(json!({ "worker": worker }));
        }
        "uneven" => {
            let agents = cluster.map(uneven, 0..600u64).await?;
            let slow = agents.iter().filter(|a| a.as_str() == "slow").count();
            out(json!({ "count": agents.len(), "slow": slow, "fast": agents.len() - slow }));
        }
        "interleave" => {
            let ends = cluster.map(ten_ms, 0..200u64).await?;
            out(
                json!({ "count": ends.len(), "first_ms": ends.iter().min(), "last_ms": ends.iter().max() }),
            );
        }
        "gpu_mix" => {
            // GPU and CPU tasks of one job, submitted together.
            let gpu = cluster.map(on_gpu, 0..8u64);
            let cpu = cluster.map(on_cpu, 100..102u64);
            let (gpu, cpu) = tokio::join!(gpu, cpu);
            out(json!({ "gpu": gpu?, "cpu": cpu? }));
        }
        "gpu_wait" => {
            let n = 6u64;
            let mut seen_once = vec![0u32; n as usize];
            let mut runs = Vec::new();
            let mut errors = Vec::new();
            let mut results = cluster.map_as_completed(on_gpu_slow, 0..n);
            while let Some((index, result)) = results.next().await {
                seen_once[index] += 1;
                match result {
                    Ok(run) => runs.push(run),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            let once = seen_once.iter().filter(|&&c| c == 1).count();
            out(json!({ "n": n, "once": once, "runs": runs, "errors": errors }));
        }
        "gpu_prefer" => {
            let runs = cluster.map(gpu_or_cpu, 0..40u64).await?;
            let correct = runs.iter().enumerate().all(|(i, r)| r.input == i as u64);
            out(
                json!({ "count": runs.len(), "correct": correct, "on_gpu": runs.iter().filter(|r| r.gpu.is_some()).count() }),
            );
        }
        "big_values" => {
            // Arguments of 5 and 60 MiB, a map of 40 inputs of 512 KiB, and a result of 5 MiB:
            // all beyond an inline value, all through the blob store.
            let five = pattern(5 << 20);
            let sixty = pattern(60 << 20);
            let (want5, want60) = (expected(&five), expected(&sixty));
            let got5 = cluster.submit(checksum, five)?;
            let got60 = cluster.submit(checksum, sixty)?;
            let inputs: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 512 << 10]).collect();
            let wants: Vec<(u64, u64)> = inputs.iter().map(|v| expected(v)).collect();
            let mapped = cluster.map(checksum, inputs).await?;
            let result = cluster.submit(bytes_of, 5 << 20)?.await?;
            out(json!({
                "five": got5.await? == want5,
                "sixty": got60.await? == want60,
                "map": mapped == wants,
                "result": result == pattern(5 << 20),
            }));
        }
        "too_big" => {
            // The scheduler's max_value_bytes is 8 MiB here.
            let refused = cluster
                .submit(checksum, vec![1u8; 9 << 20])
                .map(|_| ())
                .map_err(|e| e.to_string());
            let result = cluster.submit(bytes_of, 9 << 20)?.await;
            let error = result
                .err()
                .map(|e| json!({ "kind": format!("{:?}", e.kind), "text": e.to_string() }));
            // In a map, only the item whose own result is too large fails.
            let mapped = cluster
                .map(bytes_of, [1000u64, 9 << 20, 2000])
                .collect::<Vec<_>>()
                .await;
            let kinds: Vec<String> = mapped
                .iter()
                .map(|r| match r {
                    Ok(v) => format!("ok {}", v.len()),
                    Err(e) => format!("{:?}", e.kind),
                })
                .collect();
            let after = cluster.submit(bytes_of, 1000)?.await?.len();
            out(json!({ "refused": refused.err(), "error": error, "map": kinds, "after": after }));
        }
        "flood" => {
            // The program cannot see its own output: it stays connected, for the note of what
            // was dropped to reach it, until the test has seen that note and writes `path`.
            let path = std::env::args().nth(2).ok_or("flood needs a path")?;
            let printed = cluster.submit(flood, 20_000)?.await?;
            out(json!({ "printed": printed }));
            stay_until_written(&path).await;
        }
        "budget" => {
            // Far more single submissions than the session's budget (20 in the test), then a map.
            let n: u64 = 300;
            let futures = (0..n)
                .map(|i| cluster.submit(slow_id, i))
                .collect::<Result<Vec<_>, _>>()?;
            let values = ladle::gather(futures).await?;
            let mapped = cluster.map(slow_id, 0..500u64).await?;
            out(json!({
                "submitted": values.len(),
                "correct": values.iter().enumerate().all(|(i, &v)| v == i as u64),
                "mapped": mapped.len(),
            }));
        }
        other => return Err(format!("unknown scenario {other:?}").into()),
    }
    Ok(())
}
