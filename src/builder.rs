//! `LockerBuilder`: a config and the connection for its driver in, one validated
//! [`Locker`] out. dlock never opens a connection of its own.

use std::time::Duration;

use crate::backend::erased::{erase, SharedBackend};
use crate::backend::memory::{MemoryBackend, MemoryStore};
use crate::backend::Context;
use crate::config::{Config, Driver};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::Locker;

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
    #[cfg(feature = "postgres")]
    postgres_settings: crate::backend::postgres::SettingsSlot,
}

/// The default of [`LockerBuilder::call_timeout`].
///
/// ```
/// assert_eq!(dlock::DEFAULT_CALL_TIMEOUT, std::time::Duration::from_secs(5));
/// ```
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl LockerBuilder {
    pub(crate) fn new(config: Config) -> LockerBuilder {
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
            #[cfg(feature = "postgres")]
            postgres_settings: Default::default(),
        }
    }

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

    /// The connection pool for [`Driver::Postgres`] (feature `postgres`). Run
    /// [`dlock::postgres::migrate`](crate::postgres::migrate) once first (or the SQL it runs,
    /// [`dlock::postgres::SCHEMA`](crate::postgres::SCHEMA), in your own migrations).
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::PgPool::connect("postgres://app@127.0.0.1/app").await?;
    /// dlock::postgres::migrate(&pool).await?;
    /// let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Postgres))
    ///     .postgres(pool)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres(self, pool: sqlx::PgPool) -> Self {
        let settings = self.postgres_settings.clone();
        self.install(crate::backend::postgres::PostgresBackend::new(
            pool, settings,
        ))
    }

    /// PostgreSQL only: where the locker listens for release notifications (default
    /// [`Listen::Pool`](crate::postgres::Listen::Pool), a connection of its pool). Behind
    /// PgBouncer in transaction pooling mode, give
    /// [`Listen::Direct`](crate::postgres::Listen::Direct) with options that reach
    /// PostgreSQL itself, or [`Listen::Off`](crate::postgres::Listen::Off) to rely on polling
    /// at `retry_interval`: see [`Listen`](crate::postgres::Listen) for why. Before or after
    /// `.postgres(..)`; the last one given wins.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use dlock::postgres::Listen;
    /// use sqlx::postgres::PgConnectOptions;
    ///
    /// // Every statement through PgBouncer (transaction pooling) on 6432...
    /// let pool = sqlx::PgPool::connect("postgres://app@pgbouncer.internal:6432/app").await?;
    /// // ...and release notifications straight from PostgreSQL.
    /// let direct: PgConnectOptions = "postgres://app@db.internal:5432/app".parse()?;
    /// let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Postgres))
    ///     .postgres(pool)
    ///     .postgres_listen(Listen::Direct(direct))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres_listen(self, listen: crate::postgres::Listen) -> Self {
        crate::backend::recover(self.postgres_settings.lock()).listen = listen;
        self
    }

    /// PostgreSQL only: send dlock's statements as prepared statements, cached per
    /// connection by sqlx, instead of in the simple query protocol (the default). It saves
    /// the server parsing and planning each statement again: in this project's benchmark
    /// (release build, one run, 1 and 16 tasks), lock + release pairs ran 1.4–1.6x as fast
    /// with it.
    ///
    /// Only when every connection of the pool keeps its prepared statements from one
    /// statement to the next: PostgreSQL itself, PgBouncer in session mode, or PgBouncer
    /// 1.21 and later with `max_prepared_statements` set. **Never behind PgBouncer before
    /// 1.21 in transaction (or statement) mode**: sqlx prepares a statement in one exchange
    /// and runs it in the next, which such a PgBouncer may send to another server
    /// connection, where the name is unknown, taken, or another client's statement.
    /// `fence_transaction` always uses the simple protocol. Before or after
    /// `.postgres(..)`.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Straight to PostgreSQL: no PgBouncer in between.
    /// let pool = sqlx::PgPool::connect("postgres://app@db.internal:5432/app").await?;
    /// let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Postgres))
    ///     .postgres(pool)
    ///     .postgres_prepared_statements(true)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres_prepared_statements(self, on: bool) -> Self {
        crate::backend::recover(self.postgres_settings.lock()).prepared = on;
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
        Ok(Locker::new(config, backend, context, metrics))
    }
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
        #[cfg(feature = "postgres")]
        {
            let settings = crate::backend::recover(self.postgres_settings.lock());
            out.field("postgres_listen", &settings.listen)
                .field("postgres_prepared_statements", &settings.prepared);
        }
        out.finish_non_exhaustive()
    }
}
