//! The in-process backend: a [`MemoryStore`] plays the server, with TTLs, tokens, fencing
//! counters, and switches to simulate an outage or an admin deleting a key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::{recover, Backend, Context, Grant, Lease, Renewal, Request, Wakeups, TAKEN};
use crate::config::Driver;
use crate::error::{Error, Result};
use crate::Holder;

/// An in-process lock server for [`Driver::Memory`](crate::Driver::Memory): the same TTL,
/// token, fencing and loss semantics as Redis, without a network.
///
/// Lockers that share a store exclude each other; a locker built without
/// [`LockerBuilder::memory`](crate::LockerBuilder::memory) uses [`MemoryStore::global`].
/// A store is a cheap handle: clones share the same locks.
///
/// ```
/// use dlock::{Config, Locker, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// let store = MemoryStore::new();
/// let a = Locker::builder(Config::default()).memory(store.clone()).build()?;
/// let b = Locker::builder(Config::default()).memory(store.clone()).build()?;
/// let held = a.lock("job").await?;
/// assert!(b.try_lock("job").await?.is_none(), "b must not get a lock a holds");
/// assert!(store.contains("dlock:job"));
/// held.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    state: Mutex<State>,
    offline: AtomicBool,
    /// Waiters of this store, woken by its releases.
    wakeups: Arc<Wakeups>,
}

impl Default for StoreInner {
    fn default() -> Self {
        StoreInner {
            state: Mutex::default(),
            offline: AtomicBool::new(false),
            wakeups: Wakeups::new(),
        }
    }
}

#[derive(Default)]
struct State {
    /// Storage key -> its holders (one for a lock).
    locks: HashMap<String, Holders>,
    /// The last fencing token issued by this store, for any key: one counter serves every
    /// key (tokens still strictly increase per key), so nothing grows with the key count.
    last_fence: u64,
    /// Sweep expired entries when the map reaches this size (amortised O(1) per insert)...
    sweep_at: usize,
    /// ... or at the first insert after this instant, so stale entries do not stay for good.
    sweep_after: Option<Instant>,
}

/// How often, at most, inserts sweep expired entries regardless of the map's size.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// The holders of one storage key: at most `permits` (1 for a lock), never none.
struct Holders {
    permits: u32,
    entries: Vec<Entry>,
}

struct Entry {
    token: String,
    expires_at: Instant,
    fence: u64,
    /// [`Request::value`], for [`Backend::holder`].
    value: Option<Box<str>>,
}

impl Entry {
    fn holder(&self, now: Instant) -> Holder {
        let value = self.value.as_deref().map(str::to_owned);
        Holder::new(self.fence, self.expires_at - now, value)
    }
}

impl State {
    /// The live holders of `key`, dropping expired ones first (and the key with the last).
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Holders> {
        let holders = self.locks.get_mut(key)?;
        holders.entries.retain(|e| e.expires_at > now);
        if holders.entries.is_empty() {
            self.locks.remove(key);
            return None;
        }
        self.locks.get_mut(key)
    }

    /// The live entry of `token` under `key`.
    fn entry(&mut self, key: &str, token: &str, now: Instant) -> Option<&mut Entry> {
        let holders = self.live(key, now)?;
        holders.entries.iter_mut().find(|e| e.token == token)
    }

    /// Stores a new key's first holder; now and then drops every expired entry, so that
    /// locks whose holders vanished without releasing do not pile up under keys nobody
    /// uses again.
    fn insert(&mut self, key: String, holders: Holders, now: Instant) {
        if self.locks.len() >= self.sweep_at || self.sweep_after.is_none_or(|at| now >= at) {
            self.locks.retain(|_, h| {
                h.entries.retain(|e| e.expires_at > now);
                !h.entries.is_empty()
            });
            self.sweep_at = (2 * self.locks.len()).max(64);
            self.sweep_after = Some(now + SWEEP_PERIOD);
        }
        self.locks.insert(key, holders);
    }
}

impl MemoryStore {
    /// A new, empty store.
    ///
    /// ```
    /// let store = dlock::MemoryStore::new();
    /// assert!(!store.contains("dlock:job"));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide store used when no store is injected.
    ///
    /// ```
    /// let a = dlock::MemoryStore::global();
    /// let b = dlock::MemoryStore::global();
    /// assert!(a.same_store(&b));
    /// ```
    pub fn global() -> MemoryStore {
        static GLOBAL: OnceLock<MemoryStore> = OnceLock::new();
        GLOBAL.get_or_init(MemoryStore::new).clone()
    }

    /// Whether two handles share one store.
    ///
    /// ```
    /// let store = dlock::MemoryStore::new();
    /// assert!(store.same_store(&store.clone()));
    /// assert!(!store.same_store(&dlock::MemoryStore::new()));
    /// ```
    pub fn same_store(&self, other: &MemoryStore) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether a live (unexpired) lock is stored under `storage_key` (prefix + key).
    ///
    /// ```
    /// assert!(!dlock::MemoryStore::new().contains("dlock:job"));
    /// ```
    pub fn contains(&self, storage_key: &str) -> bool {
        self.state().live(storage_key, Instant::now()).is_some()
    }

