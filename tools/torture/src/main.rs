//! Torture checker: K worker processes × N tasks contend for a few keys while a coordinator
//! injects faults; every critical section and every write to a fenced resource is
//! recorded, and a checker looks for violations. Exit status 1 if it finds any.
//!
//! ```sh
//! cargo run -p dlock-torture -- --backend redis --procs 3 --tasks 4 --keys 3 --secs 20
//! cargo run -p dlock-torture -- --backend redis --persistence aof --secs 20
//! cargo run -p dlock-torture -- --backend etcd --secs 20
//! cargo run -p dlock-torture -- --backend etcd --no-faults
//! cargo run -p dlock-torture -- --backend redis --election --secs 20
//! ```
//!
//! `--election`: each task campaigns in the election named after the key
//! (`Election::campaign`, publishing its task's name) instead of locking it, works under
//! `Leadership::run`, and resigns; a term is a fencing token, so every rule below applies to
//! leaders as it does to holders (two leaders of one election at once is rule 5).
//!
//! # What runs
//!
//! - **Lock server**: one `redis-server` whose persistence `--persistence rdb|aof|none`
//!   chooses (default `rdb`), or, with `--backend etcd`, a 3-member etcd cluster.
//! - **Fenced resource**: a second `redis-server`, never proxied and never faulted. Per lock
//!   key it keeps the highest fencing token it accepted and a log of every write. A Lua
//!   script accepts a write if its token is `>=` the highest (equal: the same holder writing
//!   twice), refuses it otherwise, and logs it either way with the server's clock.
//! - **Workers**: each process reaches the lock server through fault-injecting proxies of its
//!   own (one per etcd member) and the resource directly. Each task loops: lock a random key,
//!   work (mostly 1-30 ms, one time in ten 0.5-3 s, longer than the TTL), write to the
//!   resource, sleep 5-50 ms, write again, release. Work and writes run inside `guard.run`,
//!   so the section ends when `lost()` fires, as the library asks of its users. A section
//!   records `asked` (before `lock()`), `granted` (when `lock()` returned) and `end`, in
//!   wall-clock nanoseconds (one machine, one clock).
//!
//! # Fault model
//!
//! Three injectors run at once, each one fault at a time:
//!
//! - **network**, on one worker's proxies: traffic delayed 5-100 ms for 1 s, a blackhole
//!   shorter than TTL/2, a blackhole longer than the TTL, every connection reset;
//! - **pause**: a worker process stopped (SIGSTOP) for 1.5 × TTL, then resumed (SIGCONT),
//!   like a GC pause or a suspended VM. A paused process cannot notice `lost()`. Pauses are
//!   aimed: workers announce long work, and the coordinator stops one that is in the middle
//!   of it when it can, so that the lock expires between the grant and the writes
//!   (blackholes are aimed the same way);
//! - **server**: Redis is killed (SIGKILL) and restarted on its own dir, reloading what it
//!   persisted: with `rdb`, a `BGSAVE` is taken 0.5-1.5 s before the kill, so the snapshot is
//!   older than the latest acquisitions (the fault's span starts at the snapshot); with
//!   `aof`, `appendfsync everysec`; with `none`, it comes back empty. `--persistence` only
//!   applies to Redis. An operator `DEL`s the lock keys (found with `SCAN`, fencing counters
//!   left alone). On etcd: a follower or the leader is killed and restarted, rarely two
//!   members at once (quorum lost for less than the TTL); an operator deletes the lock
//!   prefix, or revokes a random lease. Server faults alternate between a restart and an
//!   operator action, a restart first, so that every run has at least one restart.
//!
//! A fault *touches* a section when the fault's time span meets the section's
//! `[asked, end]`, and the fault hit the server or the section's own process.
//!
//! # Violation rules
//!
//! B is **newer** than A (same key) when `B.asked > A.granted`: B asked only after A held
//! the lock, so B was granted after A on the server, whatever the faults. Violations:
//!
//! 1. **Duplicate token**: two acquisitions of one key got the same fencing token.
//! 2. **Token backwards**: B is newer than A, yet `token(B) < token(A)`.
//! 3. **Stale write accepted**: the resource accepted a write of A after it had accepted a
//!    write of a newer B. The resource's rule makes this possible only when
//!    `token(A) >= token(B)`: it is rule 1 or 2 doing harm, what fencing exists to prevent.
//! 4. **Same-token writes accepted**: the resource accepted writes of two different
//!    acquisitions carrying the same token, so it could not tell them apart.
//! 5. **Unexcused overlap**: two sections of one key overlap in time (B granted before A's
//!    section ended) and neither excuse applies:
//!    - a *pause* touched either section: a paused holder resumes believing it holds the
//!      lock (the documented limit); only fencing protects the resource then, and rules 3-4
//!      check that it did;
//!    - a fault that takes locks away *on the server* (a Redis restart, whatever the
//!      persistence: `appendfsync everysec` may lose the last second; an operator delete;
//!      a lease revoke) touched A and began before B was granted, and A's section ended
//!      soon enough after that fault: within TTL/3 + 0.5 s (the next renewal sees the
//!      loss), or TTL + 0.5 s if A's renewals may have failed meanwhile (a restart, or a
//!      network fault or member restart touching A: the watchdog fires at 0.9 TTL). A later
//!      end is a holder that did not notice.
//!
//!    Network faults, etcd member restarts and quorum loss excuse nothing: the library must
//!    keep mutual exclusion through them.
//!
//! Not violations, reported: overlaps that were excused; writes refused by fencing;
//! writes of a superseded holder (a newer holder had been granted) that the resource
//! accepted *before the newer holder's first write* — the resource cannot refuse a token
//! older than one it has never seen, which is fencing's documented window. (So "a token
//! accepted lower than one already issued" is not a violation by itself; rule 3 is the
//! harm it can lead to.)
//!
//! The output has one row per fault kind: injected, sections touched, sections ended by
//! `lost()`, overlaps with and without a pause involved, writes refused, and every violation
//! count. An event touched by several faults counts in each of their rows; `(no fault)`
//! counts events no fault touched.

