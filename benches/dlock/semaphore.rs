//! Section 6, semaphores of N = 5 permits (issue 21), against the floors of
//! `baselines.rs` (`RedisSemaphoreFloor`, `EtcdSemaphoreFloor`), in the same run on the
//! same server:
//!
//! 1. acquire + release pairs/s on one semaphore: 1 task, and 16 tasks over 2 lockers (more
//!    tasks than permits: they wait for each other). dlock's Redis lockers have pub/sub;
//!    the Redis floor's waiters try again every 1 ms, the etcd floor's watch for deletes;
//! 2. handoff: all 5 permits held by one locker, a waiter of another blocked in `acquire`;
//!    the time from a holder's release call to the waiter's `acquire` returning. The Redis
//!    floor's waiter listens on a channel its release publishes to; the etcd floor's waits
//!    in its watch;
//! 3. on Redis, what one uncontended pair costs: commands (`INFO commandstats`, reset with
//!    `CONFIG RESETSTAT` before), the server's CPU and the wall time per pair.
//!
//! A build whose etcd locker refuses N > 1 (`Error::InvalidPermits`) prints "etcd: not
//! supported by this build" in dlock's cells and still measures the etcd floor.

use std::sync::Arc;
use std::time::Duration;

use dlock::{Error, LockOptions, Locker};
use tokio::time::Instant;

use super::baselines::{EtcdSemaphoreFloor, Op, RedisSemaphoreFloor};
use super::measure::{config, locker, ms, percentile, rate_per_task, shares};
use super::support::fixtures::{Etcd, Redis, WithPubsub};
use super::Settings;

const PERMITS: u32 = 5;
const CONTENDING_TASKS: usize = 16;
const UNSUPPORTED: &str = "not supported by this build";

