//! Between an agent and a worker process it started: length-prefixed postcard frames over a Unix
//! socket. The worker's stdout and stderr stay free for the tasks' own output.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Environment variable naming the socket a worker connects to. Its presence is what makes
/// a Ladle program start as a worker instead of a driver.
pub const SOCKET_ENV: &str = "LADLE_WORKER_SOCKET";
/// How many tasks the worker runs at once (its rayon pool's size).
pub const THREADS_ENV: &str = "LADLE_WORKER_THREADS";
/// The id of the job the worker serves.
pub const JOB_ENV: &str = "LADLE_WORKER_JOB";
/// The ordinal (on the agent's machine) of the one GPU a GPU worker owns; absent in CPU workers.
/// `CUDA_VISIBLE_DEVICES` is set to it too, so that inside the worker that device is device 0.
pub const GPU_ENV: &str = "LADLE_GPU";
/// The name of the agent running the worker, as its table shows it.
pub const AGENT_ENV: &str = "LADLE_AGENT";
/// The largest result the cluster carries (the scheduler's `max_value_bytes`): a worker fails a
/// task whose result is larger instead of sending it.
pub const MAX_VALUE_ENV: &str = "LADLE_MAX_VALUE_BYTES";

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 31;

#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run a chunk of items of `function`; fold the outputs with `reducer` when given.
    Run {
        task: u64,
        function: String,
        reducer: Option<String>,
        // Bytes as one block: serde's default for a Vec<u8> is element by element, which for a
        // big value costs the agent's one thread seconds in a debug build.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        /// Say when it starts (the agent times it from then).
        report_start: bool,
    },
    /// A shared constant that tasks may refer to; sent once per worker, before such tasks.
    Shared {
        sha256: String,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Results of children of the running task `parent`: each a protobuf `ladle.v1.TaskResult`
    /// whose `task_id` is the child's ordinal, with its output inline.
    ChildResults {
        parent: u64,
        results: Vec<ByteBlock>,
    },
    /// The answer to [`FromWorker::Upload`]: the value's hash, or why it could not be stored.
    Uploaded {
        request: u64,
        result: Result<String, String>,
    },
}

/// Bytes that travel as one block (serde's default for a `Vec<u8>` is element by element).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct ByteBlock(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// A task that a running task submitted.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerChild {
    /// Its order of submission in its parent's run.
    pub ordinal: u32,
    /// What it is (function and argument), to tell it from another child at that ordinal.
    pub digest: u64,
    /// A protobuf `ladle.v1.TaskSpec`, its argument inline however big (the agent stores a big
    /// one in the blob store).
    pub spec: ByteBlock,
}

/// The items of a chunk that failed on their own, for operators: how many, and the first error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFailures {
    pub count: u32,
    pub first: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    Ready {
        pid: u32,
        tasks: u32,
    },
    /// A task asked to report its start has started.
    Started {
        task: u64,
    },
    Done {
        task: u64,
        outcome: WorkerOutcome,
        run_ns: u64,
        /// Items of the chunk whose own run failed (their errors are in the output).
        failed: ItemFailures,
    },
    /// The running task `parent` submitted these tasks (nested futures).
    Submit {
        parent: u64,
        children: Vec<WorkerChild>,
    },
    /// The running task `parent` no longer wants these children.
    CancelChildren {
        parent: u64,
        ordinals: Vec<u32>,
    },
    /// The running task waits for its children (its slot may take other work), or resumed.
    Waiting {
        task: u64,
        waiting: bool,
    },
    /// Store this value in the scheduler's blob store for the job (a task's `share`).
    Upload {
        request: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerOutcome {
    /// postcard: the chunk's per-item results, or the folded value of a reduction.
    Output(#[serde(with = "serde_bytes")] Vec<u8>),
    Failed {
        kind: WorkerFailure,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum WorkerFailure {
    /// The reduction (or the whole chunk) failed in user code.
    TaskError,
    /// No task of that name in this build.
    UnknownTask,
    /// The input did not decode as the task's input type.
    BadInput,
    /// The result is larger than the cluster carries.
    TooLarge,
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(out: &mut impl Write, message: &T) -> io::Result<()> {
    let body = postcard::to_stdvec(message).map_err(io::Error::other)?;
    // What the reader would refuse is not sent.
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME)
        .ok_or_else(|| {
            io::Error::other(format!(
                "a frame of {} bytes is more than the limit of {MAX_FRAME} bytes",
                body.len()
            ))
        })?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&body)
}

/// What a reader sets aside for a frame before its bytes arrive. The length prefix is the
/// peer's word: a wrong one (a bug, garbage read as a header) must not cost memory that is never
/// sent, so a larger frame's buffer grows as its bytes come.
const PREALLOCATE: usize = 1 << 20;

/// The length a frame header announces, refused when over [`MAX_FRAME`].
fn frame_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a frame of {len} bytes was announced, more than the limit of {MAX_FRAME} bytes"
            ),
        ));
    }
    Ok(len)
}

