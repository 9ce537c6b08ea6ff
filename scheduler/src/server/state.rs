//! The core under a lock, the outboxes of the open streams, and the clock that drives both.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ladle_proto::v1::{
    self as pb, DriverEvent, SchedulerMessage, driver_event, scheduler_message::Body,
};
use tokio::{sync::mpsc, task::AbortHandle};
use tonic::Status;
use tracing::debug;

use ladle_common::limits;

use super::{
    blobs::BlobStore,
    convert,
    telemetry::{Peer, Telemetry},
};
use crate::{
    core::{Command, ConnId, Core, CoreConfig, DriverResult, Event, Outcome},
    settings::SchedulerSettings,
};

pub type AgentOutbound = Result<SchedulerMessage, Status>;
pub type DriverOutbound = Result<DriverEvent, Status>;

enum Sender {
    Agent(mpsc::UnboundedSender<AgentOutbound>),
    Driver(mpsc::UnboundedSender<DriverOutbound>),
}

/// Where the core's commands for one stream go.
struct Outbox {
    tx: Sender,
    /// The task reading the other side of the stream; stopped when the core lets go.
    reader: Option<AbortHandle>,
}

struct Inner {
    core: Core,
    outboxes: HashMap<ConnId, Outbox>,
}

pub struct Shared {
    inner: Mutex<Inner>,
    next_conn: AtomicU64,
    pub settings: SchedulerSettings,
    pub token_required: bool,
    /// What guards the door, for the status line.
    pub security: &'static str,
    pub refusals: Arc<super::auth::RefusalLog>,
    pub started: Instant,
    pub blobs: BlobStore,
    pub telemetry: Telemetry,
    /// Where the dashboard and `/metrics` are served, once listening (`http://host:port/`).
    pub http_url: std::sync::OnceLock<String>,
}

impl Shared {
    pub fn new(
        core: CoreConfig,
        settings: SchedulerSettings,
        security: &super::security::Security,
        blobs: BlobStore,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                core: Core::new(core),
                outboxes: HashMap::new(),
            }),
            next_conn: AtomicU64::new(1),
            settings,
            token_required: !security.accepted.is_open(),
            security: security.describe(),
            refusals: Arc::default(),
            started: Instant::now(),
            blobs,
            telemetry: Telemetry::default(),
            http_url: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the core as it was between two events; carry on.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open(&self, tx: Sender) -> ConnId {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .outboxes
            .insert(conn, Outbox { tx, reader: None });
        conn
    }

    /// Opens an outbox for a new agent stream; its receiver becomes the response stream.
    pub fn open_agent(&self) -> (ConnId, mpsc::UnboundedReceiver<AgentOutbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (self.open(Sender::Agent(tx)), rx)
    }

    pub fn open_driver(&self) -> (ConnId, mpsc::UnboundedReceiver<DriverOutbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (self.open(Sender::Driver(tx)), rx)
    }

    pub fn set_reader(&self, conn: ConnId, reader: AbortHandle) {
        match self.lock().outboxes.get_mut(&conn) {
            Some(outbox) => outbox.reader = Some(reader),
            // The core already let go of this stream.
            None => reader.abort(),
        }
    }

    /// Feeds one event to the core and carries out its commands.
    pub fn apply(&self, event: Event) {
        let kind = event.kind();
        match &event {
            Event::TasksSubmitted { tasks, .. } => self.telemetry.count_inline(
                true,
                Peer::Driver,
                tasks.iter().map(|t| t.payload.len() as u64).sum(),
            ),
            Event::AgentResults { results, .. } => self.telemetry.count_inline(
                true,
                Peer::Agent,
                results
                    .iter()
                    .map(|r| match &r.outcome {
                        Outcome::Output(b) => b.len() as u64,
                        _ => 0,
                    })
                    .sum(),
            ),
            _ => {}
        }
        let mut inner = self.lock();
        // The clock read under the lock: events reach the core in the order of their times.
        let now = Instant::now();
        let mut commands = Vec::new();
        inner.core.handle(now, event, &mut commands);
        inner.execute(commands, self);
        self.telemetry
            .observe_event(kind, now.elapsed().as_secs_f64());
    }

    /// Runs `f` on the core (queries and operator actions) and carries out any commands.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Core, &mut Vec<Command>) -> R) -> R {
        let mut inner = self.lock();
        let started = Instant::now();
        let mut commands = Vec::new();
        let result = f(&mut inner.core, &mut commands);
        inner.execute(commands, self);
        self.telemetry
            .observe_event(Event::QUERY, started.elapsed().as_secs_f64());
        result
    }

    /// Ends every open stream with `status` (the scheduler is stopping): agents and drivers see
    /// it at once and go looking for a scheduler, rather than waiting on a silent one.
    pub fn close_all(&self, status: &Status) {
        let mut inner = self.lock();
        let conns: Vec<ConnId> = inner.outboxes.keys().copied().collect();
        for conn in conns {
            inner.close(conn, status.clone());
        }
    }

    /// The reader of a stream ended: forget its outbox and tell the core with `event`.
    pub fn detached(&self, conn: ConnId, event: Event) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.outboxes.remove(&conn);
        let mut commands = Vec::new();
        inner.core.handle(now, event, &mut commands);
        inner.execute(commands, self);
    }
}

