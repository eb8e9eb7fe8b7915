//! Section 1, uncontended throughput: lock + release pairs/s, each task on a key of its own.

use std::sync::Arc;

use dlock::testing::Fixture;
use dlock::Locker;

use super::measure::{best_of_two, locker, rate};
use super::support::fixtures::{Etcd, Memory, Redis};
use super::Settings;

pub async fn run(redis: &Redis, etcd: &Etcd, memory: &Memory, s: &Settings) {
    println!("## 1. Uncontended lock + release pairs/s (distinct keys)\n");
    println!("Redis and etcd: baseline: none yet; issue 12 adds the floor and peers.");
    println!("In-process: `tokio::sync::Mutex` as a comparison point, not a floor.\n");
    println!("| backend | tasks | dlock pairs/s | comparison point | its pairs/s | dlock / it |");
    println!("|---|---|---|---|---|---|");
    for tasks in [1, 64] {
        alone("redis", redis, tasks, s).await;
        alone("etcd", etcd, tasks, s).await;
        against_mutex(memory, tasks, s).await;
    }
}

/// dlock's figure alone: the better of two windows.
async fn alone<F: Fixture>(name: &str, fx: &F, tasks: usize, s: &Settings) {
    let pairs = best_of_two(tasks, s.window, lock_release(locker(fx).await)).await;
    println!("| {name} | {tasks} | {pairs:.0} | none yet | | |");
}

/// The in-process store beside a bare `tokio::sync::Mutex` per key, alternated twice.
async fn against_mutex(memory: &Memory, tasks: usize, s: &Settings) {
    let mutexes: Arc<Vec<tokio::sync::Mutex<()>>> =
        Arc::new((0..tasks).map(|_| tokio::sync::Mutex::new(())).collect());
    let mutex = move |task: usize, _| {
        let mutexes = mutexes.clone();
        async move {
            drop(mutexes[task].lock().await);
        }
    };
    let dlock = lock_release(locker(memory).await);
    let (mut m, mut d) = (0f64, 0f64);
    for _ in 0..2 {
        m = m.max(rate(tasks, s.window, mutex.clone()).await);
        d = d.max(rate(tasks, s.window, dlock.clone()).await);
    }
    println!(
        "| memory | {tasks} | {d:.0} | tokio::sync::Mutex | {m:.0} | {:.2}x |",
        d / m
    );
}

type BoxedUnit = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The measured operation: one task's lock + release on a key of its own.
fn lock_release(locker: Locker) -> impl Fn(usize, u64) -> BoxedUnit + Clone + Send + Sync {
    move |task, _| {
        let locker = locker.clone();
        Box::pin(async move {
            let guard = locker.lock(&format!("k{task}")).await.unwrap();
            guard.release().await.unwrap();
        })
    }
}
