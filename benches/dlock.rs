//! dlock benchmarks against real servers, each figure next to a baseline measured in the
//! same run on the same server:
//!
//! 1. uncontended lock + release pairs/s (1 and 64 tasks, distinct keys);
//! 2. handoff latency to a waiter already blocked in `lock()` (p50/p99), against polling;
//! 3. one key, 32 tasks over 2 lockers: acquisitions/s and attempts per acquisition;
//! 4. 10,000 locks held: memory per guard and CPU spent on renewal.
//!
//! ```sh
//! cargo bench --bench dlock              # full run (~4 min)
//! cargo bench --bench dlock -- --quick   # shorter windows, for a smoke test
//! cargo bench --bench dlock -- hold       # one section: throughput, handoff, contention, hold
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use dlock::{Config, Driver, LockOptions, Locker, MemoryStore};
use redis::Script;
use tokio::time::Instant;

// The lock's own scripts, loaded once as the library loads them.
static OBTAIN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../src/backend/redis/obtain.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../src/backend/redis/release.lua")));
static REFRESH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../src/backend/redis/refresh.lua")));

/// The acquire script, sent directly: the fencing token, or 0 when the lock is held.
async fn raw_obtain(conn: &mut redis::aio::ConnectionManager, lock: &str, token: &str) -> u64 {
    OBTAIN
        .key(lock)
        .arg(token)
        .arg(10_000)
        .invoke_async(conn)
        .await
        .unwrap()
}

/// The release script, sent directly (as another process would): 1 when released.
async fn raw_release(conn: &mut redis::aio::ConnectionManager, lock: &str, token: &str) -> i64 {
    RELEASE
        .key(lock)
        .arg(token)
        .arg(5_000)
        .arg(format!("{lock}:released"))
        .arg("another-process")
        .invoke_async(conn)
        .await
        .unwrap()
}

