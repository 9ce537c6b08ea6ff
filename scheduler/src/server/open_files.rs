//! Open files: every agent, driver and transfer holds a socket, so the scheduler raises its own
//! soft limit to the hard one at start, warns when most of it is in use, and when an accept
//! fails for want of descriptors, says so and pauses instead of retrying in a tight loop (which
//! answered nobody and logged nothing).

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::Stream;
use tracing::{info, warn};

/// Below this, a cluster of a few hundred agents and drivers may run out.
const COMFORTABLE: u64 = 8192;
/// Warn when this share of the limit is in use.
const NEAR: f64 = 0.8;
/// How long a failed accept for want of descriptors waits before the next.
const PAUSE: Duration = Duration::from_millis(100);
/// At most one warning about failed accepts this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft limit on open files to the hard limit; returns the limit now in force.
pub fn raise_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
            info!(
                from = before,
                to = limit.rlim_cur,
                "raised the limit on open files"
            );
        }
    }
    let now = limit.rlim_cur;
    if now < COMFORTABLE {
        warn!(
            "the limit on open files is {now} (hard limit {}): each agent, driver and transfer \
             holds one, so a cluster of more than about {} of them will be refused; raise it \
             (LimitNOFILE= in the systemd unit, ulimit -n)",
            limit.rlim_max,
            now.saturating_sub(64)
        );
    }
    Some(now)
}

/// Descriptors this process has open.
pub fn in_use() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as u64)
}

/// Warns, once per crossing, when most of the limit is in use.
pub struct Watch {
    limit: Option<u64>,
    warned: bool,
}

impl Watch {
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            warned: false,
        }
    }

    pub fn check(&mut self) {
        let (Some(limit), Some(open)) = (self.limit, in_use()) else {
            return;
        };
        let near = open as f64 >= NEAR * limit as f64;
        if near && !self.warned {
            warn!(
                "{open} of {limit} open files in use: connections beyond the limit will be \
                 refused; raise it (LimitNOFILE= in the systemd unit, ulimit -n)"
            );
        } else if !near && self.warned {
            info!(open, limit, "open files back below 80 % of the limit");
        }
        self.warned = near;
    }
}

/// Accepted connections, with failures for want of resources said and paced.
pub struct Incoming<S> {
    inner: S,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    last_warning: Option<Instant>,
    failed: u64,
}

impl<S> Incoming<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pause: None,
            last_warning: None,
            failed: 0,
        }
    }
}

fn for_want_of_resources(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl<S, T> Stream for Incoming<S>
where
    S: Stream<Item = Result<T, io::Error>> + Unpin,
{
    type Item = Result<T, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(pause) = &mut this.pause {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Err(err))) if for_want_of_resources(&err) => {
                this.failed += 1;
                if this
                    .last_warning
                    .is_none_or(|at| at.elapsed() >= WARN_EVERY)
                {
                    warn!(
                        "cannot accept connections: {err} ({} refused since the last warning; \
                         {} open files in use); raise the limit (LimitNOFILE=, ulimit -n)",
                        this.failed,
                        in_use().map_or_else(|| "?".into(), |n| n.to_string())
                    );
                    this.last_warning = Some(Instant::now());
                    this.failed = 0;
                }
                this.pause = Some(Box::pin(tokio::time::sleep(PAUSE)));
                // Wake to poll the pause.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }
}
