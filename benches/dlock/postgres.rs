//! Section 7, PostgreSQL (issue 22): dlock against the floor and the peer, in the same run
//! on the same server (the tests' `Postgres` fixture: PostgreSQL from Debian, its data dir
//! in `/dev/shm`, fsync on).
//!
//! - **Floor** ([`Floor`]): the least a lock with an expiry and a fencing token needs, one
//!   statement each way over a `PgPool` like dlock's. Acquire is
//!   `INSERT .. VALUES (key, token, nextval(seq), now() + ttl) ON CONFLICT (key) DO UPDATE ..
//!   WHERE the row expired RETURNING fence` (takes a free or expired key); release is
//!   `DELETE .. WHERE key AND token`. No renewal, no notification, no undo of an interrupted
//!   attempt, no semaphore; a waiter tries again every 1 ms.
//! - **Peer** ([`Peer`]): `pg_advisory_lock` / `pg_advisory_unlock` on a connection taken
//!   from the pool and held for the pair: what users pick instead. A waiter blocks in the
//!   server, which wakes it when the lock is free.
//!
//! Every contender has pools of the same size (10 connections, the fixture's). Then, on
//! the same server restarted with `pg_stat_statements` (`track = all`, so the statements
//! inside dlock's PL/pgSQL function count too): the statements and the server's execution
//! time of one uncontended pair, and `EXPLAIN ANALYZE` of each acquire. Between the two,
//! the pairs/s of one task on a fresh key and on a key after 10,000 pairs on it.

use std::sync::Arc;
use std::time::Duration;

use dlock::{LockOptions, Locker};
use sqlx::{PgPool, Row};
use tokio::time::Instant;

use super::baselines::Op;
use super::measure::{locker, ms, percentile, rate};
use super::support::fixtures::Postgres;
use super::Settings;

const TASKS: [usize; 2] = [1, 16];
const TTL_MS: i64 = 10_000;

const FLOOR_SCHEMA: &str = "
CREATE SEQUENCE IF NOT EXISTS bench_floor_fence;
CREATE TABLE IF NOT EXISTS bench_floor (
    key text PRIMARY KEY, token text NOT NULL, fence bigint NOT NULL, expires timestamptz NOT NULL
);";

const FLOOR_ACQUIRE: &str = "INSERT INTO bench_floor (key, token, fence, expires) \
     VALUES ($1, $2, nextval('bench_floor_fence'), now() + $3 * interval '1 millisecond') \
     ON CONFLICT (key) DO UPDATE \
         SET token = EXCLUDED.token, fence = EXCLUDED.fence, expires = EXCLUDED.expires \
         WHERE bench_floor.expires <= now() \
     RETURNING fence";

const FLOOR_RELEASE: &str = "DELETE FROM bench_floor WHERE key = $1 AND token = $2";

/// The floor over one pool.
#[derive(Clone)]
struct Floor(PgPool);

impl Floor {
    async fn try_acquire(&self, key: &str, token: &str) -> bool {
        sqlx::query_scalar::<_, i64>(FLOOR_ACQUIRE)
            .bind(key)
            .bind(token)
            .bind(TTL_MS)
            .fetch_optional(&self.0)
            .await
            .expect("floor acquire")
            .is_some()
    }

