//! # Coming from the Go component
//!
//! dlock is the Rust port, and successor, of the Go `dlock` component: the same config
//! (`driver`, `prefix`, `default_ttl`, `retry_interval`, from YAML or JSON), connections
//! injected by the caller, token-checked release, automatic renewal, the same error cases and
//! metric names, and a Go-style `lock`/`try_lock`/`unlock` layer so Go code ports line by line.
//!
//! ## The config file, unchanged
//!
//! The Go `Config` struct's YAML and JSON field names are dlock's, and durations are written the
//! same way (`10s`, `100ms`):
//!
//! ```rust
//! use std::time::Duration;
//! use dlock::{Config, Driver};
//!
//! let go_config = r#"
//! driver: etcd
//! prefix: "myapp:lock:"
//! default_ttl: 30s
//! retry_interval: 100ms
//! "#;
//! let config = Config::from_yaml(go_config)?;
//! assert_eq!((config.driver, config.default_ttl), (Driver::Etcd, Duration::from_secs(30)));
//!
//! let json = Config::from_json(r#"{"driver": "redis", "prefix": "myapp:lock:", "default_ttl": "10s"}"#)?;
//! assert_eq!(json.retry_interval, Duration::from_millis(100));   // the Go default
//! # Ok::<(), dlock::Error>(())
//! ```
//!
//! ## `Lock` / `TryLock` / `Unlock` by key
//!
//! [`Locker::compat`](crate::Locker::compat) gives a [`Compat`](crate::Compat): the Go
//! interface, over a registry of the guards this locker holds. Its semantics are Go's: locking a
//! key this locker already holds returns `LockAlreadyHeld` instead of waiting, unlocking a key it
//! does not hold returns `LockNotHeld`, unlocking a lock that was lost returns `OwnershipLost`.
//!
//! ```rust
//! use std::time::Duration;
//! use dlock::{Config, Error, LockOptions, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! let locker = Locker::builder(Config::default()).build()?;
//! let go = locker.compat();
//!
//! // locker.Lock(ctx, "resource-key"); defer locker.Unlock(ctx, "resource-key")
//! go.lock("resource-key").await?;
//! assert!(matches!(go.lock("resource-key").await, Err(Error::LockAlreadyHeld { .. })));
//! go.unlock("resource-key").await?;
//! assert!(matches!(go.unlock("resource-key").await, Err(Error::LockNotHeld { .. })));
//!
//! // acquired, _ := locker.TryLock(ctx, "scheduled-task:cleanup", dlock.WithTTL(time.Minute))
//! let acquired = go.try_lock_with("scheduled-task:cleanup", LockOptions::new().ttl(Duration::from_secs(60))).await?;
//! if acquired {
//!     // run the cleanup, then:
//!     go.unlock("scheduled-task:cleanup").await?;
//! }
//! # Ok(()) }
//! ```
//!
//! Ported code can then move to guards one call site at a time: a guard cannot be unlocked
//! twice or by the wrong owner, tells you when it is lost ([`lost()`](crate::LockGuard::lost)),
//! and carries a fencing token, which the Go component did not have.
//!
//! ## The mapping
//!
//! | Go | Rust |
//! |---|---|
//! | `dlock.New(cfg, dlock.WithRedisConnector(c), dlock.WithLogger(l))` | `Locker::builder(cfg).redis(c).build()?` (logs go to `tracing`) |
//! | `dlock.WithEtcdConnector(c)` | `.etcd(client)` |
//! | `dlock.WithMeter(m)` | `.meter(meter)` (feature `metrics`) |
//! | `locker.Lock(ctx, k)` + `defer locker.Unlock(ctx, k)` | `let _g = locker.lock(k).await?;` — or `go.lock(k)` / `go.unlock(k)` |
//! | `locker.TryLock(ctx, k)` | `locker.try_lock(k).await?` (`Option<LockGuard>`) — or `go.try_lock(k)` (`bool`) |
//! | `dlock.WithTTL(d)` | `LockOptions::new().ttl(d)` |
//! | `ctx` deadline / cancel | `LockOptions::wait_timeout(d)`, or drop the future |
//! | `ErrConfigNil` / `ErrConnectorNil` | `Error::InvalidConfig` / `Error::ConnectorMissing` |
//! | `ErrLockNotHeld` / `ErrLockAlreadyHeld` / `ErrOwnershipLost` | `Error::LockNotHeld` / `Error::LockAlreadyHeld` / `Error::OwnershipLost` |
//! | `ErrClosed` | `Error::Closed` |
//!
//! Where the Go component and dlock differ on purpose: renewal errors are retried until the lock
//! can no longer be proven held (Go gave up on the first timeout); the holder learns of a loss at
//! once through `lost()` (Go told it at `Unlock`); waiters are woken by releases (Go polled
//! every 100 ms); an interrupted acquire leaves nothing behind; etcd lease loss is detected.
