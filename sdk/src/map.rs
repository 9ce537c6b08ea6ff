//! `map`, `map_as_completed` and `map_reduce`: many items of one task, sent in chunks sized
//! from the measured time per item so that each chunk costs a few milliseconds.

use std::{
    collections::{BTreeMap, HashMap},
    future::{Future, IntoFuture},
    io::IsTerminal,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::Stream;
use tokio::sync::{Notify, mpsc};

use crate::{
    cluster::{Cluster, Options},
    error::Error,
    futures::{decode_items, failure},
    task::{ErrorKind, Task, TaskError},
};

/// Each chunk aims at this much work, so that per-chunk overhead stays small and the
/// cluster stays balanced.
const TARGET_CHUNK: Duration = Duration::from_millis(5);
const MAX_CHUNK_ITEMS: usize = 1 << 20;
/// The largest encoded chunk the driver builds: chunks travel inline (a single bigger item
/// goes alone, by reference through the blob store).
const MAX_CHUNK_BYTES: usize = ladle_common::limits::INLINE_VALUE_BYTES;

type ItemEvent<R> = (usize, Result<R, TaskError>);

/// The index of the event that says the map's own driving code stopped (it panicked, in an
/// input's `Serialize` for instance): every item without a result fails with its error.
const STOPPED: usize = usize::MAX;

/// The error of the items of a map whose events ended before theirs came.
fn ended_early(task: &str) -> TaskError {
    TaskError {
        kind: ErrorKind::Failed,
        task: task.to_owned(),
        message: "the map stopped before this item's result came".into(),
        agent: String::new(),
        attempt: 0,
    }
}

/// Stops a map: chunks not yet sent are never sent, those sent are cancelled.
#[derive(Clone)]
pub struct MapCancel(Arc<Notify>);

impl MapCancel {
    pub fn cancel(&self) {
        self.0.notify_one();
    }
}

/// The results of a `map`, in input order. A `Stream`, and awaitable for all of them at once
/// (`cluster.map(task, inputs).await` gives `Result<Vec<R>, TaskError>`, the first error winning).
pub struct MapStream<R> {
    rx: mpsc::UnboundedReceiver<ItemEvent<R>>,
    buffer: BTreeMap<usize, Result<R, TaskError>>,
    next: usize,
    total: usize,
    cancel: MapCancel,
    /// The runtime the map runs on, where `.await` gathers its results.
    runtime: tokio::runtime::Handle,
    /// The task's name, for the error of a map stopped before it finished.
    task: &'static str,
}

impl<R> MapStream<R> {
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Cancels the rest of the map.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn canceller(&self) -> MapCancel {
        self.cancel.clone()
    }
}

/// A map nobody listens to any more stops: its tasks would only take the cluster's time.
impl<R> Drop for MapStream<R> {
    fn drop(&mut self) {
        if self.next < self.total {
            self.cancel.cancel();
        }
    }
}

impl<R> Drop for AsCompleted<R> {
    fn drop(&mut self) {
        if self.remaining > 0 {
            self.cancel.cancel();
        }
    }
}

impl<R> Stream for MapStream<R> {
    type Item = Result<R, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.buffer.remove(&this.next) {
                this.next += 1;
                return Poll::Ready(Some(item));
            }
            if this.next >= this.total {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some((STOPPED, item))) => {
                    // Never a shorter `Ok`: the map fails with why it stopped.
                    this.next = this.total;
                    return Poll::Ready(Some(item.and(Err(ended_early(this.task)))));
                }
                Poll::Ready(Some((index, item))) => {
                    this.buffer.insert(index, item);
                }
                Poll::Ready(None) => {
                    this.next = this.total;
                    return Poll::Ready(Some(Err(ended_early(this.task))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<R: Send + 'static> IntoFuture for MapStream<R> {
    type Output = Result<Vec<R>, TaskError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    /// The results are gathered on the runtime, where they arrive: the caller (often `main`,
    /// on a thread of its own) then wakes once for the whole map instead of once per result.
    fn into_future(self) -> Self::IntoFuture {
        let (runtime, task) = (self.runtime.clone(), self.task);
        let collecting = AbortOnDrop(runtime.spawn(collect(self)));
        Box::pin(async move {
            let mut collecting = collecting;
            match (&mut collecting.0).await {
                Ok(results) => results,
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(err) => Err(TaskError {
                    kind: ErrorKind::Cancelled,
                    task: task.to_owned(),
                    message: format!("the map stopped before its results were in: {err}"),
                    agent: String::new(),
                    attempt: 0,
                }),
            }
        })
    }
}

async fn collect<R>(mut stream: MapStream<R>) -> Result<Vec<R>, TaskError> {
    use futures::StreamExt;
    let mut out = Vec::with_capacity(stream.total);
    while let Some(item) = stream.next().await {
        match item {
            Ok(value) => out.push(value),
            Err(err) => {
                stream.cancel();
                return Err(err);
            }
        }
    }
    Ok(out)
}

/// A caller that stops waiting stops the gathering too, which drops the stream and so
/// cancels the rest of the map.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The results of `map_as_completed`: `(input index, result)` as each completes.
pub struct AsCompleted<R> {
    rx: mpsc::UnboundedReceiver<ItemEvent<R>>,
    remaining: usize,
    cancel: MapCancel,
    /// Which inputs have had their result: should the map stop, the others fail.
    seen: Vec<bool>,
    /// The map stopped: the error each input without a result gets, and the next to check.
    stopped: Option<(TaskError, usize)>,
    task: &'static str,
}

impl<R> AsCompleted<R> {
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

impl<R> Stream for AsCompleted<R> {
    type Item = (usize, Result<R, TaskError>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if this.stopped.is_none() {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some((STOPPED, item))) => {
                    let error = item.err().unwrap_or_else(|| ended_early(this.task));
                    this.stopped = Some((error, 0));
                }
                Poll::Ready(Some((index, item))) => {
                    if let Some(seen) = this.seen.get_mut(index) {
                        *seen = true;
                    }
                    this.remaining -= 1;
                    return Poll::Ready(Some((index, item)));
                }
                Poll::Ready(None) => this.stopped = Some((ended_early(this.task), 0)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Stopped: each input without a result fails, once.
        let Some((error, cursor)) = &mut this.stopped else {
            return Poll::Pending;
        };
        while *cursor < this.seen.len() {
            let index = *cursor;
            *cursor += 1;
            if !this.seen[index] {
                this.seen[index] = true;
                this.remaining = this.remaining.saturating_sub(1);
                return Poll::Ready(Some((index, Err(error.clone()))));
            }
        }
        this.remaining = 0;
        Poll::Ready(None)
    }
}

/// Starts the task that sends a map's chunks; returns where its results arrive.
fn start<T: Task>(
    cluster: &Cluster,
    inputs: Vec<T::Input>,
    reducer: Option<&'static str>,
    options: Options,
) -> (mpsc::UnboundedReceiver<ItemEvent<T::Output>>, MapCancel) {
    use futures::FutureExt;
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = MapCancel(Arc::new(Notify::new()));
    let stopped = tx.clone();
    let driving = std::panic::AssertUnwindSafe(drive::<T>(
        cluster.clone(),
        inputs,
        reducer,
        options,
        tx,
        cancel.clone(),
    ))
    .catch_unwind();
    cluster.runtime().spawn(async move {
        if let Err(panic) = driving.await {
            let error = TaskError {
                kind: ErrorKind::Failed,
                task: T::NAME.to_owned(),
                message: format!(
                    "the map stopped: its own code in the driver panicked ({}), for instance in \
                     an input's Serialize",
                    crate::registry::panic_message(&*panic)
                ),
                agent: "the driver".into(),
                attempt: 0,
            };
            let _ = stopped.send((STOPPED, Err(error)));
        }
    });
    (rx, cancel)
}

pub(crate) fn map<T: Task>(
    cluster: &Cluster,
    inputs: Vec<T::Input>,
    options: Options,
) -> MapStream<T::Output> {
    let total = inputs.len();
    let (rx, cancel) = start::<T>(cluster, inputs, None, options);
    MapStream {
        rx,
        buffer: BTreeMap::new(),
        next: 0,
        total,
        cancel,
        runtime: cluster.runtime(),
        task: T::NAME,
    }
}

pub(crate) fn map_as_completed<T: Task>(
    cluster: &Cluster,
    inputs: Vec<T::Input>,
    options: Options,
) -> AsCompleted<T::Output> {
    let remaining = inputs.len();
    let (rx, cancel) = start::<T>(cluster, inputs, None, options);
    AsCompleted {
        rx,
        remaining,
        cancel,
        seen: vec![false; remaining],
        stopped: None,
        task: T::NAME,
    }
}

/// Runs `T` over `inputs`, folding each chunk with `reducer` on the agents; returns the
/// partial results (one per chunk) as they arrive.
pub(crate) fn map_partials<T: Task>(
    cluster: &Cluster,
    inputs: Vec<T::Input>,
    reducer: &'static str,
    options: Options,
) -> (mpsc::UnboundedReceiver<ItemEvent<T::Output>>, MapCancel) {
    start::<T>(cluster, inputs, Some(reducer), options)
}

struct Chunk {
    start: usize,
    len: usize,
}

/// Sends the chunks, keeping a few per slot in flight, and turns their results into items.
async fn drive<T: Task>(
    cluster: Cluster,
    inputs: Vec<T::Input>,
    reducer: Option<&'static str>,
    options: Options,
    tx: mpsc::UnboundedSender<ItemEvent<T::Output>>,
    cancel: MapCancel,
) {
    let total = inputs.len();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut inflight: HashMap<u64, Chunk> = HashMap::new();
    let mut next = 0usize;
    let mut per_item_ns: Option<f64> = None;
    // Encoded bytes per item, from the last chunk: chunks are sized to stay inline up front,
    // rather than encoded at a guessed size and halved (for big items that meant encoding each
    // several times over).
    let mut per_item_bytes: Option<usize> = None;
    let mut chunk_no = 0usize;
    // Retries are the scheduler's to decide, per task: a task of one item goes with the item's
    // retries left, a chunk of several with none (it would run its good items again). An item
    // that fails inside a chunk goes again alone, its run in the chunk counted as one attempt.
    let retries = options.retries;
    let options = Options {
        retries: 0,
        ..options
    };
    // Items to send alone, with the retries each has left.
    let mut singles: std::collections::VecDeque<(usize, u32)> = std::collections::VecDeque::new();
    let mut progress = Progress::new(total);
    let cancelled = cancel.0.clone();
    // Inside a task, chunks are cut by count (and bytes) alone, not by measured time: a run of
    // the task after its agent was lost then cuts its maps the same way, and gets the results of
    // the chunks that finished (children are known by their order and content).
    let by_count = cluster.is_nested();

    loop {
        // The window follows the cluster: the scheduler says when agents join, leave or are
        // drained.
        let slots = cluster.slots().max(1) as usize;
        let max_inflight = slots * 2 + 2;
        // Until the first measurement, one item per slot probes the cost of an item.
        while inflight.len() < max_inflight
            && (!singles.is_empty()
                || (next < total && (by_count || per_item_ns.is_some() || inflight.len() < slots)))
        {
            // Items of a chunk that crashed its worker, or failed in one, go first, one by one.
            let single = singles.pop_front();
            let start = single.map_or(next, |(index, _)| index);
            let by_time = match per_item_ns {
                _ if by_count => MAX_CHUNK_ITEMS,
                None => 1,
                Some(ns) => ((TARGET_CHUNK.as_nanos() as f64 / ns.max(1.0)) as usize)
                    .clamp(1, MAX_CHUNK_ITEMS),
            };
            // Guided: never more than a share of what is left, so the end stays balanced.
            let share = (total - next).div_ceil(2 * slots);
            let by_bytes =
                per_item_bytes.map_or(MAX_CHUNK_ITEMS, |b| (MAX_CHUNK_BYTES / b.max(1)).max(1));
            let mut len = if single.is_some() {
                1
            } else {
                by_time.min(share).min(by_bytes).max(1)
            };
            let encoded = loop {
                let slice = &inputs[start..start + len];
                match cluster.encode_chunk::<T>(slice) {
                    Ok((payload, _)) if payload.len() > MAX_CHUNK_BYTES && len > 1 => {
                        // Items bigger than the last ones: as many as fit, judged by these.
                        let fit = MAX_CHUNK_BYTES / (payload.len() / len).max(1);
                        len = fit.clamp(1, len.div_ceil(2));
                    }
                    other => break other,
                }
            };
            if let Ok((payload, _)) = &encoded {
                per_item_bytes = Some(payload.len() / len);
            }
            let task_id = cluster.next_task_id();
            let done = done_tx.clone();
            let task_options = match (single, len) {
                (Some((_, left)), _) => Options {
                    retries: left,
                    ..options.clone()
                },
                (None, 1) => Options {
                    retries,
                    ..options.clone()
                },
                (None, _) => options.clone(),
            };
            // A big argument waits for its turn to upload: at most one uploads while the next
            // is encoded, so the driver never holds more than two beyond its inputs.
            let turn = match &encoded {
                Ok((payload, _)) if payload.len() > ladle_common::limits::INLINE_VALUE_BYTES => {
                    cluster.upload_turn().await
                }
                _ => None,
            };
            let outcome = encoded.and_then(|(payload, shared)| {
                cluster.send_chunk::<T>(
                    task_id,
                    payload,
                    shared,
                    len,
                    reducer,
                    &task_options,
                    Box::new(move |raw| {
                        let _ = done.send((task_id, raw));
                    }),
                    turn,
                )
            });
            match outcome {
                Ok(()) => {
                    inflight.insert(task_id, Chunk { start, len });
                }
                Err(err) => {
                    let kind = match err {
                        Error::TooLarge { .. } => ErrorKind::TooLarge,
                        Error::Encode { .. } => ErrorKind::BadData,
                        _ => ErrorKind::Disconnected,
                    };
                    let error = TaskError {
                        kind,
                        task: T::NAME.to_owned(),
                        message: err.to_string(),
                        agent: String::new(),
                        attempt: 0,
                    };
                    if reducer.is_some() {
                        let _ = tx.send((chunk_no, Err(error)));
                        cluster.cancel_tasks(inflight.keys().copied().collect());
                        return;
                    }
                    // Every item of the chunk gets the error: none may be left without a result.
                    for index in start..start + len {
                        let _ = tx.send((index, Err(error.clone())));
                    }
                }
            }
            if single.is_none() {
                next += len;
                chunk_no += 1;
            }
        }
        if inflight.is_empty() && singles.is_empty() && next >= total {
            break;
        }
        tokio::select! {
            Some((task_id, raw)) = done_rx.recv() => {
                let Some(chunk) = inflight.remove(&task_id) else { continue };
                // A chunk that killed its worker: run its items one by one, so that only the
                // item at fault fails (after its own attempts) and the others succeed.
                // Likewise a chunk whose results together were too large: one by one, only the
                // items whose own result is too large fail.
                if chunk.len > 1
                    && matches!(
                        &raw.outcome,
                        Err((ErrorKind::WorkerCrashed | ErrorKind::TooLarge, _))
                    )
                {
                    singles.extend((chunk.start..chunk.start + chunk.len).map(|i| (i, retries)));
                    continue;
                }
                if raw.run_ns > 0 && raw.outcome.is_ok() {
                    let ns = raw.run_ns as f64 / chunk.len as f64;
                    per_item_ns = Some(per_item_ns.map_or(ns, |old| 0.7 * old + 0.3 * ns));
                }
                if reducer.is_some() {
                    let partial = match &raw.outcome {
                        Ok(bytes) => postcard::from_bytes::<T::Output>(bytes).map_err(|e| {
                            failure(T::NAME, &raw, ErrorKind::BadData, format!("cannot decode a partial result: {e}"))
                        }),
                        Err((kind, message)) => Err(failure(T::NAME, &raw, *kind, message.clone())),
                    };
                    if matches!(&partial, Err(e) if e.kind == ErrorKind::Failed)
                        && chunk.len > 1
                        && retries > 0
                    {
                        // A failed reduction of several items, retries allowed: its items again,
                        // one by one, this run counted as an attempt of each.
                        singles.extend((chunk.start..chunk.start + chunk.len).map(|i| (i, retries - 1)));
                        continue;
                    }
                    let _ = tx.send((chunk.start, partial));
                    continue;
                }
                match decode_items::<T::Output>(T::NAME, &raw, chunk.len) {
                    Ok(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let index = chunk.start + i;
                            match item {
                                Err(_) if chunk.len > 1 && retries > 0 => {
                                    singles.push_back((index, retries - 1));
                                }
                                item => {
                                    let item = item.map_err(|message| failure(T::NAME, &raw, ErrorKind::Failed, message));
                                    let _ = tx.send((index, item));
                                }
                            }
                        }
                    }
                    Err(err) => {
                        for i in 0..chunk.len {
                            let _ = tx.send((chunk.start + i, Err(err.clone())));
                        }
                    }
                }
                progress.advance(chunk.len);
            }
            () = cluster.capacity_changed() => {}
            () = cancelled.notified() => {
                cluster.cancel_tasks(inflight.keys().copied().collect());
                let error = TaskError {
                    kind: ErrorKind::Cancelled,
                    task: T::NAME.to_owned(),
                    message: "the map was cancelled".into(),
                    agent: String::new(),
                    attempt: 0,
                };
                if reducer.is_none() {
                    let unsent = singles.iter().map(|&(i, _)| i).chain(next..total);
                    let sent = inflight.values().flat_map(|c| c.start..c.start + c.len);
                    for index in sent.chain(unsent) {
                        let _ = tx.send((index, Err(error.clone())));
                    }
                }
                break;
            }
        }
    }
    progress.finish();
}

/// A progress bar on stderr for maps that run longer than a second, when stderr is a terminal.
struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    enabled: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            started: Instant::now(),
            bar: None,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self, n: usize) {
        self.done += n;
        if !self.enabled {
            return;
        }
        if self.bar.is_none() && self.started.elapsed() > Duration::from_secs(1) {
            let bar = indicatif::ProgressBar::new(self.total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} tasks, {per_sec}, eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.done as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
