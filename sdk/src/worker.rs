//! Worker mode: when an agent starts the program, it connects to the agent's socket and runs
//! the tasks it is sent on its pool of threads, instead of running `main`'s body.

use std::{
    io::{self, BufReader},
    os::{fd::AsRawFd, unix::net::UnixStream},
    sync::Arc,
    time::Instant,
};

use ladle_common::worker_protocol::{
    self as wp, FromWorker, ToWorker, WorkerFailure, WorkerOutcome,
};

use crate::{
    nested::{self, Link},
    pool::Pool,
    registry::{self, Executed},
    shared,
};

/// Serves as a worker if an agent started this process, then exits; returns otherwise.
pub fn serve_if_worker() {
    let Some(socket) = std::env::var_os(wp::SOCKET_ENV) else {
        return;
    };
    let code = match serve(&socket) {
        Ok(()) => 0,
        // The agent closed the socket with results still unread (it ended the job, or is
        // going away): nothing is left to do, and nothing went wrong here.
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) =>
        {
            0
        }
        Err(err) => {
            eprintln!("ladle worker: {err}");
            1
        }
    };
    std::process::exit(code);
}

fn serve(socket: &std::ffi::OsStr) -> io::Result<()> {
    let threads = std::env::var(wp::THREADS_ENV)
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(1);
    let stream = UnixStream::connect(socket)?;
    let count = u32::try_from(registry::count()).unwrap_or(u32::MAX);
    serve_stream(stream, count, threads)
}

/// Serves the agent on `stream`: tasks run on a [`Pool`] of `threads` slots (a task waiting
/// for its children gives its slot back), each writing its own result; this thread reads what
/// the agent sends (tasks, shared values, children's results) until it closes the socket, then
/// waits for the tasks running to finish.
fn serve_stream(stream: UnixStream, count: u32, threads: usize) -> io::Result<()> {
    let pool = Pool::new(threads);
    let limit = max_value().and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
    let link = Link::new(stream.try_clone()?, pool.clone(), limit);
    link.send(
        &FromWorker::Ready {
            pid: std::process::id(),
            tasks: count,
        },
        true,
    )?;
    let mut input = BufReader::with_capacity(1 << 16, ReadableFirst(stream));
    while let Some(message) = wp::read_frame::<ToWorker>(&mut input)? {
        match message {
            ToWorker::Shared { sha256, data } => shared::receive(sha256, data),
            ToWorker::ChildResults { parent, results } => link.child_results(parent, results),
            ToWorker::Uploaded { request, result } => link.uploaded(request, result),
            ToWorker::Run {
                task,
                function,
                reducer,
                payload,
                report_start,
            } => {
                let link = link.clone();
                let function: Arc<str> = function.into();
                pool.push(
                    function.clone(),
                    Box::new(move || {
                        if report_start {
                            let _ = link.send(&FromWorker::Started { task }, true);
                        }
                        let started = Instant::now();
                        let done = nested::run_as(task, &link, || {
                            run_task(task, &function, reducer.as_deref(), &payload)
                        });
                        let _ = link.send_result(&done, &function, started.elapsed());
                    }),
                );
            }
        }
    }
    // The agent closed the socket: it wants this worker gone, once what runs has finished.
    pool.wait_idle();
    pool.close();
    Ok(())
}

/// The agent's socket, read only once `poll` says it is readable. A thread asleep in `read` on a
/// Unix socket is also woken each time the peer consumes what this side wrote (the kernel
/// signals write space on the same wait queue), so a worker waiting for its next task was woken
/// for nothing by the agent reading every result: a wasted wake-up and pair of context switches
/// per task. `poll` waits for input alone.
struct ReadableFirst(UnixStream);

impl io::Read for ReadableFirst {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut fd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd, for a descriptor this struct owns.
            if unsafe { libc::poll(&mut fd, 1, -1) } >= 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        // Whatever poll reported (input, hang-up, error), `read` now returns at once and says it.
        self.0.read(buf)
    }
}

/// The largest result the cluster carries, as the agent said (none: no check here).
fn max_value() -> Option<usize> {
    static LIMIT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(wp::MAX_VALUE_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    })
}

/// Runs one chunk and says how it went. A result larger than the cluster carries fails here,
/// before it is sent: the agent's stream and the other tasks never see it.
fn run_task(task: u64, function: &str, reducer: Option<&str>, payload: &[u8]) -> FromWorker {
    let started = Instant::now();
    let (executed, failed) = registry::execute_counted(function, reducer, payload);
    let outcome = match executed {
        Executed::Output(bytes) if max_value().is_some_and(|limit| bytes.len() > limit) => {
            WorkerOutcome::Failed {
                kind: WorkerFailure::TooLarge,
                message: format!(
                    "its result is {} bytes, more than the cluster's limit of {} bytes (the \
                     scheduler's max_value_bytes)",
                    bytes.len(),
                    max_value().unwrap_or_default()
                ),
            }
        }
        Executed::Output(bytes) => WorkerOutcome::Output(bytes),
        Executed::UnknownTask(message) => WorkerOutcome::Failed {
            kind: WorkerFailure::UnknownTask,
            message,
        },
        Executed::BadInput(message) => WorkerOutcome::Failed {
            kind: WorkerFailure::BadInput,
            message,
        },
        Executed::Failed(message) => WorkerOutcome::Failed {
            kind: WorkerFailure::TaskError,
            message,
        },
    };
    let run_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    FromWorker::Done {
        task,
        outcome,
        run_ns,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, os::unix::net::UnixStream};

    use ladle_common::worker_protocol::{self as wp, ToWorker};

    use super::ReadableFirst;

    #[test]
    fn a_frame_is_read_whole_and_a_closed_socket_ends_the_stream() {
        let (agent, worker) = UnixStream::pair().expect("a socket pair");
        let mut agent = agent;
        wp::write_frame(
            &mut agent,
            &ToWorker::Shared {
                sha256: "abc".into(),
                data: vec![7; 100_000],
            },
        )
        .expect("write");
        agent.flush().expect("flush");
        drop(agent);
        let mut input = std::io::BufReader::with_capacity(1 << 16, ReadableFirst(worker));
        match wp::read_frame::<ToWorker>(&mut input).expect("a frame") {
            Some(ToWorker::Shared { sha256, data }) => {
                assert_eq!(sha256, "abc");
                assert_eq!(data.len(), 100_000);
            }
            _ => panic!("not the frame written"),
        }
        assert!(
            wp::read_frame::<ToWorker>(&mut input)
                .expect("a clean end")
                .is_none()
        );
    }
}

