//! Release notifications that stay on one shard of a Redis Cluster (issue 13): waiters
//! SSUBSCRIBE on the master owning the lock's slot, releases SPUBLISH there, and no other
//! node sees the announcement.

mod support;

use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker};
use redis::aio::ConnectionManager;
use redis::cluster::ClusterClientBuilder;
use tokio::time::{sleep, timeout, Instant};

const PREFIX: &str = "shard:";

fn config(retry_interval: Duration) -> Config {
    Config {
        driver: Driver::Redis,
        prefix: PREFIX.into(),
        default_ttl: Duration::from_secs(10),
        retry_interval,
        ..Default::default()
    }
}

fn resp3_client(cluster: &support::RedisCluster) -> redis::cluster::ClusterClient {
    ClusterClientBuilder::new(cluster.urls())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .build()
        .expect("cluster client")
}

/// A holder without notifications, and a locker whose waiters poll only every
/// `retry_interval` and hear releases through the cluster's shards.
async fn holder_and_waiters(
    cluster: &support::RedisCluster,
    retry_interval: Duration,
) -> (Locker, Locker) {
    let holder = Locker::builder(config(retry_interval))
        .redis_cluster(cluster.cluster_connection().await)
        .build()
        .expect("build");
    let waiters = Locker::builder(config(retry_interval))
        .redis_cluster(cluster.cluster_connection().await)
        .redis_cluster_pubsub(resp3_client(cluster))
        .build()
        .expect("build");
    (holder, waiters)
}

/// One key per master: `keys[i]`'s slot is owned by node `i`.
async fn a_key_on_each_master(cluster: &support::RedisCluster) -> Vec<String> {
    let mut keys = vec![None; cluster.nodes().len()];
    for n in 0.. {
        let key = format!("job-{n}");
        let owner = cluster.master_index_of(&format!("{PREFIX}{{{key}}}")).await;
        keys[owner].get_or_insert(key);
        if keys.iter().all(Option::is_some) {
            return keys.into_iter().flatten().collect();
        }
        assert!(n < 1000, "no key found for some master");
    }
    unreachable!()
}

fn channel(key: &str) -> String {
    format!("{PREFIX}{{{key}}}:released")
}

async fn admins(cluster: &support::RedisCluster) -> Vec<ConnectionManager> {
    let mut admins = Vec::new();
    for node in cluster.nodes() {
        admins.push(node.connection_manager().await);
    }
    admins
}

/// `PUBSUB SHARDNUMSUB` (sharded) and `PUBSUB NUMSUB` (classic) of `channel` on one node.
async fn subscribers(admin: &mut ConnectionManager, channel: &str) -> (i64, i64) {
    let count = |kind: &'static str| {
        let mut admin = admin.clone();
        let channel = channel.to_owned();
        async move {
            let reply: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg(kind)
                .arg(&channel)
                .query_async(&mut admin)
                .await
                .expect("PUBSUB");
            reply.first().map_or(0, |(_, n)| *n)
        }
    };
    (count("SHARDNUMSUB").await, count("NUMSUB").await)
}

