//! dlock benchmarks against real servers, started through the same fixtures as the tests
//! (`tests/support/fixtures.rs`). One module per section:
//!
//! 1. `throughput`: uncontended lock + release pairs/s (1 and 64 tasks, distinct keys);
//! 2. `handoff`: latency to a waiter already blocked in `lock()` (p50/p99) when a second
//!    locker, with its own connection, releases, against rslock's and etcd's lock service's
//!    own waiting; a waiter polling every 100 ms beside it;
//! 3. `contention`: one hot key, many tasks over 2 lockers: acquisitions/s, attempts per
//!    acquisition and the fewest/most acquisitions one task got, against rslock;
//! 4. `hold`: 100,000 locks held, on Redis and on etcd: live heap per guard (`heap.rs`), the
//!    CPU the client and the server spend on renewal, and etcd's lease count;
//! 5. `cost`: what one uncontended lock + release costs the Redis server (commands and CPU
//!    per pair), against the floor and rslock;
//! 6. `semaphore`: semaphores of 5 permits: acquire + release pairs/s on one semaphore (1
//!    and 16 tasks), handoff to a blocked waiter (p50/p90) and, on Redis, the commands and
//!    time of one pair, against the floors (issue 21);
//! 7. `postgres`: PostgreSQL (issue 22): pairs/s (1 and 16 tasks, distinct keys and one hot
//!    key), handoff p50/p90, pairs/s on a fresh key and after 10,000 pairs on it, and the
//!    statements and server time of one pair
//!    (`pg_stat_statements`) with `EXPLAIN ANALYZE` of the acquire, against the floor (one
//!    `INSERT .. ON CONFLICT` + `DELETE`) and the peer (`pg_advisory_lock`).
//!
//! Each section also records its figures for `charts.rs`, which ends the run by drawing
//! them as SVG files in `benches/charts/` (shown by BENCHMARKS.md).
//!
//! Baselines are the floor (the least the job needs, `baselines.rs`) or a peer a user would
//! pick instead (rslock, etcd's lock service), in the same run on the same server; never our
//! own protocol sent by hand, which measures nothing but the client. The comparison points
//! kept (a 100 ms polling waiter, `tokio::sync::Mutex`) are other ways to do the job.
//!
//! ```sh
//! cargo bench --all-features --bench dlock              # full run (~5 min)
//! cargo bench --all-features --bench dlock -- --quick   # shorter windows, for a smoke test
//! cargo bench --all-features --bench dlock -- hold  # or: throughput, handoff, contention, hold, cost, semaphore, postgres
//! ```

#[path = "../../tests/support/mod.rs"]
mod support;

mod baselines;
mod charts;
mod contention;
mod cost;
mod handoff;
mod heap;
mod hold;
mod measure;
mod postgres;
mod semaphore;
mod throughput;

use std::time::Duration;

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

use dlock::testing::Fixture;
use support::fixtures::{Etcd, Memory, Postgres, Redis};

/// How long and how many: the full run, or `--quick`.
pub struct Settings {
    /// One measuring window of the throughput section (twice that for the hot key).
    pub window: Duration,
    /// The task counts of the throughput section (the points of its chart).
    pub task_counts: &'static [usize],
    /// Handoffs measured after the waiter waited 50 ms.
    pub handoff_samples: usize,
    /// Handoffs measured after the waiter waited 1 s.
    pub long_wait_samples: usize,
    /// Locks held at once in the hold section.
    pub hold_locks: usize,
    /// How long they are held while CPU is measured.
    pub hold_for: Duration,
    /// Lock + release pairs per row of the cost section.
    pub cost_pairs: u64,
}

impl Settings {
    fn full() -> Settings {
        Settings {
            window: Duration::from_secs(2),
            task_counts: &[1, 4, 16, 64],
            handoff_samples: 40,
            long_wait_samples: 6,
            hold_locks: 100_000,
            hold_for: Duration::from_secs(20),
            cost_pairs: 20_000,
        }
    }

    fn quick() -> Settings {
        Settings {
            window: Duration::from_millis(500),
            task_counts: &[1, 64],
            handoff_samples: 10,
            long_wait_samples: 2,
            hold_locks: 2_000,
            hold_for: Duration::from_secs(5),
            cost_pairs: 2_000,
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let settings = if quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(settings));
}

/// Sections named on the command line (`throughput`, `handoff`, `contention`, `hold`,
/// `cost`, `semaphore`, `postgres`), or all.
fn wanted(section: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    named.is_empty() || named.iter().any(|n| n == section)
}

async fn run(s: Settings) {
    let redis = Redis::start().await;
    let etcd = Etcd::start().await;
    let memory = Memory::start().await;
    println!(
        "# dlock benchmarks ({} cores)\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    if wanted("throughput") {
        throughput::run(&redis, &etcd, &memory, &s).await;
    }
    if wanted("handoff") {
        handoff::run(&redis, &etcd, &memory, &s).await;
    }
    if wanted("contention") {
        contention::run(&redis, &etcd, &s).await;
    }
    if wanted("hold") {
        hold::run(&redis, &etcd, &s).await;
    }
    if wanted("cost") {
        cost::run(&redis, &s).await;
    }
    if wanted("semaphore") {
        semaphore::run(&redis, &etcd, &s).await;
    }
    if wanted("postgres") {
        let mut pg = Postgres::start().await;
        postgres::run(&mut pg, &s).await;
    }
    charts::write(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/charts"));
}
