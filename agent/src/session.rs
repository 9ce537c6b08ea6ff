//! The agent's link to the scheduler: one stream, hello then heartbeats, and a reconnect loop
//! around it so that the agent rejoins by itself whenever the scheduler comes back.

use std::{future::Future, time::Duration};

use ladle_common::{
    client::{self, ClientAuth},
    discovery::Locator,
};
use ladle_proto::v1::{
    AgentMessage, Heartbeat, Hello, SchedulerMessage, Welcome, agent_message,
    agent_service_client::AgentServiceClient, scheduler_message,
};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tracing::{debug, error, info, warn};

use crate::{
    blobs::BlobCache,
    executor::{ExecutorHandle, Input, Outgoing},
    resources::Probe,
};

#[derive(Debug, Error)]
pub enum AgentError {
    /// The scheduler said no in a way that retrying cannot fix (token, protocol version).
    #[error("the scheduler at {address} refused this agent: {message}")]
    Refused { address: String, message: String },
}

/// Why one session ended, when it was not the agent's own choice.
enum Ended {
    Refused(String),
    /// Worth another try; `joined` says whether the scheduler had welcomed us.
    Broken {
        reason: String,
        joined: bool,
    },
}

pub struct Session {
    pub locator: Locator,
    /// The scheduler joined last (or where the agent looks, before it joined).
    pub address: String,
    pub fixed_discovery: Option<String>,
    pub cache: BlobCache,
    /// Holds the scheduler's address while the agent is joined (`--health-check` reads it).
    pub health_file: std::path::PathBuf,
    /// Present while an operator has this agent drained (see `daemon::DRAINED_FILE`).
    pub drained_file: std::path::PathBuf,
    /// The secret the scheduler gave this agent, presented in every Hello (see
    /// `daemon::SECRET_FILE`).
    pub secret_file: std::path::PathBuf,
    pub auth: ClientAuth,
    pub hello: Hello,
    pub reconnect_max_delay: Duration,
    pub executor: ExecutorHandle,
    pub outgoing: mpsc::UnboundedReceiver<Outgoing>,
}

const FIRST_RETRY: Duration = Duration::from_millis(100);

