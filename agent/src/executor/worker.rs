//! One worker process for one job: the job's executable started in worker mode, fed tasks over
//! a Unix socket. The actor starts the process on the first task, restarts it after a crash,
//! and reports the tasks a dead process took with it.

use std::{
    collections::HashSet,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use ladle_common::limits::MAX_OUTPUT_LINE_BYTES;
use ladle_common::worker_protocol::{self as wp, FromWorker, ToWorker};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter},
    net::{UnixListener, unix::OwnedWriteHalf},
    process::{Child, Command},
    sync::mpsc,
};
use tracing::{debug, warn};

use crate::blobs::BlobCache;

/// What the executor asks of a worker.
pub enum WorkerCmd {
    Run(Dispatch),
    /// Pass this on to the process (results of a running task's children).
    Send(ToWorker),
    /// Stop the process now; its tasks are reported as crashed (the executor knows why).
    Kill,
}

pub struct Dispatch {
    pub task_ref: u64,
    pub function: String,
    pub reducer: Option<String>,
    pub payload: Bytes,
    /// The payload is in the blob store, by this hash (`payload` is empty then).
    pub payload_blob: Option<String>,
    pub shared: Vec<String>,
    /// The task must not run longer than this; its start is reported so that it can be timed.
    pub timeout: Option<std::time::Duration>,
}

/// What a worker tells the executor, stamped with the generation of the executor that started
/// it: after a reset, reports of the old workers (whose task numbers may be reused) are ignored.
pub struct Stamped {
    pub generation: u64,
    pub event: WorkerEvent,
}

/// What a worker tells the executor.
pub enum WorkerEvent {
    Done {
        task_ref: u64,
        outcome: wp::WorkerOutcome,
        run_ns: u64,
        failed: wp::ItemFailures,
    },
    /// The process died (or could not start) with these tasks unfinished.
    Lost {
        task_refs: Vec<u64>,
        reason: String,
        start_failed: bool,
    },
    Output {
        job: Arc<str>,
        stderr: bool,
        line: String,
    },
    /// A timed task started.
    Started { task_ref: u64 },
    /// A running task submitted tasks (nested futures).
    Children {
        parent: u64,
        children: Vec<wp::WorkerChild>,
    },
    /// A running task no longer wants these children.
    CancelChildren { parent: u64, ordinals: Vec<u32> },
    /// A running task waits for its children, or resumed.
    Waiting { task_ref: u64, waiting: bool },
    /// Children's results whose big values were fetched: to the parent, if it still runs.
    ChildResults(ladle_proto::v1::ChildResults),
    /// A big result was stored in the scheduler's blob store (or could not be).
    Stored {
        task_ref: u64,
        attempt: u32,
        outcome: ladle_proto::v1::agent_task_result::Outcome,
        run_ns: u64,
        failed: wp::ItemFailures,
    },
}

pub struct WorkerContext {
    pub cache: BlobCache,
    /// Tasks a CPU worker runs at once; a GPU worker runs one.
    pub threads: u32,
    pub agent_name: String,
    pub run_dir: PathBuf,
    pub events: mpsc::UnboundedSender<Stamped>,
    /// The cluster's `max_value_bytes`, from the scheduler's welcome (0: not known yet).
    pub max_value: Arc<AtomicU64>,
}

/// One worker actor's way to the executor.
struct Events {
    tx: mpsc::UnboundedSender<Stamped>,
    generation: u64,
}

impl Events {
    fn send(&self, event: WorkerEvent) {
        let _ = self.tx.send(Stamped {
            generation: self.generation,
            event,
        });
    }

    /// Reports a task that could not be handed to the worker.
    fn refused(&self, task_ref: u64, kind: wp::WorkerFailure, message: String) {
        self.send(WorkerEvent::Done {
            task_ref,
            outcome: wp::WorkerOutcome::Failed { kind, message },
            run_ns: 0,
            failed: wp::ItemFailures::default(),
        });
    }
}

pub struct JobInfo {
    pub id: Arc<str>,
    pub name: String,
    pub executable: String,
}

