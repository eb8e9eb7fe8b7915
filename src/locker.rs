//! `Locker`: per call, validation, the attempt (deadline, close), handing the grant to the
//! engine and a guard; and close. The locker knows backends only through the erased seam;
//! `builder.rs` makes one.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::backend::erased::{Acquired, BoxFuture, SharedBackend};
use crate::backend::{Context, Request};
use crate::config::{check_ttl, Config, MAX_KEY_LEN, MAX_PERMITS};
use crate::engine::Engine;
use crate::error::{display_key, Error, Result};
use crate::guard::LockGuard;
use crate::holder::MAX_VALUE;
use crate::metrics::Metrics;
use crate::options::LockOptions;
use crate::registry::Registry;
use crate::{Holder, LockerBuilder};

/// A handle to distributed locks on one backend. Cheap to clone; clones share everything
/// (backend connection, held locks, the compat registry).
///
/// Built with [`Locker::builder`]. Two tasks that lock the same key through one locker exclude
/// each other like a mutex (the second waits); see [`Locker::compat`] for the Go-style API
/// that refuses to re-lock a key the locker already holds.
///
/// ```
/// use dlock::{Config, Locker};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// let locker = Locker::builder(Config::default()).build()?;
/// let guard = locker.lock("nightly-report").await?;
/// // ... only one holder in the whole system runs this ...
/// guard.release().await?;
/// locker.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Locker {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    backend: SharedBackend,
    /// Everything the locker starts runs on it, so that `close()` can wait for it.
    context: Context,
    /// Keeps every lock this locker holds, from grant to release.
    engine: Engine,
    registry: Registry,
    metrics: Metrics,
}

impl Locker {
    /// Starts building a locker for `config`.
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// assert_eq!(locker.config().driver, dlock::Driver::Memory);
    /// ```
    pub fn builder(config: Config) -> LockerBuilder {
        LockerBuilder::new(config)
    }

    /// The locker `LockerBuilder::build` validated: its engine runs on its context.
    pub(crate) fn new(
        config: Config,
        backend: SharedBackend,
        context: Context,
        metrics: Metrics,
    ) -> Locker {
        let engine = Engine::new(backend.clone(), context.clone(), metrics.clone());
        Locker {
            inner: Arc::new(Inner {
                config,
                backend,
                context,
                engine,
                registry: Registry::default(),
                metrics,
            }),
        }
    }