impl Session {
    /// Stays joined until `shutdown` resolves, reconnecting as often as it takes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut probe = Probe::new();
        let mut delay = FIRST_RETRY;
        let mut failures = 0u32;
        loop {
            let ended = tokio::select! {
                ended = self.once(&mut probe) => ended,
                () = &mut shutdown => {
                    let _ = std::fs::remove_file(&self.health_file);
                    return Ok(());
                }
            };
            let _ = std::fs::remove_file(&self.health_file);
            match ended {
                Ended::Refused(message) => {
                    return Err(AgentError::Refused {
                        address: self.address.clone(),
                        message,
                    });
                }
                Ended::Broken {
                    reason,
                    joined: true,
                } => {
                    warn!(
                        "lost the scheduler at {}: {reason}; reconnecting",
                        self.address
                    );
                    delay = FIRST_RETRY;
                    failures = 0;
                }
                Ended::Broken {
                    reason,
                    joined: false,
                } => {
                    failures += 1;
                    // Say it on the first failure and then now and again, not on every retry.
                    if failures.is_power_of_two() {
                        warn!(
                            "cannot join a scheduler ({failures} attempts, looking at {}): {reason}",
                            self.locator.describe()
                        );
                    } else {
                        debug!("cannot join a scheduler: {reason}");
                    }
                }
            }
            // Jitter keeps a thousand agents from reconnecting in the same millisecond.
            let pause = delay.mul_f64(0.5 + fastrand::f64());
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut shutdown => return Ok(()),
            }
            delay = (delay * 2).min(self.reconnect_max_delay);
        }
    }

    async fn once(&mut self, probe: &mut Probe) -> Ended {
        let broken = |reason: String| Ended::Broken {
            reason,
            joined: false,
        };
        let candidates = match self.locator.candidates().await {
            Ok(candidates) if !candidates.is_empty() => candidates,
            Ok(_) => return broken(format!("{} gave no address", self.locator.describe())),
            Err(err) => return broken(err.to_string()),
        };
        // Every address in turn (a DNS name of a Kubernetes service may give several).
        let mut failures = Vec::new();
        let mut connected = None;
        for candidate in candidates {
            let auth = self.auth.for_name(candidate.name.as_deref());
            match client::connect(&candidate.url, &auth).await {
                Ok(channel) => {
                    connected = Some((channel, candidate));
                    break;
                }
                Err(err) => failures.push(err.to_string()),
            }
        }
        let Some((channel, found)) = connected else {
            return broken(failures.join("; "));
        };
        if self.address != found.url {
            debug!(
                "trying the scheduler at {} (found by {})",
                found.url, found.how
            );
        }
        self.address = self.auth.shown(&found.url);
        self.cache
            .set_scheduler(&self.address, found.name.as_deref());
        self.hello.discovery = self
            .fixed_discovery
            .clone()
            .unwrap_or_else(|| found.how.to_owned());
        let mut client = ladle_common::with_message_limits!(AgentServiceClient::with_interceptor(
            channel,
            self.auth.interceptor(),
        ));
        let (tx, rx) = mpsc::channel(64);
        let hello = AgentMessage {
            body: Some(agent_message::Body::Hello(self.hello.clone())),
        };
        if tx.send(hello).await.is_err() {
            return broken("the outgoing stream closed".into());
        }
        let mut inbound = match client.attach(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return classify(&status, false),
        };
        let welcome = match inbound.message().await {
            Ok(Some(SchedulerMessage {
                body: Some(scheduler_message::Body::Welcome(welcome)),
            })) => welcome,
            Ok(Some(_)) => return broken("the scheduler's first message was not a welcome".into()),
            Ok(None) => {
                return broken("the scheduler closed the stream before welcoming us".into());
            }
            Err(status) => return classify(&status, false),
        };
        self.joined(&welcome);
        self.remember_drain(welcome.draining);
        if !welcome.agent_secret.is_empty() {
            self.remember_secret(welcome.agent_secret);
        }
        if welcome.max_value_bytes > 0 {
            self.executor.set_max_value(welcome.max_value_bytes);
        }
        // The scheduler placed again whatever this agent held on an earlier stream.
        self.executor.send(Input::Reset);
        while self.outgoing.try_recv().is_ok() {}

        let interval = Duration::from_millis(welcome.heartbeat_interval_ms.max(10));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let heartbeat = AgentMessage {
                        body: Some(agent_message::Body::Heartbeat(Heartbeat {
                            load: Some(probe.load(self.executor.busy(), self.executor.busy_gpus())),
                        })),
                    };
                    if tx.send(heartbeat).await.is_err() {
                        return Ended::Broken { reason: "the outgoing stream closed".into(), joined: true };
                    }
                }
                Some(outgoing) = self.outgoing.recv() => {
                    let body = match outgoing {
                        Outgoing::Results(results) => agent_message::Body::Results(results),
                        Outgoing::Output(output) => agent_message::Body::Output(output),
                        Outgoing::Revoked(revoked) => agent_message::Body::Revoked(revoked),
                        Outgoing::Children(children) => agent_message::Body::Children(children),
                        Outgoing::ChildCancel(cancel) => agent_message::Body::ChildCancel(cancel),
                        Outgoing::Waiting(waiting) => agent_message::Body::Waiting(waiting),
                    };
                    if tx.send(AgentMessage { body: Some(body) }).await.is_err() {
                        return Ended::Broken { reason: "the outgoing stream closed".into(), joined: true };
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.handle(message),
                    Ok(None) => return Ended::Broken { reason: "the scheduler closed the stream".into(), joined: true },
                    Err(status) => return classify(&status, true),
                },
            }
        }
    }

    fn joined(&self, welcome: &Welcome) {
        if let Err(err) = std::fs::write(&self.health_file, format!("{}\n", self.address)) {
            debug!("cannot write {}: {err}", self.health_file.display());
        }
        info!(
            "joined cluster {:?} at {} as agent {} (scheduler {}, heartbeat every {}ms){}",
            welcome.cluster,
            self.address,
            self.hello.agent_id,
            welcome.scheduler_version,
            welcome.heartbeat_interval_ms,
            if welcome.draining { ", draining" } else { "" }
        );
    }

    /// A scheduler new to this agent gave it a secret: the proof that it is this agent when it
    /// comes back, so that nobody else can take its place.
    fn remember_secret(&mut self, secret: String) {
        if let Err(err) = crate::durable::write_private(&self.secret_file, &format!("{secret}\n")) {
            error!(
                "cannot keep the scheduler's secret for this agent in {}: {err}; after a restart the scheduler will refuse it until it forgets this agent",
                self.secret_file.display()
            );
        }
        self.hello.agent_secret = secret;
    }

    /// Keeps the drain state the scheduler gave, on disk for a restarted agent and in the hello
    /// for the next scheduler.
    fn remember_drain(&mut self, draining: bool) {
        self.hello.draining = draining;
        let kept = if draining {
            crate::durable::write(&self.drained_file, "drained by an operator\n")
        } else {
            crate::durable::remove(&self.drained_file)
        };
        if let Err(err) = kept {
            // A drain not written is forgotten by a restarted agent; an undrain not written
            // drains the agent again when both it and the scheduler restart.
            error!(
                "cannot record the drain state (draining: {draining}) in {}: {err}",
                self.drained_file.display()
            );
        }
    }

    fn handle(&mut self, message: SchedulerMessage) {
        match message.body {
            Some(scheduler_message::Body::Drain(drain)) => {
                self.remember_drain(drain.draining);
                if drain.draining {
                    info!("the operator drained this agent: it takes no new work");
                } else {
                    info!("the operator undrained this agent");
                }
            }
            Some(scheduler_message::Body::Assign(assign)) => {
                self.executor.send(Input::Assign(assign))
            }
            Some(scheduler_message::Body::Cancel(cancel)) => {
                self.executor.send(Input::Cancel(cancel.task_refs))
            }
            Some(scheduler_message::Body::Revoke(revoke)) => {
                self.executor.send(Input::Revoke(revoke.tasks))
            }
            Some(scheduler_message::Body::ChildResults(results)) => {
                self.executor.send(Input::ChildResults(results))
            }
            Some(scheduler_message::Body::EndJob(end)) => {
                self.executor.send(Input::EndJob(end.job_id))
            }
            Some(scheduler_message::Body::Welcome(_)) | None => {
                debug!("ignoring an unexpected message")
            }
        }
    }
}

fn classify(status: &Status, joined: bool) -> Ended {
    match status.code() {
        // The scheduler holds this agent's id under another secret (its first Welcome was
        // lost, or the secret is another scheduler's): retried, with backoff, until the
        // scheduler forgets the old holder or it comes back as itself.
        Code::PermissionDenied if status.message().contains("belongs to another connection") => {
            Ended::Broken {
                reason: status.message().to_owned(),
                joined,
            }
        }
        Code::Unauthenticated | Code::PermissionDenied | Code::FailedPrecondition => {
            Ended::Refused(status.message().to_owned())
        }
        _ => Ended::Broken {
            reason: if status.message().is_empty() {
                status.code().description().to_owned()
            } else {
                status.message().to_owned()
            },
            joined,
        },
    }
}
