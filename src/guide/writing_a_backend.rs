//! # Writing a backend
//!
//! dlock's own backends (Redis, etcd, the in-process store) implement one trait,
//! `dlock::backend::Backend`. Another server (PostgreSQL, ZooKeeper, Consul, DynamoDB...) can
//! implement it outside this crate, hand it to a locker, and prove itself with exactly the
//! conformance suite the built-in backends pass.
//!
//! Two cargo features, both off by default:
//!
//! ```toml
//! [dependencies]
//! dlock = { package = "dlock-rs", version = "0.1", features = ["unstable-backend"] }
//! [dev-dependencies]
//! dlock = { package = "dlock-rs", version = "0.1", features = ["unstable-backend", "testing"] }
//! ```
//!
//! `unstable-backend` makes the module `dlock::backend` public, with
//! `LockerBuilder::backend`. As its name says, the trait may still change in a minor version:
//! pin the minor version you implemented it against.
//!
//! ## The trait, in outline
//!
//! A backend makes single attempts, and renews and releases what it holds; it knows nothing of
//! guards, registries, metrics or waiting loops. Its own state for one held lock (a token, a
//! lease id and its keep-alive stream...) is an associated type, `Held`. The methods you write:
//!
//! - **`name`**: the backend's name, as it appears in errors, logs and metrics.
//! - **`try_acquire`**: one attempt. `Ok(Some(grant))` when the lock was free and is now yours,
//!   with its fencing token, the time the acquiring command was *sent* and your `Held` state;
//!   `Ok(None)` when someone holds it. It must be cancel-safe: an attempt dropped at any await
//!   point must leave no lock that nobody owns (undo it in the background, or let it expire).
//! - **`renew`**: extends one held lock by its TTL. `Renewed` when the server extended it,
//!   `Lost` when the server proved it is not yours any more (the guard is told at once), an
//!   error when the outcome is unknown (retried until the safety deadline).
//! - **`release`**: deletes the lock only if it is still this acquisition's, answering whether it
//!   was.
//! - **`wakeups`** (provided: none): a shared `Wakeups` your backend
//!   signals when it sees a lock released, so that waiters retry at once instead of at their
//!   next poll.
//! - **`holder`** (provided: "cannot tell"): who holds a lock now, for
//!   [`Locker::holder`](crate::Locker::holder) and elections.
//! - **`max_permits`** (provided: 1) and **`holders`**: semaphores come with the same calls.
//!   A request carries `permits` (1 for a lock, N for a semaphore); a backend that returns
//!   more than 1 from `max_permits` admits up to `permits` holders of a storage key, refuses
//!   an attempt naming another N than its holders' with `Error::PermitsMismatch`, and lists
//!   them in `holders`. `tests/external_backend.rs` does it for a `HashMap` in a few lines,
//!   and the conformance suite checks it.
//!
//! Waiting for a held lock and keeping held locks alive are provided on top of these, and may be
//! overridden where the server does better (etcd queues waiters natively). The trait's rustdoc
//! has the full list of methods, a complete backend over a `HashMap` as its example, and its
//! **`# Contract`**: token-checked release and renewal, strictly increasing fencing tokens per
//! key, cancel-safe acquire, what each renewal outcome means, bounded calls, idempotence under
//! resent commands, and send times rather than reply times. Read the contract before the
//! signatures: the signatures are the easy part.
//!
//! A backend is handed to a locker whose config says `driver: custom`:
//!
//! ```rust
//! # #[cfg(feature = "unstable-backend")]
//! # mod example {
//! use dlock::backend::Backend;
//! use dlock::{Config, Driver, Locker};
//!
//! /// Builds a locker over any backend, yours included.
//! pub fn locker_over<B: Backend>(backend: B) -> dlock::Result<Locker> {
//!     Locker::builder(Config::new(Driver::Custom)).backend(backend).build()
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! ## Proving it: the conformance suite
//!
//! With the `testing` feature, `dlock::testing` is the suite the crate runs on
//! each of its own backends: mutual exclusion under contention, loss reported before the TTL when
//! the server goes down, fencing tokens, cancelled acquires that leave no key, and more, one test
//! per behaviour. Your part is a `Fixture`: how to start a fresh server for one test, build a
//! locker on it, and look at the server from the side (does a key exist, delete it as an
//! operator would, take the server down, a plain counter for the mutual-exclusion test).
//!
//! Here is a fixture over the in-process store, running one test of the suite. Yours would start
//! your server (or connect to a test instance) in `start`, and build lockers with
//! `.backend(YourBackend::new(..))` and `Driver::Custom`:
//!
//! ```rust
//! # #[cfg(feature = "testing")]
//! # mod fixture {
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//!
//! use dlock::testing::Fixture;
//! use dlock::{Config, Driver, Locker, MemoryStore};
//!
//! pub struct MemoryFixture {
//!     store: MemoryStore,
//!     counters: Arc<Mutex<HashMap<String, u64>>>,
//! }
//!
//! impl Fixture for MemoryFixture {
//!     const DRIVER: Driver = Driver::Memory;
//!
//!     async fn start() -> Self {
//!         MemoryFixture { store: MemoryStore::new(), counters: Default::default() }
//!     }
//!
//!     async fn locker(&self, config: Config) -> Locker {
//!         Locker::builder(config).memory(self.store.clone()).build().expect("a valid config")
//!     }
//!
//!     async fn exists(&self, prefix: &str, key: &str) -> bool {
//!         self.store.contains(&format!("{prefix}{key}"))
//!     }
//!
//!     async fn delete(&self, prefix: &str, key: &str) {
//!         self.store.remove(&format!("{prefix}{key}"));
//!     }
//!
//!     async fn stop_server(&mut self) {
//!         self.store.set_offline(true);
//!     }
//!
//!     async fn read_counter(&self, name: &str) -> u64 {
//!         self.counters.lock().unwrap().get(name).copied().unwrap_or(0)
//!     }
//!
//!     async fn write_counter(&self, name: &str, value: u64) {
//!         self.counters.lock().unwrap().insert(name.to_owned(), value);
//!     }
//! }
//! # }
//! # #[cfg(feature = "testing")]
//! # fn main() {
//! # use fixture::MemoryFixture;
//! // One behaviour, on a fresh fixture, in the runtime the suite uses:
//! dlock::testing::run(dlock::testing::mutual_exclusion::<MemoryFixture>);
//! dlock::testing::run(dlock::testing::fencing_tokens_strictly_increase::<MemoryFixture>);
//! # }
//! # #[cfg(not(feature = "testing"))] fn main() {}
//! ```
//!
//! In your crate's `tests/conformance.rs`, one line generates the whole suite, one `#[test]` per
//! behaviour, in a module named by its first argument:
//!
//! ```rust
//! # #[cfg(feature = "testing")]
//! # mod generated {
//! # use dlock::testing::Fixture;
//! # struct MyFixture;
//! # impl Fixture for MyFixture {
//! #     const DRIVER: dlock::Driver = dlock::Driver::Memory;
//! #     async fn start() -> Self { MyFixture }
//! #     async fn locker(&self, config: dlock::Config) -> dlock::Locker { dlock::Locker::builder(config).memory(dlock::MemoryStore::new()).build().unwrap() }
//! #     async fn exists(&self, _: &str, _: &str) -> bool { false }
//! #     async fn delete(&self, _: &str, _: &str) {}
//! #     async fn stop_server(&mut self) {}
//! #     async fn read_counter(&self, _: &str) -> u64 { 0 }
//! #     async fn write_counter(&self, _: &str, _: u64) {}
//! # }
//! dlock::testing::conformance!(my_backend, MyFixture);
//! # }
//! # fn main() {}
//! ```
//!
//! `tests/external_backend.rs` in this repository does exactly that for a backend defined in that
//! file, as a third party would.
