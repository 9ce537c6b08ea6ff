//! Between an agent and a worker process it started: length-prefixed postcard frames over a Unix
//! socket. The worker's stdout and stderr stay free for the tasks' own output.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

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
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame larger than 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&body)
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!(
            "frame of {len} bytes is too large"
        )));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(io::Error::other)
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
