//! Between the wire's messages and the core's types.

use std::time::Instant;

use ladle_proto::v1 as pb;

use crate::core::{
    Agent, AgentHello, AgentId, AgentResult, AgentState, Assigned, BlobRef, ChildSpec,
    DriverResult, FailureKind, GpuInfo, GpuUse, Job, JobView, Load, Outcome, OutputLine, Resources,
    SecretClaim, SessionOpen, TaskSpec,
    record::{JobOutcome, JobRecord, Record, TaskRecord},
};

use super::state::millis;

/// What a returning agent or driver presents, and a fresh secret in case it is new.
pub fn claim(presented: &str) -> Result<SecretClaim, tonic::Status> {
    let issued = ladle_common::credentials::random_hex(32)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(SecretClaim {
        presented_digest: if presented.is_empty() {
            String::new()
        } else {
            ladle_common::credentials::digest(presented.as_bytes())
        },
        issued_digest: ladle_common::credentials::digest(issued.as_bytes()),
        issued,
    })
}

pub fn hello(h: pb::Hello, peer: String, secret: SecretClaim) -> AgentHello {
    AgentHello {
        secret,
        protocol_version: h.protocol_version,
        agent_id: AgentId(h.agent_id.into()),
        hostname: h.hostname,
        version: h.version,
        resources: h.resources.map(resources).unwrap_or_default(),
        labels: h.labels.into_iter().collect(),
        discovery: h.discovery,
        draining: h.draining,
        peer,
    }
}

fn resources(r: pb::Resources) -> Resources {
    Resources {
        cpus: r.cpus,
        memory_bytes: r.memory_bytes,
        cpu_slots: r.cpu_slots,
        gpus: r
            .gpus
            .into_iter()
            .map(|g| GpuInfo {
                ordinal: g.ordinal,
                name: g.name,
                memory_bytes: g.memory_bytes,
                compute_capability: g.compute_capability,
                declared: g.declared,
            })
            .collect(),
    }
}

pub fn load(l: pb::Load) -> Load {
    Load {
        busy_cpu_slots: l.busy_cpu_slots,
        busy_gpu_slots: l.busy_gpu_slots,
        load_average: l.load_average,
        memory_available_bytes: l.memory_available_bytes,
    }
}

fn resources_pb(r: &Resources) -> pb::Resources {
    pb::Resources {
        cpus: r.cpus,
        memory_bytes: r.memory_bytes,
        cpu_slots: r.cpu_slots,
        gpus: r
            .gpus
            .iter()
            .map(|g| pb::Gpu {
                ordinal: g.ordinal,
                name: g.name.clone(),
                memory_bytes: g.memory_bytes,
                compute_capability: g.compute_capability.clone(),
                declared: g.declared,
            })
            .collect(),
    }
}

fn load_pb(l: &Load) -> pb::Load {
    pb::Load {
        busy_cpu_slots: l.busy_cpu_slots,
        busy_gpu_slots: l.busy_gpu_slots,
        load_average: l.load_average,
        memory_available_bytes: l.memory_available_bytes,
    }
}

pub fn state_pb(s: AgentState) -> pb::AgentState {
    match s {
        AgentState::Alive => pb::AgentState::Alive,
        AgentState::Draining => pb::AgentState::Draining,
        AgentState::Lost => pb::AgentState::Lost,
    }
}

pub fn agent_info(a: &Agent, now: Instant) -> pb::AgentInfo {
    pb::AgentInfo {
        id: a.id().0.to_string(),
        hostname: a.hello.hostname.clone(),
        state: state_pb(a.state()).into(),
        resources: Some(resources_pb(&a.hello.resources)),
        load: Some(load_pb(&a.load)),
        last_heartbeat_ms_ago: millis(now.saturating_duration_since(a.last_seen)),
        version: a.hello.version.clone(),
        labels: a.hello.labels.clone().into_iter().collect(),
        peer: a.hello.peer.clone(),
        discovery: a.hello.discovery.clone(),
        connected_ms_ago: millis(now.saturating_duration_since(a.connected_at)),
    }
}

fn outcome_pb(outcome: Outcome) -> pb::task_result::Outcome {
    match outcome {
        Outcome::Output(bytes) => pb::task_result::Outcome::Output(bytes),
        Outcome::Stored(blob) => pb::task_result::Outcome::OutputBlob(blob_pb(&blob)),
        Outcome::Failed { kind, message } => pb::task_result::Outcome::Failure(pb::TaskFailure {
            kind: failure_kind_pb(kind).into(),
            message,
        }),
    }
}