#[path = "../../../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dlock::{Config, Driver, LockOptions, Locker};
use tokio::time::{sleep, Instant};

const TTL: Duration = Duration::from_secs(2);
/// Longer than the TTL, so that a paused holder's lock expires while it sleeps.
const PAUSE: Duration = Duration::from_millis(3000);
/// Slack for scheduling on a loaded machine when checking how fast a loss was noticed.
const SLACK: Duration = Duration::from_millis(500);
const PREFIX: &str = "torture:";
/// Work at least this long is announced to the coordinator, which aims pauses at it.
const LONG_WORK: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------
// Command line.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Persistence {
    Rdb,
    Aof,
    None,
}

impl Persistence {
    fn parse(s: &str) -> Persistence {
        match s {
            "rdb" => Persistence::Rdb,
            "aof" => Persistence::Aof,
            "none" => Persistence::None,
            other => panic!("--persistence rdb|aof|none, not {other}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Persistence::Rdb => "rdb",
            Persistence::Aof => "aof",
            Persistence::None => "none",
        }
    }

    /// Extra `redis-server` arguments. RDB needs none: the harness disables save points and
    /// the coordinator takes the snapshot itself, at a moment it knows.
    fn server_args(self) -> &'static [&'static str] {
        match self {
            Persistence::Aof => &["--appendonly", "yes", "--appendfsync", "everysec"],
            Persistence::Rdb | Persistence::None => &[],
        }
    }
}

#[derive(Clone, Debug)]
struct Args {
    backend: String,
    procs: usize,
    tasks: usize,
    keys: usize,
    secs: u64,
    faults: bool,
    /// Campaign in elections instead of locking (`--election`).
    election: bool,
    persistence: Persistence,
    /// Worker mode: set by the coordinator when it spawns a worker.
    worker: Option<WorkerArgs>,
}

