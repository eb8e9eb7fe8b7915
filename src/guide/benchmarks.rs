//! # Benchmarks, and how to rerun them
//!
//! The figures live in the repository's `BENCHMARKS.md`, with the machine, the method, the
//! history of each change and the charts (`benches/charts/*.svg`, drawn by the benchmark
//! itself). This chapter says what is measured and how to measure it again; it deliberately
//! quotes no figure, so that it cannot go stale.
//!
//! ## Running it
//!
//! The benchmark needs a checkout of the repository (it is not part of the published crate),
//! the `redis`, `etcd` and `testing` features, and the servers the tests use (`redis-server`,
//! `etcd`, and `protoc` to build etcd-client; `scripts/test.sh` installs them). It starts its own
//! servers on free loopback ports:
//!
//! ```sh
//! cargo bench --all-features --bench dlock                        # every section, a few minutes
//! cargo bench --all-features --bench dlock -- --quick             # shorter windows: a smoke run
//! cargo bench --all-features --bench dlock -- <section>           # one or more sections by name:
//! cargo bench --all-features --bench dlock -- throughput handoff  #   throughput, handoff, contention, hold, cost,
//!                                                                 #   semaphore, postgres
//! ```
//!
//! Each run prints its tables and redraws the charts in `benches/charts/`. On a shared or small
//! machine absolute rates move by tens of percent between runs: compare ratios taken in the same
//! run, and run a section three times before believing a change.
//!
//! ## The charts
//!
//! Drawn by the last full run committed with `BENCHMARKS.md` (where its date, commit and
//! tables are): throughput against tasks for dlock, the floor and the peer on Redis, and how
//! evenly one hot key was shared among the tasks of two lockers.
//!
#![doc = include_str!("../../benches/charts/throughput-redis.svg")]
//!
#![doc = include_str!("../../benches/charts/hot-key-shares.svg")]
//!
//! ## What is measured, against what
//!
//! Every figure stands beside a **floor** (the least the job needs, sent by hand on the same
//! server: `SET NX PX` then a compare-and-delete on Redis; a put-if-absent on a shared lease then
//! a delete on etcd) or a **peer** (what a user would pick instead: `rslock` on Redis, etcd's own
//! lock service), measured in the same run. Never against dlock's own protocol sent by hand,
//! which would measure nothing but the client.
//!
//! - **`throughput`**: uncontended lock + release pairs per second on distinct keys, with 1 and
//!   64 tasks, on Redis, etcd and the in-process store, beside the floors and the peers.
//! - **`handoff`**: the latency from a release to a waiter already blocked in `lock()` (p50,
//!   p99), the release made by a second locker with its own connection; with and without
//!   release notifications, against a Redis floor (`SET NX PX`, the waiter subscribed first,
//!   a release script that compares, deletes and publishes) and the peers' own waiting.
//! - **`contention`**: one hot key, many tasks over two lockers: acquisitions per second,
//!   attempts per acquisition, and how evenly the tasks were served, against rslock.
//! - **`hold`**: 100,000 locks held at once: the heap per guard, the CPU the client and the
//!   server spend on renewals, the calls sent, the keys left after release, and etcd's lease
//!   count.
//! - **`cost`**: what one uncontended lock + release costs the Redis server: the commands it
//!   runs (`INFO commandstats`, a script's own commands included) and its CPU time per pair,
//!   against the floor and rslock.
//! - **`postgres`**: PostgreSQL (issue 22): pairs per second at 1 and 16 tasks, distinct keys
//!   and one hot key, and the handoff to a blocked waiter (p50, p90), against the floor (one
//!   `INSERT .. ON CONFLICT` with `nextval`, then a `DELETE`) and the peer (`pg_advisory_lock`
//!   on a pooled connection); then the statements and the server's time per pair
//!   (`pg_stat_statements`, the statements inside dlock's function included) and `EXPLAIN
//!   ANALYZE` of the acquires. See [the PostgreSQL chapter](super::postgres).
//!
//! Where a Redis server's time goes, without dlock's client in the way:
//! `scripts/redis-server-cost.sh` sends a plain `SET NX PX`, dlock's acquire script and
//! scripts that keep part of its work with `redis-benchmark`, and 100,000 renewals a round
//! as plain `PEXPIRE`s, as dlock's batches and as steps between, with `redis-cli --pipe`,
//! and reports the server's CPU time for each.
//!
//! The code is `benches/dlock/`: `main.rs` (arguments, section selection, output),
//! `measure.rs` (the rate loop, percentiles), `baselines.rs` (the floors and peers), one module
//! per section, `heap.rs` (the allocation count) and `charts.rs` (the SVG charts).
