//! Section 2, handoff latency: a waiter is blocked in `lock()` when the holder, a second
//! `Locker` with its own connection (as another process would be), releases.

use std::time::Duration;

use dlock::{LockGuard, LockOptions, Locker};
use tokio::time::Instant;

use super::baselines::RedisLockFloor;
use super::measure::{config, locker, ms, percentile};
use super::support::fixtures::{Etcd, Memory, Redis, WithPubsub};
use super::Settings;

pub async fn run(redis: &Redis, etcd: &Etcd, memory: &Memory, s: &Settings) {
    println!("\n## 2. Handoff latency: waiter blocked in lock(), another locker releases\n");
    println!("Floor (Redis with pub/sub): `SET NX PX`, a waiter subscribed first, a release");
    println!("script that compares, deletes and publishes (benches/dlock/baselines.rs).");
    println!("Peers, same server, same run: rslock 0.10's `acquire` (a waiting loop of its own);");
    println!(
        "etcd's lock service (`Lock` waits on the server). Comparison point: a waiter calling"
    );
    println!("try_lock every 100 ms (the Go component's behaviour).\n");
    println!(
        "| backend | waiter waited | dlock p50 | dlock p99 | floor p50 | floor p99 | peer | peer p50 | peer p99 | polling 100 ms p50 | polling p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");

    let holder = locker(redis).await;
    let pubsub = redis
        .locker_with_pubsub(config::<Redis>(), redis.pubsub_client())
        .await;
    let peer = Peer::Rslock(redis.url());
    let floor = Some(redis);
    rows("redis (pub/sub)", &holder, &pubsub, &peer, floor, s).await;
    let polls = locker(redis).await;
    rows("redis (no pub/sub: polls)", &holder, &polls, &peer, None, s).await;
    let peer = Peer::EtcdLockService(Box::new(etcd.client().await));
    let (holder, waiter) = (locker(etcd).await, locker(etcd).await);
    rows("etcd", &holder, &waiter, &peer, None, s).await;
    let (holder, waiter) = (locker(memory).await, locker(memory).await);
    rows("memory", &holder, &waiter, &Peer::None, None, s).await;
}

/// What a user would pick instead, measured the same way.
enum Peer {
    Rslock(String),
    EtcdLockService(Box<etcd_client::Client>),
    None,
}

impl Peer {
    fn name(&self) -> &'static str {
        match self {
            Peer::Rslock(_) => "rslock 0.10",
            Peer::EtcdLockService(_) => "etcd lock service",
            Peer::None => "",
        }
    }

    /// Release-to-acquired latencies of the peer's own waiting, for waiters that began
    /// waiting `waited` before the release.
    async fn handoff(&self, waited: Duration, samples: usize) -> Vec<Duration> {
        let mut out = Vec::new();
        for i in 0..samples {
            let key = format!("peer-handoff-{}-{i}", waited.as_millis());
            let latency = match self {
                Peer::Rslock(url) => rslock_handoff(url, &key, waited).await,
                Peer::EtcdLockService(client) => etcd_handoff(client, &key, waited).await,
                Peer::None => return out,
            };
            out.push(latency);
        }
        out.sort();
        out
    }
}

const PEER_TTL: Duration = Duration::from_secs(10);

async fn rslock_handoff(url: &str, key: &str, waited: Duration) -> Duration {
    let holder = rslock::LockManager::new(vec![url.to_owned()]);
    let waiter = rslock::LockManager::new(vec![url.to_owned()]);
    let held = holder.lock(key.as_bytes(), PEER_TTL).await.unwrap();
    let key = key.to_owned();
    let task = tokio::spawn(async move {
        let lock = waiter
            .acquire_no_guard(key.as_bytes(), PEER_TTL)
            .await
            .unwrap();
        let got = Instant::now();
        waiter.unlock(&lock).await;
        got
    });
    tokio::time::sleep(waited + Duration::from_millis(fastrand::u64(0..20))).await;
    let released = Instant::now();
    holder.unlock(&held).await;
    task.await.unwrap().saturating_duration_since(released)
}

async fn etcd_handoff(client: &etcd_client::Client, key: &str, waited: Duration) -> Duration {
    let grant = || async {
        let mut leases = client.lease_client();
        let reply = leases.grant(PEER_TTL.as_secs() as i64, None).await;
        reply.unwrap().id()
    };
    let (holder_lease, waiter_lease) = (grant().await, grant().await);
    let options = etcd_client::LockOptions::new().with_lease(holder_lease);
    let held = client.lock_client().lock(key, Some(options)).await.unwrap();
    let (waiter, key) = (client.clone(), key.to_owned());
    let task = tokio::spawn(async move {
        let options = etcd_client::LockOptions::new().with_lease(waiter_lease);
        let locked = waiter.lock_client().lock(key, Some(options)).await.unwrap();
        let got = Instant::now();
        waiter.lock_client().unlock(locked.key()).await.unwrap();
        got
    });
    tokio::time::sleep(waited + Duration::from_millis(fastrand::u64(0..20))).await;
    let released = Instant::now();
    client.lock_client().unlock(held.key()).await.unwrap();
    let latency = task.await.unwrap().saturating_duration_since(released);
    for lease in [holder_lease, waiter_lease] {
        client.lease_client().revoke(lease).await.unwrap();
    }
    latency
}

