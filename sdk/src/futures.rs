//! Futures of single tasks, and waiting on several of them.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{Stream, stream::FuturesUnordered};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::{
    cluster::session::{RawResult, Request},
    lone_wait::LoneWait,
    registry::ItemResult,
    task::{ErrorKind, TaskError},
};

/// The result of one submitted task; a std `Future`. Dropping it does not cancel the task:
/// call [`TaskFuture::cancel`].
pub struct TaskFuture<R> {
    id: u64,
    task: &'static str,
    rx: Option<oneshot::Receiver<RawResult>>,
    done: Option<Result<R, TaskError>>,
    requests: mpsc::UnboundedSender<Request>,
    lone_wait: Arc<LoneWait>,
    submitted: Instant,
    /// It was awaited while alone in flight: its round trip is one the spin learns from.
    awaited_alone: bool,
}

impl<R: DeserializeOwned> TaskFuture<R> {
    pub(crate) fn new(
        id: u64,
        task: &'static str,
        rx: oneshot::Receiver<RawResult>,
        requests: mpsc::UnboundedSender<Request>,
        lone_wait: Arc<LoneWait>,
    ) -> Self {
        Self {
            id,
            task,
            rx: Some(rx),
            done: None,
            requests,
            lone_wait,
            submitted: Instant::now(),
            awaited_alone: false,
        }
    }

    /// Asks the cluster to drop the task. A task not yet started never runs; one running
    /// finishes, and its result is discarded. The future then fails as cancelled.
    pub fn cancel(&self) {
        if self.rx.is_some() {
            let _ = self.requests.send(Request::Cancel(vec![self.id]));
        }
    }

    /// Whether the result is in (without waiting).
    pub fn is_done(&mut self) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        self.poll_ready(&mut cx).is_ready()
    }

    /// The task's registered name.
    pub fn task(&self) -> &'static str {
        self.task
    }

    /// Moves the result in when it arrives; keeps it for the next poll.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.done.is_some() {
            return Poll::Ready(());
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(());
        };
        let raw = match Pin::new(rx).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(raw)) => Some(raw),
            Poll::Ready(Err(_)) => None,
        };
        self.rx = None;
        self.done = Some(match raw {
            Some(raw) => decode_single(self.task, raw),
            None => Err(disconnected(self.task)),
        });
        Poll::Ready(())
    }

    fn failed(&self) -> bool {
        matches!(self.done, Some(Err(_)))
    }
}

impl<R: DeserializeOwned> Future for TaskFuture<R> {
    type Output = Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // TaskFuture holds no self-references: it is Unpin.
        let this = self.get_mut();
        match this.poll_ready(cx) {
            Poll::Pending => {
                if this.lone_wait.alone() {
                    this.awaited_alone = true;
                    if this.lone_wait.spin(this.submitted) {
                        this.lone_wait.spinning();
                        // Whatever this submission woke may be queued on this very CPU, and
                        // Linux lets a thread early in its time slice run on: let it go first.
                        std::thread::yield_now();
                        // Polled again once the runtime has run whatever else is ready (at once on
                        // a thread outside the runtime): see `lone_wait`.
                        let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                    } else {
                        this.lone_wait.stopped_spinning();
                    }
                }
                Poll::Pending
            }
            Poll::Ready(()) => {
                if std::mem::take(&mut this.awaited_alone) {
                    this.lone_wait.stopped_spinning();
                    this.lone_wait.finished(this.submitted.elapsed());
                }
                Poll::Ready(
                    this.done
                        .take()
                        .unwrap_or_else(|| Err(disconnected(this.task))),
                )
            }
        }
    }
}

impl<R> Unpin for TaskFuture<R> {}

impl<R> Drop for TaskFuture<R> {
    fn drop(&mut self) {
        if self.awaited_alone {
            self.lone_wait.stopped_spinning();
        }
    }
}

pub(crate) fn disconnected(task: &str) -> TaskError {
    TaskError {
        kind: ErrorKind::Disconnected,
        task: task.to_owned(),
        message: "the session with the scheduler ended before the result arrived".into(),
        agent: String::new(),
        attempt: 0,
    }
}

