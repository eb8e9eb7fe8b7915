//! One behaviour suite, written once and run against every backend on a real server
//! (the in-process store, `redis-server`, `etcd`), started by `tests/support`.
//!
//! Each backend supplies a [`Fixture`]: lockers with their own connections, plus the
//! server-side view a test needs (does the key exist, delete it behind the holder's back,
//! take the server down, a shared counter for the mutual-exclusion check).

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker};
use tokio::time::{sleep, timeout, Instant};

/// What the suite needs from one backend.
pub trait Fixture: Send + Sync + Sized + 'static {
    const DRIVER: Driver;
    fn start() -> impl Future<Output = Self> + Send;
    /// A locker with a connection of its own.
    fn locker(&self, config: Config) -> impl Future<Output = Locker> + Send;
    /// Whether any server-side key of the lock `prefix + key` exists (holder or waiter).
    fn exists(&self, prefix: &str, key: &str) -> impl Future<Output = bool> + Send;
    /// Deletes the lock's keys behind the holder's back, as an operator would.
    fn delete(&self, prefix: &str, key: &str) -> impl Future<Output = ()> + Send;
    /// Takes the server down (killed, or offline).
    fn stop_server(&mut self) -> impl Future<Output = ()> + Send;
    /// A plain read and a plain write of a counter on the server: together, not atomic.
    fn read_counter(&self, name: &str) -> impl Future<Output = u64> + Send;
    fn write_counter(&self, name: &str, value: u64) -> impl Future<Output = ()> + Send;
}

fn config(prefix: &str, ttl: Duration) -> Config {
    Config {
        driver: dlock::Driver::Memory, // replaced by the fixture's driver
        prefix: prefix.to_owned(),
        default_ttl: ttl,
        retry_interval: Duration::from_millis(20),
    }
}

async fn locker<F: Fixture>(fx: &F, prefix: &str, ttl: Duration) -> Locker {
    let mut config = config(prefix, ttl);
    config.driver = F::DRIVER;
    fx.locker(config).await
}

