//! The tasks of this program, registered by `#[ladle::task]` at link time, and how a worker runs
//! a chunk of them.

use std::{
    collections::HashMap,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::OnceLock,
};

use ladle_common::worker_protocol::ItemFailures;

use crate::task::{Reducer, Task};

/// Runs a chunk: encoded inputs in, encoded per-item results out.
type RunChunk = fn(&[u8]) -> Result<ChunkOutput, ChunkError>;

/// A chunk's encoded per-item results; for a chunk of one item that failed, its error too (the
/// task as a whole failed, and the scheduler decides whether it runs again).
pub struct ChunkOutput {
    encoded: Vec<u8>,
    lone_error: Option<String>,
    /// Its items that failed, and the first error among them: for operators.
    failed: ItemFailures,
}
/// Folds encoded per-item results into one encoded value.
type Fold = fn(&[u8]) -> Result<Vec<u8>, String>;

/// A registered task, with its inputs and outputs erased to bytes.
pub struct Entry {
    pub name: &'static str,
    run_chunk: RunChunk,
    fold: Option<Fold>,
}

inventory::collect!(Entry);

/// Why a whole chunk could not run.
#[derive(Debug)]
pub enum ChunkError {
    BadInput(String),
    Encode(String),
}

impl Entry {
    pub const fn task<T: Task>() -> Self {
        Self {
            name: T::NAME,
            run_chunk: run_chunk::<T>,
            fold: None,
        }
    }

    pub const fn reducer<T: Reducer>() -> Self {
        Self {
            name: T::NAME,
            run_chunk: run_chunk::<T>,
            fold: Some(fold::<T>),
        }
    }
}

/// One item's result as it travels: the output, or the task's error message.
pub type ItemResult<T> = Result<T, String>;

/// Decodes the chunk's inputs, runs each in isolation (a panic fails its item only), and
/// encodes the per-item results.
fn run_chunk<T: Task>(payload: &[u8]) -> Result<ChunkOutput, ChunkError> {
    let inputs: Vec<T::Input> = postcard::from_bytes(payload).map_err(|e| {
        ChunkError::BadInput(format!(
            "the input does not decode as {}'s argument: {e}",
            T::NAME
        ))
    })?;
    let results: Vec<ItemResult<T::Output>> = inputs
        .into_iter()
        .map(
            |input| match catch_unwind(AssertUnwindSafe(|| T::run(input))) {
                Ok(result) => result,
                Err(panic) => Err(format!("panicked: {}", panic_message(&*panic))),
            },
        )
        .collect();
    let lone_error = match results.as_slice() {
        [Err(message)] => Some(message.clone()),
        _ => None,
    };
    let mut failed = ItemFailures::default();
    for result in &results {
        if let Err(message) = result {
            if failed.count == 0 {
                // For operators' listings: the driver gets every item's error whole.
                failed.first = message.chars().take(2048).collect();
            }
            failed.count += 1;
        }
    }
    let encoded = postcard::to_allocvec(&results).map_err(|e| ChunkError::Encode(e.to_string()))?;
    Ok(ChunkOutput {
        encoded,
        lone_error,
        failed,
    })
}

/// Folds a chunk's per-item results with reducer `R`; the first failed item fails the fold.
fn fold<R: Reducer>(results: &[u8]) -> Result<Vec<u8>, String> {
    let items: Vec<ItemResult<R::Output>> = postcard::from_bytes(results)
        .map_err(|e| format!("the mapped values do not decode as {}'s: {e}", R::NAME))?;
    let mut acc: Option<R::Output> = None;
    for item in items {
        let value = item?;
        acc = Some(match acc {
            None => value,
            Some(a) => match catch_unwind(AssertUnwindSafe(|| R::run((a, value)))) {
                Ok(result) => result?,
                Err(panic) => {
                    return Err(format!(
                        "reducer {} panicked: {}",
                        R::NAME,
                        panic_message(&*panic)
                    ));
                }
            },
        });
    }
    let acc = acc.ok_or_else(|| "nothing to reduce".to_owned())?;
    postcard::to_allocvec(&acc).map_err(|e| e.to_string())
}

pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

fn table() -> &'static HashMap<&'static str, &'static Entry> {
    static TABLE: OnceLock<HashMap<&'static str, &'static Entry>> = OnceLock::new();
    TABLE.get_or_init(|| {
        inventory::iter::<Entry>
            .into_iter()
            .map(|e| (e.name, e))
            .collect()
    })
}

pub fn lookup(name: &str) -> Option<&'static Entry> {
    table().get(name).copied()
}

pub fn count() -> usize {
    table().len()
}

/// How a worker's run of one chunk ended.
pub enum Executed {
    Output(Vec<u8>),
    UnknownTask(String),
    BadInput(String),
    Failed(String),
}