struct Settings {
    window: Duration,
    handoff_samples: usize,
    long_wait_samples: usize,
    hold_locks: usize,
    hold_for: Duration,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let settings = if quick {
        Settings {
            window: Duration::from_millis(500),
            handoff_samples: 10,
            long_wait_samples: 2,
            hold_locks: 2_000,
            hold_for: Duration::from_secs(5),
        }
    } else {
        Settings {
            window: Duration::from_secs(2),
            handoff_samples: 40,
            long_wait_samples: 6,
            hold_locks: 10_000,
            hold_for: Duration::from_secs(30),
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(settings));
}

/// Sections named on the command line (`throughput`, `handoff`, `contention`, `hold`), or all.
fn wanted(section: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    named.is_empty() || named.iter().any(|n| n == section)
}

async fn run(s: Settings) {
    let redis = support::RedisServer::start().await;
    let etcd = support::EtcdServer::start().await;
    println!(
        "# dlock benchmarks ({} cores)\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    if wanted("throughput") {
        println!("## 1. Uncontended lock + release pairs/s (distinct keys)\n");
        println!("| backend | tasks | baseline | baseline pairs/s | dlock pairs/s | ratio |");
        println!("|---|---|---|---|---|---|");
        for tasks in [1, 64] {
            uncontended_redis(&redis, tasks, &s).await;
            uncontended_etcd(&etcd, tasks, &s).await;
            uncontended_memory(tasks, &s).await;
        }
    }

    if wanted("handoff") {
        println!("\n## 2. Handoff latency: waiter blocked in lock(), holder releases\n");
        println!(
        "| backend | waiter waited | dlock p50 | dlock p99 | polling 100 ms p50 | polling p99 |"
    );
        println!("|---|---|---|---|---|---|");
        handoff_all(&redis, &etcd, &s).await;
    }

    if wanted("contention") {
        println!("\n## 3. One key, many tasks over 2 lockers\n");
        println!("| backend | tasks | acquisitions/s | attempts per acquisition | baseline (poll 100 ms) acq/s |");
        println!("|---|---|---|---|---|");
        contention_redis(&redis, 32, &s).await;
        contention_redis(&redis, 100, &s).await;
        contention_etcd(&etcd, 32, &s).await;
    }

    if wanted("hold") {
        println!("\n## 4. Holding many locks (Redis, TTL 10 s: renewal every 3.3 s)\n");
        hold_many(&redis, &s).await;
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Runs `tasks` loops of `op` for `window`; returns operations per second.
async fn rate<F, Fut>(tasks: usize, window: Duration, op: F) -> f64
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

/// Baseline and subject measured alternately, twice each; the better of each pair is kept.
async fn compare<B, BF, D, DF>(tasks: usize, window: Duration, baseline: B, dlock: D) -> (f64, f64)
where
    B: Fn(usize, u64) -> BF + Clone + Send + Sync + 'static,
    BF: Future<Output = ()> + Send,
    D: Fn(usize, u64) -> DF + Clone + Send + Sync + 'static,
    DF: Future<Output = ()> + Send,
{
    let (mut b, mut d) = (0f64, 0f64);
    for _ in 0..2 {
        b = b.max(rate(tasks, window, baseline.clone()).await);
        d = d.max(rate(tasks, window, dlock.clone()).await);
    }
    (b, d)
}

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

type BoxedUnit = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

fn row_rate(backend: &str, tasks: usize, baseline: &str, (b, d): (f64, f64)) {
    println!(
        "| {backend} | {tasks} | {baseline} | {b:.0} | {d:.0} | {:.2}x |",
        d / b
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn redis_locker(server: &support::RedisServer, retry: Duration, pubsub: bool) -> Locker {
    let config = Config {
        driver: Driver::Redis,
        prefix: "bench:".into(),
        default_ttl: Duration::from_secs(10),
        retry_interval: retry,
    };
    let mut builder = Locker::builder(config).redis(server.connection_manager().await);
    if pubsub {
        builder = builder.redis_pubsub(redis::Client::open(server.url()).unwrap());
    }
    builder.build().expect("build")
}

async fn etcd_locker(server: &support::EtcdServer, retry: Duration) -> Locker {
    let config = Config {
        driver: Driver::Etcd,
        prefix: "bench:".into(),
        default_ttl: Duration::from_secs(10),
        retry_interval: retry,
    };
    Locker::builder(config)
        .etcd(server.client().await)
        .build()
        .expect("build")
}

fn memory_locker(store: &MemoryStore, retry: Duration) -> Locker {
    let config = Config {
        prefix: "bench:".into(),
        retry_interval: retry,
        ..Config::default()
    };
    Locker::builder(config)
        .memory(store.clone())
        .build()
        .expect("build")
}

// ---------------------------------------------------------------------------------------
// 1. Uncontended throughput

async fn uncontended_redis(server: &support::RedisServer, tasks: usize, s: &Settings) {
    let conn = server.connection_manager().await;
    // The same two scripts the lock sends, with the same keys and arguments.
    let baseline = move |task: usize, i: u64| {
        let mut conn = conn.clone();
        async move {
            let key = format!("raw:{{k{task}}}");
            let token = format!("t{task}-{i}");
            assert!(raw_obtain(&mut conn, &key, &token).await > 0);
            assert_eq!(raw_release(&mut conn, &key, &token).await, 1);
        }
    };
    let locker = redis_locker(server, Duration::from_millis(100), true).await;
    let result = compare(tasks, s.window, baseline, lock_release(locker)).await;
    row_rate("redis", tasks, "raw obtain + release scripts", result);
}

async fn uncontended_etcd(server: &support::EtcdServer, tasks: usize, s: &Settings) {
    use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
    let client = server.client().await;
    // What one etcd lock needs at the least: a lease, a put-if-absent on it, a revoke.
    let baseline = move |task: usize, i: u64| {
        let client = client.clone();
        async move {
            let (mut lease, mut kv) = (client.lease_client(), client.kv_client());
            let id = lease.grant(10, None).await.unwrap().id();
            let key = format!("raw/k{task}/{i}");
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, "", Some(PutOptions::new().with_lease(id)))]);
            kv.txn(txn).await.unwrap();
            lease.revoke(id).await.unwrap();
        }
    };
    let locker = etcd_locker(server, Duration::from_millis(100)).await;
    let result = compare(tasks, s.window, baseline, lock_release(locker)).await;
    row_rate("etcd", tasks, "raw grant + txn put + revoke", result);
}

async fn uncontended_memory(tasks: usize, s: &Settings) {
    let mutexes: Arc<Vec<tokio::sync::Mutex<()>>> =
        Arc::new((0..tasks).map(|_| tokio::sync::Mutex::new(())).collect());
    let baseline = move |task: usize, _| {
        let mutexes = mutexes.clone();
        async move {
            drop(mutexes[task].lock().await);
        }
    };
    let locker = memory_locker(&MemoryStore::new(), Duration::from_millis(100));
    let result = compare(tasks, s.window, baseline, lock_release(locker)).await;
    row_rate("memory", tasks, "tokio::sync::Mutex", result);
}

// ---------------------------------------------------------------------------------------
// 2. Handoff latency

/// A holder in "another process": takes and releases the lock through `hold`/`free`.
trait Holder {
    fn hold(&self, key: &str) -> impl Future<Output = ()> + Send;
    fn free(&self, key: &str) -> impl Future<Output = ()> + Send;
}

/// Holds with the raw scripts (another process's dlock, as Redis sees it).
struct RawRedisHolder {
    conn: redis::aio::ConnectionManager,
}

impl Holder for RawRedisHolder {
    async fn hold(&self, key: &str) {
        let lock = format!("bench:{{{key}}}");
        let fence = raw_obtain(&mut self.conn.clone(), &lock, "other-process").await;
        assert!(fence > 0, "holder could not take {key}");
    }
    async fn free(&self, key: &str) {
        let lock = format!("bench:{{{key}}}");
        let released = raw_release(&mut self.conn.clone(), &lock, "other-process").await;
        assert_eq!(released, 1);
    }
}

/// Holds through a dlock locker of its own (etcd, in-process).
struct LockerHolder {
    locker: Locker,
    held: tokio::sync::Mutex<Option<dlock::LockGuard>>,
}

impl Holder for LockerHolder {
    async fn hold(&self, key: &str) {
        *self.held.lock().await = Some(self.locker.lock(key).await.unwrap());
    }
    async fn free(&self, _key: &str) {
        let guard = self.held.lock().await.take().unwrap();
        guard.release().await.unwrap();
    }
}

/// Latency from the release call to the waiter's `lock()` returning, for waiters that began
/// waiting `waited` before the release. `poll` waits with try_lock every 100 ms instead.
async fn handoff(
    holder: &impl Holder,
    waiter: &Locker,
    waited: Duration,
    samples: usize,
    poll: bool,
) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..samples {
        let key = format!("handoff-{}-{i}-{}", waited.as_millis(), poll as u8);
        holder.hold(&key).await;
        let w = waiter.clone();
        let k = key.clone();
        let task = tokio::spawn(async move {
            let guard = if poll {
                loop {
                    if let Some(g) = w.try_lock(&k).await.unwrap() {
                        break g;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            } else {
                w.lock_with(&k, LockOptions::new().wait_timeout(Duration::from_secs(10)))
                    .await
                    .unwrap()
            };
            let got = Instant::now();
            guard.release().await.unwrap();
            got
        });
        tokio::time::sleep(waited + Duration::from_millis(fastrand::u64(0..20))).await;
        let released = Instant::now();
        holder.free(&key).await;
        let got = task.await.unwrap();
        out.push(got.saturating_duration_since(released));
    }
    out.sort();
    out
}

async fn handoff_rows(name: &str, holder: &impl Holder, waiter: &Locker, s: &Settings) {
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

async fn handoff_all(redis: &support::RedisServer, etcd: &support::EtcdServer, s: &Settings) {
    let raw = RawRedisHolder {
        conn: redis.connection_manager().await,
    };
    let waiter = redis_locker(redis, Duration::from_millis(100), true).await;
    handoff_rows("redis (pub/sub)", &raw, &waiter, s).await;
    let no_pubsub = redis_locker(redis, Duration::from_millis(100), false).await;
    handoff_rows("redis (no pub/sub: polls)", &raw, &no_pubsub, s).await;

    let holder = LockerHolder {
        locker: etcd_locker(etcd, Duration::from_millis(100)).await,
        held: Default::default(),
    };
    let waiter = etcd_locker(etcd, Duration::from_millis(100)).await;
    handoff_rows("etcd", &holder, &waiter, s).await;

    let store = MemoryStore::new();
    let holder = LockerHolder {
        locker: memory_locker(&store, Duration::from_millis(100)),
        held: Default::default(),
    };
    handoff_rows(
        "memory",
        &holder,
        &memory_locker(&store, Duration::from_millis(100)),
        s,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 3. Contention on one key

async fn evalsha_calls(conn: &mut redis::aio::ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
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

async fn contention_redis(server: &support::RedisServer, tasks: usize, s: &Settings) {
    let lockers = [
        redis_locker(server, Duration::from_millis(100), true).await,
        redis_locker(server, Duration::from_millis(100), true).await,
    ];
    let mut admin = server.connection_manager().await;
    let key = format!("contended-{tasks}");
    let before = evalsha_calls(&mut admin).await;
    let window = s.window * 2;
    let acquisitions = rate(tasks, window, move |task, _| {
        let (locker, key) = (lockers[task % 2].clone(), key.clone());
        async move {
            let guard = locker.lock(&key).await.unwrap();
            guard.release().await.unwrap();
        }
    })
    .await;
    let scripts = evalsha_calls(&mut admin).await - before;
    let count = acquisitions * window.as_secs_f64();
    // Each acquisition is one successful obtain plus one release; the rest are failed attempts.
    let attempts = (scripts as f64 - count) / count;

    let conn = server.connection_manager().await;
    let key = format!("contended-raw-{tasks}");
    let baseline = rate(tasks, window, move |task, i| {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move {
            let lock = format!("bench:{{{key}}}");
            let token = format!("{task}-{i}");
            while raw_obtain(&mut conn, &lock, &token).await == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            raw_release(&mut conn, &lock, &token).await;
        }
    })
    .await;
    println!("| redis | {tasks} | {acquisitions:.0} | {attempts:.2} | {baseline:.0} |");
}

async fn contention_etcd(server: &support::EtcdServer, tasks: usize, s: &Settings) {
    let lockers = [
        etcd_locker(server, Duration::from_millis(100)).await,
        etcd_locker(server, Duration::from_millis(100)).await,
    ];
    let acquisitions = rate(tasks, s.window * 2, move |task, _| {
        let locker = lockers[task % 2].clone();
        async move {
            let guard = locker.lock("contended").await.unwrap();
            guard.release().await.unwrap();
        }
    })
    .await;
    println!("| etcd | {tasks} | {acquisitions:.0} | 1 (queued by revision, no retries) | n/a |");
}

// ---------------------------------------------------------------------------------------
// 4. Holding many locks

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command name: state is field 3; utime and stime are fields 14 and 15.
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

async fn hold_many(server: &support::RedisServer, s: &Settings) {
    let n = s.hold_locks;
    let locker = redis_locker(server, Duration::from_millis(100), false).await;
    let rss_before = rss_bytes();
    let mut guards = Vec::with_capacity(n);
    for i in 0..n {
        guards.push(locker.lock(&format!("many-{i}")).await.unwrap());
    }
    let rss_after = rss_bytes();
    let per_guard = rss_after.saturating_sub(rss_before) as f64 / n as f64;

    let cpu0 = cpu_time();
    let t0 = Instant::now();
    tokio::time::sleep(s.hold_for).await;
    let dlock_cpu = (cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let lost = guards.iter().filter(|g| g.is_lost()).count();
    drop(guards);
    locker.close().await.unwrap();

    // Baseline: the same renewals (one refresh script per lock every TTL/3) sent directly.
    let conn = server.connection_manager().await;
    let tokens: Vec<String> = (0..n).map(|i| format!("raw-{i}")).collect();
    let mut c = conn.clone();
    for (i, token) in tokens.iter().enumerate() {
        let lock = format!("bench:{{raw-many-{i}}}");
        raw_obtain(&mut c, &lock, token).await;
    }
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let period = Duration::from_millis(3333);
    let mut handles = Vec::new();
    for i in 0..n {
        let mut conn = conn.clone();
        let hold_for = s.hold_for;
        handles.push(tokio::spawn(async move {
            let lock = format!("bench:{{raw-many-{i}}}");
            let token = format!("raw-{i}");
            let start = Instant::now();
            let mut next = start + period;
            while next < start + hold_for {
                tokio::time::sleep_until(next).await;
                let _: i64 = REFRESH
                    .key(&lock)
                    .arg(&token)
                    .arg(10_000)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                next += period;
            }
        }));
    }
    tokio::time::sleep(s.hold_for).await;
    for h in handles {
        h.await.unwrap();
    }
    let raw_cpu = (cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();

    println!("| figure | dlock | baseline (raw refresh scripts, one task per lock) | ratio |");
    println!("|---|---|---|---|");
    println!("| locks held | {n} ({lost} lost) | {n} | |");
    println!("| RSS per guard | {:.0} B | | |", per_guard);
    println!(
        "| CPU while holding, % of one core | {:.1} % | {:.1} % | {:.2}x |",
        dlock_cpu * 100.0,
        raw_cpu * 100.0,
        dlock_cpu / raw_cpu.max(1e-9)
    );
}
