//! `Locker` and `LockerBuilder`: validation, the acquire call (deadline, close), close.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::memory::{MemoryBackend, MemoryStore};
use crate::backend::{Backend, Context, Request};
use crate::compat::{Compat, Registry};
use crate::config::{check_ttl, Config, Driver, MAX_KEY_LEN};
use crate::error::{display_key, Error, Result};
use crate::guard::LockGuard;
use crate::metrics::Metrics;
use crate::options::LockOptions;

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
    backend: Backend,
    /// Cancelled by `close()`; every guard's release token is a child of it.
    closing: CancellationToken,
    /// Every guard's lifecycle task, so that `close()` can wait for their releases.
    tasks: TaskTracker,
    registry: Registry,
    metrics: Metrics,
}

/// Builds a [`Locker`]: the config plus the connection for its driver (injected, never
/// created by dlock).
///
/// ```
/// use dlock::{Config, Driver, Error, Locker};
///
/// // A Redis config without a Redis connection is refused once, at build time.
/// let err = Locker::builder(Config::new(Driver::Redis)).build().unwrap_err();
/// assert!(matches!(err, Error::ConnectorMissing { .. }));
/// ```
#[must_use = "call .build() to get a Locker"]
pub struct LockerBuilder {
    config: Config,
    connector: Option<Connector>,
    #[cfg(feature = "metrics")]
    meter: Option<opentelemetry::metrics::Meter>,
    key_attribute: bool,
    call_timeout: Duration,
    #[cfg(feature = "redis")]
    redis_pubsub: Option<redis::Client>,
}

/// The default of [`LockerBuilder::call_timeout`].
///
/// ```
/// assert_eq!(dlock::DEFAULT_CALL_TIMEOUT, std::time::Duration::from_secs(5));
/// ```
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

enum Connector {
    Memory(MemoryStore),
    #[cfg(feature = "redis")]
    Redis(Box<crate::backend::redis::RedisConn>),
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::Client>),
}

impl Connector {
    fn driver(&self) -> Driver {
        match self {
            Connector::Memory(_) => Driver::Memory,
            #[cfg(feature = "redis")]
            Connector::Redis(_) => Driver::Redis,
            #[cfg(feature = "etcd")]
            Connector::Etcd(_) => Driver::Etcd,
        }
    }
}

