//! The workers: each task contends for random keys, works under `run`, writes to the fenced
//! resource, and records its sections on stdout for the coordinator.

use std::io::Write;
use std::sync::LazyLock;
use std::time::Duration;

use dlock::{Config, Driver, LockOptions, Locker};
use tokio::time::{sleep, Instant};

use crate::{now_ns, random_duration, support, Args, WorkerArgs, LONG_WORK, PREFIX, TTL};

// ---------------------------------------------------------------------------------------
// The fenced resource: what a holder protects with its fencing token.

/// The resource's fencing rule, for a lock and for a semaphore of N permits alike: it keeps
/// the N highest tokens it accepted for the key (N = 1: the highest), accepts a write while
/// it has fewer than N, or if its token is `>=` the lowest of them (equal: a holder writing
/// again), refuses it otherwise, and keeps the token if accepted. Every write is logged with
/// the server's clock. Tokens arrive zero-padded to 20 digits, so string order is numeric
/// order (no float rounding of large tokens in Lua); the set's scores are all 0, so Redis
/// keeps it in that order.
///
/// Why this rule for N permits: tokens strictly increase across the semaphore's
/// acquisitions, but N holders hold at once, so a token below the highest seen is no sign
/// of a lost permit (an older holder still holding writes after a newer one). What the
/// resource can tell is a write whose token is below N accepted ones: N acquisitions newer
/// than it have written, and with at most N permits at once it is then either lost or
/// outlived by as many newer holders as there are permits. It refuses that write. It is
/// conservative: the N newer holders may have released meanwhile, so a long holder that
/// still holds its permit can be refused after others came and went (counted as refused,
/// never as a violation); and it cannot refuse a stale holder before N newer ones have
/// written, as a lock's resource cannot before the one newer holder has (fencing's window).
/// With N = 1 it is exactly the lock's rule: accept a token `>=` the highest accepted.
const RESOURCE_WRITE: &str = r#"
-- KEYS[1] the N highest tokens accepted for this lock key (a sorted set, scores 0);
-- KEYS[2] log of every write
-- ARGV[1] token (20 digits); ARGV[2] holder (one acquisition); ARGV[3] N
local n = tonumber(ARGV[3])
local accepted = true
if redis.call('ZCARD', KEYS[1]) >= n then
  accepted = ARGV[1] >= redis.call('ZRANGE', KEYS[1], 0, 0)[1]
end
if accepted then
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
  if redis.call('ZCARD', KEYS[1]) > n then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, 0)
  end
end
local now = redis.call('TIME')
local verdict = accepted and '1' or '0'
redis.call('RPUSH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. verdict .. ' ' .. now[1] .. ' ' .. now[2])
return accepted and 1 or 0
"#;

static WRITE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESOURCE_WRITE));

/// The N highest tokens the resource accepted for `key` (a sorted set).
fn highest_key(key: &str) -> String {
    format!("resource:{{{key}}}:highest")
}

pub(crate) fn log_key(key: &str) -> String {
    format!("resource:{{{key}}}:log")
}

#[derive(Clone)]
struct Resource {
    conn: redis::aio::ConnectionManager,
    /// N of its rule (see [`RESOURCE_WRITE`]): the permits per key.
    permits: u32,
}

impl Resource {
    async fn connect(addr: &str, permits: u32) -> Resource {
        Resource {
            conn: support::connection_manager_at(&format!("redis://{addr}/")).await,
            permits,
        }
    }

    /// One fenced write; the verdict is logged by the resource, which is what the checker
    /// reads, so a write cut off by `lost()` after it was sent still counts. Whether it was
    /// accepted, when the resource answered.
    async fn write(&self, key: &str, token: u64, holder: &str) -> Option<bool> {
        let mut conn = self.conn.clone();
        let accepted: redis::RedisResult<i64> = WRITE_SCRIPT
            .key(highest_key(key))
            .key(log_key(key))
            .arg(format!("{token:020}"))
            .arg(holder)
            .arg(self.permits)
            .invoke_async(&mut conn)
            .await;
        accepted.ok().map(|a| a == 1)
    }
}