/// Waits until every node's (sharded, classic) subscriber counts of `channel` are `want`.
async fn wait_for_subscribers(
    admins: &mut [ConnectionManager],
    channel: &str,
    want: &[(i64, i64)],
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut seen = Vec::new();
        for admin in admins.iter_mut() {
            seen.push(subscribers(admin, channel).await);
        }
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: (sharded, classic) subscribers of {channel} per node {seen:?}, expected {want:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Calls of `command` a node has run, from `INFO commandstats`.
async fn calls(admin: &mut ConnectionManager, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:");
    info.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Publish messages a node received over the cluster bus (`CLUSTER INFO`): a PUBLISH
/// anywhere reaches every node this way; an SPUBLISH reaches only the shard's replicas.
async fn bus_publishes_received(admin: &mut ConnectionManager) -> u64 {
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(admin)
        .await
        .expect("CLUSTER INFO");
    info.lines()
        .filter(|l| l.starts_with("cluster_stats_messages_publish"))
        .filter(|l| l.contains("_received:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum()
}

/// On a 3-master cluster, a release wakes a waiter of another locker that would poll only
/// after 60 s, and the announcement stays on the shard that owns the key: only its master
/// has the (sharded) subscriber and runs the SPUBLISH; no node has a classic subscriber,
/// runs a PUBLISH, or receives a publish over the cluster bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_reaches_a_waiter_through_the_owning_shard_only() {
    let cluster = support::RedisCluster::start(3).await;
    let mut admins = admins(&cluster).await;
    let (holder, waiters) = holder_and_waiters(&cluster, Duration::from_secs(60)).await;
    let keys = a_key_on_each_master(&cluster).await;
    for (owner, key) in keys.iter().enumerate() {
        let held = holder.lock(key).await.expect("lock");
        let waiting = {
            let (waiters, key) = (waiters.clone(), key.clone());
            tokio::spawn(async move { waiters.lock(&key).await })
        };
        let mut only_owner = vec![(0, 0); admins.len()];
        only_owner[owner] = (1, 0);
        let channel = channel(key);
        wait_for_subscribers(&mut admins, &channel, &only_owner, "while a waiter waits").await;
        let mut before = Vec::new();
        for admin in admins.iter_mut() {
            before.push(calls(admin, "spublish").await);
        }
        held.release().await.expect("release");
        let next = timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiter was not woken by the release (it would poll only after 60 s)")
            .expect("task")
            .expect("waiter lock");
        next.release().await.expect("waiter release");
        for (node, admin) in admins.iter_mut().enumerate() {
            let spublished = calls(admin, "spublish").await - before[node];
            let want = u64::from(node == owner);
            assert_eq!(
                spublished, want,
                "key {key} (owner node {owner}): node {node} ran {spublished} SPUBLISH"
            );
        }
        let nobody = vec![(0, 0); admins.len()];
        wait_for_subscribers(&mut admins, &channel, &nobody, "after the last waiter left").await;
    }
    for (node, admin) in admins.iter_mut().enumerate() {
        assert_eq!(
            calls(admin, "publish").await,
            0,
            "node {node} ran a PUBLISH"
        );
        assert_eq!(
            bus_publishes_received(admin).await,
            0,
            "node {node} received a publish over the cluster bus"
        );
    }
}

/// Waiters cancelled on keys of every shard leave no shard subscription, and a later waiter
/// subscribes again on the owner and is woken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_sharded_waiters_leave_no_subscription_and_later_waiters_subscribe() {
    let cluster = support::RedisCluster::start(3).await;
    let mut admins = admins(&cluster).await;
    let (holder, waiters) = holder_and_waiters(&cluster, Duration::from_secs(60)).await;
    let keys = a_key_on_each_master(&cluster).await;
    let mut held = Vec::new();
    for key in &keys {
        held.push(holder.lock(key).await.expect("lock"));
    }
    for _ in 0..3 {
        for key in &keys {
            let short = LockOptions::new().wait_timeout(Duration::from_millis(50));
            let outcome = waiters.lock_with(key, short).await;
            assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
        }
    }
    let nobody = vec![(0, 0); admins.len()];
    for key in &keys {
        wait_for_subscribers(
            &mut admins,
            &channel(key),
            &nobody,
            "after cancelled waiters",
        )
        .await;
    }
    let (owner, key) = (2, keys[2].clone());
    let waiting = {
        let (waiters, key) = (waiters.clone(), key.clone());
        tokio::spawn(async move { waiters.lock(&key).await })
    };
    let mut only_owner = nobody.clone();
    only_owner[owner] = (1, 0);
    wait_for_subscribers(&mut admins, &channel(&key), &only_owner, "a new waiter").await;
    held.pop().expect("held").release().await.expect("release");
    timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter was not woken by the release (it would poll only after 60 s)")
        .expect("task")
        .expect("waiter lock")
        .release()
        .await
        .expect("waiter release");
    wait_for_subscribers(
        &mut admins,
        &channel(&key),
        &nobody,
        "after the waiter left",
    )
    .await;
}