#[derive(Clone, Debug)]
struct WorkerArgs {
    id: usize,
    /// Where to reach the lock server: this worker's proxies, one per server or member.
    endpoints: Vec<String>,
    /// The fenced resource's `host:port`.
    resource: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        backend: "redis".into(),
        procs: 3,
        tasks: 4,
        keys: 3,
        secs: 20,
        faults: true,
        election: false,
        persistence: Persistence::Rdb,
        worker: None,
    };
    let mut resource = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => args.backend = value(),
            "--procs" => args.procs = value().parse().expect("--procs N"),
            "--tasks" => args.tasks = value().parse().expect("--tasks N"),
            "--keys" => args.keys = value().parse().expect("--keys N"),
            "--secs" => args.secs = value().parse().expect("--secs N"),
            "--persistence" => args.persistence = Persistence::parse(&value()),
            "--no-faults" => args.faults = false,
            "--election" => args.election = true,
            "--resource" => resource = Some(value()),
            "--worker" => {
                let endpoints = value().split(',').map(String::from).collect();
                let id = value().parse().expect("--worker ADDRS ID");
                args.worker = Some(WorkerArgs {
                    id,
                    endpoints,
                    resource: String::new(),
                });
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(worker) = &mut args.worker {
        worker.resource = resource.expect("a worker needs --resource ADDR");
    }
    args
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn random_duration(millis: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(fastrand::u64(millis))
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let code = match args.worker.clone() {
        Some(worker_args) => runtime.block_on(worker(args, worker_args)),
        None => runtime.block_on(coordinator(args)),
    };
    std::process::exit(code);
}

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

fn log_key(key: &str) -> String {
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

async fn worker(args: Args, me: WorkerArgs) -> i32 {
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
fn holder_id(proc: usize, task: usize, seq: u64) -> String {
    format!("p{proc}t{task}n{seq}")
}

// ---------------------------------------------------------------------------------------
// Coordinator: servers, proxies, workers, faults, then the checker.

async fn coordinator(args: Args) -> i32 {
    let t0 = now_ns();
    let resource = support::RedisServer::start().await;
    let mut server = LockServer::start(&args).await;
    // One proxy per worker and server address, so that a fault cuts one worker off while
    // the others go on.
    let mut proxies = Vec::new();
    for _ in 0..args.procs {
        let mut mine = Vec::new();
        for target in server.addrs() {
            mine.push(support::Proxy::start(target).await);
        }
        proxies.push(mine);
    }
    let mut workers: Vec<WorkerProcess> = proxies
        .iter()
        .enumerate()
        .map(|(id, mine)| WorkerProcess::spawn(&args, id, mine, resource.addr()))
        .collect();
    for w in &mut workers {
        w.wait_ready().await;
    }

    let faults = if args.faults {
        let end = Instant::now() + Duration::from_secs(args.secs);
        let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
        let busy: Vec<Arc<AtomicU64>> = workers.iter().map(|w| w.busy.clone()).collect();
        let (mut network, mut paused, mut on_server) = tokio::join!(
            network_faults(&proxies, &busy, end),
            pauses(&pids, &busy, end),
            server_faults(&mut server, end),
        );
        network.append(&mut paused);
        network.append(&mut on_server);
        network
    } else {
        Vec::new()
    };

    let sections = tokio::task::spawn_blocking(move || {
        workers
            .into_iter()
            .flat_map(WorkerProcess::finish)
            .collect::<Vec<_>>()
    })
    .await
    .expect("collect sections");
    let writes = read_resource_log(&resource, args.keys).await;
    let report = check(&sections, &writes, &faults, t0);
    report.print(&args, &sections, &writes, &faults)
}

/// The lock server the workers contend on.
enum LockServer {
    Redis {
        server: support::RedisServer,
        persistence: Persistence,
    },
    Etcd {
        cluster: support::EtcdCluster,
        /// The operator's own client, straight to the members (no proxy). Boxed: it is
        /// large, and the Redis variant small.
        admin: Box<etcd_client::Client>,
    },
}

impl LockServer {
    async fn start(args: &Args) -> LockServer {
        match args.backend.as_str() {
            "redis" => LockServer::Redis {
                server: support::RedisServer::start_with(args.persistence.server_args()).await,
                persistence: args.persistence,
            },
            "etcd" => {
                let cluster = support::EtcdCluster::start(3).await;
                let admin = Box::new(cluster.client().await);
                LockServer::Etcd { cluster, admin }
            }
            other => panic!("--backend redis|etcd, not {other}"),
        }
    }

    /// Where the proxies forward to: the server, or every member.
    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            LockServer::Redis { server, .. } => vec![server.addr()],
            LockServer::Etcd { cluster, .. } => cluster
                .endpoints()
                .iter()
                .map(|e| {
                    e.trim_start_matches("http://")
                        .parse()
                        .expect("member addr")
                })
                .collect(),
        }
    }
}

/// A worker process, and the thread that reads its records.
struct WorkerProcess {
    child: Child,
    pid: u32,
    /// Until when (wall-clock ns) the worker said one of its sections does long work.
    busy: Arc<AtomicU64>,
    ready: Option<tokio::sync::oneshot::Receiver<()>>,
    lines: std::thread::JoinHandle<Vec<String>>,
}

impl WorkerProcess {
    fn spawn(args: &Args, id: usize, proxies: &[support::Proxy], resource: SocketAddr) -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let endpoints: Vec<String> = proxies.iter().map(|p| p.addr().to_string()).collect();
        let mut child = Command::new(exe)
            .args(["--backend", &args.backend])
            .args(["--tasks", &args.tasks.to_string()])
            .args(["--keys", &args.keys.to_string()])
            .args(["--secs", &args.secs.to_string()])
            .args(["--resource", &resource.to_string()])
            .args(["--worker", &endpoints.join(","), &id.to_string()])
            .args(args.election.then_some("--election"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        let pid = child.id();
        let stdout = child.stdout.take().expect("worker stdout");
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let busy = Arc::new(AtomicU64::new(0));
        let busy_until = busy.clone();
        // Read as the worker writes, so that a full pipe never blocks it.
        let lines = std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("worker output is utf-8");
                if let Some(until) = line.strip_prefix("busy ") {
                    let until = until.parse().expect("busy UNTIL");
                    busy_until.fetch_max(until, Ordering::Relaxed);
                } else if line == "ready" {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                } else {
                    lines.push(line);
                }
            }
            lines
        });
        WorkerProcess {
            child,
            pid,
            busy,
            ready: Some(ready),
            lines,
        }
    }

    /// Faults start only once every worker is connected: a worker cannot start against a
    /// server that is down.
    async fn wait_ready(&mut self) {
        let ready = self.ready.take().expect("wait_ready once");
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("a worker did not connect within 30 s")
            .expect("a worker exited before it was ready");
    }

    /// Blocks until the worker exits; its section records.
    fn finish(mut self) -> Vec<Section> {
        let status = self.child.wait().expect("wait for worker");
        assert!(status.success(), "a worker failed: {status:?}");
        let lines = self.lines.join().expect("reader thread");
        lines.iter().map(|l| Section::parse(l)).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Faults.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Delay,
    ShortBlackhole,
    LongBlackhole,
    Reset,
    Pause,
    RedisRestart(Persistence),
    OperatorDel,
    FollowerRestart,
    LeaderRestart,
    QuorumLoss,
    OperatorDeletePrefix,
    LeaseRevoke,
}

impl Kind {
    fn label(self) -> String {
        match self {
            Kind::Delay => "delay 5-100 ms, 1 s".into(),
            Kind::ShortBlackhole => "blackhole < TTL/2".into(),
            Kind::LongBlackhole => "blackhole > TTL".into(),
            Kind::Reset => "reset connections".into(),
            Kind::Pause => "pause 1.5xTTL".into(),
            Kind::RedisRestart(p) => format!("redis kill+restart ({})", p.name()),
            Kind::OperatorDel => "operator DEL locks".into(),
            Kind::FollowerRestart => "kill+restart follower".into(),
            Kind::LeaderRestart => "kill+restart leader".into(),
            Kind::QuorumLoss => "kill 2 of 3 (no quorum)".into(),
            Kind::OperatorDeletePrefix => "operator delete prefix".into(),
            Kind::LeaseRevoke => "operator revoke lease".into(),
        }
    }

    /// An operator deleting keys or revoking leases: the server stays up.
    fn is_operator(self) -> bool {
        matches!(
            self,
            Kind::OperatorDel | Kind::OperatorDeletePrefix | Kind::LeaseRevoke
        )
    }

    /// Faults that take locks away on the server, which a holder learns of only at its
    /// next renewal: they excuse an overlap of bounded length (rule 5).
    fn takes_locks(self) -> bool {
        self.is_operator() || matches!(self, Kind::RedisRestart(_))
    }
}