/// 16 tasks over 2 lockers with separate connections, 200 non-atomic increments each.
async fn mutual_exclusion<F: Fixture>(fx: F) {
    let fx = Arc::new(fx);
    let lockers = [
        locker(&*fx, "mx:", Duration::from_secs(5)).await,
        locker(&*fx, "mx:", Duration::from_secs(5)).await,
    ];
    fx.write_counter("mx:counter", 0).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (fx, locker) = (fx.clone(), lockers[i % 2].clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                let guard = locker.lock("counter").await.expect("lock");
                let value = fx.read_counter("mx:counter").await;
                tokio::task::yield_now().await;
                fx.write_counter("mx:counter", value + 1).await;
                guard.release().await.expect("release while held");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    assert_eq!(
        fx.read_counter("mx:counter").await,
        16 * 200,
        "increments were lost: two tasks were in the critical section at once"
    );
}

/// A 1 s TTL lock stays held for 5 s through renewal.
async fn renewal_keeps_a_short_ttl_lock<F: Fixture>(fx: F) {
    let fx = &fx;
    let holder = locker(fx, "renew:", Duration::from_secs(1)).await;
    let rival = locker(fx, "renew:", Duration::from_secs(1)).await;
    let guard = holder.lock("k").await.expect("lock");
    let lost = guard.lost();
    for _ in 0..10 {
        sleep(Duration::from_millis(500)).await;
        assert!(
            !lost.is_cancelled(),
            "lost() fired while renewal should keep the lock"
        );
        assert!(
            rival.try_lock("k").await.expect("try_lock").is_none(),
            "a rival got a lock that renewal should have kept"
        );
    }
    guard.release().await.expect("release after 5 s of renewal");
}

/// The key deleted behind the holder's back: `lost()` within TTL/3 + 200 ms, and
/// `release()` reports `OwnershipLost`.
async fn deleted_key_is_reported_as_lost<F: Fixture>(fx: F) {
    let fx = &fx;
    let ttl = Duration::from_secs(1);
    let holder = locker(fx, "del:", ttl).await;
    let guard = holder.lock("k").await.expect("lock");
    let lost = guard.lost();
    fx.delete("del:", "k").await;
    let deleted_at = Instant::now();
    timeout(ttl / 3 + Duration::from_millis(200), lost.cancelled())
        .await
        .expect("lost() did not fire within TTL/3 + 200 ms of the deletion");
    assert!(guard.is_lost());
    let waited = deleted_at.elapsed();
    match guard.release().await {
        Err(Error::OwnershipLost { key }) => assert_eq!(key, "k"),
        other => {
            panic!("release after deletion: expected OwnershipLost, got {other:?} ({waited:?})")
        }
    }
}

/// The server killed while a lock is held: `lost()` fires before the TTL has elapsed.
async fn server_down_is_reported_before_the_ttl<F: Fixture>(mut fx: F) {
    let ttl = Duration::from_secs(2);
    let holder = locker(&fx, "down:", ttl).await;
    let guard = holder.lock("k").await.expect("lock");
    let lost = guard.lost();
    sleep(Duration::from_millis(300)).await;
    fx.stop_server().await;
    let stopped_at = Instant::now();
    timeout(ttl, lost.cancelled())
        .await
        .expect("lost() did not fire within the TTL after the server went down");
    let fired_after = stopped_at.elapsed();
    assert!(
        fired_after < ttl,
        "lost() fired {fired_after:?} after the outage; TTL is {ttl:?}"
    );
    assert!(
        guard.release().await.is_err(),
        "release with the server down must report an error"
    );
}

/// Dropping a guard frees the key long before its TTL.
async fn drop_releases_promptly<F: Fixture>(fx: F) {
    let fx = &fx;
    let holder = locker(fx, "drop:", Duration::from_secs(30)).await;
    let guard = holder.lock("k").await.expect("lock");
    assert!(
        fx.exists("drop:", "k").await,
        "the key must exist while held"
    );
    drop(guard);
    let deadline = Instant::now() + Duration::from_millis(200);
    while fx.exists("drop:", "k").await {
        assert!(
            Instant::now() < deadline,
            "the key was still there 200 ms after drop"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

/// A stale holder's release never deletes the next holder's key.
async fn stale_release_never_deletes_another_holders_key<F: Fixture>(fx: F) {
    let fx = &fx;
    let ttl = Duration::from_secs(10);
    let first = locker(fx, "stale:", ttl).await;
    let second = locker(fx, "stale:", ttl).await;
    let stale = first.lock("k").await.expect("first lock");
    fx.delete("stale:", "k").await;
    let current = second.lock("k").await.expect("second lock after deletion");
    assert!(
        stale.release().await.is_err(),
        "a stale release must not succeed"
    );
    assert!(
        fx.exists("stale:", "k").await,
        "the stale release deleted the new holder's key"
    );
    assert!(
        first.try_lock("k").await.expect("try_lock").is_none(),
        "the new holder's lock was freed by a stale release"
    );
    current
        .release()
        .await
        .expect("the new holder releases normally");
}

/// Fencing tokens strictly increase across holders and lockers.
async fn fencing_tokens_strictly_increase<F: Fixture>(fx: F) {
    let fx = &fx;
    let lockers = [
        locker(fx, "fence:", Duration::from_secs(5)).await,
        locker(fx, "fence:", Duration::from_secs(5)).await,
    ];
    let mut last = 0;
    for i in 0..20 {
        let guard = lockers[i % 2].lock("k").await.expect("lock");
        let token = guard.fencing_token();
        assert!(token > last, "fencing token went from {last} to {token}");
        last = token;
        guard.release().await.expect("release");
    }
}

/// `try_lock` on a held key answers `None` without waiting.
async fn try_lock_on_a_held_key_returns_none<F: Fixture>(fx: F) {
    let fx = &fx;
    let a = locker(fx, "try:", Duration::from_secs(5)).await;
    let b = locker(fx, "try:", Duration::from_secs(5)).await;
    let _held = a.lock("k").await.expect("lock");
    let attempt = timeout(Duration::from_secs(2), b.try_lock("k"))
        .await
        .expect("try_lock waited instead of answering at once");
    assert!(
        attempt.expect("try_lock").is_none(),
        "try_lock got a held lock"
    );
    let same_locker = a.try_lock("k").await.expect("try_lock");
    assert!(
        same_locker.is_none(),
        "try_lock through the holder's own locker got it too"
    );
}

/// `wait_timeout` ends a wait with `Timeout`, and a release lets the next waiter in.
async fn wait_timeout_returns_timeout<F: Fixture>(fx: F) {
    let fx = &fx;
    let a = locker(fx, "wait:", Duration::from_secs(5)).await;
    let b = locker(fx, "wait:", Duration::from_secs(5)).await;
    let held = a.lock("k").await.expect("lock");
    let options = LockOptions::new().wait_timeout(Duration::from_millis(300));
    match b.lock_with("k", options).await {
        Err(Error::Timeout { key, waited }) => {
            assert_eq!(key, "k");
            assert!(
                waited >= Duration::from_millis(300),
                "timed out early: {waited:?}"
            );
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            b.lock_with(
                "k",
                LockOptions::new().wait_timeout(Duration::from_secs(10)),
            )
            .await
        }
    });
    sleep(Duration::from_millis(100)).await;
    held.release().await.expect("release");
    let guard = waiter
        .await
        .unwrap()
        .expect("the waiter gets the lock after the release");
    guard.release().await.expect("release");
}

/// 1,000 acquire futures dropped at random points leave no key behind.
async fn cancelled_acquires_leave_no_key<F: Fixture>(fx: F) {
    let fx = &fx;
    let lockers = [
        locker(fx, "cancel:", Duration::from_secs(30)).await,
        locker(fx, "cancel:", Duration::from_secs(30)).await,
    ];
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let locker = lockers[i % 2].clone();
        let key = keys[i % keys.len()].clone();
        let cut = Duration::from_micros(fastrand::u64(0..3000));
        tasks.push(tokio::spawn(async move {
            // An acquire that wins before the cut returns a guard, dropped at once.
            let _ = timeout(cut, locker.lock(&key)).await;
        }));
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    sleep(Duration::from_millis(500)).await;
    for key in &keys {
        assert!(
            !fx.exists("cancel:", key).await,
            "key {key} left behind by a cancelled acquire"
        );
    }
}

/// The Go-style layer: `LockAlreadyHeld`, `LockNotHeld`, `OwnershipLost`.
async fn compat_errors_match_go<F: Fixture>(fx: F) {
    let fx = &fx;
    let locker = locker(fx, "go:", Duration::from_secs(1)).await;
    let go = locker.compat();
    go.lock("k").await.expect("lock");
    assert!(matches!(
        go.lock("k").await,
        Err(Error::LockAlreadyHeld { .. })
    ));
    assert!(matches!(
        go.try_lock("k").await,
        Err(Error::LockAlreadyHeld { .. })
    ));
    go.unlock("k").await.expect("unlock");
    assert!(matches!(
        go.unlock("k").await,
        Err(Error::LockNotHeld { .. })
    ));
    assert!(matches!(
        go.unlock("never").await,
        Err(Error::LockNotHeld { .. })
    ));

    let other = locker_with_same_backend(fx, "go:").await.compat();
    assert!(go.try_lock("k").await.expect("try_lock"));
    assert!(
        !other.try_lock("k").await.expect("try_lock"),
        "two lockers both got the lock"
    );

    fx.delete("go:", "k").await;
    sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        go.unlock("k").await,
        Err(Error::OwnershipLost { .. })
    ));
}

async fn locker_with_same_backend<F: Fixture>(fx: &F, prefix: &str) -> Locker {
    locker(fx, prefix, Duration::from_secs(1)).await
}

/// `close()` releases everything and refuses later calls.
async fn close_releases_everything<F: Fixture>(fx: F) {
    let fx = &fx;
    let locker = locker(fx, "close:", Duration::from_secs(30)).await;
    let guard = locker.lock("a").await.expect("lock a");
    locker.compat().lock("b").await.expect("lock b");
    locker.close().await.expect("close");
    assert!(!fx.exists("close:", "a").await, "close() left guard key a");
    assert!(!fx.exists("close:", "b").await, "close() left compat key b");
    assert!(matches!(locker.lock("c").await, Err(Error::Closed)));
    assert!(matches!(locker.try_lock("c").await, Err(Error::Closed)));
    assert!(matches!(
        locker.compat().lock("c").await,
        Err(Error::Closed)
    ));
    assert!(
        guard.release().await.is_ok(),
        "a guard released by close() reports success"
    );
    locker.close().await.expect("close is idempotent");
}

/// Runs every test of the suite for one backend, each on a fresh fixture.
macro_rules! conformance {
    ($module:ident, $fixture:ty) => {
        conformance!(@tests $module, $fixture,
            mutual_exclusion,
            renewal_keeps_a_short_ttl_lock,
            deleted_key_is_reported_as_lost,
            server_down_is_reported_before_the_ttl,
            drop_releases_promptly,
            stale_release_never_deletes_another_holders_key,
            fencing_tokens_strictly_increase,
            try_lock_on_a_held_key_returns_none,
            wait_timeout_returns_timeout,
            cancelled_acquires_leave_no_key,
            compat_errors_match_go,
            close_releases_everything
        );
    };
    (@tests $module:ident, $fixture:ty, $($test:ident),+) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(<$fixture>::start().await).await
                }
            )+
        }
    };
}