pub fn failure_kind_pb(kind: FailureKind) -> pb::FailureKind {
    match kind {
        FailureKind::TaskError => pb::FailureKind::TaskError,
        FailureKind::UnknownTask => pb::FailureKind::UnknownTask,
        FailureKind::WorkerCrashed => pb::FailureKind::WorkerCrashed,
        FailureKind::Cancelled => pb::FailureKind::Cancelled,
        FailureKind::TimedOut => pb::FailureKind::TimedOut,
        FailureKind::BadInput => pb::FailureKind::BadInput,
        FailureKind::WorkerStart => pb::FailureKind::WorkerStart,
        FailureKind::TooLarge => pb::FailureKind::TooLarge,
        FailureKind::Refused => pb::FailureKind::Refused,
    }
}

fn blob_pb(blob: &BlobRef) -> pb::BlobRef {
    pb::BlobRef {
        sha256: blob.sha256.clone(),
        size: blob.size,
    }
}

fn blob(blob: pb::BlobRef) -> BlobRef {
    BlobRef {
        sha256: blob.sha256,
        size: blob.size,
    }
}

fn failure_kind(kind: i32) -> FailureKind {
    match pb::FailureKind::try_from(kind) {
        Ok(pb::FailureKind::UnknownTask) => FailureKind::UnknownTask,
        Ok(pb::FailureKind::WorkerCrashed) => FailureKind::WorkerCrashed,
        Ok(pb::FailureKind::Cancelled) => FailureKind::Cancelled,
        Ok(pb::FailureKind::TimedOut) => FailureKind::TimedOut,
        Ok(pb::FailureKind::BadInput) => FailureKind::BadInput,
        Ok(pb::FailureKind::WorkerStart) => FailureKind::WorkerStart,
        Ok(pb::FailureKind::TooLarge) => FailureKind::TooLarge,
        Ok(pb::FailureKind::Refused) => FailureKind::Refused,
        _ => FailureKind::TaskError,
    }
}

pub fn results(results: Vec<DriverResult>) -> pb::TaskResults {
    pb::TaskResults {
        results: results
            .into_iter()
            .map(|r| pb::TaskResult {
                task_id: r.task_id,
                attempt: r.attempt,
                agent: r.agent.to_string(),
                outcome: Some(outcome_pb(r.outcome)),
                run_ns: r.run_ns,
                gpu: r.gpu,
                seq: r.seq,
            })
            .collect(),
    }
}

pub fn agent_results(results: pb::AgentResults) -> Vec<AgentResult> {
    results
        .results
        .into_iter()
        .map(|r| AgentResult {
            task_ref: r.task_ref,
            attempt: r.attempt,
            outcome: match r.outcome {
                Some(pb::agent_task_result::Outcome::Output(bytes)) => Outcome::Output(bytes),
                Some(pb::agent_task_result::Outcome::OutputBlob(b)) => Outcome::Stored(blob(b)),
                Some(pb::agent_task_result::Outcome::Failure(f)) => Outcome::Failed {
                    kind: failure_kind(f.kind),
                    message: f.message,
                },
                None => Outcome::Failed {
                    kind: FailureKind::TaskError,
                    message: "the agent reported no outcome".into(),
                },
            },
            run_ns: r.run_ns,
            crashed_with: r.crashed_with,
            items_failed: r.failed_items,
            first_item_error: r.first_error,
        })
        .collect()
}

pub fn assign(job: &Job, tasks: Vec<Assigned>) -> pb::Assign {
    pb::Assign {
        job: Some(pb::Job {
            id: job.id.to_string(),
            name: job.name.clone(),
            executable: Some(pb::BlobRef {
                sha256: job.executable.sha256.clone(),
                size: job.executable.size,
            }),
        }),
        tasks: tasks
            .into_iter()
            .map(|t| pb::AssignedTask {
                task_ref: t.task_ref,
                attempt: t.attempt,
                function: t.spec.function.to_string(),
                payload: t.spec.payload,
                reducer: t.spec.reducer.map(|r| r.to_string()).unwrap_or_default(),
                shared: t.spec.shared,
                timeout_ms: t.spec.timeout_ms,
                gpu: t.gpu,
                items: t.spec.items,
                isolated: t.isolated,
                payload_blob: t.spec.payload_blob.as_ref().map(blob_pb),
            })
            .collect(),
    }
}

pub fn output(agent: &str, lines: Vec<OutputLine>) -> pb::AgentOutput {
    pb::AgentOutput {
        agent: agent.to_owned(),
        lines: lines
            .into_iter()
            .map(|l| pb::OutputLine {
                stderr: l.stderr,
                text: l.text,
            })
            .collect(),
    }
}