    /// The validated config.
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// assert_eq!(locker.config().prefix, "dlock:");
    /// ```
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Waits until the lock on `key` is acquired, with the config's TTL and no timeout.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any await point leaves no lock behind: an attempt whose
    /// outcome is unknown is undone in the background with a compare-token delete.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`], [`Error::Closed`], [`Error::Backend`] (the server failed or did
    /// not answer within the TTL; waiting does not retry through outages).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let guard = locker.lock("orders:sync").await?;
    /// assert_eq!(guard.key(), "orders:sync");
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self, key: &str) -> Result<LockGuard> {
        self.lock_with(key, LockOptions::new()).await
    }

    /// [`Locker::lock`] with per-call options: a TTL, and a `wait_timeout` after which it
    /// returns [`Error::Timeout`]. Cancel-safe like [`Locker::lock`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use dlock::{Error, LockOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let held = locker.lock("inventory:7").await?;
    /// let options = LockOptions::new().ttl(Duration::from_secs(30)).wait_timeout(Duration::from_millis(50));
    /// let err = locker.lock_with("inventory:7", options).await.unwrap_err();
    /// assert!(matches!(err, Error::Timeout { .. }));
    /// # drop(held); Ok(()) }
    /// ```
    pub async fn lock_with(&self, key: &str, options: LockOptions) -> Result<LockGuard> {
        self.lock_call(key, options, None, 1).await
    }

    /// [`Locker::lock_with`] that also publishes `value` for [`Locker::holder`] readers.
    pub(crate) async fn lock_publishing(
        &self,
        key: &str,
        options: LockOptions,
        value: &str,
    ) -> Result<LockGuard> {
        self.lock_call(key, options, Some(value), 1).await
    }

    /// [`Locker::try_lock_with`] that also publishes `value` for [`Locker::holder`] readers.
    pub(crate) async fn try_lock_publishing(
        &self,
        key: &str,
        options: LockOptions,
        value: &str,
    ) -> Result<Option<LockGuard>> {
        self.try_lock_call(key, options, Some(value), 1).await
    }

    /// Waits for one of `permits` holds of `key` (1: the lock), publishing `value`.
    pub(crate) async fn lock_call(
        &self,
        key: &str,
        options: LockOptions,
        value: Option<&str>,
        permits: u32,
    ) -> Result<LockGuard> {
        let call = self.begin(key, &options, value, permits)?;
        let (backend, cx, request) = (&self.inner.backend, &self.inner.context, &call.request());
        // A zero wait_timeout means "one attempt", then Timeout rather than `None`.
        let attempt = if options.get_wait_timeout() == Some(Duration::ZERO) {
            backend.try_acquire(cx, request)
        } else {
            backend.acquire(cx, request, self.inner.config.retry_interval)
        };
        match self.attempt(&call, attempt).await? {
            Some(acquired) => self.start_guard(&call, acquired),
            None => Err(self.failed(&call, call.timeout())),
        }
    }

    /// One attempt, never waits: `Ok(None)` when someone holds the lock.
    ///
    /// Cancel-safe like [`Locker::lock`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let first = locker.try_lock("cron:cleanup").await?;
    /// assert!(first.is_some());
    /// assert!(locker.try_lock("cron:cleanup").await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn try_lock(&self, key: &str) -> Result<Option<LockGuard>> {
        self.try_lock_with(key, LockOptions::new()).await
    }

    /// [`Locker::try_lock`] with per-call options (the TTL; `wait_timeout` bounds the one
    /// attempt). Cancel-safe like [`Locker::lock`].
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let options = dlock::LockOptions::new().ttl(Duration::from_secs(30));
    /// let guard = locker.try_lock_with("cron:report", options).await?;
    /// assert!(guard.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn try_lock_with(
        &self,
        key: &str,
        options: LockOptions,
    ) -> Result<Option<LockGuard>> {
        self.try_lock_call(key, options, None, 1).await
    }

    /// One attempt at one of `permits` holds of `key` (1: the lock), publishing `value`.
    pub(crate) async fn try_lock_call(
        &self,
        key: &str,
        options: LockOptions,
        value: Option<&str>,
        permits: u32,
    ) -> Result<Option<LockGuard>> {
        let call = self.begin(key, &options, value, permits)?;
        let (backend, cx, request) = (&self.inner.backend, &self.inner.context, &call.request());
        match self
            .attempt(&call, backend.try_acquire(cx, request))
            .await?
        {
            Some(acquired) => self.start_guard(&call, acquired).map(Some),
            None => Ok(None),
        }
    }

    /// Who holds `key` now, as the server says (`Ok(None)`: nobody): its fencing token, what
    /// remains of its TTL, and the value it published, if any. A snapshot, for showing or
    /// observing ownership; only a [`LockGuard`] proves it. Every built-in backend answers;
    /// a backend of your own may not (`Error::Backend`).
    ///
    /// Cancel-safe: it only reads.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).memory(dlock::MemoryStore::new()).build()?;
    /// let guard = locker.lock("nightly").await?;
    /// let holder = locker.holder("nightly").await?;
    /// assert_eq!(holder.map(|h| h.fencing_token), Some(guard.fencing_token()));
    /// guard.release().await?;
    /// assert_eq!(locker.holder("nightly").await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn holder(&self, key: &str) -> Result<Option<Holder>> {
        let inner = &*self.inner;
        let _in_flight = inner.context.in_flight();
        if self.is_closed() {
            return Err(Error::Closed);
        }
        check_key(key)?;
        let storage_key = inner.backend.storage_key(&inner.config.prefix, key);
        inner
            .backend
            .holder(&inner.context, key, &storage_key)
            .await
    }

    /// Every holder of the semaphore `key` of `permits` ([`Semaphore::holders`]).
    pub(crate) async fn holders(&self, key: &str, permits: u32) -> Result<Vec<Holder>> {
        let inner = &*self.inner;
        let _in_flight = inner.context.in_flight();
        if self.is_closed() {
            return Err(Error::Closed);
        }
        check_key(key)?;
        self.check_permits(key, permits)?;
        let storage_key = inner.backend.storage_key(&inner.config.prefix, key);
        inner
            .backend
            .holders(&inner.context, key, &storage_key, permits)
            .await
    }

    /// Refuses a number of permits that no backend or not this one keeps.
    fn check_permits(&self, key: &str, permits: u32) -> Result<()> {
        let max = self.inner.backend.max_permits().min(MAX_PERMITS);
        let reason = if permits == 0 {
            "a semaphore needs at least one permit".to_owned()
        } else if permits > MAX_PERMITS {
            format!("at most {MAX_PERMITS}")
        } else if permits > max {
            let name = self.inner.backend.name();
            format!("the {name} backend keeps semaphores of at most {max} permit(s)")
        } else {
            return Ok(());
        };
        Err(Error::InvalidPermits {
            key: display_key(key),
            permits,
            reason,
        })
    }

    /// Stops all renewal and releases every lock held through this locker (guards and the
    /// compat registry), waiting for the releases. Afterwards every call fails with
    /// [`Error::Closed`]; guards still alive report their lock as released. Idempotent.
    ///
    /// Cancel safety: once polled, the close has happened; dropping the future only stops
    /// waiting for the releases, which go on in the background.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let _held = locker.lock("k").await?;
    /// locker.close().await?;
    /// assert!(matches!(locker.lock("k").await, Err(dlock::Error::Closed)));
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) -> Result<()> {
        // Cancelled first: a lock call that completes meanwhile drops its guard itself.
        self.inner.context.closing().cancel();
        self.inner.registry.clear();
        self.inner.context.close().await;
        Ok(())
    }

    /// Whether [`Locker::close`] was called.
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// assert!(!locker.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.context.closing().is_cancelled()
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Validates one lock call before anything is sent.
    fn begin<'a>(
        &self,
        key: &'a str,
        options: &LockOptions,
        value: Option<&'a str>,
        permits: u32,
    ) -> Result<Call<'a>> {
        let inner = &*self.inner;
        // Taken before anything else, dropped when the call returns (after the guard's task
        // was spawned): `close()` waits for calls in flight too.
        let in_flight = inner.context.in_flight();
        if self.is_closed() {
            return Err(Error::Closed);
        }
        check_key(key)?;
        self.check_permits(key, permits)?;
        // An empty value publishes nothing, the same on every backend.
        let value = value.filter(|v| !v.is_empty());
        if let Some(value) = value.filter(|v| v.len() > MAX_VALUE) {
            return Err(Error::InvalidConfig {
                field: "value".into(),
                reason: format!("is {} bytes; at most {MAX_VALUE}", value.len()),
            });
        }
        let ttl = options.get_ttl().unwrap_or(inner.config.default_ttl);
        check_ttl(ttl)
            .and_then(|()| inner.backend.check_ttl(ttl))
            .map_err(|reason| Error::InvalidTtl {
                key: Some(display_key(key)),
                ttl,
                reason,
            })?;
        let started = Instant::now();
        Ok(Call {
            key,
            storage_key: inner.backend.storage_key(&inner.config.prefix, key),
            token: ulid::Ulid::generate().to_string(),
            ttl,
            started,
            // A zero wait_timeout is one attempt: bounding it by a zero deadline would cut
            // it before any server could answer.
            deadline: options
                .get_wait_timeout()
                .filter(|w| !w.is_zero())
                .map(|w| deadline_after(started, w)),
            value,
            permits,
            _in_flight: in_flight,
        })
    }

    /// Runs one acquire call of the backend until it answers, the call's deadline passes
    /// (`Timeout`) or the locker closes (`Closed`).
    async fn attempt(
        &self,
        call: &Call<'_>,
        acquire: BoxFuture<'_, Result<Option<Acquired>>>,
    ) -> Result<Option<Acquired>> {
        let cx = &self.inner.context;
        // Our own interrupted attempts on this key settle first: a retry must not take
        // their leftover for another holder.
        let acquire = async {
            cx.settled(call.key).await;
            acquire.await
        };
        let bounded = async {
            let Some(deadline) = call.deadline else {
                return acquire.await;
            };
            tokio::time::timeout_at(deadline, acquire)
                .await
                .unwrap_or_else(|_| Err(call.timeout()))
        };
        let outcome = tokio::select! {
            biased;
            _ = cx.closing().cancelled() => Err(Error::Closed),
            outcome = bounded => outcome,
        };
        outcome.map_err(|e| self.failed(call, e))
    }

    /// Hands a granted lock to a guard, unless the grant came too late to be used.
    fn start_guard(&self, call: &Call<'_>, acquired: Acquired) -> Result<LockGuard> {
        let inner = &*self.inner;
        let (name, cx) = (inner.backend.name(), &inner.context);
        if Instant::now() >= acquired.lease.deadline(acquired.confirmed_at) {
            // The reply came too late to prove ownership: undo it rather than hand out a
            // guard that would be lost on arrival.
            let Acquired {
                lease,
                confirmed_at,
                held,
            } = acquired;
            let (cleanup, backend) = (cx.clone(), inner.backend.clone());
            cx.spawn_undo(call.key, async move {
                let expiry = confirmed_at + lease.ttl;
                let _ = backend.release(&cleanup, &lease, held, expiry).await;
            });
            return Err(self.failed(
                call,
                Error::backend(
                    name,
                    call.key,
                    "the server confirmed the lock after its safety deadline; released it again",
                ),
            ));
        }
        let fencing_token = acquired.lease.fencing_token;
        let guard = LockGuard::start(name, acquired, &inner.engine);
        if self.is_closed() {
            return Err(Error::Closed); // the guard's drop releases at once
        }
        let waited = call.started.elapsed();
        inner.metrics.acquired(name, call.key, waited);
        tracing::debug!(
            component = "dlock",
            backend = name,
            key = %call.key,
            fencing_token,
            waited_ms = waited.as_millis() as u64,
            "lock acquired"
        );
        Ok(guard)
    }

    /// Records a lock call that ended without a lock, and returns its error.
    fn failed(&self, call: &Call<'_>, e: Error) -> Error {
        let name = self.inner.backend.name();
        self.inner.metrics.failed(name, call.key);
        if matches!(e, Error::Backend { .. } | Error::PermissionDenied { .. }) {
            tracing::error!(component = "dlock", backend = name, key = %call.key, error = %e,
                "lock attempt failed");
        } else {
            tracing::debug!(component = "dlock", backend = name, key = %call.key, error = %e,
                "lock call ended without a lock");
        }
        e
    }
}

