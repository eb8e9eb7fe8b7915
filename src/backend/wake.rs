//! Process-wide wake-ups: a release seen in this process (made here, or announced by the
//! server) wakes one task of this process waiting for the same storage key, so it retries
//! at once instead of at its next poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

fn registry() -> &'static Mutex<HashMap<String, Arc<Notify>>> {
    static WAITING: OnceLock<Mutex<HashMap<String, Arc<Notify>>>> = OnceLock::new();
    WAITING.get_or_init(Default::default)
}

/// One waiting task's registration; removes the key's entry when the last waiter leaves.
pub(crate) struct Waiter {
    key: String,
    notify: Arc<Notify>,
}

impl Waiter {
    pub fn new(storage_key: &str) -> Self {
        let mut waiting = registry().lock().unwrap_or_else(|e| e.into_inner());
        let notify = waiting.entry(storage_key.to_owned()).or_default().clone();
        Waiter {
            key: storage_key.to_owned(),
            notify,
        }
    }

    /// Completes when a release of the key is announced; enable it before the attempt.
    pub fn released(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiting = registry().lock().unwrap_or_else(|e| e.into_inner());
        // Two references left: ours and the map's. Then nobody else waits on this key.
        if Arc::strong_count(&self.notify) == 2 {
            waiting.remove(&self.key);
        }
    }
}

/// Wakes one waiter of `storage_key`, if any: one retry per release, not a stampede.
pub(crate) fn released(storage_key: &str) {
    let waiting = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(notify) = waiting.get(storage_key) {
        notify.notify_one();
    }
}

/// Whether a task of this process waits for `storage_key` (used to keep server
/// subscriptions only while someone listens).
#[allow(dead_code)]
pub(crate) fn is_waited_on(storage_key: &str) -> bool {
    let waiting = registry().lock().unwrap_or_else(|e| e.into_inner());
    waiting.contains_key(storage_key)
}

/// A random id of this process, sent with release notifications so that the process that
/// released (and already woke one of its waiters) does not wake another.
pub(crate) fn process_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| ulid::Ulid::generate().to_string())
}
