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

/// Accepts a write if its token is not below the highest accepted for this lock key.
/// Tokens arrive zero-padded to 20 digits, so string order is numeric order (no float
/// rounding of large tokens in Lua). Every write is logged with the server's clock.
const RESOURCE_WRITE: &str = r#"
-- KEYS[1] highest token accepted for this lock key; KEYS[2] log of every write
-- ARGV[1] token (20 digits); ARGV[2] holder (one acquisition)
local highest = redis.call('GET', KEYS[1])
local accepted = (not highest) or ARGV[1] >= highest
if accepted then
  redis.call('SET', KEYS[1], ARGV[1])
end
local now = redis.call('TIME')
local verdict = accepted and '1' or '0'
redis.call('RPUSH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. verdict .. ' ' .. now[1] .. ' ' .. now[2])
return accepted and 1 or 0
"#;

static WRITE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESOURCE_WRITE));

fn highest_key(key: &str) -> String {
    format!("resource:{{{key}}}:highest")
}

pub(crate) fn log_key(key: &str) -> String {
    format!("resource:{{{key}}}:log")
}

#[derive(Clone)]
struct Resource {
    conn: redis::aio::ConnectionManager,
}

impl Resource {
    async fn connect(addr: &str) -> Resource {
        Resource {
            conn: support::connection_manager_at(&format!("redis://{addr}/")).await,
        }
    }

    /// One fenced write; the verdict is logged by the resource, which is what the checker
    /// reads, so a write cut off by `lost()` after it was sent still counts.
    async fn write(&self, key: &str, token: u64, holder: &str) {
        let mut conn = self.conn.clone();
        let _: redis::RedisResult<i64> = WRITE_SCRIPT
            .key(highest_key(key))
            .key(log_key(key))
            .arg(format!("{token:020}"))
            .arg(holder)
            .invoke_async(&mut conn)
            .await;
    }
}

// ---------------------------------------------------------------------------------------
// Worker: contend, write through the resource, record sections on stdout as
// `key proc task seq token asked granted end lost`. The first line is `ready`; a line
// `busy UNTIL` announces long work in a section, until wall-clock ns UNTIL.

pub(crate) async fn worker(args: Args, me: WorkerArgs) -> i32 {
    let locker = connect_locker(&args.backend, &me.endpoints).await;
    let resource = Resource::connect(&me.resource).await;
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
        driver: if backend == "etcd" {
            Driver::Etcd
        } else {
            Driver::Redis
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
    deadline: Instant,
    records: tokio::sync::mpsc::UnboundedSender<String>,
}

/// A held lock, or a leadership (`--election`): the same guarantees, two front doors.
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
            } else {
                self.locker.lock_with(&key, options).await.map(Held::Lock)
            };
            let Ok(guard) = acquired else {
                sleep(Duration::from_millis(20)).await;
                continue;
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
        self.resource.write(key, token, holder).await;
        sleep(random_duration(5..50)).await;
        self.resource.write(key, token, holder).await;
    }
}

/// Names one acquisition, in the section records and in the resource's log alike.
pub(crate) fn holder_id(proc: usize, task: usize, seq: u64) -> String {
    format!("p{proc}t{task}n{seq}")
}
