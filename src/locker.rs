//! `Locker` and `LockerBuilder`: validation, the attempt (deadline, close), starting the
//! guard, close. The locker knows backends only through the erased seam.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::backend::erased::{erase, Acquired, BoxFuture, SharedBackend};
use crate::backend::memory::{MemoryBackend, MemoryStore};
use crate::backend::{Context, Request};
use crate::config::{check_ttl, Config, Driver, MAX_KEY_LEN};
use crate::engine::Engine;
use crate::error::{display_key, Error, Result};
use crate::guard::LockGuard;
use crate::holder::MAX_VALUE;
use crate::metrics::Metrics;
use crate::options::LockOptions;
use crate::registry::Registry;
use crate::Holder;

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
    backend: Option<SharedBackend>,
    #[cfg(feature = "metrics")]
    meter: Option<opentelemetry::metrics::Meter>,
    key_attribute: bool,
    call_timeout: Duration,
    #[cfg(feature = "redis")]
    redis_pubsub: crate::backend::redis::PubsubSlot,
    #[cfg(feature = "redis")]
    redis_replica_ack: crate::backend::redis::AckSlot,
}

/// The default of [`LockerBuilder::call_timeout`].
///
/// ```
/// assert_eq!(dlock::DEFAULT_CALL_TIMEOUT, std::time::Duration::from_secs(5));
/// ```
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl LockerBuilder {
    /// The backend to lock on, for [`Driver::Custom`] (or a built-in driver, when `backend`
    /// is one of the crate's). `.redis(..)`, `.etcd(..)` and `.memory(..)` are this call with
    /// the crate's backends. Feature `unstable-backend`: the [`Backend`](crate::backend::Backend)
    /// trait may still change.
    ///
    /// A [`Driver::Custom`] config needs one (the trait's documentation has a whole backend
    /// as its example):
    ///
    /// ```
    /// let err = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Custom)).build().unwrap_err();
    /// assert!(err.to_string().contains(".backend(..)"), "{err}");
    /// ```
    #[cfg(feature = "unstable-backend")]
    pub fn backend<B: crate::backend::Backend>(self, backend: B) -> Self {
        self.install(backend)
    }

    /// Erases the backend's type, once, and keeps it (the last one given wins).
    fn install<B: crate::backend::Backend>(mut self, backend: B) -> Self {
        self.backend = Some(erase(backend));
        self
    }

    /// The Redis connection for [`Driver::Redis`] (Go: `WithRedisConnector`): any redis-rs
    /// async connection that is a cheap, shareable handle. `ConnectionManager` (reconnects
    /// by itself; renewals and waits survive reconnects), `MultiplexedConnection`, a
    /// `cluster_async::ClusterConnection` (see [`LockerBuilder::redis_cluster`]), or one
    /// managed through Sentinel.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
    /// let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Redis))
    ///     .redis(conn)
    ///     .build()?;
    /// // Or a multiplexed connection (no automatic reconnect):
    /// let conn = client.get_multiplexed_async_connection().await?;
    /// let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Redis))
    ///     .redis(conn)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis<C>(self, conn: C) -> Self
    where
        C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
    {
        let (pubsub, ack) = (self.redis_pubsub.clone(), self.redis_replica_ack.clone());
        self.install(crate::backend::redis::RedisBackend::new(conn, pubsub, ack))
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
    pub fn redis_cluster(self, conn: redis::cluster_async::ClusterConnection) -> Self {
        self.redis(conn)
    }

    /// A client for release notifications on Redis: the locker opens one subscription
    /// connection with it, and a waiting `lock()` retries as soon as the lock is released
    /// anywhere, instead of at its next poll. Without it, waiters in this process are still
    /// woken by releases made in this process; other releases are seen by polling at
    /// `retry_interval`. Subscribes with `SUBSCRIBE`, and releases `PUBLISH`, which a Cluster
    /// copies to every node: on a Cluster prefer
    /// [`redis_cluster_pubsub`](Self::redis_cluster_pubsub), which keeps them on one shard.
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
    pub fn redis_pubsub(self, client: redis::Client) -> Self {
        let source = crate::backend::redis::PubsubSource::Node(client);
        *crate::backend::recover(self.redis_pubsub.lock()) = Some(source);
        self
    }

    /// Release notifications on a Redis Cluster that stay on one shard: the locker opens its
    /// own cluster connection with `client`, subscribes each waited-on lock's channel with
    /// `SSUBSCRIBE` on the master that owns the lock's slot (following slot moves and
    /// failovers), and a release announces itself there with `SPUBLISH`, instead of a
    /// `PUBLISH` that the cluster copies to every node. The client must speak RESP3
    /// (`.use_protocol(ProtocolVersion::RESP3)`): redis-rs delivers cluster pub/sub as RESP3
    /// pushes. On Redis before 7 (no sharded pub/sub) it falls back to `SUBSCRIBE`/`PUBLISH`
    /// by itself. Replaces [`redis_pubsub`](Self::redis_pubsub) if both are given (the last
    /// one wins); waiting works as there.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redis::cluster::ClusterClientBuilder;
    ///
    /// let client = ClusterClientBuilder::new(vec!["redis://127.0.0.1:7000/"])
    ///     .use_protocol(redis::ProtocolVersion::RESP3)
    ///     .build()?;
    /// let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Redis))
    ///     .redis_cluster(client.get_async_connection().await?)
    ///     .redis_cluster_pubsub(client)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis_cluster_pubsub(self, client: redis::cluster::ClusterClient) -> Self {
        let source = crate::backend::redis::PubsubSource::Cluster(client);
        *crate::backend::recover(self.redis_pubsub.lock()) = Some(source);
        self
    }

    /// Redis only: a lock counts as acquired, and a renewal as confirmed, only once
    /// `replicas` replicas have it (`WAIT replicas timeout`, sent with the lock's script), so
    /// that a failover to one of them cannot grant it again. Sets the config's
    /// [`replica_ack`](Config::replica_ack); off by default, because a Redis without replicas
    /// could then never grant a lock. With too few acknowledgements, an acquisition is undone
    /// and the call fails with [`Error::Backend`]; a renewal is retried until the lock's
    /// safety deadline, then `lost()` fires. `build()` checks the values (`replica_ack`:
    /// 1 ..= [`MAX_REPLICA_ACKS`](crate::MAX_REPLICA_ACKS) replicas, a timeout under 90 % of
    /// the default TTL).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use dlock::{Config, Driver, Error, Locker};
    ///
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let builder = Locker::builder(Config::new(Driver::Redis))
    ///     .redis(redis::aio::ConnectionManager::new_lazy_with_config(client, Default::default())?);
    /// let locker = builder.replica_ack(2, Duration::from_millis(100)).build()?;
    /// assert_eq!(locker.config().replica_ack.map(|ack| ack.replicas), Some(2));
    ///
    /// // No replica can acknowledge more than the lock's useful time:
    /// let client = redis::Client::open("redis://127.0.0.1:6379/")?;
    /// let err = Locker::builder(Config::new(Driver::Redis))
    ///     .redis(redis::aio::ConnectionManager::new_lazy_with_config(client, Default::default())?)
    ///     .replica_ack(1, Duration::from_secs(60))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::InvalidConfig { ref field, .. } if field == "replica_ack"), "{err}");
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn replica_ack(mut self, replicas: u32, timeout: Duration) -> Self {
        self.config.replica_ack = Some(crate::config::ReplicaAck::new(replicas, timeout));
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
    pub fn etcd(self, client: etcd_client::Client) -> Self {
        self.install(crate::backend::etcd::EtcdBackend::new(client))
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
    pub fn memory(self, store: MemoryStore) -> Self {
        self.install(MemoryBackend(store))
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
        #[cfg(feature = "redis")]
        if let Some(ack) = config.replica_ack {
            let _ = self.redis_replica_ack.set(ack);
        }
        if self.call_timeout < Duration::from_millis(1) {
            return Err(Error::InvalidConfig {
                field: "call_timeout".into(),
                reason: format!("is {:?}; at least 1ms", self.call_timeout),
            });
        }
        let backend = match (config.driver, self.backend) {
            (Driver::Memory, None) => erase(MemoryBackend(MemoryStore::global())),
            (driver, None) => {
                let call = match driver {
                    Driver::Custom => "backend",
                    named => named.as_str(),
                };
                return Err(Error::ConnectorMissing {
                    driver,
                    reason: format!("needs a connection: call .{call}(..) on the builder"),
                });
            }
            (driver, Some(backend)) if backend.driver() != driver => {
                return Err(Error::ConnectorMissing {
                    driver,
                    reason: format!("was given a {} connector instead", backend.name()),
                })
            }
            (_, Some(backend)) => backend,
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
        let context = Context::new(self.call_timeout);
        let engine = Engine::new(backend.clone(), context.clone(), metrics.clone());
        Ok(Locker {
            inner: Arc::new(Inner {
                config,
                backend,
                context,
                engine,
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
            backend: None,
            #[cfg(feature = "metrics")]
            meter: None,
            key_attribute: true,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            #[cfg(feature = "redis")]
            redis_pubsub: Default::default(),
            #[cfg(feature = "redis")]
            redis_replica_ack: Default::default(),
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
        self.lock_call(key, options, None).await
    }

    /// [`Locker::lock_with`] that also publishes `value` for [`Locker::holder`] readers.
    pub(crate) async fn lock_publishing(
        &self,
        key: &str,
        options: LockOptions,
        value: &str,
    ) -> Result<LockGuard> {
        self.lock_call(key, options, Some(value)).await
    }

    /// [`Locker::try_lock_with`] that also publishes `value` for [`Locker::holder`] readers.
    pub(crate) async fn try_lock_publishing(
        &self,
        key: &str,
        options: LockOptions,
        value: &str,
    ) -> Result<Option<LockGuard>> {
        self.try_lock_call(key, options, Some(value)).await
    }

    async fn lock_call(
        &self,
        key: &str,
        options: LockOptions,
        value: Option<&str>,
    ) -> Result<LockGuard> {
        let call = self.begin(key, &options, value)?;
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
        self.try_lock_call(key, options, None).await
    }

    async fn try_lock_call(
        &self,
        key: &str,
        options: LockOptions,
        value: Option<&str>,
    ) -> Result<Option<LockGuard>> {
        let call = self.begin(key, &options, value)?;
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
    ) -> Result<Call<'a>> {
        let inner = &*self.inner;
        // Taken before anything else, dropped when the call returns (after the guard's task
        // was spawned): `close()` waits for calls in flight too.
        let in_flight = inner.context.in_flight();
        if self.is_closed() {
            return Err(Error::Closed);
        }
        check_key(key)?;
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
    _in_flight: TaskTrackerToken,
}

impl Call<'_> {
    fn request(&self) -> Request<'_> {
        Request::new(self.key, &self.storage_key, &self.token, self.ttl).with_value(self.value)
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

/// Shows the config and which connector was given, never the connector itself: an injected
/// client's own `Debug` can include its password (redis-rs prints its `ConnectionInfo`).
impl std::fmt::Debug for LockerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("LockerBuilder");
        out.field("config", &self.config)
            .field("backend", &self.backend.as_ref().map(|b| b.name()))
            .field("call_timeout", &self.call_timeout);
        #[cfg(feature = "redis")]
        out.field(
            "redis_pubsub",
            &crate::backend::recover(self.redis_pubsub.lock()).is_some(),
        );
        out.finish_non_exhaustive()
    }
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
