//! Section 2, handoff latency: a waiter is blocked in `lock()` when the holder, a second
//! `Locker` with its own connection (as another process would be), releases.

use std::time::Duration;

use dlock::testing::Fixture;
use dlock::{LockGuard, LockOptions, Locker};
use tokio::time::Instant;

use super::measure::{config, locker, ms, percentile};
use super::support::fixtures::{Etcd, Memory, Redis, WithPubsub};
use super::Settings;

pub async fn run(redis: &Redis, etcd: &Etcd, memory: &Memory, s: &Settings) {
    println!("\n## 2. Handoff latency: waiter blocked in lock(), another locker releases\n");
    println!("Baseline: none yet; issue 12 adds the floor and peers. Comparison point: a waiter");
    println!("calling try_lock every 100 ms (the Go component's behaviour), not a floor.\n");
    println!(
        "| backend | waiter waited | dlock p50 | dlock p99 | polling 100 ms p50 | polling p99 |"
    );
    println!("|---|---|---|---|---|---|");

    let holder = locker(redis).await;
    let pubsub = redis
        .locker_with_pubsub(config::<Redis>(), redis.pubsub_client())
        .await;
    rows("redis (pub/sub)", &holder, &pubsub, s).await;
    rows(
        "redis (no pub/sub: polls)",
        &holder,
        &locker(redis).await,
        s,
    )
    .await;
    rows_on("etcd", etcd, s).await;
    rows_on("memory", memory, s).await;
}

/// Holder and waiter: two lockers of their own on the fixture's server.
async fn rows_on<F: Fixture>(name: &str, fx: &F, s: &Settings) {
    rows(name, &locker(fx).await, &locker(fx).await, s).await;
}

async fn rows(name: &str, holder: &Locker, waiter: &Locker, s: &Settings) {
    for (waited, samples) in [
        (Duration::from_millis(50), s.handoff_samples),
        (Duration::from_secs(1), s.long_wait_samples),
    ] {
        let fast = handoff(holder, waiter, waited, samples, false).await;
        let slow = handoff(holder, waiter, waited, samples.min(10), true).await;
        println!(
            "| {name} | {} ms (n={samples}) | {} | {} | {} | {} |",
            waited.as_millis(),
            ms(percentile(&fast, 0.5)),
            ms(percentile(&fast, 0.99)),
            ms(percentile(&slow, 0.5)),
            ms(percentile(&slow, 0.99)),
        );
    }
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