conformance!(memory_backend, fixtures::Memory);
conformance!(redis_backend, fixtures::Redis);
conformance!(etcd_backend, fixtures::Etcd);
conformance!(redis_cluster_backend, fixtures::RedisCluster);

/// On a 3-master cluster, locks spread over every master (the `{key}` hash tag puts each
/// lock's keys in the slot of its name, not in one slot for all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_spreads_locks_over_all_masters() {
    let cluster = support::RedisCluster::start(3).await;
    let mut config = config("spread:", Duration::from_secs(10));
    config.driver = Driver::Redis;
    let locker = Locker::builder(config)
        .redis_cluster(cluster.cluster_connection().await)
        .build()
        .expect("build");
    let mut guards = Vec::new();
    for i in 0..30 {
        guards.push(locker.lock(&format!("job-{i}")).await.expect("lock"));
    }
    for (n, node) in cluster.nodes().iter().enumerate() {
        let mut conn = node.connection_manager().await;
        let keys: i64 = ::redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .expect("DBSIZE");
        assert!(keys > 0, "master {n} holds no lock: locks are not spread");
    }
    for guard in guards {
        guard.release().await.expect("release");
    }
}

mod fixtures {
    use super::*;
    use ::redis::AsyncCommands;

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
    /// is `<prefix>{<key>}`, held while its value is not a release tombstone (`~<token>`).
    async fn redis_exists<C: ::redis::aio::ConnectionLike + Clone + Send + Sync>(
        admin: &C,
        prefix: &str,
        key: &str,
    ) -> bool {
        let mut admin = admin.clone();
        let value: Option<String> = admin.get(format!("{prefix}{{{key}}}")).await.expect("GET");
        value.is_some_and(|v| !v.starts_with('~'))
    }