impl LockerBuilder {
    /// The Redis connection for [`Driver::Redis`] (Go: `WithRedisConnector`). The
    /// `ConnectionManager` reconnects by itself; renewals and waits survive reconnects.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let conn = redis::aio::ConnectionManager::new(client).await?;
    /// let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Redis))
    ///     .redis(conn)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(mut self, conn: redis::aio::ConnectionManager) -> Self {
        let conn = crate::backend::redis::RedisConn::Single(conn);
        self.connector = Some(Connector::Redis(Box::new(conn)));
        self
    }

    /// A Redis Cluster connection for [`Driver::Redis`]. All keys of one lock share a hash
    /// slot (`{key}` hash tag), so locks spread over the masters.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7000/"])?;
    /// let conn = client.get_async_connection().await?;
    /// let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Redis))
    ///     .redis_cluster(conn)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis_cluster(mut self, conn: redis::cluster_async::ClusterConnection) -> Self {
        let conn = crate::backend::redis::RedisConn::Cluster(conn);
        self.connector = Some(Connector::Redis(Box::new(conn)));
        self
    }

    /// A client for release notifications on Redis: the locker opens one subscription
    /// connection with it, and a waiting `lock()` retries as soon as the lock is released
    /// anywhere, instead of at its next poll. Without it, waiters in this process are still
    /// woken by releases made in this process; other releases are seen by polling at
    /// `retry_interval`.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
    /// let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Redis))
    ///     .redis(conn)
    ///     .redis_pubsub(client)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis_pubsub(mut self, client: redis::Client) -> Self {
        self.redis_pubsub = Some(client);
        self
    }

    /// The etcd client for [`Driver::Etcd`] (Go: `WithEtcdConnector`).
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
    /// let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Etcd))
    ///     .etcd(client)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "etcd")]
    pub fn etcd(mut self, client: etcd_client::Client) -> Self {
        self.connector = Some(Connector::Etcd(Box::new(client)));
        self
    }

    /// The store for [`Driver::Memory`]; without it the process-wide [`MemoryStore::global`]
    /// is used.
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default())
    ///     .memory(dlock::MemoryStore::new())
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn memory(mut self, store: MemoryStore) -> Self {
        self.connector = Some(Connector::Memory(store));
        self
    }

    /// Records the metrics of [`crate::metrics`] with this OpenTelemetry meter (Go:
    /// `WithMeter`). Cargo feature `metrics`.
    ///
    /// ```
    /// let meter = opentelemetry::global::meter("my-service");
    /// let locker = dlock::Locker::builder(dlock::Config::default()).meter(meter).build().unwrap();
    /// ```
    #[cfg(feature = "metrics")]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Whether metrics carry the `key` attribute (default `true`). Turn it off when keys are
    /// many and unbounded (one per order, per user): each distinct key is a new time series.
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default())
    ///     .key_attribute(false)
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn key_attribute(mut self, on: bool) -> Self {
        self.key_attribute = on;
        self
    }

    /// The longest any single server call may take (default [`DEFAULT_CALL_TIMEOUT`], 5 s).
    /// Each call is also bounded by what it is useful for: an acquire attempt by the lock's
    /// safety deadline (90 % of the TTL), a renewal by the safety deadline of the last
    /// confirmed one, a release by the key's expiry. So with a 1 h TTL, a server that does
    /// not answer still ends `release()`, `close()` and every `lock()` attempt within this
    /// bound. Must be at least 1 ms; checked by `build()`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let locker = dlock::Locker::builder(dlock::Config::default())
    ///     .call_timeout(Duration::from_secs(2))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn call_timeout(mut self, bound: Duration) -> Self {
        self.call_timeout = bound;
        self
    }

    /// Validates the config and the connector, once; the locker never re-checks them.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the field, [`Error::InvalidTtl`] for a default
    /// TTL the backend cannot honour (etcd: whole seconds), [`Error::ConnectorMissing`] when no
    /// connector or one for another driver was given.
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build();
    /// assert!(locker.is_ok());
    /// ```
    pub fn build(self) -> Result<Locker> {
        let config = self.config;
        config.validate()?;
        if self.call_timeout < Duration::from_millis(1) {
            return Err(Error::InvalidConfig {
                field: "call_timeout".into(),
                reason: format!("is {:?}; at least 1ms", self.call_timeout),
            });
        }
        let (closing, tasks) = (CancellationToken::new(), TaskTracker::new());
        let context = Context::new(tasks.clone(), closing.clone(), self.call_timeout);
        let connector = match (config.driver, self.connector) {
            (Driver::Memory, None) => Connector::Memory(MemoryStore::global()),
            (driver, None) => {
                return Err(Error::ConnectorMissing {
                    driver,
                    reason: format!("needs a connection: call .{driver}(..) on the builder"),
                })
            }
            (driver, Some(c)) if c.driver() != driver => {
                return Err(Error::ConnectorMissing {
                    driver,
                    reason: format!("was given a {} connector instead", c.driver()),
                })
            }
            (_, Some(c)) => c,
        };
        let backend = match connector {
            Connector::Memory(store) => {
                Backend::Memory(Arc::new(MemoryBackend::new(store, &config.prefix)))
            }
            #[cfg(feature = "redis")]
            Connector::Redis(conn) => {
                Backend::Redis(Arc::new(crate::backend::redis::RedisBackend::new(
                    *conn,
                    &config.prefix,
                    self.redis_pubsub,
                    context,
                )))
            }
            #[cfg(feature = "etcd")]
            Connector::Etcd(client) => Backend::Etcd(Arc::new(
                crate::backend::etcd::EtcdBackend::new(*client, &config, context),
            )),
        };
        backend
            .check_ttl(config.default_ttl)
            .map_err(|reason| Error::InvalidTtl {
                key: None,
                ttl: config.default_ttl,
                reason: format!("default_ttl {reason}"),
            })?;
        #[cfg(feature = "metrics")]
        let metrics = Metrics::new(self.meter.as_ref(), self.key_attribute);
        #[cfg(not(feature = "metrics"))]
        let metrics = {
            let _ = self.key_attribute;
            Metrics::default()
        };
        Ok(Locker {
            inner: Arc::new(Inner {
                config,
                backend,
                closing,
                tasks,
                registry: Registry::default(),
                metrics,
            }),
        })
    }
}