/// Runs a chunk of `function`, folded by `reducer` when given.
#[cfg(test)]
pub fn execute(function: &str, reducer: Option<&str>, payload: &[u8]) -> Executed {
    execute_counted(function, reducer, payload).0
}

/// Runs a chunk of `function`, folded by `reducer` when given; with the chunk's items that failed on their own when its output carries
/// them (a fold fails whole instead).
pub fn execute_counted(
    function: &str,
    reducer: Option<&str>,
    payload: &[u8],
) -> (Executed, ItemFailures) {
    let none = ItemFailures::default;
    let Some(entry) = lookup(function) else {
        return (Executed::UnknownTask(unknown(function)), none());
    };
    let fold = match reducer {
        None => None,
        Some(name) => match lookup(name) {
            None => return (Executed::UnknownTask(unknown(name)), none()),
            Some(Entry { fold: None, .. }) => {
                let message = format!("{name} is not a reducer (it must be fn(T, T) -> T)");
                return (Executed::Failed(message), none());
            }
            Some(Entry { fold: Some(f), .. }) => Some(*f),
        },
    };
    let output = match (entry.run_chunk)(payload) {
        Ok(output) => output,
        Err(ChunkError::BadInput(m)) => return (Executed::BadInput(m), none()),
        Err(ChunkError::Encode(m)) => {
            let message = format!("cannot encode the output: {m}");
            return (Executed::Failed(message), none());
        }
    };
    match fold {
        None => match output.lone_error {
            Some(message) => (Executed::Failed(message), none()),
            None => (Executed::Output(output.encoded), output.failed),
        },
        Some(fold) => match fold(&output.encoded) {
            Ok(folded) => (Executed::Output(folded), none()),
            Err(message) => (Executed::Failed(message), none()),
        },
    }
}

fn unknown(name: &str) -> String {
    format!(
        "this worker has no task named {name:?}: the agent runs a different build of the program than the driver \
         ({} tasks registered in it)",
        count()
    )
}

/// Fuzz targets of a worker's decoding of a chunk (its argument comes from the driver, through
/// the scheduler and the agent) and of the fold. 1024 cases each, microseconds apiece: well
/// under a second in a debug build; `PROPTEST_CASES` runs more.
#[cfg(test)]
mod fuzz_tests {
    use ladle_fuzz::{allocated_by, allocation_bound, arbitrary_bytes, config, mutations_of_any};
    use proptest::prelude::*;

    use super::*;
    use crate::fuzz_support::{Add, Describe, SharedLen, describe_payloads};

    /// Runs `payload` as each registered task, alone and folded: no panic, within the
    /// allocation bound, and an output only of the type the driver will decode.
    fn run_every_way(payload: &[u8]) -> Result<(), TestCaseError> {
        for function in [Describe::NAME, SharedLen::NAME, "no such task"] {
            for reducer in [None, Some(Add::NAME), Some(Describe::NAME)] {
                let (executed, allocated) = allocated_by(|| execute(function, reducer, payload));
                prop_assert!(
                    allocated <= allocation_bound(payload.len()),
                    "{allocated} bytes"
                );
                if let Executed::Output(bytes) = executed {
                    if reducer.is_some() {
                        prop_assert!(postcard::from_bytes::<u64>(&bytes).is_ok());
                    } else {
                        let items = postcard::from_bytes::<Vec<ItemResult<u64>>>(&bytes);
                        prop_assert!(items.is_ok());
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn a_valid_chunk_runs_and_folds() {
        let payload = &describe_payloads()[0];
        assert!(matches!(
            execute(Describe::NAME, None, payload),
            Executed::Output(_)
        ));
        assert!(matches!(
            execute(Describe::NAME, Some(Add::NAME), payload),
            Executed::Output(_)
        ));
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn chunk_decoder_never_panics_on_arbitrary_bytes(payload in arbitrary_bytes(512)) {
            run_every_way(&payload)?;
        }

        #[test]
        fn chunk_decoder_never_panics_on_damaged_chunks(
            payload in mutations_of_any(describe_payloads()),
        ) {
            run_every_way(&payload)?;
        }

        #[test]
        fn fold_never_panics_on_arbitrary_results(
            results in prop_oneof![
                arbitrary_bytes(512),
                mutations_of_any(vec![
                    postcard::to_allocvec(&vec![Ok::<u64, String>(1), Ok(u64::MAX)]).unwrap_or_default(),
                    postcard::to_allocvec(&vec![Ok::<u64, String>(1), Err("no".into())]).unwrap_or_default(),
                ]),
            ],
        ) {
            let (folded, allocated) = allocated_by(|| fold::<Add>(&results));
            prop_assert!(allocated <= allocation_bound(results.len()), "{allocated} bytes");
            if let Ok(bytes) = folded {
                prop_assert!(postcard::from_bytes::<u64>(&bytes).is_ok());
            }
        }
    }
}