    async fn redis_delete<C: ::redis::aio::ConnectionLike + Clone + Send + Sync>(
        admin: &C,
        prefix: &str,
        key: &str,
    ) {
        let mut admin = admin.clone();
        let _: i64 = admin.del(format!("{prefix}{{{key}}}")).await.expect("DEL");
    }

    async fn redis_read<C: ::redis::aio::ConnectionLike + Clone + Send + Sync>(
        admin: &C,
        name: &str,
    ) -> u64 {
        let mut admin = admin.clone();
        let value: Option<u64> = admin.get(name).await.expect("GET");
        value.unwrap_or(0)
    }

    async fn redis_write<C: ::redis::aio::ConnectionLike + Clone + Send + Sync>(
        admin: &C,
        name: &str,
        value: u64,
    ) {
        let mut admin = admin.clone();
        let _: () = admin.set(name, value).await.expect("SET");
    }

    /// A `redis-server` of its own.
    pub struct Redis {
        server: support::RedisServer,
        admin: ::redis::aio::ConnectionManager,
    }

    impl Fixture for Redis {
        const DRIVER: Driver = Driver::Redis;
        async fn start() -> Self {
            let server = support::RedisServer::start().await;
            let admin = server.connection_manager().await;
            Redis { server, admin }
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

    /// An `etcd` of its own; a lock's keys are `<prefix><key>/<ulid>`, one per acquisition.
    pub struct Etcd {
        server: support::EtcdServer,
        admin: etcd_client::Client,
    }

    impl Etcd {
        fn queue(prefix: &str, key: &str) -> String {
            format!("{prefix}{key}/")
        }
    }

    impl Fixture for Etcd {
        const DRIVER: Driver = Driver::Etcd;
        async fn start() -> Self {
            let server = support::EtcdServer::start().await;
            let admin = server.client().await;
            Etcd { server, admin }
        }
        async fn locker(&self, config: Config) -> Locker {
            let client = self.server.client().await;
            Locker::builder(config).etcd(client).build().expect("build")
        }
        async fn exists(&self, prefix: &str, key: &str) -> bool {
            let options = etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only();
            let mut kv = self.admin.kv_client();
            let reply = kv
                .get(Self::queue(prefix, key), Some(options))
                .await
                .expect("get");
            reply.count() > 0
        }
        async fn delete(&self, prefix: &str, key: &str) {
            let options = etcd_client::DeleteOptions::new().with_prefix();
            let mut kv = self.admin.kv_client();
            kv.delete(Self::queue(prefix, key), Some(options))
                .await
                .expect("delete");
        }
        async fn stop_server(&mut self) {
            self.server.kill();
        }
        async fn read_counter(&self, name: &str) -> u64 {
            let mut kv = self.admin.kv_client();
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
        async fn write_counter(&self, name: &str, value: u64) {
            let mut kv = self.admin.kv_client();
            kv.put(name, value.to_string(), None).await.expect("put");
        }
    }

    /// A 3-master Redis Cluster of its own.
    pub struct RedisCluster {
        cluster: support::RedisCluster,
        admin: ::redis::cluster_async::ClusterConnection,
    }

    impl Fixture for RedisCluster {
        const DRIVER: Driver = Driver::Redis;
        async fn start() -> Self {
            let cluster = support::RedisCluster::start(3).await;
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
}
