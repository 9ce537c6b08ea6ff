//! Errors of the cluster handle (connecting, uploading, refusing work). Errors of individual
//! futures are [`TaskError`](crate::TaskError)s.

use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Connect(#[from] ladle_common::client::ConnectError),
    #[error("cannot read the cluster token: {0}")]
    Token(#[from] ladle_common::token::TokenError),
    #[error("cannot read this program's credentials: {0}")]
    Auth(#[from] ladle_common::client::AuthError),
    #[error("the scheduler at {address} refused the session: {message}")]
    Refused { address: String, message: String },
    #[error("cannot read this program's executable {path}: {source}")]
    Executable {
        path: String,
        source: std::io::Error,
    },
    #[error("uploading {what} to the scheduler failed: {message}")]
    Upload { what: String, message: String },
    #[error("cannot start the embedded cluster: {0}")]
    Embedded(String),
    #[error(
        "the argument of task {task} is {size} bytes, more than the cluster's limit of {limit} bytes \
         (the scheduler's max_value_bytes)"
    )]
    TooLarge {
        task: String,
        size: usize,
        limit: u64,
    },
    #[error("cannot encode the argument of task {task}: {message}")]
    Encode { task: String, message: String },
    #[error("the session with the scheduler has ended")]
    Closed,
    #[error(
        "a task cannot open a cluster of its own (it would start a private scheduler inside the \
         worker, or join as another job and wait for slots its own job holds): inside a task, \
         ladle::cluster() is the handle on its job (call it on the task's own thread)"
    )]
    InsideTask,
    #[error(
        "ladle::cluster() is the handle of code running inside a task, on the task's own thread; \
         a driver opens its cluster with Cluster::from_env()"
    )]
    NotInTask,
    #[error("invalid setting {key}: {message}")]
    Settings { key: String, message: String },
    #[error("cannot find a scheduler: {0}")]
    Discovery(String),
    #[error("cannot start the driver's I/O thread: {0}")]
    IoThread(std::io::Error),
}
