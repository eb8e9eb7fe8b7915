//! Section 3, one hot key: many tasks over 2 lockers (each with its own connection) lock
//! and release the same key; acquisitions/s, the fewest and most acquisitions per task and,
//! on Redis, server commands per acquisition (attempts, and the release or hand-over) and
//! attempts per acquisition (the commands less the one release or hand-over that ends each
//! acquisition: an acquisition handed over costs no attempt), against rslock's in the same
//! run.

use std::time::Duration;

use dlock::Locker;

use super::measure::{config, locker, rate, rate_per_task, shares};
use super::support::fixtures::{Etcd, Redis, WithPubsub};
use super::Settings;

pub async fn run(redis: &Redis, etcd: &Etcd, s: &Settings) {
    println!("\n## 3. One key, many tasks over 2 lockers\n");
    println!(
        "Peer: rslock 0.10, the same tasks over 2 `LockManager`s (`acquire_no_guard` + `unlock`),"
    );
    println!(
        "in the same run on the same server. Shares: the fewest and the most acquisitions one"
    );
    println!("task got, as a share of all (fair: 100 % / tasks). Comparison point: the same tasks");
    println!("calling try_lock every 100 ms (no pub/sub), not a floor.\n");
    println!(
        "| backend | tasks | acquisitions/s | commands (attempts) per acquisition | shares (min–max) | rslock acq/s | rslock commands (attempts) per acq | rslock shares (min–max) | dlock / rslock | polling 100 ms acq/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
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
    let before = calls(&mut admin, SCRIPTS).await;
    let (acquisitions, per_task) =
        rate_per_task(tasks, window, blocking(lockers, format!("hot-{tasks}"))).await;
    let scripts = calls(&mut admin, SCRIPTS).await - before;
    let count = acquisitions * window.as_secs_f64();
    // Every server call per acquisition: obtain attempts (failed ones too), the release or
    // the hand-over to the next waiter of the same locker (which is also its acquisition).
    let commands = scripts as f64 / count;

    let managers = vec![
        rslock::LockManager::new(vec![fx.url()]),
        rslock::LockManager::new(vec![fx.url()]),
    ];
    let before = calls(&mut admin, RSLOCK).await;
    let (peer, peer_per_task) = rate_per_task(
        tasks,
        window,
        rslock_blocking(managers, format!("hot-peer-{tasks}")),
    )
    .await;
    // rslock: one `SET NX PX` per attempt, one unlock script per acquisition.
    let peer_commands =
        (calls(&mut admin, RSLOCK).await - before) as f64 / (peer * window.as_secs_f64());

    let pollers = vec![locker(fx).await, locker(fx).await];
    let polling = rate(tasks, window, polling(pollers, format!("hot-poll-{tasks}"))).await;
    // The chart shows the 32-task case: one fair line for one task count.
    if tasks == 32 {
        super::charts::shares("dlock", &per_task);
        super::charts::shares("rslock 0.10", &peer_per_task);
    }
    println!(
        "| redis | {tasks} | {acquisitions:.0} | {commands:.2} ({:.2}) | {} | {peer:.0} | {peer_commands:.2} ({:.2}) | {} | {:.2}x | {polling:.0} |",
        commands - 1.0,
        shares(&per_task),
        peer_commands - 1.0,
        shares(&peer_per_task),
        acquisitions / peer,
    );
}

async fn on_etcd(fx: &Etcd, tasks: usize, s: &Settings) {
    let lockers = vec![locker(fx).await, locker(fx).await];
    let acquisitions = rate(tasks, s.window * 2, blocking(lockers, "hot".into())).await;
    println!("| etcd | {tasks} | {acquisitions:.0} | 2 (queued by revision: a put and a delete, no retries) | | | | | | n/a |");
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

/// Task `t` waits in rslock's `acquire_no_guard` on manager `t % 2`, then unlocks.
fn rslock_blocking(
    managers: Vec<rslock::LockManager>,
    key: String,
) -> impl Fn(usize, u64) -> BoxedUnit + Clone {
    let managers = std::sync::Arc::new(managers);
    move |task, _| {
        let (managers, key) = (managers.clone(), key.clone());
        Box::pin(async move {
            let manager = &managers[task % managers.len()];
            let lock = manager
                .acquire_no_guard(key.as_bytes(), Duration::from_secs(10))
                .await
                .expect("rslock: acquire");
            manager.unlock(&lock).await;
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

/// The script commands (EVALSHA and EVAL).
const SCRIPTS: &[&str] = &["cmdstat_evalsha:", "cmdstat_eval:"];

/// rslock's commands: `SET NX PX` per attempt, a script per unlock.
const RSLOCK: &[&str] = &["cmdstat_set:", "cmdstat_evalsha:", "cmdstat_eval:"];

/// Calls of the named commands the server has run so far, from `INFO commandstats`.
async fn calls(admin: &mut redis::aio::ConnectionManager, names: &[&str]) -> u64 {
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
    names.iter().map(|name| calls(name)).sum()
}