/// Fuzz targets of the worker's side of the socket: what the agent sends. 256 cases each,
/// each a worker served over a fresh socket pair on a thread of its own (a fraction of a
/// millisecond apiece), so each property takes well under a second; `PROPTEST_CASES` runs more.
#[cfg(test)]
mod fuzz_tests {
    use std::{
        io::{Read, Write},
        net::Shutdown,
        os::unix::net::UnixStream,
        time::Duration,
    };

    use ladle_common::worker_protocol::{self as wp, FromWorker, ToWorker};
    use ladle_fuzz::{arbitrary_bytes, config, mutations_of_any};
    use proptest::prelude::*;

    use super::serve_stream;
    use crate::{
        Task,
        fuzz_support::{Add, Describe, describe_payloads},
    };

    /// Serves `input` as the agent's side of the socket would send it, then closes it: the
    /// worker must end, with no panic, and what it wrote must be frames, its `Ready` first.
    fn serve(input: &[u8]) -> Result<(), TestCaseError> {
        let fail = |e: std::io::Error| TestCaseError::fail(e.to_string());
        let (mut agent, worker) = UnixStream::pair().map_err(fail)?;
        agent.write_all(input).map_err(fail)?;
        agent.shutdown(Shutdown::Write).map_err(fail)?;
        // A worker that hangs fails the test instead of hanging it.
        agent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(fail)?;
        let serving = std::thread::spawn(move || serve_stream(worker, 3, 2));
        let mut output = Vec::new();
        agent.read_to_end(&mut output).map_err(fail)?;
        let served = serving.join();
        prop_assert!(served.is_ok(), "the worker panicked");
        let mut frames = output.as_slice();
        let first = wp::read_frame::<FromWorker>(&mut frames);
        let ready = matches!(first, Ok(Some(FromWorker::Ready { tasks: 3, .. })));
        prop_assert!(ready, "the worker did not say it is ready first");
        while let Some(frame) = wp::read_frame::<FromWorker>(&mut frames).map_err(fail)? {
            let again = matches!(frame, FromWorker::Ready { .. });
            prop_assert!(!again, "the worker said it is ready twice");
        }
        Ok(())
    }

    /// Valid streams from the agent: runs of each payload, alone and folded, and a shared
    /// constant.
    fn valid_streams() -> Vec<Vec<u8>> {
        let mut streams: Vec<Vec<u8>> = describe_payloads()
            .into_iter()
            .enumerate()
            .map(|(task, payload)| {
                let run = |reducer: Option<&str>| ToWorker::Run {
                    task: task as u64,
                    function: Describe::NAME.into(),
                    reducer: reducer.map(str::to_owned),
                    payload: payload.clone(),
                    report_start: true,
                };
                [run(None), run(Some(Add::NAME))]
                    .iter()
                    .flat_map(|m| wp::encode(m).unwrap_or_default())
                    .collect()
            })
            .collect();
        streams.push(
            wp::encode(&ToWorker::Shared {
                sha256: "cd".repeat(32),
                data: postcard::to_allocvec(&vec![1u64, 2]).unwrap_or_default(),
            })
            .unwrap_or_default(),
        );
        streams
    }

    #[test]
    fn a_valid_stream_is_served_whole() {
        let input = valid_streams().concat();
        let (mut agent, worker) = UnixStream::pair().expect("a socket pair");
        agent.write_all(&input).expect("write");
        agent.shutdown(Shutdown::Write).expect("shutdown");
        let serving = std::thread::spawn(move || serve_stream(worker, 3, 2));
        let mut output = Vec::new();
        agent.read_to_end(&mut output).expect("read");
        assert!(serving.join().expect("no panic").is_ok());
        let mut frames = output.as_slice();
        let mut done = 0;
        while let Some(frame) = wp::read_frame::<FromWorker>(&mut frames).expect("a frame") {
            done += usize::from(matches!(frame, FromWorker::Done { .. }));
        }
        assert_eq!(done, 2 * describe_payloads().len());
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn worker_never_panics_on_arbitrary_bytes_from_the_agent(input in arbitrary_bytes(1024)) {
            serve(&input)?;
        }

        #[test]
        fn worker_never_panics_on_damaged_frames_from_the_agent(
            input in mutations_of_any(valid_streams()),
        ) {
            serve(&input)?;
        }
    }
}
