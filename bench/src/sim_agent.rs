//! W9's simulated agents: each holds one real agent stream to the scheduler (many streams share
//! each of a few gRPC channels), says hello with 8 CPU slots, heartbeats, and answers every
//! assignment at once with the results a real worker would send for `identity`: the payload is
//! the postcard encoding of the chunk's `Vec<u64>`, the output that of a `Vec<Result<u64,
//! String>>` holding each input back. They run on a runtime of their own, so that the driver in
//! this process keeps its threads.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use ladle_proto::v1::{
    AgentMessage, AgentResults, AgentTaskResult, Assign, AssignedTask, FailureKind, Heartbeat,
    Hello, Load, Resources, Revoke, Revoked, SchedulerMessage, TaskFailure, agent_message::Body,
    agent_service_client::AgentServiceClient, agent_task_result::Outcome, scheduler_message,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// CPU slots of each simulated agent.
pub const SLOTS: u32 = 8;
/// gRPC channels (TCP connections) the agents' streams are spread over.
const CHANNELS: usize = 16;

#[derive(Default)]
struct Counters {
    welcomed: AtomicUsize,
    /// Assigned tasks answered (chunks, for a map).
    chunks: AtomicU64,
    /// The first error of any agent; set once.
    error: Mutex<Option<String>>,
    failed: Notify,
}

impl Counters {
    fn fail(&self, message: String) {
        if let Ok(mut error) = self.error.lock() {
            error.get_or_insert(message);
        }
        self.failed.notify_one();
    }

    fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

/// The simulated agents, on their runtime; dropping it ends them.
pub struct Fleet {
    runtime: Option<tokio::runtime::Runtime>,
    counters: Arc<Counters>,
    agents: usize,
}

impl Fleet {
    /// Starts `agents` agents connecting to `address`; [`Fleet::joined`] waits for them.
    pub fn start(address: &str, agents: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("w9-agents")
            .enable_all()
            .build()?;
        let counters = Arc::new(Counters::default());
        let (address, shared) = (address.to_owned(), counters.clone());
        runtime.spawn(async move {
            let mut channels = Vec::with_capacity(CHANNELS);
            for _ in 0..CHANNELS.min(agents.max(1)) {
                match ladle_common::client::connect(&address, &Default::default()).await {
                    Ok(channel) => channels.push(channel),
                    Err(err) => return shared.fail(format!("connecting an agent channel: {err}")),
                }
            }
            for i in 0..agents {
                let (channel, counters) = (channels[i % channels.len()].clone(), shared.clone());
                tokio::spawn(async move {
                    if let Err(err) = agent(channel, i, &counters).await {
                        counters.fail(format!("simulated agent {i}: {err:#}"));
                    }
                });
            }
        });
        Ok(Self {
            runtime: Some(runtime),
            counters,
            agents,
        })
    }

    /// Waits until every agent has its welcome; fails with the first agent's error.
    pub async fn joined(&self) -> anyhow::Result<()> {
        while self.counters.welcomed.load(Ordering::Relaxed) < self.agents {
            self.check()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.check()
    }

    /// The first agent's error, if one failed.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.counters.error() {
            Some(error) => Err(anyhow!(error)),
            None => Ok(()),
        }
    }

    /// Resolves with the first agent's error.
    pub async fn failed(&self) -> anyhow::Error {
        loop {
            let notified = self.counters.failed.notified();
            if let Some(error) = self.counters.error() {
                return anyhow!(error);
            }
            notified.await;
        }
    }

    pub fn chunks(&self) -> u64 {
        self.counters.chunks.load(Ordering::Relaxed)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Not a blocking shutdown: this may run inside the driver's runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn message(body: Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

async fn agent(channel: Channel, i: usize, counters: &Counters) -> anyhow::Result<()> {
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::channel(64);
    let hello = Hello {
        protocol_version: ladle_proto::PROTOCOL_VERSION,
        agent_id: format!("w9-agent-{i}"),
        hostname: format!("w9-host-{i}"),
        version: ladle_common::VERSION.into(),
        resources: Some(Resources {
            cpus: SLOTS,
            cpu_slots: SLOTS,
            ..Default::default()
        }),
        ..Default::default()
    };
    tx.send(message(Body::Hello(hello))).await?;
    let mut inbound = client
        .attach(ReceiverStream::new(rx))
        .await
        .context("attaching")?
        .into_inner();
    let welcome = match inbound.message().await?.and_then(|m| m.body) {
        Some(scheduler_message::Body::Welcome(welcome)) => welcome,
        Some(_) => bail!("the scheduler's first message was not a welcome"),
        None => bail!("the scheduler closed the stream before a welcome"),
    };
    counters.welcomed.fetch_add(1, Ordering::Relaxed);
    let interval = Duration::from_millis(welcome.heartbeat_interval_ms.max(10));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let heartbeat = Heartbeat { load: Some(Load::default()) };
                tx.send(message(Body::Heartbeat(heartbeat))).await?;
            }
            received = inbound.message() => {
                let Some(received) = received? else {
                    bail!("the scheduler closed the stream");
                };
                if let Some(reply) = answer(received, counters) {
                    tx.send(reply).await?;
                }
            }
        }
    }
}

/// What a simulated agent says to a scheduler's message, if anything.
fn answer(received: SchedulerMessage, counters: &Counters) -> Option<AgentMessage> {
    match received.body? {
        scheduler_message::Body::Assign(Assign { tasks, .. }) => {
            counters
                .chunks
                .fetch_add(tasks.len() as u64, Ordering::Relaxed);
            let results = tasks.into_iter().map(run).collect();
            Some(message(Body::Results(AgentResults { results })))
        }
        // Everything assigned was finished (and answered) the moment it came: keep it all.
        scheduler_message::Body::Revoke(Revoke { tasks }) => {
            Some(message(Body::Revoked(Revoked {
                released: Vec::new(),
                kept: tasks,
            })))
        }
        _ => None,
    }
}

/// `identity` over a chunk, as a worker would answer it.
fn run(task: AssignedTask) -> AgentTaskResult {
    let failure = |kind: FailureKind, message: String| {
        Outcome::Failure(TaskFailure {
            kind: kind as i32,
            message,
        })
    };
    let outcome = if !task.reducer.is_empty() {
        failure(
            FailureKind::TaskError,
            format!("a simulated agent does not reduce (with {})", task.reducer),
        )
    } else {
        match postcard::from_bytes::<Vec<u64>>(&task.payload) {
            Ok(inputs) => {
                let items: Vec<Result<u64, String>> = inputs.into_iter().map(Ok).collect();
                match postcard::to_allocvec(&items) {
                    Ok(output) => Outcome::Output(output.into()),
                    Err(err) => failure(FailureKind::TaskError, err.to_string()),
                }
            }
            Err(err) => failure(
                FailureKind::BadInput,
                format!("the input of {} is not a Vec<u64>: {err}", task.function),
            ),
        }
    };
    AgentTaskResult {
        task_ref: task.task_ref,
        attempt: task.attempt,
        outcome: Some(outcome),
        run_ns: 1_000,
        ..Default::default()
    }
}
