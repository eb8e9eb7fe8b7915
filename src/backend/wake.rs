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

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

/// Hand-overs in a row within one store before a release goes to the server: then the
/// waiters of other processes get their chance at the lock.
const HAND_OVERS_IN_A_ROW: u32 = 8;

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
        let place = line.joined.fetch_add(1, Ordering::SeqCst);
        Waiter {
            wakeups: self.clone(),
            key: storage_key.to_owned(),
            line,
            place,
            turn: None,
        }
    }

    /// Whether tasks of this store wait for `storage_key`: a new lock call joins their line
    /// rather than try the server ahead of them.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn has_waiters(&self, storage_key: &str) -> bool {
        self.waiting().contains_key(storage_key)
    }

    /// The offer of the first waiter in `storage_key`'s line to take the lock over from its
    /// holder in this store, if one made it and the line has not had
    /// [`HAND_OVERS_IN_A_ROW`] hand-overs in a row (then `None` once, and the release goes
    /// to the server).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn take_offer(&self, storage_key: &str) -> Option<Offer> {
        let line = self.waiting().get(storage_key)?.clone();
        let mut offers = super::recover(line.offers.lock());
        // Offers of waiters that left are dropped on the way.
        while let Some(entry) = offers.first_entry() {
            if !entry.get().taker.is_closed() {
                break;
            }
            entry.remove();
        }
        if offers.is_empty() {
            // This release goes to the server: the count of hand-overs in a row starts again.
            line.handed_in_a_row.store(0, Ordering::SeqCst);
            return None;
        }
        if line.handed_in_a_row.fetch_add(1, Ordering::SeqCst) >= HAND_OVERS_IN_A_ROW {
            line.handed_in_a_row.store(0, Ordering::SeqCst);
            return None;
        }
        offers.pop_first().map(|(_, offer)| offer)
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
    /// The waiters' offers to take the lock over when its holder in this store releases it,
    /// by their place in the line.
    offers: Mutex<BTreeMap<u64, Offer>>,
    /// The place of the next waiter to join.
    joined: AtomicU64,
    /// Hand-overs since the last release that went to the server.
    handed_in_a_row: AtomicU32,
}

/// What the head of a line asks of a holder in the same store: instead of releasing the
/// lock on the server (where every process's waiters race for it), hand it over to this
/// acquisition in one step, and send the grant here.
pub(crate) struct Offer {
    /// The taker's acquisition: its token, TTL and published value.
    pub token: String,
    pub ttl: Duration,
    pub value: Option<String>,
    /// Where the grant goes (a `Grant<Backend::Held>`, boxed).
    pub taker: oneshot::Sender<Box<dyn Any + Send>>,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            released: Notify::new(),
            turn: Arc::new(Semaphore::new(1)),
            held_by_last_head: AtomicBool::new(false),
            offers: Mutex::default(),
            joined: AtomicU64::new(0),
            handed_in_a_row: AtomicU32::new(0),
        }
    }
}

/// One waiting task's registration; removes the key's entry when the last waiter leaves.
pub(crate) struct Waiter {
    wakeups: Arc<Wakeups>,
    key: String,
    line: Arc<Line>,
    /// Its place in the line, which its offer keeps.
    place: u64,
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

    /// Offers to take the lock over from a holder in this store (see [`Offer`]), in this
    /// waiter's place in the line: the grant arrives on the returned receiver, or it errs
    /// when the holder released on the server instead.
    pub(crate) fn offer(
        &self,
        token: &str,
        ttl: Duration,
        value: Option<&str>,
    ) -> oneshot::Receiver<Box<dyn Any + Send>> {
        let (taker, handed) = oneshot::channel();
        let offer = Offer {
            token: token.to_owned(),
            ttl,
            value: value.map(str::to_owned),
            taker,
        };
        super::recover(self.line.offers.lock()).insert(self.place, offer);
        handed
    }

    /// Takes this waiter's offer back before the waiter tries the server itself: `true`
    /// when it was still in the line (no holder can hand the lock over to it now), `false`
    /// when a holder took it: that hand-over is under way, and its outcome comes on the
    /// offer's receiver.
    ///
    /// A waiter's own attempt and a hand-over to it must never overlap. The attempt uses
    /// the same token: if it lands after the hand-over, obtain.lua finds the lock under that
    /// token and answers it as the waiter's, the waiter returns a guard and closes its
    /// receiver, and the holder, finding the receiver closed, would take the waiter for gone
    /// and release the lock under the live guard (`tests/hand_over.rs`,
    /// `a_hand_over_racing_the_takers_own_attempt_leaves_the_taker_holding`).
    pub(crate) fn withdraw(&self) -> bool {
        super::recover(self.line.offers.lock())
            .remove(&self.place)
            .is_some()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Its offer goes with it, and the turn passes to the next task in line.
        super::recover(self.line.offers.lock()).remove(&self.place);
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