/// One injected fault: what, on which worker (`None`: the server), and when.
#[derive(Debug)]
struct Fault {
    kind: Kind,
    proc: Option<usize>,
    from: u128,
    to: u128,
}

impl Fault {
    fn touches(&self, s: &Section) -> bool {
        self.proc.is_none_or(|p| p == s.proc) && self.from <= s.end && s.asked <= self.to
    }
}

/// Whether to start another fault: not in the last 2 s of the run, so that the workers
/// (which stop at the end) see the aftermath of every fault.
fn time_left(end: Instant) -> bool {
    Instant::now() + Duration::from_secs(2) < end
}

/// Network faults on one worker's proxies at a time. Blackholes are aimed at a worker in
/// the middle of long work (see [`aim`]): a holder cut off for longer than the TTL must
/// stop before the server lets the lock expire, or rule 5 reports an overlap.
async fn network_faults(
    proxies: &[Vec<support::Proxy>],
    busy: &[Arc<AtomicU64>],
    end: Instant,
) -> Vec<Fault> {
    let mut faults = Vec::new();
    loop {
        sleep(random_duration(500..1500)).await;
        if !time_left(end) {
            break;
        }
        let (kind, hold) = match fastrand::u8(0..4) {
            0 => (Kind::Delay, Duration::from_secs(1)),
            1 => (Kind::ShortBlackhole, TTL / 2 - Duration::from_millis(200)),
            2 => (Kind::LongBlackhole, TTL + Duration::from_millis(500)),
            _ => (Kind::Reset, Duration::ZERO),
        };
        let proc = match kind {
            Kind::ShortBlackhole | Kind::LongBlackhole => aim(busy).await,
            _ => fastrand::usize(0..proxies.len()),
        };
        let from = now_ns();
        network_fault(&proxies[proc], kind, hold).await;
        faults.push(Fault {
            kind,
            proc: Some(proc),
            from,
            to: now_ns(),
        });
    }
    faults
}

/// Applies a network fault to every proxy of a worker, holds it, heals it.
async fn network_fault(proxies: &[support::Proxy], kind: Kind, hold: Duration) {
    for proxy in proxies {
        match kind {
            Kind::Delay => proxy.delay(random_duration(5..100)),
            Kind::Reset => proxy.reset_all(),
            _ => proxy.blackhole(),
        }
    }
    sleep(hold).await;
    for proxy in proxies {
        proxy.pass();
    }
}

/// Pauses one worker process at a time for [`PAUSE`], aimed at one in the middle of long
/// work (see [`aim`]): its lock expires while it sleeps, and its writes come after.
async fn pauses(pids: &[u32], busy: &[Arc<AtomicU64>], end: Instant) -> Vec<Fault> {
    let mut faults = Vec::new();
    loop {
        sleep(random_duration(1500..3500)).await;
        if !time_left(end) {
            break;
        }
        let proc = aim(busy).await;
        let from = now_ns();
        {
            let _stopped = Stopped::new(pids[proc]);
            sleep(PAUSE).await;
        }
        faults.push(Fault {
            kind: Kind::Pause,
            proc: Some(proc),
            from,
            to: now_ns(),
        });
    }
    faults
}

/// A worker in the middle of long work if one is within a second, else any. A fault at a
/// random moment mostly hits a process that holds nothing or holds briefly; one that lands
/// inside a section is what tests loss detection and fencing. `busy[i]`: until when (ns)
/// worker `i` said it does long work.
async fn aim(busy: &[Arc<AtomicU64>]) -> usize {
    let give_up = Instant::now() + Duration::from_secs(1);
    loop {
        // At least 300 ms of work left, so that the fault lands before the writes.
        let soon = (now_ns() + 300_000_000) as u64;
        let candidates: Vec<usize> = (0..busy.len())
            .filter(|&i| busy[i].load(Ordering::Relaxed) > soon)
            .collect();
        if !candidates.is_empty() {
            return candidates[fastrand::usize(0..candidates.len())];
        }
        if Instant::now() >= give_up {
            return fastrand::usize(0..busy.len());
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// A process stopped with SIGSTOP, resumed with SIGCONT when this is dropped, so that no
/// worker stays stopped even if the coordinator panics.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        assert!(signal(pid, "-STOP"), "kill -STOP {pid} failed");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// `kill -SIG pid` through the `kill` command: no extra dependency for one syscall.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Server-side faults, one at a time: restarts and operators. Restarts alternate with
/// the others, starting with one, so that even a short run has a restart.
async fn server_faults(server: &mut LockServer, end: Instant) -> Vec<Fault> {
    let mut faults = Vec::new();
    for n in 0.. {
        sleep(random_duration(1000..2500)).await;
        if !time_left(end) {
            break;
        }
        let from = now_ns();
        let kind = match server {
            LockServer::Redis {
                server,
                persistence,
            } => redis_fault(server, *persistence, n % 2 == 0).await,
            LockServer::Etcd { cluster, admin } => etcd_fault(cluster, admin, n % 2 == 0).await,
        };
        if let Some(kind) = kind {
            faults.push(Fault {
                kind,
                proc: None,
                from,
                to: now_ns(),
            });
        }
    }
    faults
}

/// A crash and restart, or an operator deleting the lock keys. `None` if nothing happened
/// (no lock key to delete at that moment).
async fn redis_fault(
    server: &mut support::RedisServer,
    persistence: Persistence,
    restart: bool,
) -> Option<Kind> {
    if restart {
        if persistence == Persistence::Rdb {
            // The realistic case: the data on disk is older than what was handed out since.
            server.bgsave_and_wait().await;
            sleep(random_duration(500..1500)).await;
        }
        server.crash_and_restart(random_duration(100..1000)).await;
        return Some(Kind::RedisRestart(persistence));
    }
    (delete_lock_keys(&server.url()).await > 0).then_some(Kind::OperatorDel)
}

/// `SCAN` for keys under the prefix and `DEL` the locks (not the fencing counters: an
/// operator clearing stuck locks). Returns how many were deleted.
async fn delete_lock_keys(url: &str) -> usize {
    let attempt = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let mut cursor = 0u64;
        let mut locks = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}*"))
                .arg("COUNT")
                .arg(100)
                .query_async(&mut conn)
                .await
                .ok()?;
            locks.extend(keys.into_iter().filter(|k| !k.ends_with(":fence")));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if locks.is_empty() {
            return Some(0);
        }
        redis::cmd("DEL")
            .arg(&locks)
            .query_async::<usize>(&mut conn)
            .await
            .ok()
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Some(deleted)) => deleted,
        _ => 0,
    }
}

