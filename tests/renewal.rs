//! Renewal of many held locks on Redis: batched into few script calls (one per hash slot on
//! a Cluster), and every lock kept.

mod support;

use std::time::Duration;

use dlock::{Config, Driver, Locker};
use tokio::time::sleep;

const TTL: Duration = Duration::from_secs(1);
const LOCKS: usize = 300;

fn config() -> Config {
    dlock::testing::config(Driver::Redis, "renew:", TTL)
}

/// Holds [`LOCKS`] locks for three TTLs (each renewed about nine times), counting the script
/// calls the servers ran meanwhile; every lock must still be held.
async fn hold_and_count(locker: &Locker, nodes: &mut [redis::aio::ConnectionManager]) -> u64 {
    let mut guards = Vec::new();
    for i in 0..LOCKS {
        guards.push(locker.lock(&format!("k{i}")).await.expect("lock"));
    }
    let mut before = 0;
    for node in nodes.iter_mut() {
        before += support::script_calls(node).await;
    }
    sleep(TTL * 3).await;
    let mut after = 0;
    for node in nodes.iter_mut() {
        after += support::script_calls(node).await;
    }
    let lost = guards.iter().filter(|g| g.is_lost()).count();
    assert_eq!(lost, 0, "{lost} of {LOCKS} locks lost while held");
    for guard in guards {
        guard.release().await.expect("release: still held");
    }
    after - before
}

/// 300 locks renewed about 2,700 times in all take one script call per batch of up to 100
/// locks, not one per renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_of_many_locks_share_script_calls() {
    let server = support::RedisServer::start().await;
    let locker = Locker::builder(config())
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    let calls = hold_and_count(&locker, &mut [server.connection_manager().await]).await;
    // One renewal per lock every TTL/3: about 9 x 300 renewals. Batched, a few per round.
    assert!(
        calls <= 9 * LOCKS as u64 / 10,
        "{calls} script calls renewed {LOCKS} locks for three TTLs: renewals are not batched"
    );
    println!("{calls} script calls renewed {LOCKS} locks for three TTLs");
}

/// On a Cluster a script's keys must share a hash slot: batches are split by slot, and no
/// renewal fails with CROSSSLOT (the locks would be lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_on_a_cluster_are_batched_per_hash_slot() {
    let cluster = support::RedisCluster::start(3).await;
    let locker = Locker::builder(config())
        .redis_cluster(cluster.cluster_connection().await)
        .build()
        .expect("build");
    let mut nodes = Vec::new();
    for node in cluster.nodes() {
        nodes.push(node.connection_manager().await);
    }
    let calls = hold_and_count(&locker, &mut nodes).await;
    println!("{calls} script calls renewed {LOCKS} locks for three TTLs on 3 masters");
}
