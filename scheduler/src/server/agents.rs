//! The agent service: one long-lived stream per agent.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use ladle_proto::v1::{AgentMessage, SchedulerMessage, agent_message::Body, agent_service_server};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::{convert, state::Shared};
use crate::core::Event;

/// How long a new stream may take to say hello before it is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentService {
    shared: Arc<Shared>,
}

impl AgentService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type AttachStream = Pin<Box<dyn Stream<Item = Result<SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl agent_service_server::AgentService for AgentService {
    type AttachStream = AttachStream;

    async fn attach(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<AttachStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no hello within 10s of opening the stream")
            })??;
        let hello = match first.and_then(|m| m.body) {
            Some(Body::Hello(hello)) => hello,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message on an agent stream must be a Hello",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "the agent stream closed before its Hello",
                ));
            }
        };

        let secret = convert::claim(&hello.agent_secret)?;
        let (conn, rx) = self.shared.open_agent();
        self.shared.apply(Event::AgentAttached {
            conn,
            hello: convert::hello(hello, peer, secret),
        });

        let shared = self.shared.clone();
        let reader = tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(AgentMessage {
                        body: Some(Body::Heartbeat(hb)),
                    })) => shared.apply(Event::Heartbeat {
                        conn,
                        load: convert::load(hb.load.unwrap_or_default()),
                    }),
                    Ok(Some(AgentMessage {
                        body: Some(Body::Results(results)),
                    })) => {
                        tracing::trace!(conn, results = results.results.len(), "results");
                        shared.apply(Event::AgentResults {
                            conn,
                            results: convert::agent_results(results),
                        });
                    }
                    Ok(Some(AgentMessage {
                        body: Some(Body::Output(output)),
                    })) => shared.apply(Event::AgentOutput {
                        conn,
                        job_id: output.job_id,
                        lines: convert::output_lines(output.lines),
                    }),
                    Ok(Some(AgentMessage {
                        body: Some(Body::Revoked(revoked)),
                    })) => {
                        let pairs = |list: Vec<ladle_proto::v1::TaskAttempt>| {
                            list.into_iter().map(|t| (t.task_ref, t.attempt)).collect()
                        };
                        shared.apply(Event::AgentRevoked {
                            conn,
                            released: pairs(revoked.released),
                            kept: pairs(revoked.kept),
                        });
                    }
                    Ok(Some(AgentMessage {
                        body: Some(Body::Children(children)),
                    })) => shared.apply(Event::ChildrenSubmitted {
                        conn,
                        parent: children.parent_ref,
                        attempt: children.parent_attempt,
                        children: children
                            .tasks
                            .into_iter()
                            .map(convert::child_spec)
                            .collect(),
                    }),
                    Ok(Some(AgentMessage {
                        body: Some(Body::ChildCancel(cancel)),
                    })) => shared.apply(Event::ChildrenCancelled {
                        conn,
                        parent: cancel.parent_ref,
                        attempt: cancel.parent_attempt,
                        ordinals: cancel.ordinals,
                    }),
                    Ok(Some(AgentMessage {
                        body: Some(Body::Waiting(waiting)),
                    })) => shared.apply(Event::TaskWaiting {
                        conn,
                        task_ref: waiting.task_ref,
                        attempt: waiting.attempt,
                        waiting: waiting.waiting,
                    }),
                    Ok(Some(AgentMessage {
                        body: Some(Body::Hello(_)),
                    })) => {
                        debug!(conn, "ignoring a second hello on one stream");
                    }
                    Ok(Some(AgentMessage { body: None })) => {
                        debug!(conn, "ignoring an empty message")
                    }
                    Ok(None) => break,
                    Err(status) => {
                        debug!(conn, %status, "agent stream broke");
                        break;
                    }
                }
            }
            shared.detached(conn, Event::AgentDetached { conn });
        });
        self.shared.set_reader(conn, reader.abort_handle());
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
