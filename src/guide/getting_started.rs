//! # Getting started
//!
//! A lock, a fenced write and a clean shutdown, on the in-process store: every example on this
//! page runs as it is (they are doctests), with nothing but Rust. Switching to Redis or etcd
//! changes one line, the connection given to the builder ([choosing a backend](super::backends)).
//!
//! ## Depending on it
//!
//! The package is `dlock-rs` on crates.io (the name `dlock` belongs to an unrelated crate); the
//! library inside is `dlock`, so code says `use dlock::...`.
//!
//! ```toml
//! [dependencies]
//! # Redis only (the default): builds with nothing but Rust.
//! dlock = { package = "dlock-rs", version = "0.1" }
//! # etcd too: needs `protoc` when building (Debian: apt-get install protobuf-compiler).
//! # dlock = { package = "dlock-rs", version = "0.1", features = ["etcd"] }
//! # etcd only, no Redis code compiled in:
//! # dlock = { package = "dlock-rs", version = "0.1", default-features = false, features = ["etcd"] }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! | feature | default | gives | needs to build | needs to run |
//! |---|---|---|---|---|
//! | `redis` | yes | `.redis(..)` (any redis-rs async connection), `.redis_cluster(..)`, `.redis_pubsub(..)`, `.redis_cluster_pubsub(..)`, [`SentinelConnection`](crate::SentinelConnection) | Rust only | a Redis server, 6.0 or later (tested with 7.0) |
//! | `etcd` | no | `.etcd(..)` | `protoc` (etcd-client compiles its `.proto` files) | an etcd server (tested with 3.4) |
//! | `metrics` | no | `.meter(..)` (OpenTelemetry) | Rust only | an OpenTelemetry exporter of your choice |
//! | `unstable-backend` | no | the `Backend` trait and `.backend(..)`, to add a backend (may change in minor versions) | Rust only | your server |
//! | `testing` | no | `dlock::testing`: the conformance suite, to run on your backend | Rust only | your server |
//! | `cli` | no | the [`dlock` command](super::command) (`cargo install dlock-rs --features cli`); over etcd too with `--features cli,etcd` | Rust only (with `etcd`: `protoc`) | a Redis or etcd server |
//! | (none) | | the in-process backend (`Driver::Memory`) | Rust only | nothing |
//!
//! ## A first lock
//!
//! A [`Locker`](crate::Locker) is built once from a [`Config`](crate::Config) and a connection,
//! and is cheap to clone. [`lock`](crate::Locker::lock) waits until the lock is free and returns
//! a [`LockGuard`](crate::LockGuard): while the guard lives, the lock is renewed in the
//! background; when it is dropped, the lock is released.
//!
//! ```rust
//! use dlock::{Config, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! // Config::default() is the in-process store, prefix "dlock:", TTL 10 s.
//! let locker = Locker::builder(Config::default()).build()?;
//!
//! let guard = locker.lock("nightly-report").await?;   // waits until acquired
//! println!("holding {} with fencing token {}", guard.key(), guard.fencing_token());
//! // ... the critical section ...
//! guard.release().await?;                              // or just let it drop
//!
//! locker.close().await?;                               // releases anything still held
//! # Ok(()) }
//! ```
//!
//! `release()` tells you the outcome: `Err(Error::OwnershipLost)` means the lock had been lost
//! while you held it, so someone else may have held it meanwhile. Dropping the guard releases it
//! too, from a background task, without an outcome.
//!
//! ## The guard's life
//!
//! While it lives, a guard renews its lock every TTL/3. If a renewal finds the lock gone (the
//! key deleted, taken by someone else, its lease ended), the guard is lost at once; if renewals
//! cannot be confirmed at all (the server unreachable), it is lost at the *safety deadline*,
//! 90 % of the TTL after the last confirmed renewal was sent, which is before the server can
//! expire the lock and give it to anyone else. Either way [`lost()`](crate::LockGuard::lost), a
//! [`CancellationToken`](tokio_util::sync::CancellationToken), fires.
//!
#![doc = include_str!("../../docs/pictures/lifecycle.svg")]
//!
//! ## Stopping work when the lock is lost
//!
//! [`run`](crate::LockGuard::run) drives a future while the lock is held and drops it at the
//! first await point after a loss, returning `Err(Error::OwnershipLost)`. Here an operator deletes
//! the lock behind the holder's back ([`MemoryStore::remove`](crate::MemoryStore::remove) plays
//! the operator), and the endless task stops at the next renewal:
//!
//! ```rust
//! use std::time::Duration;
//! use dlock::{Config, Error, Locker, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! let store = MemoryStore::new();
//! let config = Config { default_ttl: Duration::from_millis(300), ..Config::default() };
//! let locker = Locker::builder(config).memory(store.clone()).build()?;
//!
//! let guard = locker.lock("import").await?;
//! store.remove("dlock:import");                        // the lock is gone; the guard does not know yet
//!
//! let outcome = guard.run(async {
//!     loop {
//!         tokio::time::sleep(Duration::from_millis(10)).await;  // one step of a long task
//!     }
//! }).await;
//! assert!(matches!(outcome, Err(Error::OwnershipLost { .. })));
//! assert!(guard.is_lost());
//! assert!(matches!(guard.release().await, Err(Error::OwnershipLost { .. })));
//! # Ok(()) }
//! ```
//!
//! Code that is not a single future can watch the token itself:
//! `tokio::select! { _ = guard.lost().cancelled() => ..., r = step() => ... }`.
//!
//! Work that can fail itself comes back wrapped: the outer `Result` says whether the lock
//! held to the end, the inner one is the work's own, hence the two `?`:
//!
//! ```rust
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
//! let guard = locker.lock("export").await?;
//! let rows: u64 = guard.run(async { Ok::<_, std::io::Error>(42) }).await??;
//! assert_eq!(rows, 42);
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Fenced writes
//!
//! `lost()` stops *cooperative* work. It cannot recall a write that is already on its way, nor
//! wake a process that was paused (a long GC-like stop, a suspended VM) past its TTL. What stops
//! those is the resource itself: each guard carries a [fencing
//! token](crate::LockGuard::fencing_token), strictly increasing per key, and a resource that
//! remembers the highest token it accepted refuses anything older. A database does this with a
//! conditional update (`UPDATE ... WHERE fencing_token < $1`); here the resource is a map:
//!
//! ```rust
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use dlock::{Config, Locker};
//!
//! /// Refuses a write whose token is lower than the highest it accepted for that key.
//! #[derive(Default)]
//! struct FencedStore(Mutex<HashMap<String, u64>>);
//!
//! impl FencedStore {
//!     fn write(&self, key: &str, token: u64) -> Result<(), String> {
//!         let mut highest = self.0.lock().unwrap();
//!         let seen = highest.entry(key.to_owned()).or_insert(0);
//!         if token < *seen {
//!             return Err(format!("refused: token {token} < {seen}"));
//!         }
//!         *seen = token;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! let locker = Locker::builder(Config::default()).build()?;
//! let resource = FencedStore::default();
//!
//! let first = locker.lock("report").await?;
//! let stale_token = first.fencing_token();
//! resource.write("report", stale_token).unwrap();
//! first.release().await?;
//!
//! let second = locker.lock("report").await?;          // a later holder: a larger token
//! assert!(second.fencing_token() > stale_token);
//! resource.write("report", second.fencing_token()).unwrap();
//! assert!(resource.write("report", stale_token).is_err());  // the late write is refused
//! # Ok(()) }
//! ```
//!
//! The [guarantees](super::guarantees) chapter draws this timeline and says when tokens could
//! repeat (a Redis server clock that steps back).
//!
//! ## Waiting, not waiting, giving up
//!
//! ```rust
//! use std::time::Duration;
//! use dlock::{Config, Error, LockOptions, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! let locker = Locker::builder(Config::default()).build()?;
//! let held = locker.lock("inventory:42").await?;
//!
//! // try_lock never waits: None when someone else holds the lock.
//! assert!(locker.try_lock("inventory:42").await?.is_none());
//!
//! // lock_with: a TTL of its own, and a bound on the wait.
//! let options = LockOptions::new().ttl(Duration::from_secs(30)).wait_timeout(Duration::from_millis(50));
//! let waited = locker.lock_with("inventory:42", options).await;
//! assert!(matches!(waited, Err(Error::Timeout { .. })));
//!
//! // Who holds it, as the server says: the fencing token, the TTL left, a published value.
//! let holder = locker.holder("inventory:42").await?.expect("held");
//! assert_eq!(holder.fencing_token, held.fencing_token());
//! # Ok(()) }
//! ```
//!
//! Two tasks that `lock` one key through one locker exclude each other like a mutex: the second
//! waits. (The [Go-style layer](super::from_go) instead answers `LockAlreadyHeld`, as the Go
//! component does.) Every async method documents its cancel safety: dropping a `lock()` future
//! never leaves a lock behind, and dropping a `release()` future still releases. So wrapping a
//! call in `tokio::time::timeout` or `select!` is safe.
//!
//! `lock()` does not retry through backend errors: a server that is down ends the call with
//! `Error::Backend` (at once when the connection is refused, within the TTL when it does not
//! answer). Retry in your code if you want to wait an outage out.
//!
//! ## Configuration
//!
//! ```rust
//! use std::time::Duration;
//! use dlock::{Config, Driver};
//!
//! let config = Config::from_yaml(r#"
//! driver: redis            # redis | etcd | memory | custom (a backend given with .backend(..))
//! prefix: "myapp:lock:"
//! default_ttl: 10s         # humantime: 10s, 1500ms, 1m
//! retry_interval: 100ms
//! "#)?;
//! assert_eq!(config.driver, Driver::Redis);
//! assert_eq!(config.default_ttl, Duration::from_secs(10));
//!
//! // A typo names its field instead of being ignored.
//! let typo = Config::from_yaml("driver: redis\ndefault_tll: 10s").unwrap_err();
//! assert!(typo.to_string().contains("default_tll"));
//! # Ok::<(), dlock::Error>(())
//! ```
//!
//! [`Config::from_file`](crate::Config::from_file) reads `.yaml`, `.yml` or `.json`;
//! `examples/config.yaml` in the repository is a template. `driver` is required in files; the
//! others default as above (`prefix` defaults to `dlock:`). Unknown fields, unparsable or
//! negative durations are refused with an `Error::InvalidConfig` that names the field. Limits,
//! checked once by `build()`: TTL 100 ms ..= 24 h (etcd: whole seconds), retry interval 1 ms ..=
//! 1 h, key and prefix at most 1024 bytes, `call_timeout` (builder) at least 1 ms. A key may
//! contain any character (NUL, newline, `*`, braces), on Redis Cluster too. Redis's
//! `replica_ack` is in [choosing a backend](super::backends#redis-replica-acknowledgement).
//!
//! ## Questions people ask
//!
//! **What TTL should I use?** The TTL is how long a crashed holder blocks everyone else, and how
//! long a network blip may last before the lock is declared lost. 10 s is a good default;
//! renewal keeps long critical sections alive regardless.
//!
//! **Do I have to call `release()`?** No: dropping the guard releases it from its background
//! task. Call `release()` when you want the outcome.
//!
//! **Can I hold the same key twice from one process?** Through `locker.lock` the second call
//! waits like a mutex; through `compat()` it returns `LockAlreadyHeld`, like Go.
//!
//! **Does dlock manage connections?** No, you inject them, as in Go. redis-rs's
//! `ConnectionManager` and the etcd client reconnect by themselves; renewal and waiting survive
//! reconnects.
//!
//! **Why do fencing tokens on Redis look like timestamps?** They are: the server clock in
//! microseconds when the lock was acquired. No counter key is kept, so none can leak or be rolled
//! back by a persistence reload; the limit is a server clock that steps back (see
//! [guarantees](super::guarantees)).
//!
//! The repository's examples (`cargo run --example NAME`) go further: `quickstart`, `go_style`
//! (the compat API), `ownership_loss` (a long task stopped by `lost()`, a late write refused by
//! its fencing token), `scheduled_task` (`try_lock` election), `inventory` (TTL option),
//! `leader` (leader election with an observer, writes fenced by term).