    /// Tries again every 1 ms.
    async fn acquire(&self, key: &str, token: &str) {
        while !self.try_acquire(key, token).await {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn release(&self, key: &str, token: &str) {
        let done = sqlx::query(FLOOR_RELEASE)
            .bind(key)
            .bind(token)
            .execute(&self.0)
            .await
            .expect("floor release");
        assert_eq!(done.rows_affected(), 1, "floor: {key} was not ours");
    }
}

/// The peer over one pool: a connection held from `pg_advisory_lock` to `pg_advisory_unlock`.
#[derive(Clone)]
struct Peer(PgPool);

impl Peer {
    async fn pair(&self, key: i64, held: Duration) {
        let mut conn = self.0.acquire().await.expect("peer: a connection");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await
            .expect("pg_advisory_lock");
        if !held.is_zero() {
            tokio::time::sleep(held).await;
        }
        let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .expect("pg_advisory_unlock");
        assert!(unlocked, "peer: lock {key} was not held");
    }
}

pub async fn run(pg: &mut Postgres, s: &Settings) {
    println!("\n## 7. PostgreSQL (issue 22)\n");
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pg.admin)
        .await
        .expect("server version");
    println!("Server: PostgreSQL {version} (the tests' fixture, data dir in /dev/shm, fsync on),");
    println!("on the same cores as the client. Floor: `INSERT .. ON CONFLICT (key) DO UPDATE ..");
    println!("WHERE expired RETURNING fence` with `nextval`, `DELETE` to release, waiters retry");
    println!("every 1 ms. Peer: `pg_advisory_lock`/`pg_advisory_unlock` on a pooled connection");
    println!("held for the pair. Every contender: pools of 10 connections.\n");
    sqlx::raw_sql(FLOOR_SCHEMA)
        .execute(&pg.admin)
        .await
        .expect("floor schema");

    println!("### Lock + release pairs/s\n");
    println!("Alternated twice each, the better window kept. Distinct keys: a key per task, one");
    println!("locker (pool). Hot key: one key, tasks split over 2 lockers (pools), as two");
    println!("processes would be.\n");
    println!(
        "\"dlock\" sends its statements in the simple query protocol (the default, safe behind"
    );
    println!("PgBouncer); \"prepared\" is a locker with `postgres_prepared_statements(true)`.\n");
    println!("| keys | tasks | dlock pairs/s | prepared pairs/s | floor pairs/s | dlock / floor | prepared / floor | peer pairs/s | dlock / peer |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for hot in [false, true] {
        for tasks in TASKS {
            let pools = if hot { 2 } else { 1 };
            let (mut lockers, mut prepared) = (Vec::new(), Vec::new());
            let (mut floors, mut peers) = (Vec::new(), Vec::new());
            for _ in 0..pools {
                lockers.push(locker(&*pg).await);
                prepared.push(prepared_locker(pg).await);
                floors.push(Floor(pg.pool().await));
                peers.push(Peer(pg.pool().await));
            }
            let ops = [
                dlock_op(lockers.clone(), hot),
                dlock_op(prepared.clone(), hot),
                floor_op(floors, hot),
                peer_op(peers, hot),
            ];
            let mut best = [0f64; 4];
            for _ in 0..2 {
                for (op, best) in ops.iter().zip(best.iter_mut()) {
                    let op = op.clone();
                    let window = if hot { s.window * 2 } else { s.window };
                    *best = best.max(rate(tasks, window, move |t, i| op(t, i)).await);
                }
            }
            let [d, dp, f, p] = best;
            let keys = if hot { "one hot key" } else { "distinct" };
            println!(
                "| {keys} | {tasks} | {d:.0} | {dp:.0} | {f:.0} | {:.2}x | {:.2}x | {p:.0} | {:.2}x |",
                d / f,
                dp / f,
                d / p
            );
            for l in lockers.into_iter().chain(prepared) {
                let _ = l.close().await;
            }
        }
    }

    println!("\n### Handoff: a waiter blocked, one release\n");
    println!("The holder and the waiter have pools of their own; the waiter waited 50–70 ms;");
    println!("from the holder's release call to the waiter's acquire returning. dlock wakes by");
    println!("LISTEN/NOTIFY; the floor retries every 1 ms; the peer blocks in the server.\n");
    println!("| samples | dlock p50 | dlock p90 | floor p50 | floor p90 | peer p50 | peer p90 | dlock / floor (p50) | dlock / peer (p50) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let n = s.handoff_samples;
    let (holder, waiter) = (locker(&*pg).await, locker(&*pg).await);
    let dlock = dlock_handoffs(&holder, &waiter, n).await;
    let (a, b) = (Floor(pg.pool().await), Floor(pg.pool().await));
    let floor = floor_handoffs(&a, &b, n).await;
    let (a, b) = (Peer(pg.pool().await), Peer(pg.pool().await));
    let peer = peer_handoffs(&a, &b, n).await;
    let p = |v: &[Duration], q| percentile(v, q);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "| {n} | {} | {} | {} | {} | {} | {} | {:.2}x | {:.2}x |",
        ms(p(&dlock, 0.5)),
        ms(p(&dlock, 0.9)),
        ms(p(&floor, 0.5)),
        ms(p(&floor, 0.9)),
        ms(p(&peer, 0.5)),
        ms(p(&peer, 0.9)),
        ratio(p(&dlock, 0.5), p(&floor, 0.5)),
        ratio(p(&dlock, 0.5), p(&peer, 0.5)),
    );
    for l in [holder, waiter] {
        let _ = l.close().await;
    }

    past_acquisitions(pg, s).await;
    profile(pg, s).await;
}

/// Whether a pair's cost grows with the key's past acquisitions: pairs/s of one task on a
/// key after many pairs on it, against fresh keys, alternated three times, the better of
/// each kept; autovacuum off on both tables meanwhile (their dead rows stay, as between two
/// vacuums of a busy table). A test of issue 22's cause: dlock's acquire used to read every
/// past acquisition of its key.
async fn past_acquisitions(pg: &Postgres, s: &Settings) {
    let timed = (s.cost_pairs / 20).max(100);
    let past = s.cost_pairs / 2;
    println!("\n### A key's past acquisitions (1 task)\n");
    println!(
        "{past} pairs on one key first; then, alternated three times, {timed} pairs on a fresh"
    );
    println!(
        "key and {timed} on that key, the better pairs/s of each kept. Autovacuum off on both"
    );
    println!("tables meanwhile.\n");
    println!(
        "| | fresh key pairs/s | used key pairs/s | used / fresh | dead rows in the table then |"
    );
    println!("|---|---|---|---|---|");
    let autovacuum = |on: bool| {
        format!(
            "ALTER TABLE dlock_locks SET (autovacuum_enabled = {on}); \
             ALTER TABLE bench_floor SET (autovacuum_enabled = {on})"
        )
    };
    sqlx::raw_sql(&autovacuum(false))
        .execute(&pg.admin)
        .await
        .expect("autovacuum off");
    let dlock_locker = locker(pg).await;
    let floor = Floor(pg.pool().await);
    let contenders = [
        (
            "dlock",
            "dlock_locks",
            dlock_op(vec![dlock_locker.clone()], false),
        ),
        ("floor", "bench_floor", floor_op(vec![floor], false)),
    ];
    for (name, table, op) in contenders {
        // Task t: the key `k{t}`; 1000 and up are used by no other section.
        let pairs = |task: usize, n: u64| {
            let op = op.clone();
            async move {
                let start = Instant::now();
                for i in 0..n {
                    op(task, i).await;
                }
                n as f64 / start.elapsed().as_secs_f64()
            }
        };
        pairs(1000, past).await;
        let (mut fresh, mut used) = (0f64, 0f64);
        for round in 1..=3 {
            fresh = fresh.max(pairs(1000 + round, timed).await);
            used = used.max(pairs(1000, timed).await);
        }
        let dead: i64 =
            sqlx::query_scalar("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = $1")
                .bind(table)
                .fetch_one(&pg.admin)
                .await
                .expect("pg_stat_user_tables");
        println!(
            "| {name} | {fresh:.0} | {used:.0} | {:.2}x | {dead} |",
            used / fresh
        );
    }
    let _ = dlock_locker.close().await;
    sqlx::raw_sql(&autovacuum(true))
        .execute(&pg.admin)
        .await
        .expect("autovacuum on");
}

/// dlock's `lock` + `release`: a key per task, or one key.
/// A locker like [`locker`]'s whose statements are sqlx's cached prepared statements.
async fn prepared_locker(pg: &Postgres) -> Locker {
    Locker::builder(super::measure::config::<Postgres>())
        .postgres(pg.pool().await)
        .postgres_prepared_statements(true)
        .build()
        .expect("build")
}

fn dlock_op(lockers: Vec<Locker>, hot: bool) -> Op {
    Arc::new(move |task, _| {
        let locker = lockers[task % lockers.len()].clone();
        Box::pin(async move {
            let key = if hot {
                "hot".to_owned()
            } else {
                format!("k{task}")
            };
            let options = LockOptions::new().wait_timeout(Duration::from_secs(60));
            let guard = locker.lock_with(&key, options).await.unwrap();
            guard.release().await.unwrap();
        })
    })
}

fn floor_op(floors: Vec<Floor>, hot: bool) -> Op {
    Arc::new(move |task, i| {
        let floor = floors[task % floors.len()].clone();
        Box::pin(async move {
            let key = if hot {
                "hot".to_owned()
            } else {
                format!("k{task}")
            };
            let token = format!("{task}-{i}");
            floor.acquire(&key, &token).await;
            floor.release(&key, &token).await;
        })
    })
}

fn peer_op(peers: Vec<Peer>, hot: bool) -> Op {
    Arc::new(move |task, _| {
        let peer = peers[task % peers.len()].clone();
        Box::pin(async move {
            let key = if hot { 1_000_000 } else { task as i64 };
            peer.pair(key, Duration::ZERO).await;
        })
    })
}

/// The waiter's wait before the release: 50 ms and a little.
fn waited() -> Duration {
    Duration::from_millis(50 + fastrand::u64(0..20))
}

async fn dlock_handoffs(holder: &Locker, waiter: &Locker, n: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("handoff-{i}");
        let held = holder.lock(&key).await.unwrap();
        let (waiter, k) = (waiter.clone(), key.clone());
        let task = tokio::spawn(async move {
            let options = LockOptions::new().wait_timeout(Duration::from_secs(10));
            let guard = waiter.lock_with(&k, options).await.unwrap();
            let got = Instant::now();
            guard.release().await.unwrap();
            got
        });
        tokio::time::sleep(waited()).await;
        let released = Instant::now();
        held.release().await.unwrap();
        out.push(task.await.unwrap().saturating_duration_since(released));
    }
    out.sort();
    out
}