    /// Deletes a lock behind its holder's back, as an operator would; the holder's guard
    /// reports the loss at its next renewal. Returns whether a live lock was there.
    ///
    /// ```
    /// assert!(!dlock::MemoryStore::new().remove("dlock:job"));
    /// ```
    pub fn remove(&self, storage_key: &str) -> bool {
        let mut state = self.state();
        let was_live = state.live(storage_key, Instant::now()).is_some();
        state.locks.remove(storage_key);
        was_live
    }

    /// How many entries the store keeps (locks, live or not yet swept, and bookkeeping):
    /// it does not grow with the number of distinct keys ever used.
    ///
    /// ```
    /// assert_eq!(dlock::MemoryStore::new().entry_count(), 0);
    /// ```
    pub fn entry_count(&self) -> usize {
        self.state().locks.len()
    }

    /// Simulates an outage: while offline every call fails with
    /// [`Error::Backend`](crate::Error::Backend), and stored locks keep expiring.
    ///
    /// ```
    /// let store = dlock::MemoryStore::new();
    /// store.set_offline(true);
    /// assert!(store.is_offline());
    /// ```
    pub fn set_offline(&self, offline: bool) {
        self.inner.offline.store(offline, Ordering::SeqCst);
    }

    /// Whether [`MemoryStore::set_offline`] is in effect.
    ///
    /// ```
    /// assert!(!dlock::MemoryStore::new().is_offline());
    /// ```
    pub fn is_offline(&self) -> bool {
        self.inner.offline.load(Ordering::SeqCst)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        recover(self.inner.state.lock())
    }

    fn online(&self, key: &str) -> Result<()> {
        if self.is_offline() {
            return Err(Error::backend("memory", key, "store is offline"));
        }
        Ok(())
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("offline", &self.is_offline())
            .finish()
    }
}

/// The backend half of a [`MemoryStore`]: what `LockerBuilder::memory` installs.
pub(crate) struct MemoryBackend(pub MemoryStore);

impl Backend for MemoryBackend {
    /// The acquisition's token.
    type Held = String;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn driver(&self) -> Driver {
        Driver::Memory
    }

    fn wakeups(&self) -> Option<&Arc<Wakeups>> {
        Some(&self.0.inner.wakeups)
    }

    fn max_permits(&self) -> u32 {
        crate::MAX_PERMITS
    }

    async fn try_acquire(
        &self,
        _: &Context,
        request: &Request<'_>,
    ) -> Result<Option<Grant<String>>> {
        let store = &self.0;
        store.online(request.key)?;
        let now = Instant::now();
        let mut state = store.state();
        let fence = state.last_fence + 1;
        let entry = Entry {
            token: request.token.to_owned(),
            expires_at: now + request.ttl,
            fence,
            value: request.value.map(Into::into),
        };
        match state.live(request.storage_key, now) {
            Some(holders) if holders.permits != request.permits => {
                let held = holders.permits;
                return Err(Error::permits_mismatch(request.key, request.permits, held));
            }
            Some(holders) if holders.entries.len() >= holders.permits as usize => return Ok(None),
            Some(holders) => holders.entries.push(entry),
            None => {
                let holders = Holders {
                    permits: request.permits,
                    entries: vec![entry],
                };
                state.insert(request.storage_key.to_owned(), holders, now);
            }
        }
        state.last_fence = fence;
        Ok(Some(Grant {
            fencing_token: fence,
            confirmed_at: now,
            held: request.token.to_owned(),
        }))
    }

    async fn renew(&self, _: &Context, lease: &Lease, token: &mut String) -> Result<Renewal> {
        let store = &self.0;
        store.online(&lease.key)?;
        let now = Instant::now();
        match store.state().entry(&lease.storage_key, token, now) {
            Some(entry) => {
                entry.expires_at = now + lease.ttl;
                Ok(Renewal::Renewed)
            }
            None => Ok(Renewal::Lost(TAKEN)),
        }
    }

    async fn holder(&self, cx: &Context, key: &str, storage_key: &str) -> Result<Option<Holder>> {
        let mut holders = self.holders(cx, key, storage_key, 1).await?;
        Ok(holders.pop())
    }

    async fn holders(
        &self,
        _: &Context,
        key: &str,
        storage_key: &str,
        permits: u32,
    ) -> Result<Vec<Holder>> {
        let store = &self.0;
        store.online(key)?;
        let now = Instant::now();
        let mut state = store.state();
        let Some(holders) = state.live(storage_key, now) else {
            return Ok(Vec::new());
        };
        if holders.permits != permits {
            return Err(Error::permits_mismatch(key, permits, holders.permits));
        }
        Ok(holders.entries.iter().map(|e| e.holder(now)).collect())
    }

    async fn release(
        &self,
        _: &Context,
        lease: &Lease,
        token: String,
        _: Duration,
    ) -> Result<bool> {
        let store = &self.0;
        store.online(&lease.key)?;
        let released = {
            let mut state = store.state();
            let now = Instant::now();
            match state.live(&lease.storage_key, now) {
                Some(holders) => {
                    let before = holders.entries.len();
                    holders.entries.retain(|e| e.token != token);
                    let released = holders.entries.len() < before;
                    if holders.entries.is_empty() {
                        state.locks.remove(&lease.storage_key);
                    }
                    released
                }
                None => false,
            }
        };
        if released {
            store.inner.wakeups.released(&lease.storage_key);
        }
        Ok(released)
    }
}
