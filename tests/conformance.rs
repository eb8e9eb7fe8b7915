//! One behaviour suite, written once (`dlock::testing`, the suite any backend can run) and
//! run here against every backend of this crate on a real server (the in-process store,
//! `redis-server` through each redis-rs connection kind we claim, with and without its
//! default persistence, Redis Cluster, `etcd`),
//! started by `tests/support`.
//!
//! Each backend supplies a [`Fixture`]: lockers with their own connections, plus the
//! server-side view a test needs (does the key exist, delete it behind the holder's back,
//! take the server down, a shared counter for the mutual-exclusion check).

mod support;

use std::time::Duration;

use dlock::testing::conformance;
use dlock::{Config, Driver, Locker};
use tokio::time::Instant;

use support::fixtures::{self, WithPubsub};

conformance!(memory_backend, fixtures::Memory);
conformance!(redis_backend, fixtures::Redis);
conformance!(
    redis_default_persistence_backend,
    fixtures::RedisDefaultPersistence
);
conformance!(redis_multiplexed_backend, fixtures::RedisMultiplexed);
conformance!(etcd_backend, fixtures::Etcd);
conformance!(redis_cluster_backend, fixtures::RedisCluster);

fn config(prefix: &str) -> Config {
    dlock::testing::config(Driver::Redis, prefix, Duration::from_secs(10))
}

/// On a 3-master cluster, locks spread over every master (the `{key}` hash tag puts each
/// lock's keys in the slot of its name, not in one slot for all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_spreads_locks_over_all_masters() {
    let cluster = support::RedisCluster::start(3).await;
    let locker = Locker::builder(config("spread:"))
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

/// A waiter on each redis-rs connection kind we claim is woken by the release notification
/// of another locker (pub/sub), long before its next poll.
async fn notification_wakes_a_waiter_of_another_locker<F: WithPubsub>() {
    let fx = F::start().await;
    let pubsub = fx.pubsub_client();
    let mut slow_polling = config("notify:");
    slow_polling.retry_interval = Duration::from_secs(30);
    let holder = fx.locker(slow_polling.clone()).await;
    let waiter = fx.locker_with_pubsub(slow_polling, pubsub).await;
    let held = holder.lock("k").await.expect("lock");
    let waiting = tokio::spawn(async move {
        waiter
            .lock_with(
                "k",
                dlock::LockOptions::new().wait_timeout(Duration::from_secs(10)),
            )
            .await
    });
    // Subscribed within one poll interval at most; well within this pause on loopback.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released_at = Instant::now();
    held.release().await.expect("release");
    let guard = waiting
        .await
        .unwrap()
        .expect("the waiter gets the lock after the release");
    let woken_after = released_at.elapsed();
    assert!(
        woken_after < Duration::from_secs(5),
        "the waiter took {woken_after:?} after the release: it polled (every 30 s) instead of \
         being notified"
    );
    guard.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_on_a_connection_manager() {
    notification_wakes_a_waiter_of_another_locker::<fixtures::Redis>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_on_a_multiplexed_connection() {
    notification_wakes_a_waiter_of_another_locker::<fixtures::RedisMultiplexed>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_on_a_cluster_connection() {
    notification_wakes_a_waiter_of_another_locker::<fixtures::RedisCluster>().await;
}