/// Member restarts (`restart`: the leader, a follower, or rarely two members so that quorum
/// is lost), or else an operator deleting the prefix or revoking a lease.
async fn etcd_fault(
    cluster: &mut support::EtcdCluster,
    admin: &mut etcd_client::Client,
    restart: bool,
) -> Option<Kind> {
    if restart {
        let leader = cluster.leader_index().await;
        let kind = match fastrand::u8(0..5) {
            0..=1 => Kind::LeaderRestart,
            2..=3 => Kind::FollowerRestart,
            _ => Kind::QuorumLoss,
        };
        let members = match kind {
            Kind::LeaderRestart => vec![leader],
            Kind::FollowerRestart => vec![(leader + fastrand::usize(1..3)) % 3],
            _ => vec![(leader + 1) % 3, (leader + 2) % 3],
        };
        let down = match kind {
            Kind::QuorumLoss => random_duration(300..1500), // less than the TTL
            _ => random_duration(500..2500),
        };
        restart_members(cluster, &members, down).await;
        return Some(kind);
    }
    if fastrand::bool() {
        operator_delete_prefix(admin)
            .await
            .then_some(Kind::OperatorDeletePrefix)
    } else {
        operator_revoke_lease(admin)
            .await
            .then_some(Kind::LeaseRevoke)
    }
}

/// SIGKILL the members, stay down, start them again on their data.
async fn restart_members(cluster: &mut support::EtcdCluster, members: &[usize], down: Duration) {
    for &m in members {
        cluster.kill_member(m);
    }
    sleep(down).await;
    for &m in members {
        cluster.restart_member(m);
    }
}

async fn operator_delete_prefix(admin: &mut etcd_client::Client) -> bool {
    let delete = admin.delete(
        PREFIX,
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    );
    matches!(
        tokio::time::timeout(Duration::from_secs(2), delete).await,
        Ok(Ok(reply)) if reply.deleted() > 0
    )
}

/// Lists the leases (one per acquisition, waiters' included) and revokes one at random.
async fn operator_revoke_lease(admin: &mut etcd_client::Client) -> bool {
    let attempt = async {
        let leases = admin.leases().await.ok()?;
        let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
        if ids.is_empty() {
            return None;
        }
        admin
            .lease_revoke(ids[fastrand::usize(0..ids.len())])
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
}

// ---------------------------------------------------------------------------------------
// Records.

#[derive(Debug)]
struct Section {
    key: String,
    proc: usize,
    holder: String,
    token: u64,
    asked: u128,
    granted: u128,
    end: u128,
    lost: bool,
}

impl Section {
    fn parse(line: &str) -> Section {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 9, "bad record {line:?}");
        let num = |i: usize| -> u128 { f[i].parse().unwrap_or_else(|_| panic!("{line:?}")) };
        Section {
            key: f[0].into(),
            proc: num(1) as usize,
            holder: holder_id(num(1) as usize, num(2) as usize, num(3) as u64),
            token: num(4) as u64,
            asked: num(5),
            granted: num(6),
            end: num(7),
            lost: f[8] == "1",
        }
    }

    /// `p0t1n2 token T [granted .. end]`, times in seconds since the coordinator started.
    fn describe(&self, t0: u128) -> String {
        format!(
            "{} token {} [{} .. {}]{}",
            self.holder,
            self.token,
            since(t0, self.granted),
            since(t0, self.end),
            if self.lost { " lost" } else { "" }
        )
    }
}

/// A wall-clock time as seconds since `t0`.
fn since(t0: u128, t: u128) -> String {
    format!("{:.3}s", t.saturating_sub(t0) as f64 / 1e9)
}

/// One write as the resource logged it, in the order it applied them (per key).
#[derive(Debug)]
struct ResourceWrite {
    key: String,
    token: u64,
    holder: String,
    accepted: bool,
    at: u128,
}

async fn read_resource_log(resource: &support::RedisServer, keys: usize) -> Vec<ResourceWrite> {
    let mut conn = resource.connection_manager().await;
    let mut writes = Vec::new();
    for k in 0..keys {
        let key = format!("k{k}");
        let entries: Vec<String> = redis::cmd("LRANGE")
            .arg(log_key(&key))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("LRANGE resource log");
        for entry in entries {
            let f: Vec<&str> = entry.split(' ').collect();
            assert_eq!(f.len(), 5, "bad resource log entry {entry:?}");
            let secs: u128 = f[3].parse().expect("seconds");
            let micros: u128 = f[4].parse().expect("microseconds");
            writes.push(ResourceWrite {
                key: key.clone(),
                token: f[0].parse().expect("token"),
                holder: f[1].into(),
                accepted: f[2] == "1",
                at: (secs * 1_000_000 + micros) * 1000,
            });
        }
    }
    writes
}