async fn floor_handoffs(holder: &Floor, waiter: &Floor, n: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("handoff-{i}");
        holder.acquire(&key, "holder").await;
        let (waiter, k) = (waiter.clone(), key.clone());
        let task = tokio::spawn(async move {
            waiter.acquire(&k, "waiter").await;
            let got = Instant::now();
            waiter.release(&k, "waiter").await;
            got
        });
        tokio::time::sleep(waited()).await;
        let released = Instant::now();
        holder.release(&key, "holder").await;
        out.push(task.await.unwrap().saturating_duration_since(released));
    }
    out.sort();
    out
}

async fn peer_handoffs(holder: &Peer, waiter: &Peer, n: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = 2_000_000 + i as i64;
        let mut conn = holder.0.acquire().await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await
            .unwrap();
        let waiter = waiter.clone();
        let task = tokio::spawn(async move {
            let mut conn = waiter.0.acquire().await.unwrap();
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(key)
                .execute(&mut *conn)
                .await
                .unwrap();
            let got = Instant::now();
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut *conn)
                .await
                .unwrap();
            got
        });
        tokio::time::sleep(waited()).await;
        let released = Instant::now();
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await
            .unwrap();
        out.push(task.await.unwrap().saturating_duration_since(released));
    }
    out.sort();
    out
}

