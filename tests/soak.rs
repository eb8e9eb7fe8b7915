//! No growth: many distinct keys locked and released, and many permits of shared semaphores
//! taken and released (some cancelled, some timed out, some lost), leave the server's keys, etcd's leases, Redis's subscribed channels, the in-process
//! store's map and the runtime's live tasks where they started, allowing for the documented
//! expiry of release tombstones (at most the call timeout).
//!
//! `DLOCK_SOAK_KEYS` sets the number of distinct keys per backend (default 100,000).

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker, MemoryStore};
use tokio::time::{sleep, timeout, Instant};

const TASKS: usize = 32;
/// Long enough that a client starved of CPU for a second (two soaks run at once, see
/// scripts/test.sh) does not lose a lock it holds, and that a server stalled by a loaded
/// machine answers an attempt within its TTL: loss and latency are not what this test is
/// about. (At 5 s, with a second test suite running beside, PostgreSQL once left an acquire
/// unanswered for 4.5 s, the attempt's bound, and the lock failed.)
const TTL: Duration = Duration::from_secs(10);

fn keys() -> usize {
    std::env::var("DLOCK_SOAK_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

fn config(driver: Driver) -> Config {
    Config {
        driver,
        prefix: "soak:".into(),
        default_ttl: TTL,
        retry_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

/// What a backend leaves behind, as its server (or store) reports it.
trait Residue {
    /// Named counts that must come back to their starting values.
    fn counts(&self) -> impl Future<Output = Vec<(&'static str, u64)>> + Send;
    /// Deletes the lock of `key` behind its holder's back.
    fn delete(&self, key: &str) -> impl Future<Output = ()> + Send;
}

/// What one churn takes: locks, or permits of semaphores.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// One-off locks, a distinct key each.
    Locks,
    /// Permits of 16 semaphores of 3 shared by every task; the lost ones on a semaphore of
    /// their own each, deleted at the end.
    Semaphores,
}

impl Kind {
    /// Where cycle `i` takes its hold, and how many permits that name has.
    fn name(self, i: usize, lost: bool) -> (String, u32) {
        match self {
            Kind::Locks => (format!("order:{i}"), 1),
            Kind::Semaphores if lost => (format!("lost:{i}"), 3),
            Kind::Semaphores => (format!("sem:{}", i % 16), 3),
        }
    }
}

/// Runs `total` cycles over `TASKS` tasks; every 10th also has a waiter that times out (a
/// lock's always does), every 20th acquisition is cancelled midway, every 50th is lost
/// (deleted behind its back at the end). Returns how many cycles ran.
async fn churn<R: Residue + Sync>(locker: &Locker, residue: &R, total: usize, kind: Kind) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let work = (0..TASKS).map(|_| {
        let (locker, next, ran) = (locker.clone(), next.clone(), ran.clone());
        async move {
            let mut lost = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return lost;
                }
                ran.fetch_add(1, Ordering::Relaxed);
                let (key, permits) = kind.name(i, i % 50 == 11);
                let take = |options: LockOptions| {
                    let semaphore = locker.semaphore(key.clone(), permits);
                    let locker = locker.clone();
                    let key = key.clone();
                    async move {
                        if permits == 1 {
                            locker.lock_with(&key, options).await
                        } else {
                            semaphore.acquire_with(options).await
                        }
                    }
                };
                if i % 20 == 7 {
                    // Cancelled at a random point of the acquire.
                    let cut = Duration::from_micros(fastrand::u64(0..2_000));
                    let _ = timeout(cut, take(LockOptions::new())).await;
                    continue;
                }
                let guard = take(LockOptions::new()).await.expect("lock");
                if i % 10 == 3 {
                    let short = LockOptions::new().wait_timeout(Duration::from_millis(5));
                    match take(short).await {
                        Err(Error::Timeout { .. }) => {}
                        // A semaphore may have had a permit left.
                        Ok(extra) if permits > 1 => extra.release().await.expect("release"),
                        waited => panic!("{waited:?}"),
                    }
                }
                if i % 50 == 11 {
                    lost.push((key, guard)); // lost later, behind its back
                    continue;
                }
                guard.release().await.expect("release");
            }
        }
    });
    let lost: Vec<_> = futures_util::future::join_all(work)
        .await
        .into_iter()
        .flatten()
        .collect();
    for (key, _) in &lost {
        residue.delete(key).await;
    }
    for (_, guard) in lost {
        timeout(TTL, guard.lost().cancelled())
            .await
            .expect("lost() did not fire for a deleted key");
        assert!(matches!(
            guard.release().await,
            Err(Error::OwnershipLost { .. })
        ));
    }
    ran.load(Ordering::Relaxed)
}

/// The semaphore soaks on etcd and PostgreSQL run a quarter of the cycles: every cycle there
/// waits for fsyncs, and 100,000 took 280 s (etcd) and 135 s (PostgreSQL) beside the other
/// soaks, more than the CI's budget. `DLOCK_SOAK_KEYS=400000` runs 100,000 of them.
fn fsynced_cycles(kind: Kind) -> usize {
    match kind {
        Kind::Locks => keys(),
        Kind::Semaphores => keys() / 4,
    }
}

/// How long what a churn leaves may take to go: release tombstones expire within the call
/// timeout, and the bar an undone attempt leaves (Redis) within its TTL.
fn settling() -> Duration {
    dlock::DEFAULT_CALL_TIMEOUT.max(TTL)
}

async fn no_growth<R: Residue + Sync>(locker: Locker, residue: R, kind: Kind, total: usize) {
    let initial = residue.counts().await;
    // The counts and the live-task count are taken after a warm-up: the Redis and etcd
    // clients start some connection tasks of their own on first use, and an etcd locker
    // holds its session's lease while it lives (one, whatever the number of keys).
    churn(&locker, &residue, 200, kind).await;
    sleep(settling() + Duration::from_millis(500)).await;
    let before = residue.counts().await;
    let runtime = tokio::runtime::Handle::current().metrics();
    let tasks_before = runtime.num_alive_tasks();
    let started = Instant::now();
    let ran = churn(&locker, &residue, total, kind).await;
    let churned = started.elapsed();
    assert_eq!(
        ran, total,
        "the churn stopped after {ran} of {total} cycles"
    );
    // Tombstones expire within the call timeout; interrupted acquires are undone meanwhile.
    let deadline = Instant::now() + settling() + Duration::from_secs(3);
    loop {
        let now = residue.counts().await;
        if now == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {} keys ({churned:?}), the backend holds {now:?}; it started with {before:?}",
            keys()
        );
        sleep(Duration::from_millis(100)).await;
    }
    locker.close().await.expect("close");
    // Closed, the locker leaves nothing at all (etcd: its session's lease is revoked).
    let after = residue.counts().await;
    assert_eq!(after, initial, "after close() the backend holds {after:?}");
    // The clients' own connection and stream tasks end a few seconds after their handles
    // drop (seen: etcd-client's, up to ~4 s); dlock's own tasks are gone when close() returns.
    let deadline = Instant::now() + dlock::DEFAULT_CALL_TIMEOUT + Duration::from_secs(2);
    while runtime.num_alive_tasks() > tasks_before {
        assert!(
            Instant::now() < deadline,
            "{} live tasks after close(), {tasks_before} before the churn",
            runtime.num_alive_tasks()
        );
        sleep(Duration::from_millis(100)).await;
    }
    eprintln!("soak: {total} {kind:?} cycles in {churned:?}, back to {before:?}");
}