// ---------------------------------------------------------------------------------------
// Checker.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Finding {
    // Reported, not violations.
    Lost,
    OverlapWithPause,
    OverlapExcused,
    Refused,
    SupersededAccepted,
    // Violations.
    OverlapUnexcused,
    DuplicateToken,
    TokenBackwards,
    StaleAccepted,
    SameTokenAccepted,
}

impl Finding {
    fn is_violation(self) -> bool {
        self >= Finding::OverlapUnexcused
    }

    fn label(self) -> &'static str {
        match self {
            Finding::Lost => "sections ended by lost()",
            Finding::OverlapWithPause => "overlapping pairs, a pause involved (allowed)",
            Finding::OverlapExcused => {
                "overlapping pairs, no pause, the lock taken on the server and the loss noticed \
                 in time (allowed)"
            }
            Finding::Refused => "writes refused by fencing",
            Finding::SupersededAccepted => {
                "writes of a superseded holder accepted before the newer holder wrote (allowed)"
            }
            Finding::OverlapUnexcused => "overlapping pairs, no excuse (rule 5)",
            Finding::DuplicateToken => "duplicate tokens (rule 1)",
            Finding::TokenBackwards => "tokens backwards (rule 2)",
            Finding::StaleAccepted => "stale writes accepted (rule 3)",
            Finding::SameTokenAccepted => "same-token writes accepted (rule 4)",
        }
    }
}

/// One finding, the sections it involves (to attribute it to faults), and a description.
struct Event {
    finding: Finding,
    sections: Vec<usize>,
    /// For an excused overlap: the kinds of fault that excuse it.
    excused_by: BTreeSet<Kind>,
    detail: String,
}

struct Report {
    events: Vec<Event>,
    /// Per event, the kinds of fault that touched one of its sections.
    touched_by: Vec<BTreeSet<Kind>>,
}

/// Applies the rules of the module doc to the records; `t0` only serves the descriptions.
fn check(sections: &[Section], writes: &[ResourceWrite], faults: &[Fault], t0: u128) -> Report {
    let by_key = indices_by_key(sections);
    let mut checker = Checker {
        sections,
        faults,
        t0,
        by_key: &by_key,
        events: Vec::new(),
    };
    checker.lost_sections();
    for order in by_key.values() {
        checker.overlaps(order);
        checker.duplicates(order);
        checker.backwards(order);
    }
    checker.writes(writes);
    let events = checker.events;
    let touched_by = events
        .iter()
        .map(|e| {
            faults
                .iter()
                .filter(|f| e.sections.iter().any(|&i| f.touches(&sections[i])))
                .map(|f| f.kind)
                .collect()
        })
        .collect();
    Report { events, touched_by }
}

/// Per key, section indices in grant order.
fn indices_by_key(sections: &[Section]) -> BTreeMap<String, Vec<usize>> {
    let mut by_key = BTreeMap::<String, Vec<usize>>::new();
    for (i, s) in sections.iter().enumerate() {
        by_key.entry(s.key.clone()).or_default().push(i);
    }
    for list in by_key.values_mut() {
        list.sort_by_key(|&i| sections[i].granted);
    }
    by_key
}

/// The records under check, and the findings so far.
struct Checker<'a> {
    sections: &'a [Section],
    faults: &'a [Fault],
    t0: u128,
    by_key: &'a BTreeMap<String, Vec<usize>>,
    events: Vec<Event>,
}

