//! The driver service: one stream per session (one job).

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use ladle_proto::v1::{DriverEvent, DriverMessage, driver_message::Body, driver_service_server};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::{convert, state::Shared};
use crate::core::Event;

const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DriverService {
    shared: Arc<Shared>,
}

impl DriverService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<DriverEvent, Status>> + Send>>;

#[tonic::async_trait]
impl driver_service_server::DriverService for DriverService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<DriverMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(OPEN_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no OpenSession within 10s of opening the stream")
            })??;
        let open = match first.and_then(|m| m.body) {
            Some(Body::Open(open)) => open,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be OpenSession",
                ));
            }
        };
        let executable = open.executable.clone().unwrap_or_default();
        if !self.shared.blobs.has(&executable.sha256) {
            return Err(Status::failed_precondition(format!(
                "the job's executable {} has not been uploaded",
                executable.sha256
            )));
        }
        if open.session_id.is_empty() || open.session_id.len() > 128 {
            return Err(Status::invalid_argument(
                "the session id must be 1 to 128 characters",
            ));
        }
        // Operators read these in tables and logs: no escape sequence reaches their terminal.
        for (what, text) in [
            ("session id", &open.session_id),
            ("job name", &open.job_name),
            ("driver host", &open.driver_host),
        ] {
            if text.len() > 256 || text.chars().any(char::is_control) {
                return Err(Status::invalid_argument(format!(
                    "the {what} {text:?} is longer than 256 bytes or holds control characters"
                )));
            }
        }

        let job_id = open.session_id.clone();
        let secret = convert::claim(&open.resume_secret)?;
        let (conn, rx) = self.shared.open_driver();
        self.shared.apply(Event::DriverOpened {
            conn,
            open: convert::session_open(open, secret),
        });
        let shared = self.shared.clone();
        let reader = tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(DriverMessage { body: Some(body) })) => match body {
                        Body::Submit(batch) => {
                            // The job holds the values its tasks name (a scheduler that
                            // restarted learns it again from the resubmissions).
                            for task in &batch.tasks {
                                if let Some(blob) = &task.payload_blob {
                                    shared.blobs.claim(&blob.sha256, &job_id);
                                }
                                for sha in &task.shared {
                                    shared.blobs.claim(sha, &job_id);
                                }
                            }
                            shared.apply(Event::TasksSubmitted {
                                conn,
                                acked: batch.acked,
                                tasks: batch.tasks.into_iter().map(convert::task_spec).collect(),
                            })
                        }
                        Body::Ack(ack) => shared.apply(Event::DriverAcked {
                            conn,
                            through: ack.through,
                        }),
                        Body::Cancel(cancel) => shared.apply(Event::TasksCancelled {
                            conn,
                            task_ids: cancel.task_ids,
                        }),
                        Body::Close(_) => {
                            shared.detached(conn, Event::DriverClosed { conn });
                            return;
                        }
                        Body::Open(_) => debug!(conn, "ignoring a second OpenSession"),
                    },
                    Ok(Some(DriverMessage { body: None })) => {
                        debug!(conn, "ignoring an empty message")
                    }
                    Ok(None) => break,
                    Err(status) => {
                        debug!(conn, %status, "driver stream broke");
                        break;
                    }
                }
            }
            shared.detached(conn, Event::DriverDetached { conn });
        });
        self.shared.set_reader(conn, reader.abort_handle());
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