impl Locker {
    /// Starts building a locker for `config`.
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// assert_eq!(locker.config().driver, dlock::Driver::Memory);
    /// ```
    pub fn builder(config: Config) -> LockerBuilder {
        LockerBuilder {
            config,
            connector: None,
            #[cfg(feature = "metrics")]
            meter: None,
            key_attribute: true,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            #[cfg(feature = "redis")]
            redis_pubsub: None,
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
        let guard = self.acquire(key, options, true).await?;
        guard.ok_or_else(|| Error::Timeout {
            key: display_key(key),
            waited: Duration::ZERO,
        })
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
        self.acquire(key, options, false).await
    }

    /// The Go-style API (`lock`/`try_lock`/`unlock` by key) over a key → guard registry held
    /// by this locker.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let go = locker.compat();
    /// go.lock("resource-key").await?;
    /// go.unlock("resource-key").await?;
    /// # Ok(()) }
    /// ```
    pub fn compat(&self) -> Compat {
        Compat::new(self.clone())
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
        let inner = &self.inner;
        inner.closing.cancel();
        inner.registry.clear();
        inner.tasks.close();
        inner.tasks.wait().await;
        Ok(())
    }

    /// Whether [`Locker::close`] was called.
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// assert!(!locker.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.closing.is_cancelled()
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    async fn acquire(
        &self,
        key: &str,
        options: LockOptions,
        wait: bool,
    ) -> Result<Option<LockGuard>> {
        let inner = &*self.inner;
        // Held until this call returns, after everything it started was spawned on the
        // tracker (declared first, dropped last): `close()` waits for in-flight calls too.
        let _in_flight = inner.tasks.token();
        if self.is_closed() {
            return Err(Error::Closed);
        }
        check_key(key)?;
        let ttl = options.get_ttl().unwrap_or(inner.config.default_ttl);
        check_ttl(ttl)
            .and_then(|()| inner.backend.check_ttl(ttl))
            .map_err(|reason| Error::InvalidTtl {
                key: Some(display_key(key)),
                ttl,
                reason,
            })?;
        let token = ulid::Ulid::generate().to_string();
        let single_attempt = !wait || options.get_wait_timeout() == Some(Duration::ZERO);
        let request = Request {
            key,
            token: &token,
            ttl,
            wait: (!single_attempt).then_some(inner.config.retry_interval),
        };
        let started = Instant::now();
        // A zero wait_timeout means "one attempt": bounding that attempt by a zero deadline
        // would cut it before any server could answer.
        let deadline = options
            .get_wait_timeout()
            .filter(|w| !w.is_zero())
            .map(|w| deadline_after(started, w));
        let attempt = async {
            match deadline {
                Some(deadline) => {
                    tokio::time::timeout_at(deadline, inner.backend.acquire(&request))
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::Timeout {
                                key: display_key(key),
                                waited: started.elapsed(),
                            })
                        })
                }
                None => inner.backend.acquire(&request).await,
            }
        };
        let outcome = tokio::select! {
            biased;
            _ = inner.closing.cancelled() => Err(Error::Closed),
            outcome = attempt => outcome,
        };
        let name = inner.backend.name();
        match outcome {
            Ok(Some(lease)) if Instant::now() >= lease.deadline(lease.confirmed_at) => {
                // The reply came too late to prove ownership: undo it rather than hand out a
                // guard that would be lost on arrival.
                let (backend, expiry) = (inner.backend.clone(), lease.confirmed_at + lease.ttl);
                inner.tasks.spawn(async move {
                    let _ = backend.release(&lease, expiry).await;
                });
                inner.metrics.failed(name, key);
                let e = Error::backend(
                    name,
                    key,
                    "the server confirmed the lock after its safety deadline; released it again",
                );
                tracing::error!(component = "dlock", backend = name, key = %key, error = %e,
                    "lock attempt failed");
                Err(e)
            }
            Ok(Some(lease)) => {
                let fencing_token = lease.fencing_token;
                let guard = LockGuard::start(
                    inner.backend.clone(),
                    lease,
                    inner.closing.child_token(),
                    &inner.tasks,
                    inner.metrics.clone(),
                );
                if self.is_closed() {
                    return Err(Error::Closed); // the guard's drop releases at once
                }
                inner.metrics.acquired(name, key, started.elapsed());
                tracing::debug!(
                    component = "dlock",
                    backend = name,
                    key = %key,
                    fencing_token,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "lock acquired"
                );
                Ok(Some(guard))
            }
            Ok(None) if wait => {
                inner.metrics.failed(name, key);
                Err(Error::Timeout {
                    key: display_key(key),
                    waited: started.elapsed(),
                })
            }
            Ok(None) => Ok(None),
            Err(e) => {
                inner.metrics.failed(name, key);
                if matches!(e, Error::Backend { .. }) {
                    tracing::error!(component = "dlock", backend = name, key = %key, error = %e,
                        "lock attempt failed");
                } else {
                    tracing::debug!(component = "dlock", backend = name, key = %key, error = %e,
                        "lock call ended without a lock");
                }
                Err(e)
            }
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