// ---------------------------------------------------------------------------------------
// Worker: contend, write through the resource, record sections on stdout as
// `key proc task seq token asked granted end lost`. The first line is `ready`; a line
// `busy UNTIL` announces long work in a section, until wall-clock ns UNTIL.

pub(crate) async fn worker(args: Args, me: WorkerArgs) -> i32 {
    let locker = connect_locker(&args.backend, &me.endpoints).await;
    let resource = Resource::connect(&me.resource, args.permits).await;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").expect("stdout");
    out.flush().expect("stdout");
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for task in 0..args.tasks {
        let contender = Contender {
            locker: locker.clone(),
            resource: resource.clone(),
            proc: me.id,
            task,
            keys: args.keys,
            election: args.election,
            permits: args.permits,
            deadline,
            records: tx.clone(),
        };
        tokio::spawn(contender.run());
    }
    drop(tx);
    while let Some(line) = rx.recv().await {
        writeln!(out, "{line}").expect("stdout");
    }
    0
}

async fn connect_locker(backend: &str, endpoints: &[String]) -> Locker {
    let config = Config {
        driver: match backend {
            "etcd" => Driver::Etcd,
            "postgres" => Driver::Postgres,
            _ => Driver::Redis,
        },
        prefix: PREFIX.into(),
        default_ttl: TTL,
        retry_interval: Duration::from_millis(50),
        ..Default::default()
    };
    match backend {
        "etcd" => {
            let urls: Vec<String> = endpoints.iter().map(|a| format!("http://{a}")).collect();
            let client = support::client_at(&urls).await;
            Locker::builder(config).etcd(client).build().expect("build")
        }
        "postgres" => {
            // A small pool whose every connection (the listening one too) goes through
            // this worker's proxy; a blackholed one gives up waiting for a connection in
            // TTL/2.
            let addr: std::net::SocketAddr = endpoints[0].parse().expect("proxy addr");
            let options = sqlx::postgres::PgConnectOptions::new()
                .host("127.0.0.1")
                .port(addr.port())
                .username("postgres")
                .database("postgres");
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(TTL / 2)
                .connect_with(options)
                .await
                .expect("connect to postgres through the proxy");
            Locker::builder(config)
                .postgres(pool)
                .build()
                .expect("build")
        }
        _ => {
            let url = format!("redis://{}/", endpoints[0]);
            let conn = support::connection_manager_at(&url).await;
            let client = redis::Client::open(url).expect("url");
            Locker::builder(config)
                .redis(conn)
                .redis_pubsub(client)
                .build()
                .expect("build")
        }
    }
}

/// One task of a worker.
struct Contender {
    locker: Locker,
    resource: Resource,
    proc: usize,
    task: usize,
    keys: usize,
    election: bool,
    /// 1: lock the key; N > 1: take one of the N permits of the semaphore named after it.
    permits: u32,
    deadline: Instant,
    records: tokio::sync::mpsc::UnboundedSender<String>,
}

/// A held lock or permit, or a leadership (`--election`): the same guarantees, two front
/// doors.
enum Held {
    Lock(dlock::LockGuard),
    Leader(dlock::Leadership),
}

impl Held {
    fn fencing_token(&self) -> u64 {
        match self {
            Held::Lock(guard) => guard.fencing_token(),
            Held::Leader(leadership) => leadership.term(),
        }
    }

    fn run<F: std::future::Future>(&self, work: F) -> dlock::Run<F> {
        match self {
            Held::Lock(guard) => guard.run(work),
            Held::Leader(leadership) => leadership.run(work),
        }
    }

    async fn release(self) {
        let _ = match self {
            Held::Lock(guard) => guard.release().await,
            Held::Leader(leadership) => leadership.resign().await,
        };
    }
}

