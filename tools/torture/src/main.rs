//! Torture checker: K worker processes × N tasks contend for a few keys while a coordinator
//! injects faults; every critical section and every write to a fenced resource is
//! recorded, and a checker looks for violations. Exit status 1 if it finds any.
//!
//! ```sh
//! cargo run -p dlock-torture -- --backend redis --procs 3 --tasks 4 --keys 3 --secs 20
//! cargo run -p dlock-torture -- --backend redis --persistence aof --secs 20
//! cargo run -p dlock-torture -- --backend etcd --secs 20
//! cargo run -p dlock-torture -- --backend etcd --no-faults
//! cargo run -p dlock-torture -- --backend postgres --secs 20
//! cargo run -p dlock-torture -- --backend redis --election --secs 20
//! cargo run -p dlock-torture -- --backend redis --permits 3 --keys 2 --secs 20
//! ```
//!
//! `--election`: each task campaigns in the election named after the key
//! (`Election::campaign`, publishing its task's name) instead of locking it, works under
//! `Leadership::run`, and resigns; a term is a fencing token, so every rule below applies to
//! leaders as it does to holders (two leaders of one election at once is rule 5).
//!
//! `--permits N` (default 1: locks, as above): each task takes one of the N permits of the
//! semaphore named after the key (`Locker::semaphore(key, N)`) instead, and every rule
//! below is read with N holders allowed at once: rule 5 counts N + 1 sections of one key at
//! once, the resource keeps the N highest tokens it accepted (see `workers::RESOURCE_WRITE`
//! for why that is the rule it can check), and rule 3 a write accepted after writes of N
//! newer acquisitions. With N = 1 each reads as written. `--election` takes no `--permits`.
//!
//! # What runs
//!
//! - **Lock server**: one `redis-server` whose persistence `--persistence rdb|aof|none`
//!   chooses (default `rdb`), or, with `--backend etcd`, a 3-member etcd cluster, or, with
//!   `--backend postgres`, one PostgreSQL server (the test harness's, fsync on).
//! - **Fenced resource**: a second `redis-server`, never proxied and never faulted. Per lock
//!   key it keeps the highest fencing token it accepted (the N highest with `--permits N`)
//!   and a log of every write. A Lua script accepts a write if its token is `>=` the highest
//!   (equal: the same holder writing twice; with N: `>=` the lowest of the N highest once it
//!   has N), refuses it otherwise, and logs it either way with the server's clock.
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
//!   prefix, or revokes a random lease. On PostgreSQL: the server is killed (SIGKILL), stays
//!   down 0.1-1 s and restarts with crash recovery on its data dir (this excuses nothing:
//!   every committed acquisition and renewal survives); an operator `DELETE`s the holder
//!   rows of the lock keys (the sequence left alone). Server faults alternate between a restart and an
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
//!    write of a newer B (with `--permits N`: writes of N different acquisitions newer than
//!    A). The resource's rule makes this possible only when `token(A) >= token(B)` (for
//!    one of the N): it is rule 1 or 2 doing harm, what fencing exists to prevent.
//! 4. **Same-token writes accepted**: the resource accepted writes of two different
//!    acquisitions carrying the same token, so it could not tell them apart.
//! 5. **Unexcused overlap**: two sections of one key overlap in time (B granted before A's
//!    section ended) and neither excuse applies (with `--permits N`: B granted while N
//!    sections A of its key were open, and fewer than `open - N + 1` of the pairs (A, B)
//!    have an excuse, so that B and N unexcused others held at once):
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

mod checker;
mod faults;
mod servers;
mod workers;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use servers::coordinator;
use workers::worker;

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
    /// Take one of this many permits of a semaphore per key (`--permits N`; 1: a lock).
    permits: u32,
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
        permits: 1,
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
            // Not a number: 0, refused below with the others.
            "--permits" => args.permits = value().parse().unwrap_or(0),
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
    if args.permits == 0 || args.permits > dlock::MAX_PERMITS {
        eprintln!(
            "--permits N: 1 to {}, not {}",
            dlock::MAX_PERMITS,
            args.permits
        );
        std::process::exit(2);
    }
    if args.election && args.permits > 1 {
        eprintln!("--election takes no --permits: an election has one leader");
        std::process::exit(2);
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