struct Memory(MemoryStore);

impl Residue for Memory {
    async fn counts(&self) -> Vec<(&'static str, u64)> {
        // The store sweeps expired entries at its next insert once a second has passed.
        vec![("entries", self.0.entry_count() as u64)]
    }
    async fn delete(&self, key: &str) {
        self.0.remove(&format!("soak:{key}"));
    }
}

async fn memory_no_growth(kind: Kind) {
    let store = MemoryStore::new();
    let locker = Locker::builder(config(Driver::Memory))
        .memory(store.clone())
        .build()
        .expect("build");
    no_growth(locker, Memory(store), kind, keys()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_does_not_grow() {
    memory_no_growth(Kind::Locks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_semaphores_do_not_grow() {
    memory_no_growth(Kind::Semaphores).await;
}

struct Redis(redis::aio::ConnectionManager);

impl Residue for Redis {
    async fn counts(&self) -> Vec<(&'static str, u64)> {
        let mut conn = self.0.clone();
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut conn)
            .await
            .unwrap();
        vec![("keys", keys), ("channels", channels.len() as u64)]
    }
    async fn delete(&self, key: &str) {
        let mut conn = self.0.clone();
        // A lock's key, or a semaphore's hash, holders and line.
        let name = format!("soak:{{{key}}}");
        let _: () = redis::cmd("DEL")
            .arg(vec![format!("{name}:held"), format!("{name}:wait"), name])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Redis with its default persistence (RDB snapshots), as users run it.
async fn redis_no_growth(kind: Kind) {
    let server = support::RedisServer::start_with(&["--save", "3600 1 300 100 60 10000"]).await;
    let locker = Locker::builder(config(Driver::Redis))
        .redis(server.connection_manager().await)
        .redis_pubsub(redis::Client::open(server.url()).unwrap())
        .build()
        .expect("build");
    let residue = Redis(server.connection_manager().await);
    no_growth(locker, residue, kind, keys()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_does_not_grow() {
    redis_no_growth(Kind::Locks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_semaphores_do_not_grow() {
    redis_no_growth(Kind::Semaphores).await;
}

struct Etcd(etcd_client::Client);

impl Residue for Etcd {
    async fn counts(&self) -> Vec<(&'static str, u64)> {
        let mut client = self.0.clone();
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let keys = client.get("soak:", Some(options)).await.unwrap().count() as u64;
        let leases = client.leases().await.unwrap().leases().len() as u64;
        vec![("keys", keys), ("leases", leases)]
    }
    async fn delete(&self, key: &str) {
        let mut client = self.0.clone();
        let options = etcd_client::DeleteOptions::new().with_prefix();
        client
            .delete(format!("soak:{key}/"), Some(options))
            .await
            .unwrap();
    }
}

async fn etcd_no_growth(kind: Kind) {
    let server = support::EtcdServer::start().await;
    let locker = Locker::builder(config(Driver::Etcd))
        .etcd(server.client().await)
        .build()
        .expect("build");
    let cycles = fsynced_cycles(kind);
    no_growth(locker, Etcd(server.client().await), kind, cycles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_does_not_grow() {
    etcd_no_growth(Kind::Locks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_semaphores_do_not_grow() {
    etcd_no_growth(Kind::Semaphores).await;
}

/// PostgreSQL: the rows of `dlock_locks` (holders, and the bars of undone attempts), and the
/// server's connections of the locker's pool beyond what the pool counts as its own (a
/// listening or undo connection that escaped the pool would show there).
#[cfg(feature = "postgres")]
struct Postgres {
    admin: sqlx::PgPool,
    /// The locker's pool, whose connections carry the application name `dlock-soak`.
    pool: sqlx::PgPool,
}

#[cfg(feature = "postgres")]
impl Residue for Postgres {
    async fn counts(&self) -> Vec<(&'static str, u64)> {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM dlock_locks")
            .fetch_one(&self.admin)
            .await
            .unwrap();
        let connections: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dlock-soak'",
        )
        .fetch_one(&self.admin)
        .await
        .unwrap();
        let beyond = (connections - i64::from(self.pool.size())).max(0);
        vec![
            ("rows", rows as u64),
            ("connections beyond the pool", beyond as u64),
        ]
    }
    async fn delete(&self, key: &str) {
        sqlx::query("DELETE FROM dlock_locks WHERE key = $1")
            .bind(format!("soak:{key}"))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

#[cfg(feature = "postgres")]
async fn postgres_no_growth(kind: Kind) {
    let server = support::PostgresServer::start().await;
    let admin = server.pool().await;
    dlock::postgres::migrate(&admin).await.expect("migrate");
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(server.port())
        .username("postgres")
        .database("postgres")
        .application_name("dlock-soak");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .expect("connect");
    let locker = Locker::builder(config(Driver::Postgres))
        .postgres(pool.clone())
        .build()
        .expect("build");
    let cycles = fsynced_cycles(kind);
    no_growth(locker, Postgres { admin, pool }, kind, cycles).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_does_not_grow() {
    postgres_no_growth(Kind::Locks).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_semaphores_do_not_grow() {
    postgres_no_growth(Kind::Semaphores).await;
}
