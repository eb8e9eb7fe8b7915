//! # PostgreSQL
//!
//! Feature `postgres`. Locks are rows of the table `dlock_locks`, leases with an expiry by
//! the server's clock, never session state: a pooled connection going back to the pool, or
//! PgBouncer in transaction mode, strands nothing, and a lost lock is found by the same
//! deadline rule as on Redis and etcd. The locker takes your sqlx `PgPool`.
//! On top of everything a lock promises elsewhere, PostgreSQL gives **lock-checked
//! transactions**: a write in your own transaction that commits only while the lock is held.
//!
//! ## Setup
//!
//! Create the schema once, from the service itself (idempotent, safe at every start and from
//! many processes at once; it needs the rights to create a table, a sequence and functions):
//!
//! ```rust,no_run
//! # #[cfg(feature = "postgres")]
//! # async fn setup() -> Result<(), Box<dyn std::error::Error>> {
//! use dlock::{Config, Driver, Locker};
//!
//! let pool = sqlx::PgPool::connect("postgres://app@db/app").await?;
//! dlock::postgres::migrate(&pool).await?;
//! let locker = Locker::builder(Config::new(Driver::Postgres))
//!     .postgres(pool.clone())
//!     .build()?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! Teams that run their own migrations take the SQL instead:
//! `dlock::postgres::SCHEMA`, printed verbatim in the README's
//! "PostgreSQL" section (a unit test keeps the two equal). It creates the sequence
//! `dlock_fence`, the table `dlock_locks` and the functions `dlock_acquire` and
//! `dlock_abandon`.
//!
//! The role the lockers connect as needs much less than the one that migrates: rights on
//! dlock's table, sequence and functions, nothing else. These are the README's lines, run
//! by the schema's owner:
//!
//! ```sql
//! CREATE ROLE dlock_app LOGIN;
//! REVOKE EXECUTE ON FUNCTION dlock_acquire, dlock_abandon FROM PUBLIC;
//! GRANT SELECT, INSERT, UPDATE, DELETE ON dlock_locks TO dlock_app;
//! GRANT USAGE ON SEQUENCE dlock_fence TO dlock_app;
//! GRANT EXECUTE ON FUNCTION dlock_acquire, dlock_abandon TO dlock_app;
//! ```
//!
//! A right that is missing is reported as
//! [`Error::PermissionDenied`](crate::Error::PermissionDenied) with PostgreSQL's own words.
//!
//! From a shell, the [`dlock` command](super::command) takes `--postgres URL` (or
//! `DLOCK_POSTGRES_URL`) when built with `--features cli,postgres`. It never creates the
//! schema: the role that runs jobs should not own it, and re-creating the functions at every
//! run would rewrite the catalog and need ownership. Without the schema it exits 78 and says
//! how to create it.
//!
//! ## Lock-checked transactions
//!
//! A fencing token protects a resource that checks it. When the resource is a table in the
//! same database, `LockGuard::fence_transaction` (in `dlock::postgres`) does better, with no change to your tables: called inside your transaction, it confirms
//! that the guard still holds its lock and keeps the lock from passing to anyone until the
//! transaction ends (a `FOR KEY SHARE` row lock on the lease row, checked live by
//! `clock_timestamp()`). A write the transaction commits after the call committed while the
//! lock was held; if the lock was lost before the call, the call fails with
//! [`Error::OwnershipLost`](crate::Error::OwnershipLost) and nothing commits.
//!
//! A stock decrement, read and written back under the product's lock:
//!
//! ```rust,no_run
//! # #[cfg(feature = "postgres")]
//! # async fn sell(locker: &dlock::Locker, pool: &sqlx::PgPool) -> Result<bool, Box<dyn std::error::Error>> {
//! let guard = locker.lock("inventory:1001").await?;
//! let mut tx = pool.begin().await?;
//! guard.fence_transaction(&mut tx).await?; // OwnershipLost: the lock is gone, tx rolls back on drop
//! let stock: i64 = sqlx::query_scalar("SELECT stock FROM inventory WHERE sku = 1001")
//!     .fetch_one(&mut *tx)
//!     .await?;
//! if stock > 0 {
//!     sqlx::query("UPDATE inventory SET stock = $1 WHERE sku = 1001")
//!         .bind(stock - 1)
//!         .execute(&mut *tx)
//!         .await?;
//! }
//! tx.commit().await?; // committed while the lock was held, or not at all
//! guard.release().await?;
//! # Ok(stock > 0) }
//! # fn main() {}
//! ```
//!
//! `examples/inventory_postgres.rs` is the whole program: 80 orders over two lockers for 50
//! units (`DATABASE_URL=postgres://... cargo run --features postgres --example
//! inventory_postgres`). It needs a server of yours, so `scripts/test.sh` does not run it
//! in its loop over the examples; the test suite runs its `run` on its own server instead.
//!
//! Keep the transaction short: while it is open, a rival waits even for a lock whose TTL
//! has passed (that is the point: the rival's write comes after your commit).
//!
//! ## Wake-ups
//!
//! A waiter's attempts mark the holder's row; the release of a marked row sends
//! `pg_notify('dlock_released', key)` in the same statement. Each locker `LISTEN`s on one
//! connection of its pool, opened only when a first task waits (an uncontended service
//! never opens it), and reopened after a lost connection. Once it listens, every waiting
//! key retries once (a release made while it was connecting notified nobody). Polling
//! every `retry_interval` stays the safety net, so a lost notification costs one poll,
//! never a lock. Where the locker listens is
//! `LockerBuilder::postgres_listen`'s choice
//! (`dlock::postgres::Listen`): behind PgBouncer, see the next section.
//!
//! ## Behind PgBouncer
//!
//! Tested with Debian's PgBouncer 1.18 in **transaction pooling mode**, the mode where a
//! client's server connection is lent to it for one transaction only (session mode behaves
//! like PostgreSQL itself). Give the locker a pool that connects to PgBouncer, with sqlx's
//! default options: nothing to turn off.
//!
//! What works through it, unchanged: everything a lock promises (the whole conformance
//! suite runs through PgBouncer), elections, semaphores, and lock-checked transactions (a
//! transaction holds one server connection from `BEGIN` to `COMMIT`, so the row lock that
//! `fence_transaction` takes lives exactly as long as your transaction). Every statement
//! dlock sends, `fence_transaction`'s included, goes in PostgreSQL's simple query protocol:
//! one message, one round trip, no prepared statement to lose when the next statement runs
//! on another server connection. (sqlx prepares a statement in one exchange and runs it in
//! the next: through PgBouncer 1.18 in transaction mode, its named statements fail with
//! "prepared statement \"sqlx_s_1\" already exists" or "does not exist", and even its
//! unnamed ones, `persistent(false)`, can be bound to another client's statement. No pool
//! option changes that, so dlock does not use them.)
//!
//! What changes: wake-ups. `LISTEN` is session state. Sent through transaction pooling, it
//! subscribes one server connection that PgBouncer then lends to other clients: a
//! notification arrives in the middle of someone else's query, which sqlx fails
//! ("unexpected message: NotificationResponse", in dlock's queries and in yours), and the
//! locker itself hears nothing. So behind PgBouncer choose one of:
//!
//! - `Listen::Direct(options)`: one connection per
//!   locker straight to PostgreSQL, for `LISTEN` only; everything else goes through
//!   PgBouncer. Waiters are woken by a release anywhere, as without PgBouncer.
//! - `Listen::Off`: no `LISTEN`. A waiter learns of a
//!   release by another process at its next poll, every `retry_interval` (keep it short:
//!   100 ms polls cost one cheap statement per waiter each); releases in the same locker
//!   still wake its own waiters at once. For deployments where only PgBouncer is reachable.
//!
//! ```rust,no_run
//! # #[cfg(feature = "postgres")]
//! # async fn setup() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use dlock::postgres::Listen;
//! use dlock::{Config, Driver, Locker};
//!
//! // Every statement through PgBouncer (transaction pooling)...
//! let pool = sqlx::PgPool::connect("postgres://app@pgbouncer.internal:6432/app").await?;
//! // ...and release notifications on one connection straight to PostgreSQL.
//! let direct = "postgres://app@db.internal:5432/app".parse()?;
//! let locker = Locker::builder(Config::new(Driver::Postgres))
//!     .postgres(pool.clone())
//!     .postgres_listen(Listen::Direct(direct))
//!     .build()?;
//!
//! // Or, with PgBouncer alone reachable: poll, every 100 ms.
//! let mut config = Config::new(Driver::Postgres);
//! config.retry_interval = Duration::from_millis(100);
//! let polling = Locker::builder(config)
//!     .postgres(pool)
//!     .postgres_listen(Listen::Off)
//!     .build()?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! The simple protocol has a price where nothing needs it: the server parses and plans
//! each statement again (in this project's benchmark, lock + release pairs/s were 0.6–0.7x
//! those with prepared statements: BENCHMARKS.md, issue 22, session 7). A pool that reaches PostgreSQL itself, or PgBouncer in
//! session mode, or PgBouncer 1.21+ with `max_prepared_statements`, can take
//! `LockerBuilder::postgres_prepared_statements(true)`:
//! values bound to sqlx's cached prepared statements. Never behind an older PgBouncer in
//! transaction mode.
//!
//! Your own statements face what dlock's did: through PgBouncer 1.18 in transaction mode,
//! run them inside a transaction with `.persistent(false)` (the statement is prepared and
//! run on the transaction's one server connection, then gone), or without parameters
//! (`sqlx::raw_sql`). PgBouncer 1.21 and later can track named prepared statements in
//! transaction mode (`max_prepared_statements`); dlock needs neither that nor any setting
//! beyond `pool_mode`.
//!
//! ## Limits
//!
//! - **Failover.** A failover to a replica without synchronous replication can lose the
//!   last lease rows (and fencing tokens drawn just before it), as with Redis: two holders
//!   are then possible until the lost row's TTL passes. Use synchronous replication
//!   (`synchronous_standby_names`) for locks that must survive a failover.
//!   `synchronous_commit = off` can lose a row on a crash of the server alone.
//! - **Resent releases.** sqlx never resends a statement, and the protocol keeps no
//!   tombstone for releases: a release resent by some other layer answers "not released"
//!   (`false`), and deletes nothing of another holder (releases are token-checked).
//!   Interrupted acquires are undone in the background (`dlock_abandon`).
//! - **Isolation levels of `fence_transaction`.** Tested under READ COMMITTED, PostgreSQL's
//!   default. Under REPEATABLE READ or SERIALIZABLE the check can fail with a serialization
//!   error when the lease row changed after the transaction's snapshot (a renewal, say):
//!   retry the transaction. It checks the lock when called; call it before the writes it
//!   protects, in the transaction that makes them, on the database that holds the locks.
//! - **Clocks.** Expiries are `now()` + TTL on the server; liveness is read by the server's
//!   clock only, so client clocks do not matter.
//!
//! ## The tests that prove it
//!
//! | guarantee | test |
//! |---|---|
//! | everything a lock promises on the other backends (mutual exclusion, `lost()` by the deadline, cancel-safe acquire, token-checked release, strictly increasing fencing tokens, `holder()`, elections, semaphores) | the conformance suite, `conformance!(postgres_backend, Postgres)` in `tests/postgres.rs` |
//! | the same as the least-privilege role with the GRANT lines above | `conformance!(postgres_least_privilege, PostgresLeastPrivilege)` |
//! | the same with prepared statements (`postgres_prepared_statements(true)`) | `conformance!(postgres_prepared_statements, PostgresPrepared)` |
//! | fencing tokens never go back across `kill -9` and crash recovery | `fencing_tokens_keep_increasing_across_kill_9_and_crash_recovery` |
//! | a missing right is `PermissionDenied` | `a_missing_right_is_reported_as_permission_denied` |
//! | a holder paused (SIGSTOP) past its TTL between `fence_transaction` and commit either commits while the rival waits, or fails; never after the rival's write | `a_paused_holder_never_commits_after_the_rival` |
//! | a release wakes a waiter of another locker by NOTIFY, not by its poll | `a_release_notifies_a_waiter_of_another_locker` |
//! | the whole conformance suite through PgBouncer 1.18 in transaction pooling mode (4 server connections shared by every locker), nothing of the lockers' reaching PostgreSQL but through it (`Listen::Off`) | `conformance!(postgres_through_pgbouncer, PostgresThroughPgBouncer)` |
//! | behind PgBouncer, a direct listening connection wakes a waiter of another locker (polling every 30 s) by NOTIFY | `behind_pgbouncer_a_direct_listener_wakes_a_waiter_of_another_locker` |
//! | a release made before the direct listening connection has run its `LISTEN` (held in a partitioned proxy) still wakes the waiter once it listens, not at its 30 s poll | `behind_pgbouncer_a_release_before_the_direct_listener_listens_still_wakes_the_waiter` |
//! | behind PgBouncer without `LISTEN`, a waiter of another locker gets the lock at its next poll, and marks no row | `behind_pgbouncer_without_listen_a_waiter_of_another_locker_polls` |
//! | `fence_transaction` through PgBouncer: 200 fenced read-modify-write transactions over 2 lockers lose no increment; a deleted lock's transaction is refused | `behind_pgbouncer_fence_transaction_checks_each_transaction` |
//! | keys and published values with quotes, backslashes, `$$` and non-ASCII text reach the server unchanged (values are written into the SQL as constants); a NUL is refused by the server | `keys_and_values_with_sql_syntax_reach_the_server_as_they_are` |
//! | the inventory example sells exactly its stock | `the_inventory_example_sells_exactly_the_stock` |
//! | `dlock --postgres URL run`: a second run waits for the first; `status`; a missing schema is reported | `tests/cli.rs`: `postgres_second_run_waits_for_the_first_then_runs`, `postgres_no_wait_status_and_forwarded_sigterm`, `postgres_without_schema_bad_urls_and_unreachable_servers` |
//!
//! Each starts PostgreSQL from Debian's `postgresql` package on a free loopback port in a
//! temp dir (as `nobody` when run as root: the server refuses root), through
//! `tests/support/postgres_server.rs`; the PgBouncer tests put Debian's `pgbouncer` in front
//! of it the same way (`tests/support/pgbouncer.rs`, `pool_mode = transaction`). How dlock compares with a bare `INSERT .. ON
//! CONFLICT` and with `pg_advisory_lock` is in BENCHMARKS.md ("Issue 22: PostgreSQL").