struct Process {
    child: Child,
    writer: BufWriter<OwnedWriteHalf>,
    frames: mpsc::UnboundedReceiver<FromWorker>,
    sent_shared: HashSet<String>,
    inflight: HashSet<u64>,
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

/// Serves one job until the executor drops its sender.
pub async fn run(
    job: Arc<JobInfo>,
    gpu: Option<u32>,
    mut commands: mpsc::UnboundedReceiver<WorkerCmd>,
    ctx: Arc<WorkerContext>,
    generation: u64,
) {
    let events = Events {
        tx: ctx.events.clone(),
        generation,
    };
    let mut process: Option<Process> = None;
    // Answers to the process's own requests (uploads of the values its tasks share).
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<ToWorker>();
    loop {
        tokio::select! {
            Some(answer) = answers.recv() => {
                if let Some(p) = process.as_mut()
                    && (write(p, &answer).await.is_err() || p.writer.flush().await.is_err())
                {
                    debug!(job = %job.name, "the worker's socket is closed");
                }
            }
            command = commands.recv() => match command {
                None => {
                    if let Some(p) = process.take() {
                        stop(p, &events, "the job ended").await;
                    }
                    return;
                }
                Some(WorkerCmd::Kill) => {
                    if let Some(p) = process.take() {
                        stop(p, &events, "stopped by the agent").await;
                    }
                }
                Some(WorkerCmd::Send(message)) => {
                    if let Some(p) = process.as_mut()
                        && (write(p, &message).await.is_err() || p.writer.flush().await.is_err())
                    {
                        debug!(job = %job.name, "the worker's socket is closed");
                    }
                }
                Some(WorkerCmd::Run(dispatch)) => {
                    if process.is_none() {
                        match start(&job, gpu, &ctx, &events).await {
                            Ok(p) => process = Some(p),
                            Err(reason) => {
                                warn!(job = %job.name, "cannot start a worker: {reason}");
                                events.send(WorkerEvent::Lost {
                                    task_refs: vec![dispatch.task_ref],
                                    reason,
                                    start_failed: true,
                                });
                                continue;
                            }
                        }
                    }
                    if let Some(p) = process.as_mut() {
                        send(p, dispatch, &ctx, &events).await;
                        // Flush once the burst of commands is through (and on every path).
                        if commands.is_empty() && p.writer.flush().await.is_err() {
                            debug!(job = %job.name, "the worker's socket is closed");
                        }
                    }
                }
            },
            frame = next_frame(&mut process) => match frame {
                // A worker speaks only for the tasks it was given: not for another job's.
                Some(FromWorker::Done { task, outcome, run_ns, failed }) => {
                    if process.as_mut().is_some_and(|p| p.inflight.remove(&task)) {
                        events.send(WorkerEvent::Done { task_ref: task, outcome, run_ns, failed });
                    }
                }
                Some(FromWorker::Ready { pid, tasks }) => debug!(pid, tasks, job = %job.name, "worker ready"),
                Some(FromWorker::Started { task }) => events.send(WorkerEvent::Started { task_ref: task }),
                Some(FromWorker::Submit { parent, children }) if holds(&process, parent) => {
                    events.send(WorkerEvent::Children { parent, children });
                }
                Some(FromWorker::CancelChildren { parent, ordinals }) if holds(&process, parent) => {
                    events.send(WorkerEvent::CancelChildren { parent, ordinals });
                }
                Some(FromWorker::Waiting { task, waiting }) if holds(&process, task) => {
                    events.send(WorkerEvent::Waiting { task_ref: task, waiting });
                }
                Some(
                    FromWorker::Submit { parent: task, .. }
                    | FromWorker::CancelChildren { parent: task, .. }
                    | FromWorker::Waiting { task, .. },
                ) => {
                    debug!(task, job = %job.name, "a worker spoke for a task it does not hold");
                }
                Some(FromWorker::Upload { request, data }) if too_big(&ctx, data.len()) => {
                    let result = Err(format!(
                        "the value is {} bytes, more than the cluster's limit of {} bytes (the \
                         scheduler's max_value_bytes)",
                        data.len(),
                        ctx.max_value.load(Ordering::Relaxed)
                    ));
                    let _ = answers_tx.send(ToWorker::Uploaded { request, result });
                }
                Some(FromWorker::Upload { request, data }) => {
                    // A task's `share`: stored for the job, with the agent's credential (the
                    // worker holds none).
                    let (cache, job_id, answers) = (ctx.cache.clone(), job.id.clone(), answers_tx.clone());
                    tokio::spawn(async move {
                        let result = cache.upload(data.into(), &job_id).await.map(|blob| blob.sha256);
                        let _ = answers.send(ToWorker::Uploaded { request, result });
                    });
                }
                None => {
                    if let Some(p) = process.take() {
                        stop(p, &events, "").await;
                    }
                }
            },
        }
    }
}

/// Whether a value is larger than the cluster carries (0: the limit is not known yet).
fn too_big(ctx: &WorkerContext, len: usize) -> bool {
    let limit = ctx.max_value.load(Ordering::Relaxed);
    limit > 0 && len as u64 > limit
}

/// Whether the process holds task `task` (was given it, and has not said it is done).
fn holds(process: &Option<Process>, task: u64) -> bool {
    process.as_ref().is_some_and(|p| p.inflight.contains(&task))
}

async fn next_frame(process: &mut Option<Process>) -> Option<FromWorker> {
    match process {
        Some(p) => p.frames.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends a task (and any shared constant it needs that this process has not seen). A task that
/// cannot be handed over is reported at once; once it is in flight, the process's fate is its.
async fn send(p: &mut Process, d: Dispatch, ctx: &WorkerContext, events: &Events) {
    for sha in &d.shared {
        if p.sent_shared.contains(sha) {
            continue;
        }
        let data = match ctx.cache.get(sha).await {
            Ok(path) => tokio::fs::read(&path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            Err(reason) => Err(reason),
        };
        let data = match data {
            Ok(data) => data,
            Err(reason) => {
                events.refused(
                    d.task_ref,
                    wp::WorkerFailure::BadInput,
                    format!("cannot get shared constant {sha}: {reason}"),
                );
                return;
            }
        };
        // A failed write means the process is going: its end is noticed by the reader.
        p.inflight.insert(d.task_ref);
        if write(
            p,
            &ToWorker::Shared {
                sha256: sha.clone(),
                data,
            },
        )
        .await
        .is_err()
        {
            return;
        }
        p.sent_shared.insert(sha.clone());
    }
    let payload = match &d.payload_blob {
        None => d.payload.to_vec(),
        // A big argument: fetched from the scheduler's blob store into memory.
        Some(sha) => match ctx.cache.fetch_value(sha).await {
            Ok(data) => Vec::from(data),
            Err(reason) => {
                events.refused(
                    d.task_ref,
                    wp::WorkerFailure::BadInput,
                    format!("cannot get the task's argument {sha}: {reason}"),
                );
                return;
            }
        },
    };
    p.inflight.insert(d.task_ref);
    let _ = write(
        p,
        &ToWorker::Run {
            task: d.task_ref,
            function: d.function,
            reducer: d.reducer,
            payload,
            report_start: d.timeout.is_some(),
        },
    )
    .await;
}

async fn write(p: &mut Process, message: &ToWorker) -> Result<(), String> {
    let frame = wp::encode(message).map_err(|e| e.to_string())?;
    p.writer.write_all(&frame).await.map_err(|e| e.to_string())
}

/// Ends a process and reports the tasks it held.
async fn stop(mut p: Process, events: &Events, why: &str) {
    let _ = p.child.start_kill();
    let status = p.child.wait().await;
    let reason = if why.is_empty() {
        match status {
            Ok(status) => describe(status),
            Err(e) => format!("the worker process was lost: {e}"),
        }
    } else {
        why.to_owned()
    };
    if !p.inflight.is_empty() {
        events.send(WorkerEvent::Lost {
            task_refs: p.inflight.drain().collect(),
            reason,
            start_failed: false,
        });
    }
}

/// The next line of a task's output, of at most `max` bytes: the rest of a longer line is read
/// and dropped, and the line says how much was cut. `None` at the end of the pipe.
async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut cut = 0usize;
    let mut any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            if !any {
                return Ok(None);
            }
            break;
        }
        any = true;
        let end = available.iter().position(|&b| b == b'\n');
        let content = &available[..end.unwrap_or(available.len())];
        let take = content.len().min(max.saturating_sub(line.len()));
        line.extend_from_slice(&content[..take]);
        cut += content.len() - take;
        let consumed = end.map_or(available.len(), |i| i + 1);
        reader.consume(consumed);
        if end.is_some() {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let mut text = String::from_utf8_lossy(&line).into_owned();
    if cut > 0 {
        text.push_str(&format!(
            " [ladle: {cut} more bytes of this line dropped; lines are cut at {max} bytes]"
        ));
    }
    Ok(Some(text))
}

/// The device a worker for GPU `ordinal` should see. The agent numbers GPUs as the CUDA driver
/// showed them to it: within its own `CUDA_VISIBLE_DEVICES` when it was given one (Slurm's
/// `--gres`, a container runtime), so ordinal 0 is then the first device of that list.
fn visible_device(ordinal: u32, inherited: Option<&str>) -> String {
    inherited
        .and_then(|list| list.split(',').nth(ordinal as usize))
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| ordinal.to_string())
}

/// How a worker died, in words an operator recognises.
pub fn describe(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = match signal {
            4 => "SIGILL",
            6 => "SIGABRT",
            7 => "SIGBUS",
            8 => "SIGFPE",
            9 => "SIGKILL (out of memory, or killed)",
            11 => "SIGSEGV",
            15 => "SIGTERM",
            _ => "",
        };
        format!("the worker process was killed by signal {signal} {name}")
            .trim_end()
            .to_owned()
    } else {
        match status.code() {
            Some(code) => format!("the worker process exited with status {code}"),
            None => "the worker process ended".to_owned(),
        }
    }
}

async fn start(
    job: &JobInfo,
    gpu: Option<u32>,
    ctx: &WorkerContext,
    events: &Events,
) -> Result<Process, String> {
    let exe = ctx.cache.get(&job.executable).await?;
    tokio::fs::create_dir_all(&ctx.run_dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", ctx.run_dir.display()))?;
    let n = SOCKETS.fetch_add(1, Ordering::Relaxed);
    let socket = ctx
        .run_dir
        .join(format!("w{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    let mut command = Command::new(&exe);
    // The job's code is not the agent's to trust with the cluster's credentials.
    for name in super::worker_env::credential_vars(std::env::vars_os().map(|(name, _)| name)) {
        command.env_remove(name);
    }
    command
        .env(wp::SOCKET_ENV, &socket)
        .env(wp::JOB_ENV, job.id.as_ref())
        .env(wp::AGENT_ENV, &ctx.agent_name);
    match ctx.max_value.load(Ordering::Relaxed) {
        0 => command.env_remove(wp::MAX_VALUE_ENV),
        limit => command.env(wp::MAX_VALUE_ENV, limit.to_string()),
    };
    match gpu {
        // The worker owns that one device: inside it, CUDA numbers it 0.
        Some(ordinal) => command
            .env(wp::THREADS_ENV, "1")
            .env(wp::GPU_ENV, ordinal.to_string())
            .env(
                "CUDA_VISIBLE_DEVICES",
                visible_device(
                    ordinal,
                    std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
                ),
            ),
        None => command
            .env(wp::THREADS_ENV, ctx.threads.to_string())
            .env_remove(wp::GPU_ENV),
    };
    if crate::cpu_policy::yielding() {
        // SAFETY: between fork and exec the child makes one raw system call and allocates
        // nothing; its failure only leaves the worker under the agent's policy.
        unsafe {
            command.pre_exec(|| {
                let _ = crate::cpu_policy::restore_normal();
                Ok(())
            });
        }
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    for (pipe, stderr) in [
        (
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            false,
        ),
        (
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            true,
        ),
    ] {
        if let Some(pipe) = pipe {
            let events = Events {
                tx: events.tx.clone(),
                generation: events.generation,
            };
            let job = job.id.clone();
            tokio::spawn(async move {
                let mut pipe = BufReader::new(pipe);
                while let Ok(Some(line)) = next_line(&mut pipe, MAX_OUTPUT_LINE_BYTES).await {
                    events.send(WorkerEvent::Output {
                        job: job.clone(),
                        stderr,
                        line,
                    });
                }
            });
        }
    }
    let accepted = tokio::select! {
        accepted = listener.accept() => accepted.map_err(|e| e.to_string()),
        status = child.wait() => Err(match status {
            Ok(status) => format!("the worker exited before connecting: {}", describe(status)),
            Err(e) => e.to_string(),
        }),
        () = tokio::time::sleep(Duration::from_secs(30)) => Err("the worker did not connect within 30s".into()),
    };
    let _ = std::fs::remove_file(&socket);
    let (stream, _) = accepted.map_err(|e| {
        format!(
            "{e} (is {} a Ladle program built with #[ladle::main]?)",
            exe.display()
        )
    })?;
    let (reader, writer) = stream.into_split();
    // Results arrive many to a read: buffer, or each frame costs two system calls.
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let (tx, frames) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match wp::read_frame_async::<FromWorker>(&mut reader).await {
                Ok(Some(frame)) => {
                    if tx.send(frame).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    warn!("a worker sent an unreadable frame: {e}");
                    return;
                }
                // The worker is gone; its end is noticed and reported by the run loop.
                Ok(None) | Err(_) => return,
            }
        }
    });
    Ok(Process {
        child,
        writer: BufWriter::with_capacity(1 << 16, writer),
        frames,
        sent_shared: HashSet::new(),
        inflight: HashSet::new(),
    })
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::{next_line, visible_device};

    #[tokio::test]
    async fn long_output_lines_are_cut_and_say_so() {
        let long = "x".repeat(100);
        let text = format!("short\r\n{long}\nlast");
        let mut input = tokio::io::BufReader::with_capacity(8, text.as_bytes());
        let mut lines = Vec::new();
        while let Some(line) = next_line(&mut input, 10).await.expect("read") {
            lines.push(line);
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], "short");
        assert!(
            lines[1].starts_with("xxxxxxxxxx [ladle: 90 more bytes"),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], "last");
    }

    #[test]
    fn a_gpu_worker_sees_its_device_within_what_the_agent_was_given() {
        assert_eq!(visible_device(1, None), "1");
        assert_eq!(visible_device(0, Some("2,3")), "2");
        assert_eq!(visible_device(1, Some("2, 3")), "3");
        assert_eq!(visible_device(1, Some("GPU-8a1f,GPU-77c2")), "GPU-77c2");
        assert_eq!(visible_device(4, Some("2,3")), "4");
    }
}