/// Statements and server time of one uncontended pair (`pg_stat_statements`, `track =
/// all`), and `EXPLAIN ANALYZE` of each acquire. Restarts the server to load the module.
async fn profile(pg: &mut Postgres, s: &Settings) {
    println!("\n### Cost of one uncontended pair (1 task)\n");
    let preload = "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'";
    if let Err(e) = sqlx::query(preload).execute(&pg.admin).await {
        println!("pg_stat_statements not available ({e}): skipped.");
        return;
    }
    pg.admin.close().await;
    pg.server.restart().await;
    pg.admin = pg.server.pool().await;
    // Known once the module is loaded; `all`: the statements inside functions count too.
    let loaded = async {
        for setting in [
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
            "ALTER SYSTEM SET pg_stat_statements.track = 'all'",
            "SELECT pg_reload_conf()",
        ] {
            sqlx::query(setting).execute(&pg.admin).await?;
        }
        Ok::<(), sqlx::Error>(())
    };
    if let Err(e) = loaded.await {
        println!("pg_stat_statements not available ({e}): skipped.");
        return;
    }
    pg.admin.close().await;
    pg.admin = pg.server.pool().await;
    let pairs = (s.cost_pairs / 4).max(500);
    println!("`pg_stat_statements_reset()`, then {pairs} pairs on one key, then the counts of the");
    println!("database's statements: top-level (sent by the client) and all (with those inside");
    println!("PL/pgSQL functions); the server's execution time of the top-level ones; the");
    println!("client's wall time. Alternated twice, the faster round of each kept.\n");
    println!("| | statements sent per pair | statements run per pair | server exec time per pair | wall time per pair | / floor (wall) | / peer (wall) |");
    println!("|---|---|---|---|---|---|---|");
    let dlock_locker = locker(&*pg).await;
    let floor = Floor(pg.pool().await);
    let peer = Peer(pg.pool().await);
    let ops = [
        dlock_op(vec![dlock_locker.clone()], false),
        floor_op(vec![floor.clone()], false),
        peer_op(vec![peer.clone()], false),
    ];
    let mut best: [Option<Cost>; 3] = [None, None, None];
    for _ in 0..2 {
        for (op, best) in ops.iter().zip(best.iter_mut()) {
            let got = cost(&pg.admin, pairs, op.clone()).await;
            if best.as_ref().is_none_or(|b| got.wall_us < b.wall_us) {
                *best = Some(got);
            }
        }
    }
    let [d, f, p] = best.map(Option::unwrap);
    for (name, c) in [("dlock", &d), ("floor", &f), ("peer", &p)] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.1} µs | {:.1} µs | {:.2}x | {:.2}x |",
            c.sent,
            c.run,
            c.server_us,
            c.wall_us,
            c.wall_us / f.wall_us,
            c.wall_us / p.wall_us
        );
    }
    println!("\nThe statements dlock's pair ran, per pair (mean execution time each):\n");
    println!("| calls per pair | mean | statement |");
    println!("|---|---|---|");
    for (calls, mean_us, query) in &d.statements {
        println!("| {calls:.2} | {mean_us:.1} µs | `{query}` |");
    }
    let _ = dlock_locker.close().await;
    println!();
    explain_inner(&pg.admin).await;

    println!("\n`EXPLAIN (ANALYZE, BUFFERS)` of one acquire of a free key, in a rolled-back");
    println!("transaction:\n");
    for (name, sql) in [
        (
            "dlock",
            "EXPLAIN (ANALYZE, BUFFERS) SELECT dlock_acquire('bench:explain', 't', 10000, 1, NULL, false)",
        ),
        (
            "floor",
            "EXPLAIN (ANALYZE, BUFFERS) INSERT INTO bench_floor (key, token, fence, expires) \
             VALUES ('explain', 't', nextval('bench_floor_fence'), now() + interval '10 s') \
             ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, fence = EXCLUDED.fence, \
             expires = EXCLUDED.expires WHERE bench_floor.expires <= now() RETURNING fence",
        ),
    ] {
        let mut tx = pg.admin.begin().await.expect("begin");
        // Warm the plan cache and the function once, as a running service has.
        let _ = sqlx::raw_sql(sql).execute(&mut *tx).await;
        let rows = sqlx::raw_sql(&sql.replace("'t'", "'u'").replace("explain'", "explain2'"))
            .fetch_all(&mut *tx)
            .await
            .expect("explain");
        let _ = tx.rollback().await;
        println!("{name}:\n\n```");
        for row in rows {
            let line: String = row.try_get(0).unwrap_or_default();
            println!("{line}");
        }
        println!("```\n");
    }
}

