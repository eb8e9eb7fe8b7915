//! What every section shares: the config, the rate loop, percentiles.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + window;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (op, done) = (op.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < deadline {
                op(task, i).await;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for h in handles {
        h.await.expect("bench task");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
