//! The driver's own thread for its traffic with the scheduler, as Dask's client and Ray's core
//! worker have theirs: the session, its gRPC connection and every reconnection run there.
//!
//! Why not the program's runtime: there, a `main` that blocks (computing something locally
//! while its tasks run, as futures invite) would hold back submissions and results; and on a
//! multi-threaded runtime each result woke a runtime thread, which woke another to share its
//! work, and so on at every step: wake-ups that one thread does without.

use std::future::Future;

use tokio::{runtime::Handle, sync::oneshot};

use crate::error::Error;

pub(crate) struct IoThread {
    handle: Handle,
    /// Ends the thread when it is sent or dropped.
    done: oneshot::Sender<()>,
}

impl IoThread {
    pub(crate) async fn start() -> Result<Self, Error> {
        let (done, finished) = oneshot::channel::<()>();
        let future = async {
            let _ = finished.await;
        };
        let handle = on_own_thread("ladle-io", future)
            .await
            .map_err(Error::IoThread)?;
        Ok(Self { handle, done })
    }

    /// Runs `future` on this thread (connecting, opening the session) and gives its output.
    pub(crate) async fn run<F>(&self, future: F) -> Result<F::Output, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future).await.map_err(|_| Error::Closed)
    }

    /// Hands the thread to `session`: it ends when the session does.
    pub(crate) fn serve(self, session: impl Future<Output = ()> + Send + 'static) {
        let done = self.done;
        self.handle.spawn(async move {
            session.await;
            let _ = done.send(());
        });
    }
}

/// Runs `future` to its end on a new thread named `name`, on a single-threaded runtime of its
/// own; returns that runtime's handle once it runs. The runtime is built on its thread: were it
/// built here and the thread failed to start, it would be dropped inside the caller's runtime,
/// which tokio forbids.
pub(crate) async fn on_own_thread(
    name: &str,
    future: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Handle> {
    let (started_tx, started) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let _ = started_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(future);
                }
                Err(err) => {
                    let _ = started_tx.send(Err(err));
                }
            }
        })?;
    started
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the thread ended at once")))
}
