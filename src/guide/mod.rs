//! The guide: how to use dlock, chapter by chapter. Every code block in it is a doctest,
//! compiled by `cargo test --doc`, and run there when it needs no server (most use the
//! in-process store).
//!
//! Read in this order:
//!
//! 1. [`getting_started`]: Getting started: a lock, the guard's life, `run`/`lost()`, fenced writes, waiting, configuration.
//! 2. [`guarantees`]: Guarantees and limits: the failure timeline, each guarantee with the test that proves it, the torture checker, what dlock cannot promise.
//! 3. [`backends`]: Choosing a backend: Redis (Cluster, Sentinel, replica acknowledgement), etcd, the in-process store.
//! 4. [`postgres`]: PostgreSQL: setup, least-privilege GRANTs, lock-checked transactions (`fence_transaction`), wake-ups, limits, and the tests that prove each guarantee.
//! 5. [`production`]: Production connections: TLS, a least-privilege Redis ACL and etcd role, secrets, logs and metrics.
//! 6. [`elections`]: Elections: campaign, lead under `run`, fence with the term, observe the leader.
//! 7. [`semaphores`]: Semaphores: at most N holders, permits as guards, disagreeing N, waiting and fairness per backend.
//! 8. [`command`]: The `dlock` command: run a program under a lock from a shell or cron; its man page and completions.
//! 9. [`from_go`]: Coming from the Go component: the same config, the `lock`/`try_lock`/`unlock` layer, the mapping.
//! 10. [`writing_a_backend`]: Writing a backend: the `Backend` trait in outline, and the conformance suite.
//! 11. [`benchmarks`]: Benchmarks, and how to rerun them.
//! 12. [`internals`]: How dlock is built: the layout and the test harness, for contributors.
//!
//! The [crate root](crate) has the whole API on one screen; each type's page says what it
//! does on drop, on cancellation and on a lost lock.
//!
//! The chapters are modules with nothing in them but their documentation.

pub mod backends;
pub mod benchmarks;
pub mod command;
pub mod elections;
pub mod from_go;
pub mod getting_started;
pub mod guarantees;
pub mod internals;
pub mod postgres;
pub mod production;
pub mod semaphores;
pub mod writing_a_backend;
