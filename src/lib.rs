//! Distributed locks for async Rust, over Redis, etcd, or an in-process store.
//!
//! New here? The [guide] walks through it chapter by chapter: [getting
//! started](guide::getting_started), the [guarantees and limits](guide::guarantees), [choosing
//! a backend](guide::backends), [PostgreSQL](guide::postgres) (with lock-checked
//! transactions), [production connections](guide::production),
//! [elections](guide::elections), [semaphores](guide::semaphores), the [`dlock` command](guide::command), [coming from the Go
//! component](guide::from_go) and [writing a backend](guide::writing_a_backend).
//!
//! A [`Locker`] hands out [`LockGuard`]s. A guard is renewed in the background while it
//! lives, tells you through a [`CancellationToken`](tokio_util::sync::CancellationToken) if
//! ownership is lost, carries a fencing token, and releases the lock when dropped.
//!
//! ```
//! use std::time::Duration;
//! use dlock::{Config, Driver, LockOptions, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! // Driver::Redis / Driver::Etcd take an injected connection: .redis(conn) / .etcd(client).
//! let config = Config { driver: Driver::Memory, prefix: "myapp:lock:".into(), ..Default::default() };
//! let locker = Locker::builder(config).build()?;            // validated once, here
//!
//! let guard = locker.lock("job").await?;                     // waits until acquired
//! let token = guard.fencing_token();                          // strictly increasing per key
//! let lost = guard.lost();                                    // fires if ownership is lost
//! let out = guard.run(async { "work" }).await?;               // Err(OwnershipLost) if lost first
//! guard.release().await?;                                     // or just drop it
//!
//! let options = LockOptions::new().ttl(Duration::from_secs(30)).wait_timeout(Duration::from_secs(1));
//! let guard = locker.lock_with("inventory:42", options).await?;
//! let busy = locker.try_lock("inventory:42").await?;         // never waits
//! assert!(busy.is_none());
//! let holder = locker.holder("inventory:42").await?;         // who holds it: token, TTL left
//! assert_eq!(holder.map(|h| h.fencing_token), Some(guard.fencing_token()));
//! drop(guard);
//!
//! let go = locker.compat();                                   // the Go-style API
//! go.lock("k").await?;
//! let acquired: bool = go.try_lock("other").await?;
//! go.unlock("k").await?;
//!
//! locker.close().await?;                                      // release all, stop renewals
//! # let _ = (token, lost, out, acquired); Ok(()) }
//! ```
//!
//! # Leader election
//!
//! [`Locker::election`] gives an [`Election`]: [`Election::campaign`] waits to lead and
//! returns a [`Leadership`] whose term is its fencing token and whose `lost()` fires before
//! anyone else can be elected; [`Election::leader`] and [`Election::observe`] show who leads;
//! [`Election::run_while_leader`] runs work each time this candidate leads.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
//! let election = locker.election("scheduler");
//! let leadership = election.campaign("node-a:8080").await?;
//! let written = leadership.run(async { /* act as leader, fenced by */ leadership.term() }).await?;
//! assert_eq!(election.leader().await?.map(|l| l.fencing_token), Some(written));
//! leadership.resign().await?;
//! # Ok(()) }
//! ```
//!
//! # Semaphores
//!
//! [`Locker::semaphore`] gives a [`Semaphore`]: at most N holders of a name at once, each
//! holding a [`LockGuard`] (a permit) with everything a lock's guard promises.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
//! let crawlers = locker.semaphore("crawler", 5);              // at most 5 at once
//! let permit = crawlers.acquire().await?;                      // a LockGuard
//! assert_eq!(crawlers.holders().await?.len(), 1);
//! permit.release().await?;
//! # Ok(()) }
//! ```
//!
//! The `dlock` command (cargo feature `cli`) runs any program under a lock:
//! `dlock --redis redis://host/ run KEY -- CMD ARGS...`; see [its chapter](guide::command).
//!
//! # Backends
//!
//! - **Redis** ([`Driver::Redis`], feature `redis`): `SET NX PX` with a ULID token in a Lua
//!   script that also draws the fencing token; the locker's engine renews every TTL/3, in batches; a waiter marks
//!   the held lock, and a marked release is published so waiters retry at once (unmarked
//!   releases publish nothing). Single node or Cluster.
//! - **etcd** ([`Driver::Etcd`], feature `etcd`): a key per acquisition, attached to the
//!   locker's session lease (one per TTL, one keep-alive stream); waiters queue by revision
//!   (FIFO); the fencing token is the key's create revision.
//! - **Memory** ([`Driver::Memory`]): the same semantics inside one process, for tests.
//! - **Your own** ([`Driver::Custom`]): implement `dlock::backend::Backend` (feature
//!   `unstable-backend`; its `# Contract` says what a backend must guarantee), give it to
//!   `LockerBuilder::backend`, and run this crate's conformance suite on it with
//!   `dlock::testing::conformance!` (feature `testing`).
//!
//! `.redis(conn)` takes any redis-rs async connection that is a cheap handle
//! (`ConnectionManager`, `MultiplexedConnection`, a cluster connection); `.redis`, `.etcd`
//! and `.memory` are `.backend(..)` with the crate's own backends.
//!
//! # Guarantees, briefly
//!
//! Only the holder can release (token-checked). A holder is told of a loss before the
//! server-side expiry when renewals cannot be confirmed, and at once when the key is found
//! deleted or taken. A pause longer than the TTL (GC-like stop, suspended VM) can still let
//! two processes believe they hold the lock: use [`LockGuard::fencing_token`] at the
//! protected resource. The guide's [guarantees and limits](guide::guarantees) has the details,
//! each guarantee with the test that proves it.
#![warn(missing_docs)]
// docs.rs (nightly) marks each feature-gated item with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "unstable-backend")]
#[cfg_attr(docsrs, doc(cfg(feature = "unstable-backend")))]
pub mod backend;
#[cfg(not(feature = "unstable-backend"))]
mod backend;
mod builder;
mod compat;
mod config;
mod election;
mod engine;
mod error;
mod guard;
pub mod guide;
mod holder;
mod locker;
pub mod metrics;
mod options;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
mod registry;
mod semaphore;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use backend::memory::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use backend::redis::SentinelConnection;
pub use builder::{LockerBuilder, DEFAULT_CALL_TIMEOUT};
pub use compat::Compat;
pub use config::{
    Config, Driver, ReplicaAck, MAX_KEY_LEN, MAX_PERMITS, MAX_REPLICA_ACKS, MAX_TTL, MIN_TTL,
};
pub use election::{Election, Leadership, Term};
pub use error::{BoxError, Error, Result};
pub use guard::{LockGuard, Run};
pub use holder::Holder;
pub use locker::Locker;
pub use options::LockOptions;
pub use semaphore::Semaphore;

// The README's Rust examples, compiled (and run where not `no_run`) by `cargo test --doc`;
// never part of the documentation.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