impl Inner {
    // Sends are non-blocking (unbounded channels), so doing them under the lock keeps the
    // order of messages on each stream the order the core decided them in. The channels are
    // bounded by what feeds them: an agent's by the tasks placed on it (its slots and prefetch),
    // a driver's by its session's budget of unfinished tasks (each result is sent once) and
    // by the agents' caps on output.
    fn execute(&mut self, commands: Vec<Command>, shared: &Shared) {
        let (settings, blobs, refusals) = (&shared.settings, &shared.blobs, &*shared.refusals);
        for command in commands {
            match command {
                Command::Welcome {
                    conn,
                    draining,
                    secret,
                } => {
                    let welcome = pb::Welcome {
                        protocol_version: ladle_proto::PROTOCOL_VERSION,
                        scheduler_version: ladle_common::VERSION.into(),
                        cluster: settings.cluster.clone(),
                        heartbeat_interval_ms: millis(settings.heartbeat_interval),
                        heartbeat_timeout_ms: millis(settings.heartbeat_timeout),
                        draining,
                        max_value_bytes: settings.max_value_bytes,
                        agent_secret: secret,
                    };
                    self.send_agent(conn, Body::Welcome(welcome));
                }
                Command::NotifyDrain { conn, draining } => {
                    self.send_agent(conn, Body::Drain(pb::DrainState { draining }));
                }
                Command::Assign { conn, job, tasks } => {
                    tracing::trace!(conn, tasks = tasks.len(), "assign");
                    shared.telemetry.count_inline(
                        false,
                        Peer::Agent,
                        tasks.iter().map(|t| t.spec.payload.len() as u64).sum(),
                    );
                    for tasks in limits::batches(tasks, usize::MAX, |t| t.spec.payload.len()) {
                        self.send_agent(conn, Body::Assign(convert::assign(&job, tasks)));
                    }
                }
                Command::Revoke { conn, tasks } => {
                    let tasks = tasks
                        .into_iter()
                        .map(|(task_ref, attempt)| pb::TaskAttempt { task_ref, attempt })
                        .collect();
                    self.send_agent(conn, Body::Revoke(pb::Revoke { tasks }));
                }
                Command::CancelOnAgent { conn, refs } => {
                    self.send_agent(conn, Body::Cancel(pb::CancelAssigned { task_refs: refs }));
                }
                Command::EndJob { conn, job_id } => {
                    self.send_agent(
                        conn,
                        Body::EndJob(pb::EndJob {
                            job_id: job_id.to_string(),
                        }),
                    );
                }
                Command::SessionOpened {
                    conn,
                    capacity,
                    resumed,
                    known,
                    secret,
                } => {
                    let opened = pb::SessionOpened {
                        cluster: settings.cluster.clone(),
                        cpu_slots: capacity.cpu_slots,
                        gpu_slots: capacity.gpu_slots,
                        agents: capacity.agents,
                        max_value_bytes: settings.max_value_bytes,
                        budget_tasks: settings.session_max_tasks,
                        budget_bytes: settings.session_max_bytes,
                        resumed,
                        // At most the session's budget of task ids: well within one message.
                        known_task_ids: known,
                        session_secret: secret,
                    };
                    self.send_driver(conn, driver_event::Body::Opened(opened));
                }
                Command::CapacityChanged { conn, capacity } => {
                    let capacity = pb::CapacityChanged {
                        cpu_slots: capacity.cpu_slots,
                        gpu_slots: capacity.gpu_slots,
                        agents: capacity.agents,
                    };
                    self.send_driver(conn, driver_event::Body::Capacity(capacity));
                }
                Command::Deliver { conn, results } => {
                    shared.telemetry.count_inline(
                        false,
                        Peer::Driver,
                        results.iter().map(|r| result_bytes(r) as u64).sum(),
                    );
                    for results in limits::batches(results, usize::MAX, result_bytes) {
                        self.send_driver(
                            conn,
                            driver_event::Body::Results(convert::results(results)),
                        );
                    }
                }
                Command::ChildResults {
                    conn,
                    parent,
                    attempt,
                    results,
                } => {
                    for results in limits::batches(results, usize::MAX, result_bytes) {
                        self.send_agent(
                            conn,
                            Body::ChildResults(pb::ChildResults {
                                parent_ref: parent,
                                parent_attempt: attempt,
                                results: convert::results(results).results,
                            }),
                        );
                    }
                }
                Command::Notice { conn, text } => {
                    self.send_driver(conn, driver_event::Body::Notice(pb::Notice { text }));
                }
                Command::ForwardOutput { conn, agent, lines } => {
                    for lines in limits::batches(lines, usize::MAX, |l| l.text.len()) {
                        self.send_driver(
                            conn,
                            driver_event::Body::Output(convert::output(&agent, lines)),
                        );
                    }
                }
                Command::JobEnded {
                    job_id,
                    driver_may_return,
                } => {
                    if driver_may_return {
                        blobs.release_later(&job_id);
                    } else {
                        blobs.release_job(&job_id);
                    }
                }
                Command::Refuse { conn, reason } => {
                    let status = match reason {
                        crate::core::Refusal::Impersonation { .. } => {
                            refusals.note(&format!("stream {conn}"), &reason.to_string());
                            Status::permission_denied(reason.to_string())
                        }
                        _ => Status::failed_precondition(reason.to_string()),
                    };
                    self.close(conn, status);
                }
                Command::Disconnect { conn, reason } => {
                    self.close(
                        conn,
                        Status::unavailable(format!("the scheduler closed this stream: {reason}")),
                    );
                }
            }
        }
    }