impl Checker<'_> {
    fn push(&mut self, finding: Finding, sections: Vec<usize>, detail: String) {
        self.events.push(Event {
            finding,
            sections,
            excused_by: BTreeSet::new(),
            detail,
        });
    }

    fn describe(&self, i: usize) -> String {
        self.sections[i].describe(self.t0)
    }

    fn lost_sections(&mut self) {
        for i in 0..self.sections.len() {
            if self.sections[i].lost {
                self.push(Finding::Lost, vec![i], self.describe(i));
            }
        }
    }

    /// Rule 5: every pair (older A, newer B) of one key with B granted before A's section
    /// ended. `order`: the key's sections in grant order.
    fn overlaps(&mut self, order: &[usize]) {
        let mut open: Vec<usize> = Vec::new();
        for &b in order {
            let granted = self.sections[b].granted;
            open.retain(|&a| self.sections[a].end > granted);
            for &a in &open {
                let (sa, sb) = (&self.sections[a], &self.sections[b]);
                let (finding, excused_by) = self.classify_overlap(sa, sb);
                let detail = format!(
                    "{}: {} and {} overlap by {} ms",
                    sa.key,
                    self.describe(a),
                    self.describe(b),
                    (sa.end.min(sb.end) - granted) / 1_000_000
                );
                self.events.push(Event {
                    finding,
                    sections: vec![a, b],
                    excused_by,
                    detail,
                });
            }
            open.push(b);
        }
    }

    fn classify_overlap(&self, older: &Section, newer: &Section) -> (Finding, BTreeSet<Kind>) {
        let paused = self
            .faults
            .iter()
            .any(|f| f.kind == Kind::Pause && (f.touches(older) || f.touches(newer)));
        if paused {
            return (Finding::OverlapWithPause, BTreeSet::from([Kind::Pause]));
        }
        // The fault took the older holder's lock before the newer one got it; the older must
        // notice by its next renewal, or by its watchdog when renewals fail.
        let excused_by: BTreeSet<Kind> = self
            .faults
            .iter()
            .filter(|f| {
                f.kind.takes_locks()
                    && f.touches(older)
                    && newer.granted >= f.from
                    && older.end <= f.to + self.notice_within(f, older).as_nanos()
            })
            .map(|f| f.kind)
            .collect();
        if excused_by.is_empty() {
            (Finding::OverlapUnexcused, excused_by)
        } else {
            (Finding::OverlapExcused, excused_by)
        }
    }

    /// How long after `fault` (which took the lock away on the server) the holder of
    /// `section` may go on: its next renewal (TTL/3) sees the loss when it reaches the
    /// server; if it cannot (a restart, or another fault on the way), the watchdog fires
    /// at 0.9 TTL from the last confirmed renewal. Plus slack for scheduling.
    fn notice_within(&self, fault: &Fault, section: &Section) -> Duration {
        let renewals_may_fail = !fault.kind.is_operator()
            || self
                .faults
                .iter()
                .any(|g| g.touches(section) && !g.kind.is_operator());
        if renewals_may_fail {
            TTL + SLACK
        } else {
            TTL / 3 + SLACK
        }
    }

    /// Rule 1: a token of one key handed out more than once.
    fn duplicates(&mut self, order: &[usize]) {
        let mut first = HashMap::<u64, usize>::new();
        for &i in order {
            let s = &self.sections[i];
            match first.get(&s.token) {
                Some(&earlier) => {
                    let detail = format!(
                        "{}: one token issued to {} and again to {}",
                        s.key,
                        self.describe(earlier),
                        self.describe(i)
                    );
                    self.push(Finding::DuplicateToken, vec![earlier, i], detail);
                }
                None => {
                    first.insert(s.token, i);
                }
            }
        }
    }

    /// Rule 2: B newer than A (asked after A was granted) with a smaller token. In grant
    /// order the candidates A for B are a prefix, so keep the prefix's maximum token.
    fn backwards(&mut self, order: &[usize]) {
        let mut prefix_max: Vec<usize> = Vec::with_capacity(order.len());
        for &i in order {
            let best = match prefix_max.last() {
                Some(&m) if self.sections[m].token >= self.sections[i].token => m,
                _ => i,
            };
            prefix_max.push(best);
        }
        for &b in order {
            let sb = &self.sections[b];
            let before = order.partition_point(|&a| self.sections[a].granted < sb.asked);
            if before == 0 {
                continue;
            }
            let a = prefix_max[before - 1];
            if self.sections[a].token > sb.token {
                let detail = format!(
                    "{}: {} asked at {}, after {} was granted, and got a smaller token",
                    sb.key,
                    self.describe(b),
                    since(self.t0, sb.asked),
                    self.describe(a)
                );
                self.push(Finding::TokenBackwards, vec![a, b], detail);
            }
        }
    }

    /// Rules 3 and 4, and what fencing refused, from the resource's own log (its order).
    fn writes(&mut self, writes: &[ResourceWrite]) {
        let holders: HashMap<&str, usize> = self
            .sections
            .iter()
            .enumerate()
            .map(|(i, s)| (s.holder.as_str(), i))
            .collect();
        // Per key: the accepted writer that asked last (the newest so far); per key and
        // token: its first accepted writer.
        let mut newest = HashMap::<&str, usize>::new();
        let mut token_owner = HashMap::<(&str, u64), usize>::new();
        for w in writes {
            let Some(&a) = holders.get(w.holder.as_str()) else {
                panic!(
                    "the resource logged a write of {} that no worker recorded",
                    w.holder
                );
            };
            if !w.accepted {
                let detail = format!("{}: write of {} refused", w.key, self.describe(a));
                self.push(Finding::Refused, vec![a], detail);
                continue;
            }
            let sa = &self.sections[a];
            match newest.get(w.key.as_str()) {
                Some(&b) if self.sections[b].asked > sa.granted => {
                    self.write_event(
                        Finding::StaleAccepted,
                        w,
                        a,
                        b,
                        "after a write of the newer",
                    );
                }
                _ => {
                    if let Some(b) = self.granted_newer(&w.key, sa, w.at) {
                        let what = "while already superseded by";
                        self.write_event(Finding::SupersededAccepted, w, a, b, what);
                    }
                }
            }
            match token_owner.get(&(w.key.as_str(), w.token)) {
                Some(&b) if b != a => {
                    self.write_event(Finding::SameTokenAccepted, w, a, b, "with the token of");
                }
                Some(_) => {}
                None => {
                    token_owner.insert((w.key.as_str(), w.token), a);
                }
            }
            let is_newest = newest
                .get(w.key.as_str())
                .is_none_or(|&b| self.sections[b].asked < sa.asked);
            if is_newest {
                newest.insert(w.key.as_str(), a);
            }
        }
    }

    fn write_event(&mut self, finding: Finding, w: &ResourceWrite, a: usize, b: usize, what: &str) {
        let detail = format!(
            "{}: write of {} accepted at {} {what} {}",
            w.key,
            self.describe(a),
            since(self.t0, w.at),
            self.describe(b)
        );
        self.push(finding, vec![b, a], detail);
    }

    /// A section of `key` newer than `a` that had been granted by `at`.
    fn granted_newer(&self, key: &str, a: &Section, at: u128) -> Option<usize> {
        self.by_key[key]
            .iter()
            .copied()
            .take_while(|&b| self.sections[b].granted < at)
            .find(|&b| self.sections[b].asked > a.granted)
    }
}

// ---------------------------------------------------------------------------------------
// Output.