/// One validated lock call.
struct Call<'a> {
    key: &'a str,
    storage_key: String,
    /// A fresh ULID for this acquisition.
    token: String,
    ttl: Duration,
    started: Instant,
    /// From `wait_timeout`; `None`: no deadline.
    deadline: Option<Instant>,
    /// Published with the lock, for [`Locker::holder`].
    value: Option<&'a str>,
    /// How many may hold the key at once: 1 for a lock.
    permits: u32,
    _in_flight: TaskTrackerToken,
}

impl Call<'_> {
    fn request(&self) -> Request<'_> {
        Request::new(self.key, &self.storage_key, &self.token, self.ttl)
            .with_value(self.value)
            .with_permits(self.permits)
    }

    fn timeout(&self) -> Error {
        Error::Timeout {
            key: display_key(self.key),
            waited: self.started.elapsed(),
        }
    }
}

/// `start + wait`, saturating far in the future instead of overflowing.
fn deadline_after(start: Instant, wait: Duration) -> Instant {
    start
        .checked_add(wait)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn check_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "the key is empty".to_owned()
    } else if key.len() > MAX_KEY_LEN {
        format!("the key is {} bytes; at most {MAX_KEY_LEN}", key.len())
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey {
        key: display_key(key),
        reason,
    })
}

impl std::fmt::Debug for Locker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locker")
            .field("config", &self.inner.config)
            .field("backend", &self.inner.backend.name())
            .field("closed", &self.is_closed())
            .finish()
    }
}
