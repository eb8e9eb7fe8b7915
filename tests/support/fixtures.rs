//! The crate's backends as `dlock::testing::Fixture`s: one server (or store) per test,
//! lockers with connections of their own, and the server-side view. The conformance suite,
//! the fault tests and the benchmarks all start their servers through these.

use std::future::Future;
use std::net::SocketAddr;

use ::redis::AsyncCommands;
use dlock::testing::Fixture;
use dlock::{Config, Driver, Locker};

use super::Proxy;

/// A Redis fixture that can build lockers with release notifications.
pub trait WithPubsub: Fixture {
    fn pubsub_client(&self) -> ::redis::Client;
    fn locker_with_pubsub(
        &self,
        config: Config,
        pubsub: ::redis::Client,
    ) -> impl Future<Output = Locker> + Send;
}

/// A fixture whose server can be reached through a fault-injecting [`Proxy`].
pub trait Proxied: Fixture {
    /// Where the proxy forwards to.
    fn addr(&self) -> SocketAddr;
    /// A locker whose every connection (notifications included) goes through `proxy`.
    fn locker_via(&self, proxy: &Proxy, config: Config) -> impl Future<Output = Locker> + Send;
}

/// The server-side half of a fixture that wraps another (its field `$inner`): `exists`,
/// `delete`, `stop_server` and the counters are the wrapped fixture's; only how it starts
/// and how its lockers connect differ.
macro_rules! server_side_of {
    ($inner:tt) => {
        async fn exists(&self, prefix: &str, key: &str) -> bool {
            self.$inner.exists(prefix, key).await
        }
        async fn delete(&self, prefix: &str, key: &str) {
            self.$inner.delete(prefix, key).await
        }
        async fn stop_server(&mut self) {
            self.$inner.stop_server().await
        }
        async fn read_counter(&self, name: &str) -> u64 {
            self.$inner.read_counter(name).await
        }
        async fn write_counter(&self, name: &str, value: u64) {
            self.$inner.write_counter(name, value).await
        }
    };
}