/// One row per waiting time; `floor`: the server to measure [`RedisLockFloor`] on as well.
async fn rows(
    name: &str,
    holder: &Locker,
    waiter: &Locker,
    peer: &Peer,
    floor: Option<&Redis>,
    s: &Settings,
) {
    for (waited, samples) in [
        (Duration::from_millis(50), s.handoff_samples),
        (Duration::from_secs(1), s.long_wait_samples),
    ] {
        let fast = handoff(holder, waiter, waited, samples, false).await;
        let least = match floor {
            Some(redis) => floor_handoffs(redis, waited, samples).await,
            None => Vec::new(),
        };
        let theirs = peer.handoff(waited, samples).await;
        let slow = handoff(holder, waiter, waited, samples.min(10), true).await;
        let wait = format!("{} ms wait", waited.as_millis());
        super::charts::handoff(name, &format!("dlock, {wait}"), &fast);
        if !least.is_empty() {
            super::charts::handoff(name, &format!("floor, {wait}"), &least);
        }
        if !theirs.is_empty() {
            super::charts::handoff(name, &format!("{}, {wait}", peer.name()), &theirs);
        }
        let peer_cells = if theirs.is_empty() {
            " | | ".to_owned()
        } else {
            format!(
                "{} | {} | {}",
                peer.name(),
                ms(percentile(&theirs, 0.5)),
                ms(percentile(&theirs, 0.99))
            )
        };
        let floor_cells = if least.is_empty() {
            " | ".to_owned()
        } else {
            format!(
                "{} | {}",
                ms(percentile(&least, 0.5)),
                ms(percentile(&least, 0.99))
            )
        };
        println!(
            "| {name} | {} ms (n={samples}) | {} | {} | {floor_cells} | {peer_cells} | {} | {} |",
            waited.as_millis(),
            ms(percentile(&fast, 0.5)),
            ms(percentile(&fast, 0.99)),
            ms(percentile(&slow, 0.5)),
            ms(percentile(&slow, 0.99)),
        );
    }
}

/// The floor's handoffs, measured like dlock's: from the holder's release call to the
/// waiter holding the key.
async fn floor_handoffs(redis: &Redis, waited: Duration, samples: usize) -> Vec<Duration> {
    let holder = RedisLockFloor::new(redis).await;
    let waiter = RedisLockFloor::new(redis).await;
    let mut out = Vec::new();
    for i in 0..samples {
        let key = format!("floor-handoff-{}-{i}", waited.as_millis());
        assert!(holder.try_lock(&key, "h").await, "floor: {key} was held");
        let (waiter, pubsub, waited_key) = (waiter.clone(), redis.pubsub_client(), key.clone());
        let task = tokio::spawn(async move {
            waiter.lock_notified(&waited_key, "w", &pubsub).await;
            let got = Instant::now();
            waiter.release(&waited_key, "w").await;
            got
        });
        tokio::time::sleep(waited + Duration::from_millis(fastrand::u64(0..20))).await;
        let released = Instant::now();
        holder.release(&key, "h").await;
        out.push(task.await.unwrap().saturating_duration_since(released));
    }
    out.sort();
    out
}

/// Latency from the holder's release call to the waiter's `lock()` returning, for waiters
/// that began waiting `waited` before the release. `poll` waits with try_lock every 100 ms.
async fn handoff(
    holder: &Locker,
    waiter: &Locker,
    waited: Duration,
    samples: usize,
    poll: bool,
) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..samples {
        let key = format!("handoff-{}-{i}-{}", waited.as_millis(), poll as u8);
        let held = holder.lock(&key).await.unwrap();
        let task = tokio::spawn(wait_for(waiter.clone(), key, poll));
        tokio::time::sleep(waited + Duration::from_millis(fastrand::u64(0..20))).await;
        let released = Instant::now();
        held.release().await.unwrap();
        let got = task.await.unwrap();
        out.push(got.saturating_duration_since(released));
    }
    out.sort();
    out
}

/// Takes `key` (blocked in `lock()`, or polling), notes when, and releases it.
async fn wait_for(waiter: Locker, key: String, poll: bool) -> Instant {
    let guard: LockGuard = if poll {
        loop {
            if let Some(g) = waiter.try_lock(&key).await.unwrap() {
                break g;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        let options = LockOptions::new().wait_timeout(Duration::from_secs(10));
        waiter.lock_with(&key, options).await.unwrap()
    };
    let got = Instant::now();
    guard.release().await.unwrap();
    got
}