/// The two statements of `dlock_acquire` that the profile showed slow before issue 22's
/// fix, explained as PL/pgSQL runs them once its plan cache settles (a generic plan, bitmap
/// scans off as the function sets them) after the pairs above, beside the table's live and
/// dead rows.
async fn explain_inner(admin: &PgPool) {
    let stats = sqlx::query(
        "SELECT relname::text, n_live_tup, n_dead_tup, \
             coalesce(last_autovacuum::text, 'never') FROM pg_stat_user_tables \
         WHERE relname IN ('dlock_locks', 'bench_floor') ORDER BY relname",
    )
    .fetch_all(admin)
    .await
    .expect("pg_stat_user_tables");
    println!("Rows of the tables after the pairs (`pg_stat_user_tables`):\n");
    println!("| table | live rows | dead rows | last autovacuum |");
    println!("|---|---|---|---|");
    for row in stats {
        let (name, live, dead, vacuumed): (String, i64, i64, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        println!("| {name} | {live} | {dead} | {vacuumed} |");
    }
    println!(
        "\nInside `dlock_acquire`, with a generic plan (`plan_cache_mode = force_generic_plan`),"
    );
    println!("and bitmap scans off as the function sets them, on the key the pairs above used, in");
    println!("a rolled-back transaction:\n");
    for sql in [
        "PREPARE p(text) AS DELETE FROM dlock_locks WHERE key = $1 AND expires <= now()",
        "PREPARE p(text) AS SELECT count(*), max(permits) FILTER (WHERE permits <> 1) \
         FROM dlock_locks WHERE key = $1 AND permits > 0",
    ] {
        let mut tx = admin.begin().await.expect("begin");
        let script = format!(
            "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_bitmapscan = off; \
             {sql}; \
             EXPLAIN (ANALYZE, BUFFERS) EXECUTE p('bench:k0'); DEALLOCATE p;"
        );
        let rows = sqlx::raw_sql(&script).fetch_all(&mut *tx).await;
        let _ = tx.rollback().await;
        println!("```\n{}", &sql[sql.find(" AS ").map_or(0, |i| i + 4)..]);
        for row in rows.into_iter().flatten() {
            let line: String = row.try_get(0).unwrap_or_default();
            println!("{line}");
        }
        println!("```\n");
    }
}

struct Cost {
    sent: f64,
    run: f64,
    server_us: f64,
    wall_us: f64,
    /// (calls per pair, mean µs, query) of every statement run, most called first.
    statements: Vec<(f64, f64, String)>,
}

async fn cost(admin: &PgPool, pairs: u64, op: Op) -> Cost {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(admin)
        .await
        .expect("reset");
    let start = Instant::now();
    for i in 0..pairs {
        op(0, i).await;
    }
    let wall_us = start.elapsed().as_secs_f64() * 1e6 / pairs as f64;
    let rows = sqlx::query(
        "SELECT toplevel, calls, mean_exec_time, total_exec_time, query FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND query NOT ILIKE '%pg_stat_statements%' \
         ORDER BY calls DESC",
    )
    .fetch_all(admin)
    .await
    .expect("pg_stat_statements");
    let n = pairs as f64;
    let (mut sent, mut run, mut server_ms) = (0f64, 0f64, 0f64);
    let mut statements = Vec::new();
    for row in rows {
        let toplevel: bool = row.get(0);
        let calls = row.get::<i64, _>(1) as f64;
        let mean_ms: f64 = row.get(2);
        let total_ms: f64 = row.get(3);
        let query: String = row.get(4);
        // Statements run fewer than once per 100 pairs are the background's.
        if calls / n < 0.01 {
            continue;
        }
        run += calls / n;
        if toplevel {
            sent += calls / n;
            server_ms += total_ms;
        }
        let query = query.split_whitespace().collect::<Vec<_>>().join(" ");
        let query: String = query.chars().take(110).collect();
        statements.push((calls / n, mean_ms * 1e3, query));
    }
    Cost {
        sent,
        run,
        server_us: server_ms * 1e3 / n,
        wall_us,
        statements,
    }
}