/// The in-process store; "stopping the server" takes it offline.
pub struct Memory {
    store: dlock::MemoryStore,
    counters: tokio::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Fixture for Memory {
    const DRIVER: Driver = Driver::Memory;
    async fn start() -> Self {
        Memory {
            store: dlock::MemoryStore::new(),
            counters: Default::default(),
        }
    }
    async fn locker(&self, config: Config) -> Locker {
        Locker::builder(config)
            .memory(self.store.clone())
            .build()
            .expect("build")
    }
    async fn exists(&self, prefix: &str, key: &str) -> bool {
        self.store.contains(&format!("{prefix}{key}"))
    }
    async fn delete(&self, prefix: &str, key: &str) {
        self.store.remove(&format!("{prefix}{key}"));
    }
    async fn stop_server(&mut self) {
        self.store.set_offline(true);
    }
    async fn read_counter(&self, name: &str) -> u64 {
        self.counters.lock().await.get(name).copied().unwrap_or(0)
    }
    async fn write_counter(&self, name: &str, value: u64) {
        self.counters.lock().await.insert(name.to_owned(), value);
    }
}

/// The server-side view shared by the single-node and the cluster fixtures: a lock's key
/// is `<prefix>{<key>}`, held while its value is not a release tombstone (`~<token>`); a
/// semaphore's is a hash there, held while `<prefix>{<key>}:held` has an unexpired holder.
pub async fn redis_exists<C: ::redis::aio::ConnectionLike + Clone + Send + Sync>(
    admin: &C,
    prefix: &str,
    key: &str,
) -> bool {
    let mut admin = admin.clone();
    let lock_key = format!("{prefix}{{{key}}}");
    let kind: String = ::redis::cmd("TYPE")
        .arg(&lock_key)
        .query_async(&mut admin)
        .await
        .expect("TYPE");
    if kind == "hash" {
        let now: (u64, u64) = ::redis::cmd("TIME")
            .query_async(&mut admin)
            .await
            .expect("TIME");
        let now_ms = now.0 * 1000 + now.1 / 1000;
        let held: u64 = admin
            .zcount(format!("{lock_key}:held"), format!("({now_ms}"), "+inf")
            .await
            .expect("ZCOUNT");
        return held > 0;
    }
    let value: Option<String> = admin.get(lock_key).await.expect("GET");
    value.is_some_and(|v| !v.starts_with('~'))
}

pub async fn redis_delete<C: ::redis::aio::ConnectionLike + Clone + Send + Sync>(
    admin: &C,
    prefix: &str,
    key: &str,
) {
    let mut admin = admin.clone();
    let lock_key = format!("{prefix}{{{key}}}");
    let _: i64 = admin
        .del(&[format!("{lock_key}:held"), lock_key])
        .await
        .expect("DEL");
}

pub async fn redis_read<C: ::redis::aio::ConnectionLike + Clone + Send + Sync>(
    admin: &C,
    name: &str,
) -> u64 {
    let mut admin = admin.clone();
    let value: Option<u64> = admin.get(name).await.expect("GET");
    value.unwrap_or(0)
}

pub async fn redis_write<C: ::redis::aio::ConnectionLike + Clone + Send + Sync>(
    admin: &C,
    name: &str,
    value: u64,
) {
    let mut admin = admin.clone();
    let _: () = admin.set(name, value).await.expect("SET");
}

/// A `redis-server` of its own, with or without its default persistence.
pub struct RedisServerFixture<const DEFAULT_PERSISTENCE: bool> {
    server: super::RedisServer,
    admin: ::redis::aio::ConnectionManager,
}

/// A `redis-server` of its own, without persistence.
pub type Redis = RedisServerFixture<false>;
/// Redis with its default persistence (RDB snapshots: `save 3600 1 300 100 60 10000`), as
/// most deployments run it.
pub type RedisDefaultPersistence = RedisServerFixture<true>;

impl<const DEFAULT_PERSISTENCE: bool> Fixture for RedisServerFixture<DEFAULT_PERSISTENCE> {
    const DRIVER: Driver = Driver::Redis;
    async fn start() -> Self {
        let server = if DEFAULT_PERSISTENCE {
            super::RedisServer::start_with(&["--save", "3600 1 300 100 60 10000"]).await
        } else {
            super::RedisServer::start().await
        };
        let admin = server.connection_manager().await;
        RedisServerFixture { server, admin }
    }
    async fn locker(&self, config: Config) -> Locker {
        let conn = self.server.connection_manager().await;
        Locker::builder(config).redis(conn).build().expect("build")
    }
    async fn exists(&self, prefix: &str, key: &str) -> bool {
        redis_exists(&self.admin, prefix, key).await
    }
    async fn delete(&self, prefix: &str, key: &str) {
        redis_delete(&self.admin, prefix, key).await
    }
    async fn stop_server(&mut self) {
        self.server.kill();
    }
    async fn read_counter(&self, name: &str) -> u64 {
        redis_read(&self.admin, name).await
    }
    async fn write_counter(&self, name: &str, value: u64) {
        redis_write(&self.admin, name, value).await
    }
}

impl WithPubsub for Redis {
    fn pubsub_client(&self) -> ::redis::Client {
        ::redis::Client::open(self.server.url()).expect("redis url")
    }
    async fn locker_with_pubsub(&self, config: Config, pubsub: ::redis::Client) -> Locker {
        let conn = self.server.connection_manager().await;
        let builder = Locker::builder(config).redis(conn).redis_pubsub(pubsub);
        builder.build().expect("build")
    }
}

/// A `redis-server` of its own, reached through `MultiplexedConnection`s (no reconnect).
pub struct RedisMultiplexed(Redis);

impl RedisMultiplexed {
    /// redis-rs's default response timeout (500 ms) fails calls on a loaded machine (seen: a
    /// `mutual_exclusion` run beside two `cargo` builds, "timed out"); the fixture gives it
    /// 2 s, as the connection managers of `tests/support` have.
    async fn connection(&self) -> ::redis::aio::MultiplexedConnection {
        let config = ::redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(2)));
        self.0
            .pubsub_client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("multiplexed connection")
    }
}

