//! Wake-ups within one store: a release seen by a backend (made by it, or announced by the
//! server) wakes one task waiting for the same storage key through the same store, so it
//! retries at once instead of at its next poll.
//!
//! The tasks of one store waiting for one key also form a line: only its head tries the
//! server, the others wait their turn in order. A release then meets one contender per
//! process, not one per waiting task, and a task that just released cannot jump the line
//! with its next `lock()`. When the head acquires, the next head does not try at once (the
//! lock is held: its try could only fail); it waits for the release, or its poll.
//!
//! A [`Wakeups`] belongs to one store (one `MemoryStore`, one Redis backend instance), never
//! to the process: two lockers with the same prefix on different servers must not steal each
//! other's wake-ups.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::futures::Notified;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

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
    waiting: Mutex<HashMap<String, Arc<Line>>>,
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

    fn waiting(&self) -> MutexGuard<'_, HashMap<String, Arc<Line>>> {
        super::recover(self.waiting.lock())
    }

    /// Registers a waiting task for `storage_key` until the returned [`Waiter`] is dropped;
    /// it joins the key's line ([`Waiter::turn`]).
    pub(crate) fn wait_for(self: &Arc<Self>, storage_key: &str) -> Waiter {
        let line = self
            .waiting()
            .entry(storage_key.to_owned())
            .or_insert_with(|| Arc::new(Line::default()))
            .clone();
        Waiter {
            wakeups: self.clone(),
            key: storage_key.to_owned(),
            line,
            turn: None,
        }
    }

    /// Whether tasks of this store wait for `storage_key`: a new lock call joins their line
    /// rather than try the server ahead of them.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn has_waiters(&self, storage_key: &str) -> bool {
        self.waiting().contains_key(storage_key)
    }

    /// Wakes one waiter of `storage_key`, if any: one retry per release, not a stampede.
    pub fn released(&self, storage_key: &str) {
        if let Some(line) = self.waiting().get(storage_key) {
            line.released.notify_one();
        }
    }

    /// Wakes one waiter of every key, for one retry each: when a notification channel
    /// starts listening, releases made before it did went unheard.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn released_everywhere(&self) {
        for line in self.waiting().values() {
            line.released.notify_one();
        }
    }

    /// How many keys have waiters (for tests of the no-growth rule).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting().len()
    }
}

/// The tasks of one store waiting for one key.
struct Line {
    /// Announces a release to the head of the line.
    released: Notify,
    /// One permit: the head's. Fair, so turns go in arrival order.
    turn: Arc<Semaphore>,
    /// The last head acquired the lock: the next one waits for its release before trying.
    held_by_last_head: AtomicBool,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            released: Notify::new(),
            turn: Arc::new(Semaphore::new(1)),
            held_by_last_head: AtomicBool::new(false),
        }
    }
}

/// One waiting task's registration; removes the key's entry when the last waiter leaves.
pub(crate) struct Waiter {
    wakeups: Arc<Wakeups>,
    key: String,
    line: Arc<Line>,
    turn: Option<OwnedSemaphorePermit>,
}

impl Waiter {
    /// Waits until this task heads the key's line in this store. `true` when the head before
    /// it acquired the lock: then the lock is held, and trying before a release is useless.
    pub(crate) async fn turn(&mut self) -> bool {
        // Never closed, so never an error.
        self.turn = self.line.turn.clone().acquire_owned().await.ok();
        self.line.held_by_last_head.swap(false, Ordering::SeqCst)
    }

    /// Completes when a release of the key is announced; enable it before the attempt.
    pub(crate) fn released(&self) -> Notified<'_> {
        self.line.released.notified()
    }

    /// This task acquired the lock: the next head waits for its release before trying.
    pub(crate) fn acquired(&self) {
        self.line.held_by_last_head.store(true, Ordering::SeqCst);
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // The turn passes to the next task in line first.
        drop(self.turn.take());
        let mut waiting = self.wakeups.waiting();
        // Two references left: ours and the map's. Then nobody else waits on this key.
        if Arc::strong_count(&self.line) == 2 {
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