pub(crate) fn failure(task: &str, raw: &RawResult, kind: ErrorKind, message: String) -> TaskError {
    TaskError {
        kind,
        task: task.to_owned(),
        message,
        agent: raw.agent.clone(),
        attempt: raw.attempt,
    }
}

/// Decodes the per-item results of a chunk of `items` items.
pub(crate) fn decode_items<R: DeserializeOwned>(
    task: &str,
    raw: &RawResult,
    items: usize,
) -> Result<Vec<ItemResult<R>>, TaskError> {
    let bad = |message: String| failure(task, raw, ErrorKind::BadData, message);
    match &raw.outcome {
        Ok(bytes) => {
            let decoded: Vec<ItemResult<R>> = postcard::from_bytes(bytes)
                .map_err(|e| bad(format!("cannot decode the results: {e}")))?;
            // One result per item: with fewer, a map would wait for ever for the others; with
            // more, they would pass for the results of other items.
            if decoded.len() != items {
                return Err(bad(format!(
                    "the results hold {} values for a chunk of {items} items",
                    decoded.len()
                )));
            }
            Ok(decoded)
        }
        Err((kind, message)) => Err(failure(task, raw, *kind, message.clone())),
    }
}

fn decode_single<R: DeserializeOwned>(task: &str, raw: RawResult) -> Result<R, TaskError> {
    let items = decode_items::<R>(task, &raw, 1)?;
    match items.into_iter().next() {
        Some(Ok(value)) => Ok(value),
        Some(Err(message)) => Err(failure(task, &raw, ErrorKind::Failed, message)),
        None => Err(failure(
            task,
            &raw,
            ErrorKind::BadData,
            "the result holds no value".into(),
        )),
    }
}

/// When [`wait`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any future is done.
    FirstCompleted,
    /// As soon as any future fails, or when all are done.
    FirstException,
    AllCompleted,
}

/// What [`wait`] found: the futures that are done (their results wait inside them) and those
/// that are not.
pub struct Waited<R> {
    pub done: Vec<TaskFuture<R>>,
    pub pending: Vec<TaskFuture<R>>,
}

/// Waits on `futures` until `when` holds or `timeout` passes, like Python's
/// `concurrent.futures.wait`.
pub async fn wait<R: DeserializeOwned>(
    mut futures: Vec<TaskFuture<R>>,
    when: ReturnWhen,
    timeout: Option<Duration>,
) -> Waited<R> {
    let condition = std::future::poll_fn(|cx| {
        let mut done = 0usize;
        let mut failed = false;
        for f in &mut futures {
            if f.poll_ready(cx).is_ready() {
                done += 1;
                failed |= f.failed();
            }
        }
        let all = done == futures.len();
        let met = match when {
            ReturnWhen::FirstCompleted => done > 0 || all,
            ReturnWhen::FirstException => failed || all,
            ReturnWhen::AllCompleted => all,
        };
        if met { Poll::Ready(()) } else { Poll::Pending }
    });
    match timeout {
        Some(limit) => {
            let _ = tokio::time::timeout(limit, condition).await;
        }
        None => condition.await,
    }
    let (done, pending) = futures
        .into_iter()
        .partition(|f| f.done.is_some() || f.rx.is_none());
    Waited { done, pending }
}

/// The results of `futures` in the order they complete.
pub fn as_completed<R: DeserializeOwned>(
    futures: Vec<TaskFuture<R>>,
) -> impl Stream<Item = Result<R, TaskError>> {
    futures.into_iter().collect::<FuturesUnordered<_>>()
}

/// Waits for every future; the first error wins (the rest are not waited for). For every
/// future's outcome, [`gather_all`].
pub async fn gather<R: DeserializeOwned>(futures: Vec<TaskFuture<R>>) -> Result<Vec<R>, TaskError> {
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        out.push(f.await?);
    }
    Ok(out)
}