impl Fixture for RedisMultiplexed {
    const DRIVER: Driver = Driver::Redis;
    async fn start() -> Self {
        RedisMultiplexed(Redis::start().await)
    }
    async fn locker(&self, config: Config) -> Locker {
        let conn = self.connection().await;
        Locker::builder(config).redis(conn).build().expect("build")
    }
    server_side_of!(0);
}

impl WithPubsub for RedisMultiplexed {
    fn pubsub_client(&self) -> ::redis::Client {
        self.0.pubsub_client()
    }
    async fn locker_with_pubsub(&self, config: Config, pubsub: ::redis::Client) -> Locker {
        let conn = self.connection().await;
        let builder = Locker::builder(config).redis(conn).redis_pubsub(pubsub);
        builder.build().expect("build")
    }
}

/// An `etcd` of its own; a lock's keys are `<prefix><key>/<lease>.<n>`, one per acquisition
/// at a time (a name is reused once its last acquisition is gone).
pub struct Etcd {
    server: super::EtcdServer,
    admin: etcd_client::Client,
}

impl Fixture for Etcd {
    const DRIVER: Driver = Driver::Etcd;
    async fn start() -> Self {
        let server = super::EtcdServer::start().await;
        let admin = server.client().await;
        Etcd { server, admin }
    }
    async fn locker(&self, config: Config) -> Locker {
        let client = self.server.client().await;
        Locker::builder(config).etcd(client).build().expect("build")
    }
    async fn exists(&self, prefix: &str, key: &str) -> bool {
        etcd_exists(&self.admin, prefix, key).await
    }
    async fn delete(&self, prefix: &str, key: &str) {
        etcd_delete(&self.admin, prefix, key).await
    }
    async fn stop_server(&mut self) {
        self.server.kill();
    }
    async fn read_counter(&self, name: &str) -> u64 {
        etcd_read(&self.admin, name).await
    }
    async fn write_counter(&self, name: &str, value: u64) {
        etcd_write(&self.admin, name, value).await
    }
}

/// The server-side view of every etcd fixture: a lock's queue is `<prefix><key>/`, held or
/// waited for while any key is in it.
pub async fn etcd_exists(admin: &etcd_client::Client, prefix: &str, key: &str) -> bool {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let mut kv = admin.kv_client();
    let queue = format!("{prefix}{key}/");
    kv.get(queue, Some(options)).await.expect("get").count() > 0
}

pub async fn etcd_delete(admin: &etcd_client::Client, prefix: &str, key: &str) {
    let options = etcd_client::DeleteOptions::new().with_prefix();
    let mut kv = admin.kv_client();
    let queue = format!("{prefix}{key}/");
    kv.delete(queue, Some(options)).await.expect("delete");
}

pub async fn etcd_read(admin: &etcd_client::Client, name: &str) -> u64 {
    let mut kv = admin.kv_client();
    let reply = kv.get(name, None).await.expect("get");
    reply
        .kvs()
        .first()
        .map(|kv| {
            String::from_utf8_lossy(kv.value())
                .parse()
                .expect("a number")
        })
        .unwrap_or(0)
}

pub async fn etcd_write(admin: &etcd_client::Client, name: &str, value: u64) {
    let mut kv = admin.kv_client();
    kv.put(name, value.to_string(), None).await.expect("put");
}

/// A 3-master Redis Cluster of its own.
pub struct RedisCluster {
    cluster: super::RedisCluster,
    admin: ::redis::cluster_async::ClusterConnection,
}

impl Fixture for RedisCluster {
    const DRIVER: Driver = Driver::Redis;
    async fn start() -> Self {
        let cluster = super::RedisCluster::start(3).await;
        let admin = cluster.cluster_connection().await;
        RedisCluster { cluster, admin }
    }
    async fn locker(&self, config: Config) -> Locker {
        let conn = self.cluster.cluster_connection().await;
        Locker::builder(config)
            .redis_cluster(conn)
            .build()
            .expect("build")
    }
    async fn exists(&self, prefix: &str, key: &str) -> bool {
        redis_exists(&self.admin, prefix, key).await
    }
    async fn delete(&self, prefix: &str, key: &str) {
        redis_delete(&self.admin, prefix, key).await
    }
    async fn stop_server(&mut self) {
        self.cluster.kill();
    }
    async fn read_counter(&self, name: &str) -> u64 {
        redis_read(&self.admin, name).await
    }
    async fn write_counter(&self, name: &str, value: u64) {
        redis_write(&self.admin, name, value).await
    }
}

