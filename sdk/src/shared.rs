//! Shared constants: a value sent to each agent once, that any number of tasks receive as an
//! argument. `cluster.share(value)` uploads it; the handle is what tasks take.

use std::{
    any::Any,
    cell::RefCell,
    collections::HashMap,
    fmt,
    marker::PhantomData,
    ops::Deref,
    sync::{Arc, Mutex, OnceLock},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

/// A handle to a shared constant. Dereferences to the value, on the driver and in tasks.
pub struct Shared<T> {
    sha256: Arc<str>,
    value: Arc<T>,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self {
            sha256: self.sha256.clone(),
            value: self.value.clone(),
        }
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Shared({})", &self.sha256[..12.min(self.sha256.len())])
    }
}

impl<T> Shared<T> {
    pub(crate) fn new(sha256: String, value: T) -> Self {
        Self {
            sha256: sha256.into(),
            value: Arc::new(value),
        }
    }

    /// The content hash it is known by.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

thread_local! {
    /// Hashes of the shared constants met while encoding a task's argument.
    static MET: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Encodes `f`'s value and returns the shared constants it refers to.
pub(crate) fn collect<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    MET.with(|met| *met.borrow_mut() = Some(Vec::new()));
    let result = f();
    let mut met = MET.with(|met| met.borrow_mut().take()).unwrap_or_default();
    met.sort();
    met.dedup();
    (result, met)
}

impl<T> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MET.with(|met| {
            if let Some(met) = met.borrow_mut().as_mut() {
                met.push(self.sha256.to_string());
            }
        });
        serializer.serialize_str(&self.sha256)
    }
}

/// On a worker: the bytes of the shared constants the agent sent, and their decoded values.
#[derive(Default)]
struct Store {
    bytes: HashMap<String, Arc<Vec<u8>>>,
    decoded: HashMap<String, Arc<dyn Any + Send + Sync>>,
}

fn store() -> &'static Mutex<Store> {
    static STORE: OnceLock<Mutex<Store>> = OnceLock::new();
    STORE.get_or_init(Mutex::default)
}

pub(crate) fn receive(sha256: String, data: Vec<u8>) {
    let mut store = store().lock().unwrap_or_else(|p| p.into_inner());
    store.bytes.insert(sha256, Arc::new(data));
}

/// The value behind `sha256`, decoded once per process.
fn resolve<T: DeserializeOwned + Send + Sync + 'static>(sha256: &str) -> Result<Arc<T>, String> {
    let bytes = {
        let store = store().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(value) = store.decoded.get(sha256)
            && let Ok(value) = value.clone().downcast::<T>()
        {
            return Ok(value);
        }
        store
            .bytes
            .get(sha256)
            .cloned()
            .ok_or_else(|| format!("shared constant {sha256} has not reached this worker"))?
    };
    let value: Arc<T> = Arc::new(
        postcard::from_bytes(&bytes).map_err(|e| format!("shared constant {sha256}: {e}"))?,
    );
    let mut store = store().lock().unwrap_or_else(|p| p.into_inner());
    store.decoded.insert(sha256.to_owned(), value.clone());
    Ok(value)
}

impl<'de, T: DeserializeOwned + Send + Sync + 'static> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let sha256 = String::deserialize(deserializer)?;
        let value = resolve::<T>(&sha256).map_err(serde::de::Error::custom)?;
        let _: PhantomData<T> = PhantomData;
        Ok(Self {
            sha256: sha256.into(),
            value,
        })
    }
}

/// Fuzz target of a worker's decoding of a shared constant (its bytes come from the driver,
/// through the blob store and the agent). 1024 cases, microseconds apiece; `PROPTEST_CASES`
/// runs more.
#[cfg(test)]
mod fuzz_tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use ladle_fuzz::{allocated_by, allocation_bound, arbitrary_bytes, config, mutations_of_any};
    use proptest::prelude::*;

    use super::*;

    type Value = (String, Vec<u64>, HashMap<String, serde_bytes::ByteBuf>);

    /// A hash of its own for each case: the store keeps what each decoded to.
    fn fresh_hash() -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        format!("fuzz-{:059}", N.fetch_add(1, Ordering::Relaxed))
    }

    fn valid() -> Vec<Vec<u8>> {
        let value: Value = (
            "abc".into(),
            vec![1, u64::MAX],
            HashMap::from([("k".into(), serde_bytes::ByteBuf::from(vec![7; 9]))]),
        );
        vec![postcard::to_allocvec(&value).unwrap_or_default()]
    }

    proptest! {
        #![proptest_config(config(1024))]

        #[test]
        fn shared_constant_decoder_never_panics_on_arbitrary_or_damaged_bytes(
            data in prop_oneof![arbitrary_bytes(512), mutations_of_any(valid())],
        ) {
            let sha256 = fresh_hash();
            let len = data.len();
            receive(sha256.clone(), data);
            let (_, allocated) = allocated_by(|| resolve::<Value>(&sha256));
            prop_assert!(allocated <= allocation_bound(len), "{allocated} bytes");
            let _ = resolve::<Vec<u64>>(&sha256);
        }
    }
}
