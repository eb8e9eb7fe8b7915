//! Section 5, what one uncontended lock + release costs the Redis server (issue 20, item 2):
//! commands per pair as `INFO commandstats` counts them (a script, and each command it runs,
//! count one each), and the server's CPU time per pair, for dlock, the floor and rslock, in
//! the same run on the same server. One task, distinct keys, `s.cost_pairs` pairs each.

use super::baselines::{self, Op};
use super::measure::locker;
use super::support::fixtures::Redis;
use super::Settings;

pub async fn run(redis: &Redis, s: &Settings) {
    println!("\n## 5. Server cost of one uncontended lock + release (Redis)\n");
    println!("Every command the server ran, as `INFO commandstats` counts it (a script and each");
    println!("command inside it count one each), and the server's CPU time (user + system, from");
    println!(
        "`/proc`) per pair; {} pairs each, one task.\n",
        s.cost_pairs
    );
    println!("| | commands per pair | of which | server CPU per pair | / floor |");
    println!("|---|---|---|---|---|");
    let server = super::hold::server_pid(redis).await;
    let floor = measure(redis, &server, s, baselines::redis_floor(redis).await).await;
    let dlock = {
        let locker = locker(redis).await;
        let op: Op = std::sync::Arc::new(move |task, i| {
            let locker = locker.clone();
            Box::pin(async move {
                let guard = locker.lock(&format!("cost:{task}:{i}")).await.unwrap();
                guard.release().await.unwrap();
            })
        });
        measure(redis, &server, s, op).await
    };
    let peer = measure(redis, &server, s, baselines::redis_peer(redis)).await;
    for (name, cost) in [("floor", &floor), ("dlock", &dlock), ("rslock", &peer)] {
        println!(
            "| {name} | {:.1} | {} | {:.1} µs | {:.2}x |",
            cost.commands,
            cost.breakdown,
            cost.cpu_us,
            cost.cpu_us / floor.cpu_us
        );
    }
}

struct Cost {
    commands: f64,
    breakdown: String,
    cpu_us: f64,
}

async fn measure(redis: &Redis, server: &str, s: &Settings, op: Op) -> Cost {
    let mut admin = redis.admin();
    let before = commandstats(&mut admin).await;
    let cpu0 = super::hold::cpu_time(server);
    for i in 0..s.cost_pairs {
        op(0, i).await;
    }
    let cpu = super::hold::cpu_time(server) - cpu0;
    let after = commandstats(&mut admin).await;
    let n = s.cost_pairs as f64;
    let mut per_command: Vec<(String, f64)> = after
        .iter()
        .map(|(name, calls)| {
            let was = before
                .iter()
                .find(|(b, _)| b == name)
                .map_or(0, |(_, c)| *c);
            (name.clone(), (calls - was) as f64 / n)
        })
        .filter(|(name, per_pair)| *per_pair >= 0.05 && name != "info")
        .collect();
    per_command.sort_by(|a, b| b.1.total_cmp(&a.1));
    Cost {
        commands: per_command.iter().map(|(_, c)| c).sum(),
        breakdown: per_command
            .iter()
            .map(|(name, c)| format!("{name} {c:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        // The server's background work (its `hz` timer) is in it too, alike in every row.
        cpu_us: cpu.as_secs_f64() * 1e6 / n,
    }
}

/// `(command, calls)` of every command the server has run so far.
pub async fn commandstats(admin: &mut redis::aio::ConnectionManager) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}
