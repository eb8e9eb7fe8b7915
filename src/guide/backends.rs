//! # Choosing a backend
//!
//! Every backend gives the same API and the same guarantees for a lock that is held and
//! renewed ([guarantees](super::guarantees)); they differ in what survives a server failure, in
//! speed, and in how waiters are served. dlock never opens connections of its own: you build the
//! client (with its TLS, credentials, timeouts) and hand it to the builder, as in Go.
//!
//! | | Redis | etcd | in-process |
//! |---|---|---|---|
//! | connect with | `.redis(conn)`: any redis-rs async connection (`ConnectionManager`, `MultiplexedConnection`, Cluster) | `.etcd(etcd_client::Client)` | `.memory(MemoryStore)` or nothing |
//! | held lock | `<prefix>{<key>}` = `<token>:<fencing token>`, `PX` TTL, marked `!` once a waiter announced itself; after release a tombstone for ≤ 5 s | `<prefix><key>/<lease>.<n>` on the locker's session lease (one lease per locker and TTL; `<n>` the smallest number free in the session, so a name is reused) | a map entry |
//! | renewal | script every TTL/3 | per session, not per lock: one keep-alive and one check of the lease's key list every TTL/3 | every TTL/3 |
//! | waiting | one task per process tries at a time; a holder hands the lock to the next waiter of its locker (8 in a row, then releases); other processes retry on release notification (pub/sub; a release publishes only if a waiter marked the lock); polling as the safety net | FIFO: watch the predecessor's deletion | woken on release |
//! | fencing token | server clock in µs, drawn by the acquire script | the key's create revision | a store-wide counter |
//! | consistency | asynchronous replication (see below) | linearizable (Raft) | one process |
//!
//! Choose **Redis** for throughput and low latency when a rare double grant after a master
//! failover is tolerable (or guarded by fencing). Choose **etcd** when the lock must survive the
//! loss of a minority of servers without ever being granted twice, and when waiters should be
//! served in order. The **in-process** store is for tests and examples; it has the same
//! semantics (TTL, loss, fencing) and switches to simulate an outage or a deleted key.
//! Throughput and handoff figures for each, beside the alternatives measured in the same run,
//! are in the repository's `BENCHMARKS.md` ([benchmarks](super::benchmarks)).
//!
//! ## Redis
//!
//! Any redis-rs async connection that is a cheap, shareable handle: `ConnectionManager`
//! (reconnects by itself; renewals and waits survive reconnects), `MultiplexedConnection`, a
//! Cluster connection. `.redis_pubsub(client)` is optional: with it, a release anywhere wakes
//! the waiters of every process at once; without it, waiters of other processes poll every
//! `retry_interval`.
//!
//! ```rust,no_run
//! use dlock::{Config, Driver, Locker};
//!
//! # #[cfg(feature = "redis")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = redis::Client::open("redis://127.0.0.1:6379/")?;
//! let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
//! let locker = Locker::builder(Config::new(Driver::Redis))
//!     .redis(conn)
//!     .redis_pubsub(client)          // optional: releases wake waiters of other processes
//!     .build()?;
//! let guard = locker.lock("nightly-report").await?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! **Redis Cluster.** All keys of one lock share a hash slot (the `{key}` hash tag), so locks
//! spread over the masters. `.redis_cluster_pubsub(client)` keeps each release notification on
//! the shard that owns the lock (`SSUBSCRIBE`/`SPUBLISH`; the client must speak RESP3), where a
//! plain `PUBLISH` would cross the cluster bus to every node:
//!
//! ```rust,no_run
//! # #[cfg(feature = "redis")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use redis::cluster::ClusterClientBuilder;
//!
//! let client = ClusterClientBuilder::new(vec!["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"])
//!     .use_protocol(redis::ProtocolVersion::RESP3)
//!     .build()?;
//! let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Redis))
//!     .redis_cluster(client.get_async_connection().await?)
//!     .redis_cluster_pubsub(client)
//!     .build()?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! **Sentinel.** [`SentinelConnection`](crate::SentinelConnection) is a connection for
//! `.redis(..)` that asks the sentinels for the master again after a connection error or a
//! `READONLY` reply, so renewals and new locks move to the promoted replica (redis-rs's own
//! `SentinelClient` resolves the master once). Release notifications (`.redis_pubsub`) need a
//! fixed address; over Sentinel, waiters poll.
//!
//! ```rust,no_run
//! # #[cfg(feature = "redis")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let sentinels = vec!["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/", "redis://10.0.0.3:26379/"];
//! let conn = dlock::SentinelConnection::connect(sentinels, "mymaster", Default::default()).await?;
//! let locker = dlock::Locker::builder(dlock::Config::new(dlock::Driver::Redis)).redis(conn).build()?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! Replication is asynchronous: a lock written to a master that dies before replicating it can
//! be granted again after the failover. What that costs, measured, and what `replica_ack`
//! changes, is under [limits](super::guarantees#limits).
//!
//! ### Redis replica acknowledgement
//!
//! **`replica_ack`** (or `LockerBuilder::replica_ack(replicas, timeout)`) is **off by default**:
//! with no replica, `WAIT 1` can never succeed, so turning it on by default would break every
//! single-node user. On, each acquire and renewal script is followed by `WAIT <replicas>
//! <timeout>` in the same pipeline (same connection; on a Cluster the pipeline is routed by the
//! lock's key, so the wait happens on the master that owns it). Too few acknowledgements: an
//! acquisition is released again and the call fails with `Error::Backend` ("only 0 of 2
//! replicas acknowledged the lock within 100ms"; `lock()` does not wait through it, like any
//! backend error); a renewal counts as unconfirmed and is retried until the safety deadline,
//! then `lost()` fires. Ask for as many replicas as could be promoted: Sentinel and Cluster
//! promote the most up-to-date replica they know of, but only a write every candidate has is
//! sure to survive. Costs: a round trip to the replicas per acquisition and renewal, and a
//! `WAIT` that blocks holds up the other commands multiplexed on that connection (at most the
//! timeout). `WAITAOF` (Redis >= 7.2: also fsynced by the replicas) is not used or tested: the
//! tested server is 7.0.
//! Limits, checked by `build()`: 1 ..= 64 replicas, a timeout of 1 ms .. 90 % of `default_ttl`,
//! redis driver only.
//!
//! ```rust
//! # #[cfg(feature = "redis")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use dlock::{Config, Driver, Locker};
//!
//! // In a file: `replica_ack: { replicas: 2, timeout: 100ms }` (redis driver only).
//! let config = Config::from_yaml("driver: redis\nreplica_ack: { replicas: 2, timeout: 100ms }")?;
//! assert_eq!(config.replica_ack.map(|ack| ack.replicas), Some(2));
//!
//! // Or on the builder; a lazy connection: nothing is sent before the first lock.
//! let client = redis::Client::open("redis://127.0.0.1:6379/")?;
//! let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, Default::default())?;
//! let locker = Locker::builder(Config::new(Driver::Redis))
//!     .redis(conn)
//!     .replica_ack(2, Duration::from_millis(100))
//!     .build()?;
//! # Ok(()) }
//! # #[cfg(not(feature = "redis"))] fn main() {}
//! ```
//!
//! ## etcd
//!
//! An `etcd_client::Client` (cargo feature `etcd`, which needs `protoc` to build). Waiters queue
//! in request order (FIFO), each watching its predecessor's key. A locker attaches all its keys
//! of one TTL to one lease, its session, kept alive by one stream: see [etcd
//! sessions](super::guarantees#limits) for what that couples.
//!
//! ```rust,no_run
//! # #[cfg(feature = "etcd")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use dlock::{Config, Driver, Locker};
//!
//! let client = etcd_client::Client::connect(["http://10.0.0.1:2379", "http://10.0.0.2:2379"], None).await?;
//! let locker = Locker::builder(Config::new(Driver::Etcd)).etcd(client).build()?;
//! let guard = locker.lock("nightly-report").await?;   // FIFO among waiters; one lease per locker
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! A TTL on etcd is whole seconds (a lease's unit); `build()` and `lock_with` refuse others.
//!
//! ## In-process
//!
//! [`MemoryStore`](crate::MemoryStore): no server, one process. Lockers built on the same store
//! see each other's locks, with TTLs, renewal, loss and fencing like the servers; the store can
//! go offline and lose keys on command, which is how the guide's examples show failures.
//!
//! ```rust
//! use dlock::{Config, Locker, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! let store = MemoryStore::new();
//! let a = Locker::builder(Config::default()).memory(store.clone()).build()?;
//! let b = Locker::builder(Config::default()).memory(store.clone()).build()?;
//!
//! let guard = a.lock("job").await?;
//! assert!(b.try_lock("job").await?.is_none());     // b sees a's lock
//! assert!(store.contains("dlock:job"));             // storage key: prefix + key
//! guard.release().await?;
//! assert!(b.try_lock("job").await?.is_some());
//! # Ok(()) }
//! ```
//!
//! Without `.memory(..)`, `Driver::Memory` uses one process-wide store
//! ([`MemoryStore::global`](crate::MemoryStore::global)).
//!
//! ## Your own
//!
//! Any other server can be a backend: see [writing a backend](super::writing_a_backend).
