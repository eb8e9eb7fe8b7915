//! Section 3, one hot key: many tasks over 2 lockers (each with its own connection) lock
//! and release the same key; acquisitions/s and, on Redis, attempts per acquisition.

use std::time::Duration;

use dlock::Locker;

use super::measure::{config, locker, rate};
use super::support::fixtures::{Etcd, Redis, WithPubsub};
use super::Settings;

pub async fn run(redis: &Redis, etcd: &Etcd, s: &Settings) {
    println!("\n## 3. One key, many tasks over 2 lockers\n");
    println!("Baseline: none yet; issue 12 adds the floor and peers. Comparison point: the same");
    println!("tasks calling try_lock every 100 ms (no pub/sub), not a floor.\n");
    println!(
        "| backend | tasks | acquisitions/s | attempts per acquisition | polling 100 ms acq/s |"
    );
    println!("|---|---|---|---|---|");
    on_redis(redis, 32, s).await;
    on_redis(redis, 100, s).await;
    on_etcd(etcd, 32, s).await;
}

async fn on_redis(fx: &Redis, tasks: usize, s: &Settings) {
    let mut lockers = Vec::new();
    for _ in 0..2 {
        lockers.push(
            fx.locker_with_pubsub(config::<Redis>(), fx.pubsub_client())
                .await,
        );
    }
    let mut admin = fx.admin();
    let window = s.window * 2;
    let before = script_calls(&mut admin).await;
    let acquisitions = rate(tasks, window, blocking(lockers, format!("hot-{tasks}"))).await;
    let scripts = script_calls(&mut admin).await - before;
    let count = acquisitions * window.as_secs_f64();
    // Each acquisition is one successful obtain plus one release; the rest are failed attempts.
    let attempts = (scripts as f64 - count) / count;

    let pollers = vec![locker(fx).await, locker(fx).await];
    let polling = rate(tasks, window, polling(pollers, format!("hot-poll-{tasks}"))).await;
    println!("| redis | {tasks} | {acquisitions:.0} | {attempts:.2} | {polling:.0} |");
}

async fn on_etcd(fx: &Etcd, tasks: usize, s: &Settings) {
    let lockers = vec![locker(fx).await, locker(fx).await];
    let acquisitions = rate(tasks, s.window * 2, blocking(lockers, "hot".into())).await;
    println!("| etcd | {tasks} | {acquisitions:.0} | 1 (queued by revision, no retries) | n/a |");
}

type BoxedUnit = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Task `t` waits in `lock()` on locker `t % 2`, then releases.
fn blocking(lockers: Vec<Locker>, key: String) -> impl Fn(usize, u64) -> BoxedUnit + Clone {
    move |task, _| {
        let (locker, key) = (lockers[task % lockers.len()].clone(), key.clone());
        Box::pin(async move {
            let guard = locker.lock(&key).await.unwrap();
            guard.release().await.unwrap();
        })
    }
}

/// Task `t` calls try_lock on locker `t % 2` every 100 ms until it gets the key.
fn polling(lockers: Vec<Locker>, key: String) -> impl Fn(usize, u64) -> BoxedUnit + Clone {
    move |task, _| {
        let (locker, key) = (lockers[task % lockers.len()].clone(), key.clone());
        Box::pin(async move {
            let guard = loop {
                if let Some(guard) = locker.try_lock(&key).await.unwrap() {
                    break guard;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            guard.release().await.unwrap();
        })
    }
}

/// Scripts run by the server so far (EVALSHA and EVAL), from `INFO commandstats`.
async fn script_calls(admin: &mut redis::aio::ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    let calls = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    calls("cmdstat_evalsha:") + calls("cmdstat_eval:")
}