/// Waits for every future and gives each one's outcome, in the order given.
pub async fn gather_all<R: DeserializeOwned>(
    futures: Vec<TaskFuture<R>>,
) -> Vec<Result<R, TaskError>> {
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        out.push(f.await);
    }
    out
}

/// Fuzz targets of the driver's decoding of results (a worker's bytes, through the agent and
/// the scheduler). 1024 cases each, microseconds apiece; `PROPTEST_CASES` runs more.
#[cfg(test)]
mod fuzz_tests {
    use std::collections::HashMap;

    use bytes::Bytes;
    use ladle_fuzz::{allocated_by, allocation_bound, arbitrary_bytes, config, mutations_of_any};
    use proptest::prelude::*;
    use serde_bytes::ByteBuf;

    use super::*;

    type Rich = (String, Vec<u64>, Option<ByteBuf>, HashMap<String, Vec<u8>>);

    fn raw(bytes: &[u8]) -> RawResult {
        RawResult {
            outcome: Ok(Bytes::copy_from_slice(bytes)),
            agent: "a".into(),
            attempt: 1,
            run_ns: 1,
        }
    }

    /// Decodes `bytes` as the results of chunks of 1 and 3 items of several output types, and
    /// as a reduction's partial result: no panic, within the bound, and only as many results
    /// as the chunk has items.
    fn decode_every_way(bytes: &[u8]) -> Result<(), TestCaseError> {
        let raw = raw(bytes);
        let bound = allocation_bound(bytes.len());
        for items in [1, 3] {
            let checks = [
                allocated_by(|| decode_items::<u64>("t", &raw, items).map(|v| v.len())),
                allocated_by(|| decode_items::<String>("t", &raw, items).map(|v| v.len())),
                allocated_by(|| decode_items::<ByteBuf>("t", &raw, items).map(|v| v.len())),
                allocated_by(|| decode_items::<Rich>("t", &raw, items).map(|v| v.len())),
            ];
            for (decoded, allocated) in checks {
                prop_assert!(allocated <= bound, "{allocated} bytes");
                if let Ok(n) = decoded {
                    prop_assert_eq!(n, items);
                }
            }
        }
        let (_, allocated) = allocated_by(|| decode_single::<Rich>("t", raw));
        prop_assert!(allocated <= bound, "{allocated} bytes");
        // What a map-reduce makes of a partial result.
        let (_, allocated) = allocated_by(|| postcard::from_bytes::<Rich>(bytes).is_ok());
        prop_assert!(allocated <= bound, "{allocated} bytes");
        Ok(())
    }

    fn valid() -> Vec<Vec<u8>> {
        let rich: Rich = (
            "x".into(),
            vec![3, 4],
            Some(ByteBuf::from(vec![1; 5])),
            HashMap::from([("k".into(), vec![1, 2])]),
        );
        let three: Vec<ItemResult<Rich>> = vec![Ok(rich.clone()), Err("no".into()), Ok(rich)];
        vec![
            postcard::to_allocvec(&three).unwrap_or_default(),
            postcard::to_allocvec(&vec![Ok::<u64, String>(9)]).unwrap_or_default(),
        ]
    }

    #[test]
    fn a_chunk_result_with_the_wrong_number_of_values_is_bad_data() {
        let two = postcard::to_allocvec(&vec![Ok::<u64, String>(1), Ok(2)]).unwrap_or_default();
        for items in [1, 3] {
            let err = decode_items::<u64>("t", &raw(&two), items).err();
            assert!(
                err.as_ref().is_some_and(|e| e.kind == ErrorKind::BadData
                    && e.message
                        .contains(&format!("2 values for a chunk of {items} items"))),
                "{err:?}"
            );
        }
        assert!(decode_items::<u64>("t", &raw(&two), 2).is_ok());
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn result_decoder_never_panics_on_arbitrary_bytes(bytes in arbitrary_bytes(512)) {
            decode_every_way(&bytes)?;
        }

        #[test]
        fn result_decoder_never_panics_on_damaged_results(bytes in mutations_of_any(valid())) {
            decode_every_way(&bytes)?;
        }
    }
}