pub async fn run(redis: &Redis, etcd: &Etcd, s: &Settings) {
    println!("\n## 6. Semaphores of {PERMITS} permits\n");
    println!("Floors (benches/dlock/baselines.rs), same server, same run. Redis: a sorted set of");
    println!(
        "holders by expiry, one script to acquire (server time, ZREMRANGEBYSCORE, ZCARD < N →"
    );
    println!("ZADD), ZREM to release. etcd: a key per holder on one lease, held while among the");
    println!("prefix's N oldest by create revision (put + range in one txn), delete to release.\n");

    let redis_lockers = [
        redis
            .locker_with_pubsub(config::<Redis>(), redis.pubsub_client())
            .await,
        redis
            .locker_with_pubsub(config::<Redis>(), redis.pubsub_client())
            .await,
    ];
    let etcd_lockers = [locker(etcd).await, locker(etcd).await];
    let etcd_refused = refused(&etcd_lockers[0]).await;
    if let Some(why) = &etcd_refused {
        println!("etcd: {UNSUPPORTED} ({why}); the etcd floor is measured alone.\n");
    }

    println!("### Acquire + release pairs/s, one semaphore\n");
    println!("Measured alternately, twice each; the better window of each is kept. Waiting: dlock");
    println!("as configured (Redis: pub/sub); the Redis floor tries again every 1 ms; the etcd");
    println!(
        "floor watches the prefix for deletes. Shares: the fewest and the most pairs one task"
    );
    println!("completed, as a share of all (fair: 100 % / tasks).\n");
    println!("| backend | tasks | dlock pairs/s | dlock shares (min–max) | floor pairs/s | floor shares (min–max) | dlock / floor | floor waits by |");
    println!("|---|---|---|---|---|---|---|---|");
    for tasks in [1, CONTENDING_TASKS] {
        let lockers = &redis_lockers[..tasks.min(2)];
        let dlock = Some(pairs(lockers, &format!("sem-tp-{tasks}")));
        let floor = redis_floor_pairs(redis, &format!("bench:semfloor-tp-{tasks}"), tasks).await;
        throughput_row("redis", tasks, dlock, floor, "retry every 1 ms", s).await;

        let lockers = &etcd_lockers[..tasks.min(2)];
        let dlock = etcd_refused
            .is_none()
            .then(|| pairs(lockers, &format!("sem-tp-{tasks}")));
        let floor = etcd_floor_pairs(etcd, &format!("semfloor-tp-{tasks}"), tasks).await;
        throughput_row("etcd", tasks, dlock, floor, "watch for deletes", s).await;
    }

    println!("\n### Handoff: {PERMITS} permits held, one waiter blocked in acquire\n");
    println!("From a holder's release call to the waiter's acquire returning; the holder and the");
    println!(
        "waiter are lockers (floors) with connections of their own; the waiter waited 50–70 ms."
    );
    println!(
        "The Redis floor's release is ZREM + PUBLISH pipelined, its waiter subscribed first.\n"
    );
    println!("| backend | samples | dlock p50 | dlock p90 | floor p50 | floor p90 | floor wakes by | dlock / floor (p50) |");
    println!("|---|---|---|---|---|---|---|---|");
    let n = s.handoff_samples;
    let dlock = dlock_handoffs(&redis_lockers[0], &redis_lockers[1], n).await;
    let floor = redis_floor_handoffs(redis, n).await;
    handoff_row("redis", n, Some(&dlock), &floor, "pub/sub");
    let dlock = match etcd_refused {
        None => Some(dlock_handoffs(&etcd_lockers[0], &etcd_lockers[1], n).await),
        Some(_) => None,
    };
    let floor = etcd_floor_handoffs(etcd, n).await;
    handoff_row("etcd", n, dlock.as_deref(), &floor, "watch");

    println!("\n### Cost of one uncontended pair (Redis, 1 task)\n");
    let pairs_each = (s.cost_pairs / 4).max(500);
    println!(
        "`CONFIG RESETSTAT`, then {pairs_each} pairs, then `INFO commandstats` (a script and each"
    );
    println!("command inside it count one each); the server's main thread's time on a CPU");
    println!("(`/proc/<pid>/schedstat`) and the client's wall time per pair. Alternated twice,");
    println!("the faster round of each kept.\n");
    println!("| | commands per pair | of which | server CPU per pair | wall time per pair | / floor (wall) |");
    println!("|---|---|---|---|---|---|");
    let server = super::hold::server_pid(redis).await;
    let floor_op: Op = {
        let floor = RedisSemaphoreFloor::new(redis, "bench:semfloor-cost", PERMITS).await;
        Arc::new(move |_, i| {
            let floor = floor.clone();
            Box::pin(async move {
                let token = format!("c{i}");
                floor.acquire_polling(&token).await;
                floor.release(&token).await;
            })
        })
    };
    let dlock_op = pairs(&redis_lockers[..1], "sem-cost");
    // Alternated twice; the faster round of each is kept (others share this machine).
    let (mut floor, mut dlock): (Option<Cost>, Option<Cost>) = (None, None);
    for _ in 0..2 {
        for (op, best) in [(&floor_op, &mut floor), (&dlock_op, &mut dlock)] {
            let got = cost(redis, &server, pairs_each, op.clone()).await;
            if best.as_ref().is_none_or(|b| got.wall_us < b.wall_us) {
                *best = Some(got);
            }
        }
    }
    let (floor, dlock) = (floor.unwrap(), dlock.unwrap());
    for (name, c) in [("floor", &floor), ("dlock", &dlock)] {
        println!(
            "| {name} | {:.1} | {} | {:.1} µs | {:.1} µs | {:.2}x |",
            c.commands,
            c.breakdown,
            c.cpu_us,
            c.wall_us,
            c.wall_us / floor.wall_us
        );
    }
}

/// `Some(reason)` when this locker refuses a semaphore of `PERMITS`.
async fn refused(locker: &Locker) -> Option<String> {
    match locker
        .semaphore("sem-supported", PERMITS)
        .try_acquire()
        .await
    {
        Err(e @ Error::InvalidPermits { .. }) => Some(e.to_string()),
        Err(e) => panic!("semaphore on this backend: {e}"),
        Ok(permit) => {
            if let Some(permit) = permit {
                permit.release().await.unwrap();
            }
            None
        }
    }
}

/// Task `t` acquires a permit of the semaphore `name` on locker `t % lockers`, releases it.
fn pairs(lockers: &[Locker], name: &str) -> Op {
    let semaphores: Arc<Vec<dlock::Semaphore>> =
        Arc::new(lockers.iter().map(|l| l.semaphore(name, PERMITS)).collect());
    Arc::new(move |task, _| {
        let semaphores = semaphores.clone();
        Box::pin(async move {
            let semaphore = &semaphores[task % semaphores.len()];
            let permit = semaphore.acquire().await.unwrap();
            permit.release().await.unwrap();
        })
    })
}

