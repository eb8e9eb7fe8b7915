//! Section 4, many locks held in one process (TTL 10 s: renewal every 3.3 s), per backend:
//! client memory per guard, and the CPU the client and the server spend on renewal.

use std::time::Duration;

use dlock::Locker;
use tokio::time::Instant;

use super::measure::locker;
use super::support::fixtures::{Etcd, Redis};
use super::Settings;

pub async fn run(redis: &Redis, etcd: &Etcd, s: &Settings) {
    println!("\n## 4. Holding many locks (TTL 10 s: renewal every 3.3 s)\n");
    println!(
        "Targets (issue 20): ≤ 1 KiB per guard, client < 5 % and server < 5 % of a core, 0 lost,"
    );
    println!("nothing left on the server a few seconds after release.\n");
    println!("| backend | locks held (lost) | heap per guard | client CPU, % of a core | server CPU, % of a core | script calls while held | keys left 6 s after release | server leases |");
    println!("|---|---|---|---|---|---|---|---|");
    let server = server_pid(redis).await;
    let admin = redis.admin();
    let figures = hold(locker(redis).await, &server, None, Some(admin), s).await;
    println!("| redis | {figures} |");
    let leases = etcd.client().await;
    let server = etcd.pid().to_string();
    let figures = hold(locker(etcd).await, &server, Some(leases), None, s).await;
    println!("| etcd | {figures} |");
}

/// Holds `s.hold_locks` locks for `s.hold_for`, then releases them: the table cells of what
/// holding cost, and the etcd server's lease count while held when given a client.
async fn hold(
    locker: Locker,
    server: &str,
    leases: Option<etcd_client::Client>,
    redis_admin: Option<redis::aio::ConnectionManager>,
    s: &Settings,
) -> String {
    let n = s.hold_locks;
    let heap_before = super::heap::live_bytes();
    // Acquired by 64 tasks at once: one at a time, 100,000 etcd writes (an fsync each)
    // would take minutes.
    let mut acquiring = Vec::new();
    for task in 0..64 {
        let locker = locker.clone();
        acquiring.push(tokio::spawn(async move {
            let mut held = Vec::new();
            for i in (task..n).step_by(64) {
                held.push(locker.lock(&format!("many-{i}")).await.unwrap());
            }
            held
        }));
    }
    let mut guards = Vec::with_capacity(n);
    for task in acquiring {
        guards.extend(task.await.unwrap());
    }
    let per_guard = super::heap::live_bytes().saturating_sub(heap_before) as f64 / n as f64;
    let calls0 = match &redis_admin {
        Some(admin) => super::support::script_calls(&mut admin.clone()).await,
        None => 0,
    };
    let (cpu0, server0) = (cpu_time("self"), cpu_time(server));
    let t0 = Instant::now();
    tokio::time::sleep(s.hold_for).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time("self") - cpu0).as_secs_f64() / elapsed;
    let server_cpu = (cpu_time(server) - server0).as_secs_f64() / elapsed;
    let lost = guards.iter().filter(|g| g.is_lost()).count();
    let lease_count = match leases {
        Some(client) => {
            let reply = client.lease_client().leases().await.unwrap();
            reply.leases().len().to_string()
        }
        None => String::new(),
    };
    let renewal_calls = match &redis_admin {
        Some(admin) => {
            (super::support::script_calls(&mut admin.clone()).await - calls0).to_string()
        }
        None => String::new(),
    };
    drop(guards);
    locker.close().await.unwrap();
    // Redis keeps a released lock's tombstone for a few seconds (release.lua).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let left = match &redis_admin {
        Some(admin) => {
            let keys: u64 = redis::cmd("DBSIZE")
                .query_async(&mut admin.clone())
                .await
                .unwrap();
            keys.to_string()
        }
        None => String::new(),
    };
    format!(
        "{n} ({lost}) | {per_guard:.0} B | {:.1} % | {:.1} % | {renewal_calls} | {left} | {lease_count}",
        cpu * 100.0,
        server_cpu * 100.0
    )
}

/// The redis-server's process id, as it reports it (`INFO server`).
pub async fn server_pid(redis: &Redis) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut redis.admin())
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|pid| pid.trim().to_owned())
        .expect("INFO server names the process id")
}

/// CPU time (user + system) of process `pid` ("self": this one) so far.
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
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