/// The body of a frame of `len` bytes, once read: whole, and decodable.
fn frame_body<T: for<'de> Deserialize<'de>>(body: &[u8], len: usize) -> io::Result<T> {
    if body.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the stream ended {} bytes into a frame of {len} bytes",
                body.len()
            ),
        ));
    }
    postcard::from_bytes(body).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes does not decode: {e}"),
        )
    })
}

/// Reads one frame; `Ok(None)` at a clean end of stream. A frame over [`MAX_FRAME`], or that
/// does not decode, is an [`io::ErrorKind::InvalidData`] error.
pub fn read_frame<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> io::Result<Option<T>> {
    let mut header = [0u8; 4];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = frame_len(header)?;
    let mut body = Vec::with_capacity(len.min(PREALLOCATE));
    input.by_ref().take(len as u64).read_to_end(&mut body)?;
    frame_body(&body, len).map(Some)
}

/// [`read_frame`] on an async stream (the agent's side).
pub async fn read_frame_async<T: for<'de> Deserialize<'de>>(
    input: &mut (impl AsyncRead + Unpin),
) -> io::Result<Option<T>> {
    let mut header = [0u8; 4];
    match input.read_exact(&mut header).await {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = frame_len(header)?;
    let mut body = Vec::with_capacity(len.min(PREALLOCATE));
    (&mut *input)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    frame_body(&body, len).map(Some)
}

/// Decodes a frame body (for readers that split frames themselves).
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    postcard::from_bytes(body).map_err(io::Error::other)
}

/// Encodes a frame, length prefix included.
pub fn encode<T: Serialize>(message: &T) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    write_frame(&mut out, message)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &ToWorker::Shared {
                sha256: "ab".into(),
                data: vec![1, 2, 3],
            },
        )
        .unwrap();
        write_frame(&mut buf, &FromWorker::Ready { pid: 7, tasks: 2 }).unwrap();
        let mut input = buf.as_slice();
        assert!(matches!(
            read_frame::<ToWorker>(&mut input).unwrap(),
            Some(ToWorker::Shared { .. })
        ));
        assert!(matches!(
            read_frame::<FromWorker>(&mut input).unwrap(),
            Some(FromWorker::Ready { pid: 7, tasks: 2 })
        ));
        assert!(read_frame::<FromWorker>(&mut input).unwrap().is_none());
    }
}

/// Fuzz targets of the frame readers, the worker's ([`read_frame`]) and the agent's
/// ([`read_frame_async`]). 1024 cases of each property (512 for the slower async agreement):
/// under a second each in a debug build on a slow 2-core machine, so that `cargo test` runs
/// them every time; `PROPTEST_CASES` runs more.
#[cfg(test)]
mod fuzz_tests {
    use ladle_fuzz::{allocated_by, allocation_bound, arbitrary_bytes, config, mutations_of_any};
    use proptest::prelude::*;

    use super::*;

    /// How reading frames from `bytes` until the end or an error went: the frames read, and the
    /// kind of the error that stopped it.
    type Outcome = (usize, Option<io::ErrorKind>);

    fn read_all<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Outcome {
        let mut input = bytes;
        let mut frames = 0;
        loop {
            match read_frame::<T>(&mut input) {
                Ok(Some(_)) => frames += 1,
                Ok(None) => return (frames, None),
                Err(err) => return (frames, Some(err.kind())),
            }
        }
    }

