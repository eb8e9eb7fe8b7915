//! Section 4, many locks held on Redis (TTL 10 s: renewal every 3.3 s): client memory per
//! guard, and the CPU the client and redis-server spend on renewal.

use std::time::Duration;

use tokio::time::Instant;

use super::measure::locker;
use super::support::fixtures::Redis;
use super::Settings;

pub async fn run(redis: &Redis, s: &Settings) {
    println!("\n## 4. Holding many locks (Redis, TTL 10 s: renewal every 3.3 s)\n");
    println!("Targets (issue 12): ≤ 1.5 KiB per guard, client < 3 % and server < 5 % of a core, 0 lost.\n");
    let n = s.hold_locks;
    let locker = locker(redis).await;
    let rss_before = rss_bytes();
    let mut guards = Vec::with_capacity(n);
    for i in 0..n {
        guards.push(locker.lock(&format!("many-{i}")).await.unwrap());
    }
    let per_guard = rss_bytes().saturating_sub(rss_before) as f64 / n as f64;

    let server = server_pid(redis).await;
    let (cpu0, server0) = (cpu_time("self"), cpu_time(&server));
    let t0 = Instant::now();
    tokio::time::sleep(s.hold_for).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time("self") - cpu0).as_secs_f64() / elapsed;
    let server_cpu = (cpu_time(&server) - server0).as_secs_f64() / elapsed;
    let lost = guards.iter().filter(|g| g.is_lost()).count();
    drop(guards);
    locker.close().await.unwrap();

    println!("| figure | dlock |");
    println!("|---|---|");
    println!("| locks held | {n} ({lost} lost) |");
    println!("| RSS per guard | {per_guard:.0} B |");
    println!(
        "| client CPU while holding, % of one core | {:.1} % |",
        cpu * 100.0
    );
    println!(
        "| redis-server CPU while holding, % of one core | {:.1} % |",
        server_cpu * 100.0
    );
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
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
