//! What every section shares: the config, the rate loop, percentiles.

use std::future::Future;
use std::time::Duration;

use dlock::testing::Fixture;
use dlock::{Config, Locker};
use tokio::time::Instant;

/// Every benchmark locker: the tests' config with a 10 s TTL and the default 100 ms poll
/// (the tests poll every 20 ms; a benchmark measures the defaults users run).
pub fn config<F: Fixture>() -> Config {
    Config {
        retry_interval: Duration::from_millis(100),
        ..dlock::testing::config(F::DRIVER, "bench:", Duration::from_secs(10))
    }
}

/// A locker of its own (its own connection) on the fixture's server.
pub async fn locker<F: Fixture>(fx: &F) -> Locker {
    fx.locker(config::<F>()).await
}

/// Runs `tasks` loops of `op` for `window`; returns operations per second.
pub async fn rate<F, Fut>(tasks: usize, window: Duration, op: F) -> f64
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    rate_per_task(tasks, window, op).await.0
}

/// [`rate`], and how many operations each task completed.
pub async fn rate_per_task<F, Fut>(tasks: usize, window: Duration, op: F) -> (f64, Vec<u64>)
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let start = Instant::now();
    let deadline = start + window;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut done = 0;
            while Instant::now() < deadline {
                op(task, done).await;
                done += 1;
            }
            done
        }));
    }
    let mut per_task = Vec::with_capacity(tasks);
    for h in handles {
        per_task.push(h.await.expect("bench task"));
    }
    let total: u64 = per_task.iter().sum();
    (total as f64 / start.elapsed().as_secs_f64(), per_task)
}

/// The smallest and largest share of all operations that one task completed, in percent
/// ("1.2–6.0 %"; a fair split of 32 tasks gives 3.1 % each).
pub fn shares(per_task: &[u64]) -> String {
    let total = per_task.iter().sum::<u64>().max(1) as f64;
    let share = |n: u64| n as f64 * 100.0 / total;
    let min = per_task.iter().copied().min().unwrap_or(0);
    let max = per_task.iter().copied().max().unwrap_or(0);
    format!("{:.1}–{:.1} %", share(min), share(max))
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