    fn send_agent(&mut self, conn: ConnId, body: Body) {
        if let Some(Outbox {
            tx: Sender::Agent(tx),
            ..
        }) = self.outboxes.get(&conn)
            && tx.send(Ok(SchedulerMessage { body: Some(body) })).is_err()
        {
            debug!(conn, "agent stream already gone");
        }
    }

    fn send_driver(&mut self, conn: ConnId, body: driver_event::Body) {
        if let Some(Outbox {
            tx: Sender::Driver(tx),
            ..
        }) = self.outboxes.get(&conn)
            && tx.send(Ok(DriverEvent { body: Some(body) })).is_err()
        {
            debug!(conn, "driver stream already gone");
        }
    }

    fn close(&mut self, conn: ConnId, status: Status) {
        if let Some(outbox) = self.outboxes.remove(&conn) {
            match outbox.tx {
                Sender::Agent(tx) => drop(tx.send(Err(status))),
                Sender::Driver(tx) => drop(tx.send(Err(status))),
            }
            if let Some(reader) = outbox.reader {
                reader.abort();
            }
        }
    }
}

pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The core's clock: a tick often enough that a timeout is noticed within a tenth of it. It
/// also looks at the open files every few seconds (`open_files`: the limit in force).
pub async fn tick_forever(shared: Arc<Shared>, open_files: Option<u64>) {
    let period = (shared.settings.heartbeat_timeout / 10)
        .clamp(Duration::from_millis(10), Duration::from_millis(500));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut files = super::open_files::Watch::new(open_files);
    let mut files_checked = Instant::now();
    loop {
        interval.tick().await;
        shared.apply(Event::Tick);
        if files_checked.elapsed() >= Duration::from_secs(5) {
            files.check();
            files_checked = Instant::now();
        }
        // Values of jobs that ended without their driver's goodbye, kept for a while for a
        // driver that opens its session again: they go unless the job is back.
        for job in shared.blobs.due_releases(Instant::now()) {
            if !shared.with_core(|core, _| core.has_job(&job)) {
                shared.blobs.release_job(&job);
            }
        }
    }
}

/// What a result weighs in a message.
fn result_bytes(r: &DriverResult) -> usize {
    match &r.outcome {
        Outcome::Output(bytes) => bytes.len(),
        Outcome::Failed { message, .. } => message.len(),
        Outcome::Stored(_) => 0,
    }
}