impl WithPubsub for RedisCluster {
    /// Release notifications through one node: cluster PUBLISH reaches every node.
    fn pubsub_client(&self) -> ::redis::Client {
        ::redis::Client::open(self.cluster.urls()[0].clone()).expect("redis url")
    }
    async fn locker_with_pubsub(&self, config: Config, pubsub: ::redis::Client) -> Locker {
        let conn = self.cluster.cluster_connection().await;
        let builder = Locker::builder(config).redis(conn).redis_pubsub(pubsub);
        builder.build().expect("build")
    }
}

impl Proxied for Redis {
    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }
    async fn locker_via(&self, proxy: &Proxy, config: Config) -> Locker {
        let url = format!("redis://{}/", proxy.addr());
        let conn = super::connection_manager_at(&url).await;
        let pubsub = ::redis::Client::open(url).expect("redis url");
        let builder = Locker::builder(config).redis(conn).redis_pubsub(pubsub);
        builder.build().expect("build")
    }
}

impl Proxied for Etcd {
    fn addr(&self) -> SocketAddr {
        self.server.client_addr()
    }
    async fn locker_via(&self, proxy: &Proxy, config: Config) -> Locker {
        let client = super::client_at(&[format!("http://{}", proxy.addr())]).await;
        Locker::builder(config).etcd(client).build().expect("build")
    }
}

impl Redis {
    /// A connection outside every locker, for reading the server's own statistics (the
    /// benchmark counts script calls with `INFO commandstats`).
    pub fn admin(&self) -> ::redis::aio::ConnectionManager {
        self.admin.clone()
    }
}

impl Redis {
    /// A new connection of its own to the server, for baselines that are not dlock.
    pub async fn connection(&self) -> ::redis::aio::ConnectionManager {
        self.server.connection_manager().await
    }

    /// The server's URL, for clients other than dlock (a peer library).
    pub fn url(&self) -> String {
        self.server.url()
    }
}

impl Etcd {
    /// A new client of its own to the server, for baselines that are not dlock.
    pub async fn client(&self) -> etcd_client::Client {
        self.server.client().await
    }

    /// A new client with etcd-client's default options, as a user of another library would
    /// connect: no HTTP/2 keep-alive pings (the fault tests' clients ping every second,
    /// which etcd's server, enforcing at least 5 s between pings, may answer by closing the
    /// connection).
    #[allow(dead_code)]
    pub async fn default_client(&self) -> etcd_client::Client {
        let endpoints = [self.server.endpoint()];
        etcd_client::Client::connect(&endpoints, None)
            .await
            .unwrap_or_else(|e| panic!("connect to etcd at {endpoints:?}: {e}"))
    }

    /// The server's process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.server.pid().expect("the etcd fixture's server runs")
    }
}

/// A PostgreSQL server of its own, with dlock's schema; each locker has a pool of its own.
/// A lock is held while `dlock_locks` has a live holder row (`permits > 0`) under its key.
#[cfg(feature = "postgres")]
pub struct Postgres {
    pub server: super::PostgresServer,
    pub admin: sqlx::PgPool,
    /// The role the lockers connect as (the superuser, or a least-privilege role).
    pub role: String,
}

#[cfg(feature = "postgres")]
impl Postgres {
    /// A server with the schema and the counters' table, lockers connecting as the superuser.
    pub async fn start_as_superuser() -> Postgres {
        let server = super::PostgresServer::start().await;
        let admin = server.pool().await;
        dlock::postgres::migrate(&admin).await.expect("migrate");
        Postgres::with_counters(server, admin).await
    }