/// The Redis floor's pairs: task `t` on connection `t % 2` (one connection for one task).
async fn redis_floor_pairs(redis: &Redis, key: &str, tasks: usize) -> Op {
    let mut floors = Vec::new();
    for _ in 0..tasks.min(2) {
        floors.push(RedisSemaphoreFloor::new(redis, key, PERMITS).await);
    }
    let floors = Arc::new(floors);
    Arc::new(move |task, i| {
        let floors = floors.clone();
        Box::pin(async move {
            let floor = &floors[task % floors.len()];
            let token = format!("{task}-{i}");
            floor.acquire_polling(&token).await;
            floor.release(&token).await;
        })
    })
}

/// The etcd floor's pairs: task `t` on client `t % 2` (one client, one lease, for one task).
async fn etcd_floor_pairs(etcd: &Etcd, prefix: &str, tasks: usize) -> Op {
    let mut floors = Vec::new();
    for _ in 0..tasks.min(2) {
        floors.push(EtcdSemaphoreFloor::new(etcd, prefix, PERMITS).await);
    }
    let floors = Arc::new(floors);
    Arc::new(move |task, i| {
        let floors = floors.clone();
        Box::pin(async move {
            let floor = &floors[task % floors.len()];
            let key = floor.acquire(&format!("{task}-{i}")).await;
            floor.release(&key).await;
        })
    })
}

/// dlock (if this build keeps the semaphore) and the floor, alternated twice; the better
/// window of each.
async fn throughput_row(
    backend: &str,
    tasks: usize,
    dlock: Option<Op>,
    floor: Op,
    floor_waits: &str,
    s: &Settings,
) {
    let (mut d, mut f) = ((0f64, Vec::new()), (0f64, Vec::new()));
    for _ in 0..2 {
        if let Some(dlock) = &dlock {
            let op = dlock.clone();
            let got = rate_per_task(tasks, s.window, move |t, i| op(t, i)).await;
            d = if got.0 > d.0 { got } else { d };
        }
        let op = floor.clone();
        let got = rate_per_task(tasks, s.window, move |t, i| op(t, i)).await;
        f = if got.0 > f.0 { got } else { f };
    }
    let floor_cells = format!("{:.0} | {}", f.0, shares(&f.1));
    if dlock.is_some() {
        println!(
            "| {backend} | {tasks} | {:.0} | {} | {floor_cells} | {:.2}x | {floor_waits} |",
            d.0,
            shares(&d.1),
            d.0 / f.0
        );
    } else {
        println!("| {backend} | {tasks} | {UNSUPPORTED} | | {floor_cells} | | {floor_waits} |");
    }
}

fn handoff_row(backend: &str, n: usize, dlock: Option<&[Duration]>, floor: &[Duration], by: &str) {
    let (f50, f90) = (percentile(floor, 0.5), percentile(floor, 0.9));
    match dlock {
        Some(d) => {
            let (d50, d90) = (percentile(d, 0.5), percentile(d, 0.9));
            println!(
                "| {backend} | {n} | {} | {} | {} | {} | {by} | {:.2}x |",
                ms(d50),
                ms(d90),
                ms(f50),
                ms(f90),
                d50.as_secs_f64() / f50.as_secs_f64()
            );
        }
        None => println!(
            "| {backend} | {n} | {UNSUPPORTED} | | {} | {} | {by} | |",
            ms(f50),
            ms(f90)
        ),
    }
}

/// How long the waiter waits before the release: 50 ms and up to 20 ms of jitter.
fn wait_before_release() -> Duration {
    Duration::from_millis(50 + fastrand::u64(0..20))
}

/// dlock's handoffs, sorted: `holder` takes all permits of a fresh semaphore, a waiter on
/// `waiter` blocks in `acquire`, the holder releases one.
async fn dlock_handoffs(holder: &Locker, waiter: &Locker, samples: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..samples {
        let name = format!("sem-handoff-{i}");
        let semaphore = holder.semaphore(&name, PERMITS);
        let mut held = Vec::new();
        for _ in 0..PERMITS {
            held.push(
                semaphore
                    .try_acquire()
                    .await
                    .unwrap()
                    .expect("a free permit"),
            );
        }
        let theirs = waiter.semaphore(&name, PERMITS);
        let task = tokio::spawn(async move {
            let options = LockOptions::new().wait_timeout(Duration::from_secs(10));
            let permit = theirs.acquire_with(options).await.unwrap();
            let got = Instant::now();
            permit.release().await.unwrap();
            got
        });
        tokio::time::sleep(wait_before_release()).await;
        let released = Instant::now();
        held.pop().unwrap().release().await.unwrap();
        out.push(task.await.unwrap().saturating_duration_since(released));
        for permit in held {
            permit.release().await.unwrap();
        }
    }
    out.sort();
    out
}

