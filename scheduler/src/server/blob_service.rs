//! Upload and download of blobs over gRPC.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use ladle_proto::v1::{BlobChunk, BlobRef, FetchBlobRequest, HasBlobReply, blob_service_server};
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use super::{
    blobs::{AsyncNext, BlobError, valid_hash},
    state::Shared,
};

use ladle_common::limits::BLOB_PIECE_BYTES as CHUNK;

pub struct BlobService {
    shared: Arc<Shared>,
}

impl BlobService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// A value uploaded for a job that is not open (a result that finished as its job ended):
    /// it goes after the retention time, like the values of a job whose driver went away,
    /// rather than staying for good.
    fn unless_running(&self, job: &str) {
        if !job.is_empty() && !self.shared.with_core(|core, _| core.has_job(job)) {
            self.shared.blobs.release_later(job);
        }
    }
}

struct Upload(Streaming<BlobChunk>);

impl AsyncNext for Upload {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, BlobError> {
        match self.0.message().await {
            Ok(Some(chunk)) => Ok(Some(chunk.data)),
            Ok(None) => Ok(None),
            Err(status) => Err(BlobError::Io(std::io::Error::other(
                status.message().to_owned(),
            ))),
        }
    }
}

fn to_status(err: BlobError) -> Status {
    match err {
        BlobError::Io(_) => Status::internal(err.to_string()),
        _ => Status::invalid_argument(err.to_string()),
    }
}

type FetchStream = Pin<Box<dyn Stream<Item = Result<BlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl blob_service_server::BlobService for BlobService {
    async fn has_blob(&self, request: Request<BlobRef>) -> Result<Response<HasBlobReply>, Status> {
        let blob = request.into_inner();
        if !valid_hash(&blob.sha256) {
            return Err(to_status(BlobError::BadHash(blob.sha256)));
        }
        Ok(Response::new(HasBlobReply {
            present: self.shared.blobs.has(&blob.sha256),
        }))
    }

    async fn upload_blob(
        &self,
        request: Request<Streaming<BlobChunk>>,
    ) -> Result<Response<BlobRef>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an upload needs at least one chunk"))?;
        let blob = first.blob.ok_or_else(|| {
            Status::invalid_argument("the first chunk of an upload must name the blob")
        })?;
        if self.shared.blobs.has(&blob.sha256) {
            self.shared.blobs.held_by(&blob.sha256, &first.job_id);
            self.unless_running(&first.job_id);
            return Ok(Response::new(blob));
        }
        let job_id = first.job_id.clone();
        // Put the first chunk's data back in front of the rest.
        struct Prefixed(Option<bytes::Bytes>, Upload);
        impl AsyncNext for Prefixed {
            async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, BlobError> {
                match self.0.take() {
                    Some(data) => Ok(Some(data)),
                    None => self.1.next_chunk().await,
                }
            }
        }
        self.shared
            .blobs
            .receive(
                &blob.sha256,
                blob.size,
                &first.job_id,
                Prefixed(Some(first.data), Upload(stream)),
            )
            .await
            .map_err(|err| {
                warn!("refused an upload: {err}");
                to_status(err)
            })?;
        self.unless_running(&job_id);
        self.shared
            .telemetry
            .blob_in
            .fetch_add(blob.size, std::sync::atomic::Ordering::Relaxed);
        Ok(Response::new(blob))
    }

    type FetchBlobStream = FetchStream;

    async fn fetch_blob(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<FetchStream>, Status> {
        let sha256 = request.into_inner().sha256;
        let path = self.shared.blobs.path(&sha256).map_err(to_status)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|_| Status::not_found(format!("no blob {sha256} on this scheduler")))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .len();
        self.shared.blobs.count_fetch(&sha256);
        self.shared
            .telemetry
            .blob_out
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        let stream = async_stream(move |tx| async move {
            let mut first = Some(BlobRef { sha256, size });
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                if n == 0 && first.is_none() {
                    return;
                }
                buf.truncate(n);
                let chunk = BlobChunk {
                    blob: first.take(),
                    data: buf.into(),
                    job_id: String::new(),
                };
                if tx.send(Ok(chunk)).await.is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small channel (back-pressure: one chunk ahead).
fn async_stream<F, Fut>(f: F) -> FetchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<BlobChunk, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