/// The table's count columns, in order.
const COLUMNS: [(&str, &[Finding]); 8] = [
    ("lost()", &[Finding::Lost]),
    ("ovl+pause", &[Finding::OverlapWithPause]),
    (
        "ovl-pause",
        &[Finding::OverlapExcused, Finding::OverlapUnexcused],
    ),
    ("refused", &[Finding::Refused]),
    ("stale-acc", &[Finding::StaleAccepted]),
    ("sametok-acc", &[Finding::SameTokenAccepted]),
    ("dup-tokens", &[Finding::DuplicateToken]),
    ("backwards", &[Finding::TokenBackwards]),
];

impl Report {
    fn count(&self, finding: Finding) -> usize {
        self.events.iter().filter(|e| e.finding == finding).count()
    }

    fn violations(&self) -> usize {
        self.events
            .iter()
            .filter(|e| e.finding.is_violation())
            .count()
    }

    /// Prints the summary, the table and the violations; returns the exit status.
    fn print(
        &self,
        args: &Args,
        sections: &[Section],
        writes: &[ResourceWrite],
        faults: &[Fault],
    ) -> i32 {
        let persistence = match args.backend.as_str() {
            "redis" => args.persistence.name(),
            _ => "raft (3 members)",
        };
        println!(
            "torture: backend={} persistence={} procs={} tasks={} keys={} secs={} ttl={:?}",
            args.backend, persistence, args.procs, args.tasks, args.keys, args.secs, TTL
        );
        let accepted = writes.iter().filter(|w| w.accepted).count();
        println!(
            "  sections: {} ({} ended by lost()); resource writes: {} accepted, {} refused",
            sections.len(),
            self.count(Finding::Lost),
            accepted,
            writes.len() - accepted
        );
        self.print_table(sections, faults);
        println!("  findings:");
        for finding in [
            Finding::OverlapWithPause,
            Finding::OverlapExcused,
            Finding::SupersededAccepted,
            Finding::Refused,
            Finding::OverlapUnexcused,
            Finding::DuplicateToken,
            Finding::TokenBackwards,
            Finding::StaleAccepted,
            Finding::SameTokenAccepted,
        ] {
            let n = self.count(finding);
            let tag = if finding.is_violation() && n > 0 {
                "VIOLATION "
            } else {
                ""
            };
            println!("    {tag}{}: {n}", finding.label());
            if finding == Finding::OverlapExcused && n > 0 {
                println!("      excused by: {}", self.excusers());
            }
            if finding.is_violation() {
                let examples = self.events.iter().filter(|e| e.finding == finding);
                for e in examples.take(3) {
                    println!("      e.g. {}", e.detail);
                }
            }
        }
        let violations = self.violations();
        println!("  violations: {violations}");
        assert!(
            !sections.is_empty(),
            "no section was recorded: the workers never got a lock"
        );
        (violations > 0) as i32
    }

    /// How many excused overlaps each kind of fault excuses, and for how many it is the
    /// only excuse (an overlap may have several).
    fn excusers(&self) -> String {
        let mut counts = BTreeMap::<Kind, (usize, usize)>::new();
        for e in &self.events {
            if e.finding == Finding::OverlapExcused {
                for kind in &e.excused_by {
                    let (any, alone) = counts.entry(*kind).or_default();
                    *any += 1;
                    *alone += (e.excused_by.len() == 1) as usize;
                }
            }
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|(kind, (any, alone))| format!("{} {any} (only excuse: {alone})", kind.label()))
            .collect();
        parts.join(", ")
    }

    fn print_table(&self, sections: &[Section], faults: &[Fault]) {
        let mut header = format!("  {:<28}{:>9}{:>9}", "fault", "injected", "sections");
        for (name, _) in COLUMNS {
            header += &format!("{name:>12}");
        }
        println!("{header}");
        let kinds: BTreeSet<Kind> = faults.iter().map(|f| f.kind).collect();
        for kind in kinds {
            let injected = faults.iter().filter(|f| f.kind == kind).count();
            let touched = sections
                .iter()
                .filter(|s| faults.iter().any(|f| f.kind == kind && f.touches(s)))
                .count();
            let row = self.row(|k| k.contains(&kind));
            print_row(&kind.label(), &injected.to_string(), touched, &row);
        }
        let untouched = sections
            .iter()
            .filter(|s| !faults.iter().any(|f| f.touches(s)))
            .count();
        print_row("(no fault)", "-", untouched, &self.row(|k| k.is_empty()));
        print_row(
            "all",
            &faults.len().to_string(),
            sections.len(),
            &self.row(|_| true),
        );
        println!(
            "  (ovl+pause / ovl-pause: overlapping pairs with / without a pause involved; \
             refused: writes refused by fencing; stale-acc, sametok-acc, dup-tokens, backwards: \
             rules 3, 4, 1, 2. An event touched by several faults counts in each of their rows.)"
        );
    }

    /// The column counts over the events whose touching kinds satisfy `select`.
    fn row(&self, select: impl Fn(&BTreeSet<Kind>) -> bool) -> Vec<usize> {
        COLUMNS
            .iter()
            .map(|(_, findings)| {
                self.events
                    .iter()
                    .zip(&self.touched_by)
                    .filter(|(e, k)| findings.contains(&e.finding) && select(k))
                    .count()
            })
            .collect()
    }
}

fn print_row(label: &str, injected: &str, sections: usize, counts: &[usize]) {
    let mut line = format!("  {label:<28}{injected:>9}{sections:>9}");
    for n in counts {
        line += &format!("{n:>12}");
    }
    println!("{line}");
}