/// The Redis floor's handoffs, sorted: its waiter listens on the semaphore's channel, the
/// holder's release publishes there.
async fn redis_floor_handoffs(redis: &Redis, samples: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..samples {
        let key = format!("bench:semfloor-handoff-{i}");
        let holder = RedisSemaphoreFloor::new(redis, &key, PERMITS).await;
        let tokens: Vec<String> = (0..PERMITS).map(|p| format!("h{p}")).collect();
        for token in &tokens {
            assert!(holder.try_acquire(token).await, "floor: a free permit");
        }
        let waiter = RedisSemaphoreFloor::new(redis, &key, PERMITS).await;
        let pubsub = redis.pubsub_client();
        let task = tokio::spawn(async move {
            waiter.acquire_notified("w", &pubsub).await;
            let got = Instant::now();
            waiter.release("w").await;
            got
        });
        tokio::time::sleep(wait_before_release()).await;
        let released = Instant::now();
        holder.release_announced(&tokens[0]).await;
        out.push(task.await.unwrap().saturating_duration_since(released));
        for token in &tokens[1..] {
            holder.release(token).await;
        }
    }
    out.sort();
    out
}

/// The etcd floor's handoffs, sorted: its waiter waits in its watch for the holder's delete.
async fn etcd_floor_handoffs(etcd: &Etcd, samples: usize) -> Vec<Duration> {
    let holder = EtcdSemaphoreFloor::new(etcd, "semfloor-handoff", PERMITS).await;
    let waiter = EtcdSemaphoreFloor::new(etcd, "semfloor-handoff", PERMITS).await;
    let mut out = Vec::new();
    for i in 0..samples {
        let mut held = Vec::new();
        for p in 0..PERMITS {
            held.push(holder.acquire(&format!("{i}-h{p}")).await);
        }
        let (waiter, token) = (waiter.clone(), format!("{i}-w"));
        let task = tokio::spawn(async move {
            let key = waiter.acquire(&token).await;
            let got = Instant::now();
            waiter.release(&key).await;
            got
        });
        tokio::time::sleep(wait_before_release()).await;
        let released = Instant::now();
        holder.release(&held[0]).await;
        out.push(task.await.unwrap().saturating_duration_since(released));
        for key in &held[1..] {
            holder.release(key).await;
        }
    }
    out.sort();
    out
}

struct Cost {
    commands: f64,
    breakdown: String,
    cpu_us: f64,
    wall_us: f64,
}

/// `pairs` of `op` by one task, counted from a reset of the server's command statistics.
async fn cost(redis: &Redis, server: &str, pairs: u64, op: Op) -> Cost {
    let mut admin = redis.admin();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();
    let (cpu0, start) = (on_cpu_ns(server), Instant::now());
    for i in 0..pairs {
        op(0, i).await;
    }
    let wall = start.elapsed();
    let cpu = Duration::from_nanos(on_cpu_ns(server).saturating_sub(cpu0));
    let n = pairs as f64;
    let mut per_command: Vec<(String, f64)> = super::cost::commandstats(&mut admin)
        .await
        .into_iter()
        .map(|(name, calls)| (name, calls as f64 / n))
        .filter(|(name, per_pair)| *per_pair >= 0.05 && name != "info" && name != "config")
        .collect();
    per_command.sort_by(|a, b| b.1.total_cmp(&a.1));
    Cost {
        commands: per_command.iter().map(|(_, c)| c).sum(),
        breakdown: per_command
            .iter()
            .map(|(name, c)| format!("{name} {c:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        cpu_us: cpu.as_secs_f64() * 1e6 / n,
        wall_us: wall.as_secs_f64() * 1e6 / n,
    }
}

/// Nanoseconds the process's main thread (Redis's command thread) has run on a CPU, from
/// `/proc/<pid>/schedstat`: finer than the 10 ms ticks of `/proc/<pid>/stat`.
fn on_cpu_ns(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
