//! Redis with replicas: replica acknowledgement (`replica_ack`, `WAIT`), the Sentinel
//! connection following a failover, and failovers under load measured with acknowledgement
//! on and off. Real processes only (`tests/support/sentinel.rs`); no timed assertions, only
//! safety properties and generous bounds. The failover runs print what they measured.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker, ReplicaAck, SentinelConnection};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

fn config(ttl: Duration, ack: Option<ReplicaAck>) -> Config {
    Config {
        driver: Driver::Redis,
        prefix: "repl:".into(),
        default_ttl: ttl,
        retry_interval: Duration::from_millis(20),
        replica_ack: ack,
    }
}

async fn locker_at(url: &str, ttl: Duration, ack: Option<ReplicaAck>) -> Locker {
    Locker::builder(config(ttl, ack))
        .redis(support::connection_manager_at(url).await)
        .build()
        .expect("build")
}

async fn get(url: &str, key: &str) -> Option<String> {
    let mut conn = support::connection_manager_at(url).await;
    redis::cmd("GET")
        .arg(format!("repl:{{{key}}}"))
        .query_async(&mut conn)
        .await
        .expect("GET")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_no_replica_acknowledged_is_undone_and_refused() {
    let redis = support::ReplicatedRedis::start(0).await;
    let url = redis.master().url();
    let locker = locker_at(
        &url,
        Duration::from_secs(5),
        Some(ReplicaAck::new(1, ms(50))),
    )
    .await;
    match locker.try_lock("k").await {
        Err(e @ Error::Backend { .. }) => assert!(
            e.to_string()
                .contains("only 0 of 1 replicas acknowledged the lock"),
            "unclear error: {e}"
        ),
        other => panic!("a lock no replica has was granted: {other:?}"),
    }
    let left = get(&url, "k").await;
    assert!(
        left.as_deref().is_none_or(|v| v.starts_with('~')),
        "the unacknowledged acquisition was not undone: {left:?}"
    );
    // `lock()` does not wait through it either: the same error.
    let waited = locker
        .lock_with("k", LockOptions::new().wait_timeout(Duration::from_secs(2)))
        .await;
    assert!(matches!(waited, Err(Error::Backend { .. })), "{waited:?}");
    // Off (the default), the same server grants it.
    let plain = locker_at(&url, Duration::from_secs(5), None).await;
    assert!(plain.try_lock("k").await.expect("try_lock").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_lock_is_on_every_replica_it_waited_for() {
    let redis = support::ReplicatedRedis::start(2).await;
    let locker = locker_at(
        &redis.master().url(),
        Duration::from_secs(5),
        Some(ReplicaAck::new(2, ms(1000))),
    )
    .await;
    for i in 0..20 {
        let key = format!("k{i}");
        let guard = locker
            .try_lock(&key)
            .await
            .expect("try_lock")
            .expect("free");
        // No waiting here: WAIT returned only once both replicas had the write.
        for replica in redis.replicas() {
            let value = get(&replica.url(), &key).await;
            let expected = format!(":{}", guard.fencing_token());
            assert!(
                value.as_deref().is_some_and(|v| v.contains(&expected)),
                "replica {} lacks the acknowledged lock {key}: {value:?}",
                replica.url()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_renewals_fire_lost_while_the_replica_still_has_the_lock() {
    let redis = support::ReplicatedRedis::start(1).await;
    let ttl = Duration::from_secs(3);
    let locker = locker_at(&redis.master().url(), ttl, Some(ReplicaAck::new(1, ms(50)))).await;
    let guard = locker.try_lock("k").await.expect("try_lock").expect("free");
    redis.cut_replication();
    // Renewals still reach the master but no replica confirms them: the holder must be told
    // while the replica's copy (from the last acknowledged write) is still unexpired, i.e.
    // before a failover to it could let anyone else in.
    timeout(ttl * 3, guard.lost().cancelled())
        .await
        .expect("lost() never fired although no renewal was acknowledged");
    let on_replica = get(&redis.replicas()[0].url(), "k").await;
    assert!(
        on_replica.is_some(),
        "the replica's copy expired before the holder was told of the loss"
    );
    assert!(
        matches!(guard.release().await, Err(Error::OwnershipLost { .. })),
        "release after the loss must say so"
    );
}

/// A locker over its own Sentinel-managed connection.
async fn sentinel_locker(
    group: &support::SentinelGroup,
    ttl: Duration,
    ack: Option<ReplicaAck>,
) -> Locker {
    let urls = group.sentinel_urls();
    let connection = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ms(500)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    let conn = SentinelConnection::connect(
        urls.iter().map(String::as_str).collect(),
        support::SENTINEL_SERVICE,
        connection,
    )
    .await
    .expect("connect through the sentinels");
    Locker::builder(config(ttl, ack))
        .redis(conn)
        .build()
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_locker_follows_a_failover_and_locks_on_the_new_master() {
    let mut group = support::SentinelGroup::start(2).await;
    let ttl = Duration::from_secs(5);
    let locker = sentinel_locker(&group, ttl, Some(ReplicaAck::new(1, ms(200)))).await;
    let guard = locker
        .try_lock("held")
        .await
        .expect("try_lock")
        .expect("free");
    let killed = Instant::now();
    let new_master = group.kill_master_and_wait_for_promotion().await;
    let promoted = killed.elapsed();
    let new_url = format!("redis://127.0.0.1:{new_master}/");
    // Past the TTL counted from the kill, the key exists on the new master only if renewals
    // reached it; otherwise lost() must have fired.
    sleep(ttl.saturating_sub(killed.elapsed()) + ttl / 2).await;
    let value = get(&new_url, "held").await;
    let ours = format!(":{}", guard.fencing_token());
    if guard.is_lost() {
        println!("failover took {promoted:?}; the holder was told of the loss");
    } else {
        assert!(
            value.as_deref().is_some_and(|v| v.contains(&ours)),
            "the guard is not lost, yet the new master does not hold its lock: {value:?}"
        );
        println!("failover took {promoted:?}; the lock was renewed on the new master");
    }
    // New locks work on the new master once it has a replica to acknowledge them again (the
    // sentinels re-point the other replica; slow on a loaded machine: a generous bound).
    let deadline = Instant::now() + Duration::from_secs(40);
    let other = loop {
        match locker.try_lock("after").await {
            Ok(Some(g)) => break g,
            Ok(None) => panic!("nobody holds `after`"),
            Err(e) => {
                assert!(Instant::now() < deadline, "no lock on the new master: {e}");
                sleep(ms(50)).await;
            }
        }
    };
    assert!(get(&new_url, "after").await.is_some());
    if !guard.is_lost() {
        assert!(locker.try_lock("held").await.expect("try_lock").is_none());
    }
    other.release().await.expect("release on the new master");
}

/// What the checker saw during one failover run.
#[derive(Default)]
struct Checker {
    /// Key -> guards handed out and not yet given back, with their `lost()` tokens.
    holders: Mutex<HashMap<String, Vec<(usize, CancellationToken)>>>,
    tokens: Mutex<HashSet<(String, u64)>>,
    grants: AtomicU64,
    double_grants: AtomicU64,
    repeated_tokens: AtomicU64,
    losses: AtomicU64,
    failed_attempts: AtomicU64,
    /// Milliseconds after the kill of the first grant after it (0: none yet).
    recovered_ms: AtomicU64,
}

impl Checker {
    fn granted(&self, key: &str, holder: usize, lost: CancellationToken, token: u64) {
        self.grants.fetch_add(1, Ordering::Relaxed);
        let mut holders = self.holders.lock().unwrap();
        let same_key = holders.entry(key.to_owned()).or_default();
        if same_key.iter().any(|(_, other)| !other.is_cancelled()) {
            self.double_grants.fetch_add(1, Ordering::Relaxed);
        }
        same_key.push((holder, lost));
        if !self.tokens.lock().unwrap().insert((key.to_owned(), token)) {
            self.repeated_tokens.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Before the release is sent: until then the server still holds the lock.
    fn giving_back(&self, key: &str, holder: usize) {
        if let Some(same_key) = self.holders.lock().unwrap().get_mut(key) {
            same_key.retain(|(h, _)| *h != holder);
        }
    }
}

struct Measured {
    grants: u64,
    double_grants: u64,
    repeated_tokens: u64,
    losses: u64,
    failed_attempts: u64,
    promotion: Duration,
    recovery: Option<Duration>,
}

/// How long a holder keeps a lock: mostly 10-50 ms, one time in three 2.5 s (longer than the
/// failover, so that some locks are held across it and renewed on the new master).
fn hold() -> Duration {
    if fastrand::u8(0..3) == 0 {
        ms(2500)
    } else {
        ms(10 + fastrand::u64(0..40))
    }
}

/// Four holders on four keys lock, hold (see [`hold`]) and release at a steady rate, each
/// through its own Sentinel connection. Replication is cut, so the master takes writes no replica
/// sees; 800 ms later it is killed, the sentinels promote a replica, and the old master is
/// restarted (it comes back as a replica).
/// Replication is cut for 800 ms before the kill.
async fn failover_under_load(ack: Option<ReplicaAck>) -> Measured {
    let mut group = support::SentinelGroup::start(2).await;
    // Longer than the failover: with a shorter TTL every holder is told of the loss (its
    // renewals go unconfirmed) before a replica is even promoted, and nothing is measured.
    let ttl = Duration::from_secs(6);
    let checker = Arc::new(Checker::default());
    let stop = CancellationToken::new();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for holder in 0..4 {
        let locker = sentinel_locker(&group, ttl, ack).await;
        let (checker, stop, killed_at) = (checker.clone(), stop.clone(), killed_at.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let key = format!("k{}", fastrand::usize(0..4));
                let options = LockOptions::new().wait_timeout(ms(500));
                let guard = match locker.lock_with(&key, options).await {
                    Ok(guard) => guard,
                    Err(_) => {
                        checker.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        sleep(ms(20)).await;
                        continue;
                    }
                };
                if let Some(killed) = *killed_at.lock().unwrap() {
                    let after = killed.elapsed().as_millis().max(1) as u64;
                    let _ = checker.recovered_ms.compare_exchange(
                        0,
                        after,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                checker.granted(&key, holder, guard.lost(), guard.fencing_token());
                let lost = guard.lost();
                tokio::select! {
                    _ = lost.cancelled() => {}
                    _ = sleep(hold()) => {}
                }
                checker.giving_back(&key, holder);
                if guard.is_lost()
                    || matches!(guard.release().await, Err(Error::OwnershipLost { .. }))
                {
                    checker.losses.fetch_add(1, Ordering::Relaxed);
                }
            }
            locker.close().await.ok();
        }));
    }
    sleep(Duration::from_secs(1)).await;
    group.redis.cut_replication();
    sleep(ms(800)).await;
    *killed_at.lock().unwrap() = Some(Instant::now());
    let killed = Instant::now();
    group.kill_master_and_wait_for_promotion().await;
    let promotion = killed.elapsed();
    group.restart_old_master().await;
    // Locks work again within a generous bound, then the load goes on for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    while checker.recovered_ms.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        sleep(ms(50)).await;
    }
    sleep(Duration::from_secs(2)).await;
    stop.cancel();
    for task in tasks {
        timeout(Duration::from_secs(20), task)
            .await
            .expect("a holder task hung")
            .expect("a holder task panicked");
    }
    let recovered = checker.recovered_ms.load(Ordering::Relaxed);
    Measured {
        grants: checker.grants.load(Ordering::Relaxed),
        double_grants: checker.double_grants.load(Ordering::Relaxed),
        repeated_tokens: checker.repeated_tokens.load(Ordering::Relaxed),
        losses: checker.losses.load(Ordering::Relaxed),
        failed_attempts: checker.failed_attempts.load(Ordering::Relaxed),
        promotion,
        recovery: (recovered > 0).then(|| ms(recovered)),
    }
}

fn print(mode: &str, m: &Measured) {
    println!(
        "failover ({mode}): grants={} double_grants={} repeated_tokens={} losses_reported={} \
         failed_attempts={} promotion={:?} locking_again_after={:?}",
        m.grants,
        m.double_grants,
        m.repeated_tokens,
        m.losses,
        m.failed_attempts,
        m.promotion,
        m.recovery
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_with_replica_ack_never_grants_an_acknowledged_lock_twice() {
    // Every replica must acknowledge: whichever the sentinels promote has every lock.
    let m = failover_under_load(Some(ReplicaAck::new(2, ms(100)))).await;
    print("replica_ack 2 of 2", &m);
    assert_eq!(m.double_grants, 0, "a lock was granted twice");
    assert_eq!(m.repeated_tokens, 0, "a fencing token was issued twice");
    assert!(
        m.recovery.is_some(),
        "locking never worked again after the failover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_without_replica_ack_is_measured() {
    let m = failover_under_load(None).await;
    print("replica_ack off", &m);
    // Only what must hold in both modes; double grants are expected here and recorded.
    assert!(
        m.recovery.is_some(),
        "locking never worked again after the failover"
    );
}

/// On a Cluster, `WAIT` must reach the master that owns the lock's key: redis-rs would send
/// a lone `WAIT` to every primary, so dlock pipelines it behind the script, which is routed
/// by the key. With one master's replica gone, only that master's keys are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_ack_on_a_cluster_waits_on_the_master_that_owns_the_key() {
    let mut cluster = support::RedisCluster::start_with_replicas(3, 1).await;
    cluster.wait_for_replicas(1).await;
    let locker = Locker::builder(config(
        Duration::from_secs(5),
        Some(ReplicaAck::new(1, ms(100))),
    ))
    .redis_cluster(cluster.cluster_connection().await)
    .build()
    .expect("build");
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let mut guards = Vec::new();
    for key in &keys {
        let guard = locker
            .try_lock(key)
            .await
            .expect("acknowledged on a replicated cluster");
        guards.push(guard.expect("free"));
    }
    // One replica, and the master it follows.
    let mut victim = None;
    for (index, node) in cluster.nodes().iter().enumerate() {
        let mut conn = node.connection_manager().await;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        if let Some(port) = info
            .lines()
            .find_map(|l| l.strip_prefix("master_port:"))
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            victim = Some((index, port));
            break;
        }
    }
    let (replica, master_port) = victim.expect("a replica in the cluster");
    // Which keys that master owns: it answers GET for them (and MOVED for the others).
    let master_url = format!("redis://127.0.0.1:{master_port}/");
    let mut master = support::connection_manager_at(&master_url).await;
    let mut owned = Vec::new();
    let mut elsewhere = Vec::new();
    for key in &keys {
        let got: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(format!("repl:{{{key}}}"))
            .query_async(&mut master)
            .await;
        match got {
            Ok(Some(_)) => owned.push(key.clone()),
            _ => elsewhere.push(key.clone()),
        }
    }
    assert!(
        !owned.is_empty() && !elsewhere.is_empty(),
        "12 keys all on one side: {owned:?}"
    );
    for guard in guards {
        guard.release().await.expect("release");
    }
    cluster.nodes_mut()[replica].kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut master)
            .await
            .expect("INFO");
        if info.contains("connected_slaves:0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the master still counts its killed replica"
        );
        sleep(ms(20)).await;
    }
    match locker.try_lock(&owned[0]).await {
        Err(e @ Error::Backend { .. }) => assert!(
            e.to_string().contains("only 0 of 1 replicas acknowledged"),
            "unclear error: {e}"
        ),
        other => panic!("a key of the master without replica was granted: {other:?}"),
    }
    let other = locker.try_lock(&elsewhere[0]).await;
    assert!(
        matches!(other, Ok(Some(_))),
        "a key of a master that has its replica was refused (WAIT sent elsewhere?): {other:?}"
    );
}
