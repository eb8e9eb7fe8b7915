//! Torture checker: K worker processes × N tasks contend for a few keys through a fault-
//! injecting TCP proxy, record every critical section, and a checker looks for overlaps
//! and fencing tokens that went backwards.
//!
//! ```sh
//! cargo run --example torture -- --backend redis --procs 3 --tasks 4 --keys 3 --secs 20
//! cargo run --example torture -- --backend etcd --secs 20 --no-faults
//! ```
//!
//! Each worker reaches the server through a proxy of its own. A worker treats its section as over when its work ends *or* when `lost()` fires
//! (`guard.run`), which is what the library asks of its users. Faults: traffic delayed, a
//! blackhole shorter or longer than the TTL, every connection reset. Every record carries
//! wall-clock nanoseconds (one machine, one clock). Exit status 1 if any violation is found.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dlock::{Config, Driver, LockOptions, Locker};

const TTL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
struct Args {
    backend: String,
    procs: usize,
    tasks: usize,
    keys: usize,
    secs: u64,
    faults: bool,
    /// Worker mode: the address to use (proxy), and the process number.
    worker: Option<(String, usize)>,
}

fn parse_args() -> Args {
    let mut args = Args {
        backend: "redis".into(),
        procs: 3,
        tasks: 4,
        keys: 3,
        secs: 20,
        faults: true,
        worker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => args.backend = value(),
            "--procs" => args.procs = value().parse().expect("--procs N"),
            "--tasks" => args.tasks = value().parse().expect("--tasks N"),
            "--keys" => args.keys = value().parse().expect("--keys N"),
            "--secs" => args.secs = value().parse().expect("--secs N"),
            "--no-faults" => args.faults = false,
            "--worker" => {
                let addr = value();
                let id = value().parse().expect("--worker ADDR ID");
                args.worker = Some((addr, id));
            }
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let code = match args.worker.clone() {
        Some((addr, id)) => runtime.block_on(worker(args, addr, id)),
        None => runtime.block_on(coordinator(args)),
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------
// Worker: contend, record sections on stdout as `key proc task token start end lost`.

async fn worker(args: Args, addr: String, id: usize) -> i32 {
    let config = Config {
        driver: if args.backend == "etcd" {
            Driver::Etcd
        } else {
            Driver::Redis
        },
        prefix: "torture:".into(),
        default_ttl: TTL,
        retry_interval: Duration::from_millis(50),
    };
    let locker = match args.backend.as_str() {
        "etcd" => {
            let client = etcd_client::Client::connect([format!("http://{addr}")], None)
                .await
                .expect("etcd connect");
            Locker::builder(config).etcd(client).build().expect("build")
        }
        _ => {
            let url = format!("redis://{addr}/");
            let conn = support::connection_manager_at(&url).await;
            let client = redis::Client::open(url).expect("url");
            Locker::builder(config)
                .redis(conn)
                .redis_pubsub(client)
                .build()
                .expect("build")
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.secs);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for task in 0..args.tasks {
        let (locker, tx, keys) = (locker.clone(), tx.clone(), args.keys);
        tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline {
                let key = format!("k{}", fastrand::usize(0..keys));
                let options = LockOptions::new().wait_timeout(Duration::from_secs(3));
                let Ok(guard) = locker.lock_with(&key, options).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let start = now_ns();
                // Mostly short sections, some long enough to span a fault.
                let work = Duration::from_millis(match fastrand::u8(0..10) {
                    0 => fastrand::u64(500..3000),
                    _ => fastrand::u64(1..30),
                });
                let outcome = guard.run(tokio::time::sleep(work)).await;
                let end = now_ns();
                let line = format!(
                    "{key} {id} {task} {} {start} {end} {}",
                    guard.fencing_token(),
                    outcome.is_err() as u8
                );
                let _ = tx.send(line);
                let _ = guard.release().await;
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        writeln!(out, "{line}").expect("stdout");
    }
    0
}

// ---------------------------------------------------------------------------------------
// Coordinator: server, proxy, workers, faults, checker.

async fn coordinator(args: Args) -> i32 {
    let mut _redis = None;
    let mut _etcd = None;
    let target = match args.backend.as_str() {
        "etcd" => {
            let server = support::EtcdServer::start().await;
            let addr = server.client_addr();
            _etcd = Some(server);
            addr
        }
        "redis" => {
            let server = support::RedisServer::start().await;
            let addr = server.addr();
            _redis = Some(server);
            addr
        }
        other => panic!("--backend redis|etcd, not {other}"),
    };
    // One proxy per worker, so that a fault cuts one worker off while the others go on.
    let mut proxies = Vec::new();
    for _ in 0..args.procs {
        proxies.push(support::Proxy::start(target).await);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut children = Vec::new();
    for (id, proxy) in proxies.iter().enumerate() {
        let child = Command::new(&exe)
            .args(["--backend", &args.backend])
            .args([
                "--tasks",
                &args.tasks.to_string(),
                "--keys",
                &args.keys.to_string(),
            ])
            .args(["--secs", &args.secs.to_string()])
            .args(["--worker", &proxy.addr().to_string(), &id.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        children.push(child);
    }

    let mut faults = BTreeMap::<&str, usize>::new();
    if args.faults {
        let end = tokio::time::Instant::now() + Duration::from_secs(args.secs);
        while tokio::time::Instant::now() + Duration::from_secs(2) < end {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(500..1500))).await;
            let proxy = &proxies[fastrand::usize(0..proxies.len())];
            let (name, hold) = match fastrand::u8(0..4) {
                0 => {
                    proxy.delay(Duration::from_millis(fastrand::u64(5..100)));
                    ("delay 5-100 ms for 1 s", Duration::from_secs(1))
                }
                1 => {
                    proxy.blackhole();
                    ("blackhole < TTL/2", TTL / 2 - Duration::from_millis(200))
                }
                2 => {
                    proxy.blackhole();
                    ("blackhole > TTL", TTL + Duration::from_millis(500))
                }
                _ => {
                    proxy.reset_all();
                    ("reset all connections", Duration::ZERO)
                }
            };
            *faults.entry(name).or_default() += 1;
            tokio::time::sleep(hold).await;
            proxy.pass();
        }
    }

    let mut sections = Vec::new();
    for child in children {
        let output = child.wait_with_output().expect("worker output");
        assert!(
            output.status.success(),
            "a worker failed: {:?}",
            output.status
        );
        for line in output.stdout.lines() {
            sections.push(Section::parse(&line.expect("utf-8")));
        }
    }
    let report = check(&mut sections);
    println!(
        "torture: backend={} procs={} tasks={} keys={} secs={} ttl={:?}",
        args.backend, args.procs, args.tasks, args.keys, args.secs, TTL
    );
    println!(
        "  sections: {} ({} ended by lost())",
        sections.len(),
        sections.iter().filter(|s| s.lost).count()
    );
    let total: usize = faults.values().sum();
    println!("  faults injected: {total} {faults:?}");
    println!("  overlapping sections: {}", report.overlaps);
    println!("  fencing tokens that went backwards: {}", report.backwards);
    for line in report.examples.iter().take(5) {
        println!("    {line}");
    }
    let violations = report.overlaps + report.backwards;
    println!("  violations: {violations}");
    assert!(
        !sections.is_empty(),
        "no section was recorded: the workers never got a lock"
    );
    (violations > 0) as i32
}

#[derive(Debug)]
struct Section {
    key: String,
    proc: usize,
    task: usize,
    token: u64,
    start: u128,
    end: u128,
    lost: bool,
}

impl Section {
    fn parse(line: &str) -> Section {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 7, "bad record {line:?}");
        Section {
            key: f[0].into(),
            proc: f[1].parse().unwrap(),
            task: f[2].parse().unwrap(),
            token: f[3].parse().unwrap(),
            start: f[4].parse().unwrap(),
            end: f[5].parse().unwrap(),
            lost: f[6] == "1",
        }
    }
}

struct Report {
    overlaps: usize,
    backwards: usize,
    examples: Vec<String>,
}

/// Per key, in start order: a section that starts before the latest end so far overlaps;
/// a token not above the previous one went backwards.
fn check(sections: &mut [Section]) -> Report {
    sections.sort_by(|a, b| (&a.key, a.start).cmp(&(&b.key, b.start)));
    let mut report = Report {
        overlaps: 0,
        backwards: 0,
        examples: Vec::new(),
    };
    for pair in sections.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.key != b.key {
            continue;
        }
        if b.start < a.end {
            report.overlaps += 1;
            report.examples.push(format!(
                "overlap on {}: p{}t{} token {} until {} and p{}t{} token {} from {} ({} µs)",
                a.key,
                a.proc,
                a.task,
                a.token,
                a.end,
                b.proc,
                b.task,
                b.token,
                b.start,
                (a.end - b.start) / 1000
            ));
        }
        if b.token <= a.token {
            report.backwards += 1;
            report.examples.push(format!(
                "token on {} went from {} to {}",
                a.key, a.token, b.token
            ));
        }
    }
    report
}