    /// A server first migrated by the schema of the first release
    /// (`postgres_schema_v1.sql`, its `dlock_acquire` without `enable_bitmapscan = off`),
    /// then by today's `migrate`, twice: an upgrade in place, checked to have taken.
    pub async fn start_upgraded() -> Postgres {
        let server = super::PostgresServer::start().await;
        let admin = server.pool().await;
        sqlx::raw_sql(include_str!("postgres_schema_v1.sql"))
            .execute(&admin)
            .await
            .expect("the first release's schema");
        for _ in 0..2 {
            dlock::postgres::migrate(&admin).await.expect("migrate");
        }
        let config: Vec<String> = sqlx::query_scalar(
            "SELECT unnest(proconfig) FROM pg_proc WHERE proname = 'dlock_acquire'",
        )
        .fetch_all(&admin)
        .await
        .expect("dlock_acquire's settings");
        assert_eq!(
            config,
            ["enable_bitmapscan=off"],
            "the upgrade did not take"
        );
        Postgres::with_counters(server, admin).await
    }

    async fn with_counters(server: super::PostgresServer, admin: sqlx::PgPool) -> Postgres {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS dlock_test_counters (name text PRIMARY KEY, value bigint NOT NULL)",
        )
        .execute(&admin)
        .await
        .expect("counters table");
        let role = super::postgres_server::SUPERUSER.to_owned();
        Postgres {
            server,
            admin,
            role,
        }
    }

    /// A pool of its own, as the fixture's role.
    pub async fn pool(&self) -> sqlx::PgPool {
        self.server
            .pool_as(&self.role, 10)
            .await
            .expect("connect to postgres")
    }
}

#[cfg(feature = "postgres")]
impl Fixture for Postgres {
    const DRIVER: Driver = Driver::Postgres;
    async fn start() -> Self {
        Postgres::start_as_superuser().await
    }
    async fn locker(&self, config: Config) -> Locker {
        let pool = self.pool().await;
        Locker::builder(config)
            .postgres(pool)
            .build()
            .expect("build")
    }
    async fn exists(&self, prefix: &str, key: &str) -> bool {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM dlock_locks WHERE key = $1 AND permits > 0 AND expires > now())",
        )
        .bind(format!("{prefix}{key}"))
        .fetch_one(&self.admin)
        .await
        .expect("exists")
    }
    async fn delete(&self, prefix: &str, key: &str) {
        sqlx::query("DELETE FROM dlock_locks WHERE key = $1")
            .bind(format!("{prefix}{key}"))
            .execute(&self.admin)
            .await
            .expect("delete");
    }
    async fn stop_server(&mut self) {
        self.server.kill();
    }
    async fn read_counter(&self, name: &str) -> u64 {
        let value: Option<i64> =
            sqlx::query_scalar("SELECT value FROM dlock_test_counters WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.admin)
                .await
                .expect("read counter");
        value.unwrap_or(0) as u64
    }
    async fn write_counter(&self, name: &str, value: u64) {
        sqlx::query(
            "INSERT INTO dlock_test_counters (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value as i64)
        .execute(&self.admin)
        .await
        .expect("write counter");
    }
}

/// Through the proxy: a small pool (4 connections, 1 s to acquire one) whose connections,
/// the listening one included, all reach the server through `proxy`.
#[cfg(feature = "postgres")]
impl Proxied for Postgres {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.server.port()))
    }
    async fn locker_via(&self, proxy: &Proxy, config: Config) -> Locker {
        let options = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(proxy.addr().port())
            .username(&self.role)
            .database("postgres");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(1))
            .connect_with(options)
            .await
            .expect("connect to postgres through the proxy");
        Locker::builder(config)
            .postgres(pool)
            .build()
            .expect("build")
    }
}

/// [`Postgres`] on a schema upgraded in place from the first release's
/// ([`Postgres::start_upgraded`]).
#[cfg(feature = "postgres")]
pub struct PostgresUpgraded(pub Postgres);

#[cfg(feature = "postgres")]
impl Fixture for PostgresUpgraded {
    const DRIVER: Driver = Driver::Postgres;
    async fn start() -> Self {
        PostgresUpgraded(Postgres::start_upgraded().await)
    }
    async fn locker(&self, config: Config) -> Locker {
        self.0.locker(config).await
    }
    server_side_of!(0);
}

/// The README's GRANT lines for the lockers' role (`dlock_app` there): rights on dlock's
/// table, sequence and functions only.
#[cfg(feature = "postgres")]
pub const POSTGRES_GRANTS: &str = "
CREATE ROLE dlock_app LOGIN;
REVOKE EXECUTE ON FUNCTION dlock_acquire, dlock_abandon FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON dlock_locks TO dlock_app;
GRANT USAGE ON SEQUENCE dlock_fence TO dlock_app;
GRANT EXECUTE ON FUNCTION dlock_acquire, dlock_abandon TO dlock_app;
";