impl Contender {
    async fn run(self) {
        let mut seq = 0u64;
        while Instant::now() < self.deadline {
            let key = format!("k{}", fastrand::usize(0..self.keys));
            let asked = now_ns();
            let options = LockOptions::new().wait_timeout(Duration::from_secs(3));
            let acquired = if self.election {
                let value = format!("{}/{}", self.proc, self.task);
                let election = self.locker.election(key.clone()).options(options);
                election.campaign(&value).await.map(Held::Leader)
            } else if self.permits > 1 {
                let semaphore = self.locker.semaphore(key.clone(), self.permits);
                semaphore.acquire_with(options).await.map(Held::Lock)
            } else {
                self.locker.lock_with(&key, options).await.map(Held::Lock)
            };
            let guard = match acquired {
                Ok(guard) => guard,
                // A backend that keeps fewer permits: no retry helps.
                Err(e @ dlock::Error::InvalidPermits { .. }) => {
                    eprintln!("worker {}: {e}", self.proc);
                    std::process::exit(2);
                }
                Err(_) => {
                    sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let granted = now_ns();
            seq += 1;
            let holder = holder_id(self.proc, self.task, seq);
            let token = guard.fencing_token();
            let outcome = guard.run(self.section(&key, token, &holder)).await;
            let end = now_ns();
            let line = format!(
                "{key} {} {} {seq} {token} {asked} {granted} {end} {}",
                self.proc,
                self.task,
                outcome.is_err() as u8
            );
            let _ = self.records.send(line);
            guard.release().await;
        }
    }

    /// Work, then write, then write again a little later: a pause can land before either.
    async fn section(&self, key: &str, token: u64, holder: &str) {
        let work = match fastrand::u8(0..10) {
            0 => random_duration(500..3000),
            _ => random_duration(1..30),
        };
        if work >= LONG_WORK {
            // The best moment for a pause: the coordinator aims at it (see `pauses`).
            let _ = self
                .records
                .send(format!("busy {}", now_ns() + work.as_nanos()));
        }
        sleep(work).await;
        let _ = self.resource.write(key, token, holder).await;
        sleep(random_duration(5..50)).await;
        let _ = self.resource.write(key, token, holder).await;
    }
}

/// Names one acquisition, in the section records and in the resource's log alike.
pub(crate) fn holder_id(proc: usize, task: usize, seq: u64) -> String {
    format!("p{proc}t{task}n{seq}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fencing rule on a real Redis: with N = 2 the resource accepts any token until it
    /// has two, then only tokens `>=` the lower of the two highest; with N = 1, only tokens
    /// `>=` the highest (the lock's rule).
    #[tokio::test]
    async fn the_resource_keeps_the_n_highest_tokens() {
        let server = support::RedisServer::start().await;
        let addr = server.addr().to_string();
        let two = Resource::connect(&addr, 2).await;
        let mut verdicts = Vec::new();
        for token in [20, 10, 30, 10, 20, 25, 20, 30] {
            verdicts.push((token, two.write("two", token, "h").await));
        }
        let accepted = |v: &[(u64, Option<bool>)]| -> Vec<(u64, bool)> {
            v.iter()
                .map(|&(t, a)| (t, a.expect("the resource answers")))
                .collect()
        };
        assert_eq!(
            accepted(&verdicts),
            [
                (20, true),  // fewer than 2 kept: accepted; keeps {20}
                (10, true),  // still fewer than 2: keeps {10, 20}
                (30, true),  // >= 10: keeps {20, 30}
                (10, false), // below both of the 2 highest
                (20, true),  // the lower of the 2 highest, writing again
                (25, true),  // keeps {25, 30}
                (20, false), // now below both
                (30, true),
            ]
        );
        let one = Resource::connect(&addr, 1).await;
        let mut verdicts = Vec::new();
        for token in [20, 10, 20, 30, 25] {
            verdicts.push((token, one.write("one", token, "h").await));
        }
        assert_eq!(
            accepted(&verdicts),
            [(20, true), (10, false), (20, true), (30, true), (25, false)]
        );
    }
}
