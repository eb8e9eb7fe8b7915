//! # How dlock is built
//!
//! For contributors: where things are, and how the tests reach real servers.
//!
//! - `cargo test --all-features` needs `redis-server`, `redis-cli`, `etcd` and `protoc` on
//!   `PATH`; `scripts/test.sh` installs them. A missing binary fails the test with the install
//!   command; nothing is skipped.
//! - Layout, in the order a `locker.lock(key)` goes through it (never back up a layer):
//!   - `src/builder.rs`: `LockerBuilder`, a config and a connection in, one validated locker
//!     out.
//!   - `src/locker.rs`: per call, validation (`begin`), the attempt bounded by
//!     `wait_timeout` and `close()` (`attempt`), handing the grant to the engine and a guard
//!     (`start_guard`).
//!   - `src/backend/erased.rs`: the one seam where a backend's type is erased (one boxed
//!     backend per locker, one boxed held state per guard).
//!   - `src/backend/mod.rs`: the `Backend` trait and its `# Contract`; `src/backend/support.rs`:
//!     what every backend shares (the locker's `Context`: tracked spawns and the bounded call;
//!     `UndoOnDrop` for interrupted acquires; poisoned-lock recovery; the default waiting
//!     loop); `src/backend/wake.rs`: wake-ups of waiters within one store.
//!   - The backends: `src/backend/redis/` (`mod.rs`, `notifications.rs`, one Lua script per
//!     operation), `src/backend/etcd/` (`session.rs`: the session lease; `queue.rs`: the FIFO queue), `src/backend/memory.rs`.
//!   - `src/engine/`: one per locker, the whole lifecycle of every lock it holds (renew,
//!     lose, release), its invariants numbered at the top of `mod.rs`: a slot per lock in a
//!     slab (`slots.rs`), renewals on a shared grid in buckets (`schedule.rs`), one driver
//!     task that sends each tick's due renewals as one batch.
//!   - `src/guard.rs`: `LockGuard`, the holder's handle on its slot.
//!   - `src/registry.rs` (the key → guard registry) and `src/compat.rs` (the Go-style front).
//!   - `src/election.rs`: leader election over the public lock API and `Locker::holder` (no
//!     backend code); `src/bin/dlock/` the `dlock` command (`main.rs` arguments, `connect.rs`
//!     server and config, `run.rs` the child's supervision, `exit.rs` the exit statuses,
//!     `redact.rs` password removal, `generate.rs` the man pages and completions), feature `cli`.
//!   - `src/testing/`: the conformance suite (feature `testing`); `tests/conformance.rs` runs it
//!     on every backend and redis-rs connection kind.
//!   - `src/guide/`: this guide, one module per chapter, every example a doctest; the
//!     README's Rust examples are doctests too (`ReadmeDoctests` in `src/lib.rs`).
//! - Tests and tools: `tests/support/` is the real-server harness (Redis, Redis Cluster, etcd
//!   single and 3-member, all on free loopback ports) and the fault proxy;
//!   `tests/support/fixtures.rs` has the crate's backends as `Fixture`s, used by the
//!   conformance suite, the fault tests and the benchmark. `tests/safety.rs` has a regression
//!   test per safety defect fixed, `tests/soak.rs` the no-growth soak, `tests/faults.rs` the
//!   proxy-driven fault scenarios, `tests/etcd.rs` etcd-only behaviour (FIFO, failover), `tests/election.rs` leader election on
//!   every backend, `tests/cli.rs` the `dlock` binary end to end.
//!   `tools/torture/` is the multi-process torture checker (an unpublished workspace member):
//!   `main.rs` the command line, its fault model and rules; `workers.rs`, `servers.rs` (the
//!   coordinator), `faults.rs`, `checker.rs`.
//!
//! ### Adding a backend
//! - Pictures: `tools/pictures` draws this guide's timelines into `docs/pictures/`
//!   (`cargo run -p dlock-pictures`; its test fails when the committed files are stale).