/// [`Postgres`] whose lockers connect as `dlock_app`, a role with [`POSTGRES_GRANTS`] only
/// (the schema is migrated by the superuser).
#[cfg(feature = "postgres")]
pub struct PostgresLeastPrivilege(pub Postgres);

#[cfg(feature = "postgres")]
impl Fixture for PostgresLeastPrivilege {
    const DRIVER: Driver = Driver::Postgres;
    async fn start() -> Self {
        let mut fx = Postgres::start_as_superuser().await;
        sqlx::raw_sql(POSTGRES_GRANTS)
            .execute(&fx.admin)
            .await
            .expect("the README's GRANT lines");
        fx.role = "dlock_app".to_owned();
        PostgresLeastPrivilege(fx)
    }
    async fn locker(&self, config: Config) -> Locker {
        self.0.locker(config).await
    }
    server_side_of!(0);
}

/// [`Postgres`] behind a PgBouncer of its own in transaction pooling mode
/// (`tests/support/pgbouncer.rs`): each locker's pool (sqlx's default options) connects
/// through PgBouncer, so consecutive statements of one client connection may run on
/// different server connections. Its lockers do not `LISTEN` ([`Listen::Off`]): nothing of
/// theirs reaches PostgreSQL but through PgBouncer. The server-side view (`exists`,
/// counters) stays direct.
///
/// [`Listen::Off`]: dlock::postgres::Listen::Off
#[cfg(feature = "postgres")]
pub struct PostgresThroughPgBouncer {
    pub bouncer: super::PgBouncer,
    pub pg: Postgres,
}

#[cfg(feature = "postgres")]
impl PostgresThroughPgBouncer {
    /// A pool of its own through PgBouncer, as the fixture's role, with sqlx's defaults.
    pub async fn pool(&self) -> sqlx::PgPool {
        self.bouncer
            .pool_as(&self.pg.role, 10)
            .await
            .expect("connect to postgres through pgbouncer")
    }

    /// Options that reach PostgreSQL itself, bypassing PgBouncer.
    pub fn direct_options(&self) -> sqlx::postgres::PgConnectOptions {
        sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.pg.server.port())
            .username(&self.pg.role)
            .database("postgres")
    }

    /// A locker whose pool goes through PgBouncer, listening as `listen` says.
    pub async fn locker_listening(
        &self,
        config: Config,
        listen: dlock::postgres::Listen,
    ) -> Locker {
        Locker::builder(config)
            .postgres(self.pool().await)
            .postgres_listen(listen)
            .build()
            .expect("build")
    }
}

#[cfg(feature = "postgres")]
impl Fixture for PostgresThroughPgBouncer {
    const DRIVER: Driver = Driver::Postgres;
    async fn start() -> Self {
        let pg = Postgres::start_as_superuser().await;
        let bouncer = super::PgBouncer::start(&pg.server, &[&pg.role]).await;
        PostgresThroughPgBouncer { bouncer, pg }
    }
    async fn locker(&self, config: Config) -> Locker {
        self.locker_listening(config, dlock::postgres::Listen::Off)
            .await
    }
    // `stop_server` kills PostgreSQL behind PgBouncer, which keeps running.
    server_side_of!(pg);
}

/// [`Postgres`] whose lockers send prepared statements
/// (`LockerBuilder::postgres_prepared_statements(true)`), straight to the server.
#[cfg(feature = "postgres")]
pub struct PostgresPrepared(pub Postgres);

#[cfg(feature = "postgres")]
impl Fixture for PostgresPrepared {
    const DRIVER: Driver = Driver::Postgres;
    async fn start() -> Self {
        PostgresPrepared(Postgres::start_as_superuser().await)
    }
    async fn locker(&self, config: Config) -> Locker {
        Locker::builder(config)
            .postgres(self.0.pool().await)
            .postgres_prepared_statements(true)
            .build()
            .expect("build")
    }
    server_side_of!(0);
}