    fn read_all_async<T: for<'de> Deserialize<'de>>(
        runtime: &tokio::runtime::Runtime,
        bytes: &[u8],
    ) -> Outcome {
        runtime.block_on(async {
            let mut input = bytes;
            let mut frames = 0;
            loop {
                match read_frame_async::<T>(&mut input).await {
                    Ok(Some(_)) => frames += 1,
                    Ok(None) => return (frames, None),
                    Err(err) => return (frames, Some(err.kind())),
                }
            }
        })
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("a runtime: {e}"))
    }

    /// Both readers, on both directions' messages: no panic, allocation within the bound.
    fn read_both_ways(bytes: &[u8]) -> Result<(), TestCaseError> {
        let bound = allocation_bound(bytes.len());
        for (what, (_, allocated)) in [
            ("ToWorker", allocated_by(|| read_all::<ToWorker>(bytes))),
            ("FromWorker", allocated_by(|| read_all::<FromWorker>(bytes))),
        ] {
            prop_assert!(
                allocated <= bound,
                "reading {} bytes as {what} frames allocated {allocated} bytes",
                bytes.len()
            );
        }
        Ok(())
    }

    fn sample_messages() -> (Vec<ToWorker>, Vec<FromWorker>) {
        let to = vec![
            ToWorker::Run {
                task: 7,
                function: "square".into(),
                reducer: Some("add".into()),
                payload: postcard::to_stdvec(&vec![1u64, 2, 300]).unwrap_or_default(),
                report_start: true,
            },
            ToWorker::Shared {
                sha256: "ab".repeat(32),
                data: (0..100).collect(),
            },
        ];
        let from = vec![
            FromWorker::Ready { pid: 42, tasks: 3 },
            FromWorker::Started { task: 7 },
            FromWorker::Done {
                task: 7,
                outcome: WorkerOutcome::Output(vec![1, 2, 3]),
                run_ns: 1234,
                failed: ItemFailures {
                    count: 1,
                    first: "panicked".into(),
                },
            },
            FromWorker::Done {
                task: 8,
                outcome: WorkerOutcome::Failed {
                    kind: WorkerFailure::BadInput,
                    message: "no".into(),
                },
                run_ns: u64::MAX,
                failed: ItemFailures::default(),
            },
        ];
        (to, from)
    }

    /// Valid streams: each message alone, and each direction's messages one after the other.
    fn valid_streams() -> Vec<Vec<u8>> {
        let (to, from) = sample_messages();
        let mut streams: Vec<Vec<u8>> = to
            .iter()
            .map(|m| encode(m).unwrap_or_default())
            .chain(from.iter().map(|m| encode(m).unwrap_or_default()))
            .collect();
        streams.push(
            to.iter()
                .flat_map(|m| encode(m).unwrap_or_default())
                .collect(),
        );
        streams.push(
            from.iter()
                .flat_map(|m| encode(m).unwrap_or_default())
                .collect(),
        );
        streams
    }

    #[test]
    fn the_valid_streams_read_whole() {
        let (to, from) = sample_messages();
        let streams = valid_streams();
        let all_to = &streams[streams.len() - 2];
        let all_from = &streams[streams.len() - 1];
        assert_eq!(read_all::<ToWorker>(all_to), (to.len(), None));
        assert_eq!(read_all::<FromWorker>(all_from), (from.len(), None));
    }

    #[test]
    fn a_frame_header_claiming_4_gib_is_refused_naming_its_size_and_the_limit_before_allocating() {
        let header = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let (result, allocated) = allocated_by(|| read_frame::<ToWorker>(&mut &header[..]));
        let err = result.err().map(|e| (e.kind(), e.to_string()));
        let Some((kind, message)) = err else {
            panic!("a 4 GiB frame was accepted");
        };
        assert_eq!(kind, io::ErrorKind::InvalidData);
        assert!(message.contains("4294967295"), "{message}");
        assert!(message.contains(&MAX_FRAME.to_string()), "{message}");
        assert!(allocated < 1024, "{allocated} bytes allocated");
        let runtime = runtime();
        let (result, allocated) =
            allocated_by(|| runtime.block_on(read_frame_async::<FromWorker>(&mut &header[..])));
        assert!(result.is_err_and(|e| e.to_string().contains("4294967295")));
        assert!(allocated < 1024, "{allocated} bytes allocated");
    }

    #[test]
    fn a_frame_at_the_limit_that_never_comes_costs_only_what_arrives() {
        let mut input = (MAX_FRAME as u32).to_le_bytes().to_vec();
        input.extend([0; 100]);
        let (result, allocated) = allocated_by(|| read_frame::<ToWorker>(&mut input.as_slice()));
        assert!(result.is_err_and(|e| {
            e.kind() == io::ErrorKind::UnexpectedEof
                && e.to_string()
                    .contains("100 bytes into a frame of 2147483648")
        }),);
        assert!(
            allocated <= PREALLOCATE + 4096,
            "{allocated} bytes allocated"
        );
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn frame_readers_never_panic_on_arbitrary_bytes(bytes in arbitrary_bytes(512)) {
            read_both_ways(&bytes)?;
        }

        #[test]
        fn frame_readers_never_panic_on_damaged_frames(
            bytes in mutations_of_any(valid_streams()),
        ) {
            read_both_ways(&bytes)?;
        }

        #[test]
        fn a_frame_header_allocates_only_for_the_bytes_that_follow(
            len in 0..=MAX_FRAME as u32,
            tail in arbitrary_bytes(256),
        ) {
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend(&tail);
            read_both_ways(&bytes)?;
            if len as usize > tail.len() {
                prop_assert_eq!(read_all::<ToWorker>(&bytes), (0, Some(io::ErrorKind::UnexpectedEof)));
            }
        }
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn the_agents_and_the_workers_frame_readers_agree_on_every_input(
            bytes in prop_oneof![arbitrary_bytes(512), mutations_of_any(valid_streams())],
        ) {
            let runtime = runtime();
            prop_assert_eq!(read_all::<ToWorker>(&bytes), read_all_async::<ToWorker>(&runtime, &bytes));
            prop_assert_eq!(read_all::<FromWorker>(&bytes), read_all_async::<FromWorker>(&runtime, &bytes));
            let (_, allocated) = allocated_by(|| read_all_async::<FromWorker>(&runtime, &bytes));
            prop_assert!(allocated <= allocation_bound(bytes.len()));
        }
    }
}
