//! Section 1, uncontended throughput: lock + release pairs/s, each task on a key of its own.

use std::sync::Arc;

use dlock::Locker;

use super::baselines::{self, Op};
use super::measure::{locker, rate};
use super::support::fixtures::{Etcd, Memory, Redis};
use super::Settings;

pub async fn run(redis: &Redis, etcd: &Etcd, memory: &Memory, s: &Settings) {
    println!("## 1. Uncontended lock + release pairs/s (distinct keys)\n");
    println!("Floor: the least the job needs on that server; peer: what a user would pick");
    println!("instead (see benches/dlock/baselines.rs). Measured alternately, twice each, in");
    println!("this run on the same server; the better window of each is kept.");
    println!("In-process: `tokio::sync::Mutex` as a comparison point, not a floor.\n");
    println!("| backend | tasks | dlock pairs/s | floor pairs/s | dlock / floor | peer | peer pairs/s | dlock / peer |");
    println!("|---|---|---|---|---|---|---|---|");
    for &tasks in s.task_counts {
        let dlock = boxed(lock_release(locker(redis).await));
        let (floor, peer) = (
            baselines::redis_floor(redis).await,
            baselines::redis_peer(redis),
        );
        against("redis", "rslock 0.10", tasks, s, [dlock, floor, peer]).await;
        let dlock = boxed(lock_release(locker(etcd).await));
        let (floor, peer) = (
            baselines::etcd_floor(etcd).await,
            baselines::etcd_peer(etcd).await,
        );
        against("etcd", "etcd lock service", tasks, s, [dlock, floor, peer]).await;
        against_mutex(memory, tasks, s).await;
    }
}

/// dlock, its floor and its peer, alternated twice; the better window of each.
async fn against(name: &str, peer_name: &str, tasks: usize, s: &Settings, ops: [Op; 3]) {
    let mut best = [0f64; 3];
    for _ in 0..2 {
        for (op, best) in ops.iter().zip(best.iter_mut()) {
            let op = op.clone();
            *best = best.max(rate(tasks, s.window, move |t, i| op(t, i)).await);
        }
    }
    let [d, f, p] = best;
    for (series, rate) in [("dlock", d), ("floor", f), (peer_name, p)] {
        super::charts::throughput(name, series, tasks, rate);
    }
    println!(
        "| {name} | {tasks} | {d:.0} | {f:.0} | {:.2}x | {peer_name} | {p:.0} | {:.2}x |",
        d / f,
        d / p
    );
}

fn boxed(op: impl Fn(usize, u64) -> BoxedUnit + Send + Sync + 'static) -> Op {
    std::sync::Arc::new(op)
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
        "| memory | {tasks} | {d:.0} | | | tokio::sync::Mutex (comparison point) | {m:.0} | {:.2}x |",
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