pub fn output_lines(lines: Vec<pb::OutputLine>) -> Vec<OutputLine> {
    lines
        .into_iter()
        .map(|l| OutputLine {
            stderr: l.stderr,
            text: l.text,
        })
        .collect()
}

pub fn task_spec(t: pb::TaskSpec) -> TaskSpec {
    TaskSpec {
        task_id: t.task_id,
        function: t.function.into(),
        payload: t.payload,
        items: t.items,
        reducer: (!t.reducer.is_empty()).then(|| t.reducer.into()),
        shared: t.shared,
        priority: t.priority,
        retries: t.retries,
        timeout_ms: t.timeout_ms,
        gpu: match pb::GpuUse::try_from(t.gpu) {
            Ok(pb::GpuUse::Required) => GpuUse::Required,
            Ok(pb::GpuUse::Preferred) => GpuUse::Preferred,
            // An unknown value from a newer driver: the safe reading is the strict one.
            Ok(pb::GpuUse::None) => GpuUse::None,
            Err(_) => GpuUse::Required,
        },
        payload_blob: t.payload_blob.map(blob),
    }
}

pub fn child_spec(c: pb::ChildTask) -> ChildSpec {
    ChildSpec {
        ordinal: c.ordinal,
        digest: c.digest,
        spec: task_spec(c.spec.unwrap_or_default()),
    }
}

pub fn session_open(o: pb::OpenSession, secret: SecretClaim) -> SessionOpen {
    let executable = o.executable.unwrap_or_default();
    SessionOpen {
        secret,
        protocol_version: o.protocol_version,
        session_id: o.session_id,
        job_name: o.job_name,
        executable: BlobRef {
            sha256: executable.sha256,
            size: executable.size,
        },
        driver_host: o.driver_host,
    }
}

pub fn job_info(v: &JobView) -> pb::JobInfo {
    pb::JobInfo {
        id: v.job.id.to_string(),
        name: v.job.name.clone(),
        driver_host: v.job.driver_host.clone(),
        unfinished: v.unfinished,
        running: v.running,
        delivered: v.delivered,
        driver_connected: v.driver_connected,
        unacked: v.unacked,
        state: JobOutcome::Running.name().into(),
        ..Default::default()
    }
}

/// A job from its record, with its session's live counts while it is open.
pub fn job_record_info(
    r: &JobRecord,
    view: Option<&JobView>,
    record: &Record,
    now: Instant,
) -> pb::JobInfo {
    let mut info = match view {
        Some(v) => job_info(v),
        None => pb::JobInfo {
            id: r.job.id.to_string(),
            name: r.job.name.clone(),
            driver_host: r.job.driver_host.clone(),
            ..Default::default()
        },
    };
    let ago = |at: Instant| millis(now.saturating_duration_since(at));
    info.state = r.outcome.name().into();
    info.items_submitted = r.items.submitted;
    info.items_done = r.items.done;
    info.items_failed = r.items.failed;
    (info.items_waiting, info.items_cancelled) = r.queued_and_cancelled();
    info.items_running = r.items.running;
    info.retries = r.retries;
    info.requeues = r.requeues;
    info.age_ms = ago(r.opened);
    info.ended_ms_ago = r.ended.map_or(0, ago);
    info.wall_ms = millis(r.ended.unwrap_or(now).saturating_duration_since(r.opened));
    info.items_per_s = r.rate.per_second(record.second(now), 10);
    info
}

/// What a failure is called in listings.
pub fn failure_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::TaskError => "failed",
        FailureKind::UnknownTask => "unknown task",
        FailureKind::WorkerCrashed => "worker crashed",
        FailureKind::Cancelled => "cancelled",
        FailureKind::TimedOut => "timed out",
        FailureKind::BadInput => "bad input",
        FailureKind::WorkerStart => "worker did not start",
        FailureKind::TooLarge => "too large",
        FailureKind::Refused => "refused",
    }
}

pub fn task_info(t: &TaskRecord, now: Instant) -> pb::TaskInfo {
    let state = match &t.failure {
        None if t.items_failed > 0 => "items failed",
        None => "done",
        Some((kind, _)) => failure_name(*kind),
    };
    let error = t.error().unwrap_or_default();
    pb::TaskInfo {
        task_id: t.task_id,
        function: t.function.to_string(),
        items: t.items,
        nested: t.nested,
        state: state.into(),
        error,
        agent: t.agent.to_string(),
        attempt: t.attempt,
        run_ns: t.run_ns,
        ended_ms_ago: millis(now.saturating_duration_since(t.ended)),
    }
}
