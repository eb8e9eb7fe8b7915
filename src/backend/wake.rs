//! Wake-ups within one store: a release seen by a backend (made by it, or announced by the
//! server) wakes one task waiting for the same storage key through the same store, so it
//! retries at once instead of at its next poll.
//!
//! A [`Wakeups`] belongs to one store (one `MemoryStore`, one Redis backend instance), never
//! to the process: two lockers with the same prefix on different servers must not steal each
//! other's wake-ups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// Storage key → the tasks of this process waiting for it, for one store (one server, one
/// in-process store): a backend calls [`Wakeups::released`] when it sees a lock released,
/// and the provided waiting loop of [`Backend::acquire`](super::Backend::acquire) retries
/// at once instead of at its next poll.
///
#[cfg_attr(feature = "unstable-backend", doc = "```")]
#[cfg_attr(not(feature = "unstable-backend"), doc = "```ignore")]
/// let wakeups = dlock::backend::Wakeups::new();
/// wakeups.released("dlock:job"); // nobody waits: nothing happens
/// ```
#[derive(Default)]
pub struct Wakeups {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
    /// A random id of this store handle, sent with Redis release notifications so that the
    /// backend that released (and already woke one of its waiters) does not wake another.
    id: String,
}

impl Wakeups {
    /// Wake-ups for a new store.
    pub fn new() -> Arc<Self> {
        Arc::new(Wakeups {
            waiting: Mutex::default(),
            id: ulid::Ulid::generate().to_string(),
        })
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        super::recover(self.waiting.lock())
    }

    /// Registers a waiting task for `storage_key` until the returned [`Waiter`] is dropped.
    pub(crate) fn wait_for(self: &Arc<Self>, storage_key: &str) -> Waiter {
        let notify = self
            .waiting()
            .entry(storage_key.to_owned())
            .or_default()
            .clone();
        Waiter {
            wakeups: self.clone(),
            key: storage_key.to_owned(),
            notify,
        }
    }

    /// Wakes one waiter of `storage_key`, if any: one retry per release, not a stampede.
    pub fn released(&self, storage_key: &str) {
        if let Some(notify) = self.waiting().get(storage_key) {
            notify.notify_one();
        }
    }

    /// How many keys have waiters (for tests of the no-growth rule).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting().len()
    }
}

/// One waiting task's registration; removes the key's entry when the last waiter leaves.
pub(crate) struct Waiter {
    wakeups: Arc<Wakeups>,
    key: String,
    notify: Arc<Notify>,
}

impl Waiter {
    /// Completes when a release of the key is announced; enable it before the attempt.
    pub(crate) fn released(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiting = self.wakeups.waiting();
        // Two references left: ours and the map's. Then nobody else waits on this key.
        if Arc::strong_count(&self.notify) == 2 {
            waiting.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Wakeups;

    #[test]
    fn entries_go_away_with_the_last_waiter() {
        let wakeups = Wakeups::new();
        let a = wakeups.wait_for("k");
        let b = wakeups.wait_for("k");
        assert_eq!(wakeups.len(), 1);
        drop(a);
        assert_eq!(wakeups.len(), 1, "b still waits");
        drop(b);
        assert_eq!(wakeups.len(), 0, "the last waiter left its entry behind");
    }
}
