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
        "Targets (issue 12): ≤ 1.5 KiB per guard, client < 3 % and server < 5 % of a core, 0 lost;"
    );
    println!("on etcd one lease per session, not per lock.\n");
    println!("| backend | locks held (lost) | heap per guard | client CPU, % of a core | server CPU, % of a core | server leases |");
    println!("|---|---|---|---|---|---|");
    let server = server_pid(redis).await;
    let figures = hold(locker(redis).await, &server, None, s).await;
    println!("| redis | {figures} |");
    let leases = etcd.client().await;
    let server = etcd.pid().to_string();
    let figures = hold(locker(etcd).await, &server, Some(leases), s).await;
    println!("| etcd | {figures} |");
}

/// Holds `s.hold_locks` locks for `s.hold_for`, then releases them: the table cells of what
/// holding cost, and the etcd server's lease count while held when given a client.
async fn hold(
    locker: Locker,
    server: &str,
    leases: Option<etcd_client::Client>,
    s: &Settings,
) -> String {
    let n = s.hold_locks;
    let heap_before = super::heap::live_bytes();
    let mut guards = Vec::with_capacity(n);
    for i in 0..n {
        guards.push(locker.lock(&format!("many-{i}")).await.unwrap());
    }
    let per_guard = super::heap::live_bytes().saturating_sub(heap_before) as f64 / n as f64;
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
    drop(guards);
    locker.close().await.unwrap();
    format!(
        "{n} ({lost}) | {per_guard:.0} B | {:.1} % | {:.1} % | {lease_count}",
        cpu * 100.0,
        server_cpu * 100.0
    )
}

/// The redis-server's process id, as it reports it (`INFO server`).
async fn server_pid(redis: &Redis) -> String {
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
fn cpu_time(pid: &str) -> Duration {
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
