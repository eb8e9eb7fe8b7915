//! # Production connections
//!
//! TLS, a least-privilege user, secrets kept out of logs, and what dlock logs and measures.
//!
//! Managed Redis and etcd are reached over TLS, with credentials that may touch only the lock
//! prefix. dlock takes the connections you build, so TLS and credentials are the client
//! crates' business: enable their TLS feature next to dlock's (cargo unifies features; dlock
//! has no pass-through feature, since it would only forward these and tie dlock to one TLS
//! stack). Tested by `tests/production.rs` against real servers with certificates made at test
//! time (`scripts/test.sh` runs it).
//!
//! ```toml
//! redis = { version = "1.8", default-features = false, features = ["tls-rustls", "tokio-rustls-comp"] }  # or "tokio-native-tls-comp"
//! etcd-client = { version = "0.21", features = ["tls"] }  # rustls with ring; "tls-openssl" for OpenSSL
//! ```
//!
//! (redis-rs's rustls has no crypto provider of its own: etcd-client's `tls` brings `ring`;
//! without it, add `rustls` with the `ring` or `aws-lc-rs` feature.)
//!
//! **Redis over TLS** (`rediss://`; a client certificate when the server has `tls-auth-clients yes`):
//!
//! ```rust,no_run
//! # #[cfg(feature = "redis")]
//! # async fn example(ca_pem: Vec<u8>, client_cert: Vec<u8>, client_key: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! use dlock::{Config, Driver, Locker};
//!
//! let certs = redis::TlsCertificates {
//!     client_tls: Some(redis::ClientTlsConfig { client_cert, client_key }),  // PEM bytes
//!     root_cert: Some(ca_pem),                                               // None: system roots
//! };
//! let client = redis::Client::build_with_tls("rediss://dlock:PASSWORD@redis.internal:6380/", certs)?;
//! let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
//! let locker = Locker::builder(Config::new(Driver::Redis)).redis(conn).redis_pubsub(client).build()?;
//! // Cluster: ClusterClientBuilder::new(urls).certs(certs).build()?.get_async_connection().await?
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! Lock, renewal, release and release notifications over TLS with client certificates: the
//! whole conformance suite on one node (`production::redis_tls_acl_user::*`), and on a
//! 3-master Cluster with `--tls-cluster yes` (`redis_cluster_over_tls_locks_renews_releases_and_notifies`).
//!
//! **A least-privilege Redis user.** Replace `CHANGE-ME` and `myapp:lock:` (the prefix; escape
//! `*?[]\` in it, the patterns are globs):
//!
//! ```text
//! ACL SETUSER dlock reset on >CHANGE-ME ~myapp:lock:* &myapp:lock:* +evalsha +script|load +get +set +pexpire +pttl +time +publish +subscribe +unsubscribe +type +del +hget +hmget +hset +hdel +zadd +zrem +zscore +zcount +zrange +zrangebyscore +zremrangebyscore
//! ```
//!
//! | right | what for |
//! |---|---|
//! | `~myapp:lock:*` | the lock keys `<prefix>{<key>}` (and a semaphore's `<prefix>{<key>}:held` and `:wait`), nothing else |
//! | `&myapp:lock:*` | the release channels `<prefix>{<key>}:released` (publish and subscribe) |
//! | `+evalsha`, `+script\|load` | the scripts (loaded once when the server does not have them) |
//! | `+get +set +pexpire +pttl +time` | called from the scripts (Redis 7 checks them against the caller): read a lock, write it or its tombstone, renew it, read what remains of its TTL (`Locker::holder`), draw the fencing token |
//! | `+publish` | the release script announces the release |
//! | `+type +del +hget +hmget +hset +hdel +zadd +zrem +zscore +zcount +zrange +zrangebyscore +zremrangebyscore` | called from the semaphore scripts (`Locker::semaphore`): a semaphore's hash, its holders and its line of waiters, and a name that passes between a lock and a semaphore |
//! | `+subscribe +unsubscribe` | the notification connection (`.redis_pubsub(..)`) |
//!
//! With `.redis_cluster_pubsub(..)` add `+spublish +ssubscribe +sunsubscribe` (releases announced
//! on the lock's shard, and the sharded notification connection; `+hello` is not needed).
//! With `replica_ack` add `+wait`. On a Cluster add `+cluster|slots +ping` (redis-rs's cluster client asks for the topology and
//! checks its connections). On Redis 7.2+ redis-rs also sends `CLIENT SETINFO` at connect and
//! ignores a refusal; add `+client|setinfo` to keep it out of `ACL LOG`. The test reads this
//! very line from this page (`src/guide/production.rs`): the whole conformance suite runs with it, and Redis's `ACL LOG`
//! must stay empty (`production::redis_tls_acl_user::*`); each right removed in turn makes dlock
//! fail or Redis log a denial (`every_right_in_the_readme_acl_line_is_needed`). A missing right
//! is `Error::PermissionDenied { backend, key, detail }` with Redis's words (for a script, the
//! refused command is named), at once, never a hang
//! (`a_missing_redis_right_is_a_typed_error_naming_it`); a refused `SUBSCRIBE` logs one warning
//! and waiters fall back to polling, with back-off
//! (`a_refused_subscribe_logs_one_warning_and_waiters_poll`).
//!
//! **etcd over TLS with a user.** Serve `--cert-file/--key-file/--trusted-ca-file
//! --client-cert-auth` on https URLs; give dlock a user whose role grants readwrite on the
//! prefix range and nothing else (leases need no key permission in etcd 3.4):
//!
//! ```sh
//! etcdctl role add dlock
//! etcdctl role grant-permission dlock --prefix=true readwrite myapp:lock:
//! etcdctl user add dlock            # asks for the password
//! etcdctl user grant-role dlock dlock
//! ```
//!
//! ```rust,no_run
//! # #[cfg(feature = "_test-tls")]
//! # async fn example(ca_pem: Vec<u8>, client_cert: Vec<u8>, client_key: Vec<u8>, password: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use dlock::{Config, Driver, Locker};
//!
//! // etcd-client's `tls` feature (see above).
//! let tls = etcd_client::TlsOptions::new()
//!     .ca_certificate(etcd_client::Certificate::from_pem(ca_pem))
//!     .identity(etcd_client::Identity::from_pem(client_cert, client_key));
//! let options = etcd_client::ConnectOptions::new().with_tls(tls).with_user("dlock", password);
//! let client = etcd_client::Client::connect(["https://etcd.internal:2379"], Some(options)).await?;
//! let locker = Locker::builder(Config::new(Driver::Etcd)).etcd(client).build()?;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! The whole conformance suite as such a user (`production::etcd_tls_prefix_user::*`; the test
//! creates it with the auth API calls equivalent to the lines above); a role on another prefix
//! gets `Error::PermissionDenied` (`a_missing_etcd_right_is_a_typed_error`).
//!
//! **The client's own timeouts.** redis-rs 1.x gives a `MultiplexedConnection` (and a
//! `ConnectionManager` by default) a 500 ms response timeout: on a loaded host a lock call
//! then fails with `Error::Backend` ("timed out") long before dlock's own call timeout (5 s).
//! Set it to what your deployment tolerates, e.g.
//! `AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(2)))` with
//! `get_multiplexed_async_connection_with_config`; dlock bounds every call by the lock's
//! TTL and its call timeout anyway (`Locker::builder(..).call_timeout(..)`).
//!
//! **Secrets stay secret.** dlock never prints what it was given: passwords from URLs or
//! connect options appear in no log line, error or `Debug` output of a builder or locker —
//! normal operation, a refused password, a server that dies under a held lock, on both backends
//! (`secrets_never_appear_in_logs_errors_or_debug`, which captures every log line). Metrics
//! carry only `backend` and `key`. Your own code should not log etcd-client's
//! `ConnectOptions`: its `Debug` shows the password.
//!
//! **Hostile keys stay inside the prefix.** Any key (`*`, `?`, `[`, braces, `/`, `%`, NUL,
//! newline, 1 KiB, another key's storage key plus a suffix) is locked, contended, waited for and
//! released, then every key on the server (`SCAN`; etcd: a range over the whole keyspace) and
//! every channel subscribed while a waiter waits (`PUBSUB CHANNELS`) starts with the prefix,
//! and pre-existing keys outside it with tricky names are untouched — as the restricted users
//! above, so nothing outside was even asked for
//! (`hostile_keys_stay_inside_the_prefix_on_redis`, `hostile_keys_stay_inside_the_prefix_on_etcd`).
//!
//! ## Observability
//!
//! Logs go through `tracing`, every event with `component = "dlock"`, `backend` and `key`
//! (and `fencing_token` once held). Levels: acquire and release at `debug`; ownership loss and
//! renewal trouble at `warn`; backend errors at `error`; nothing at `info` on the hot path. One
//! lock/unlock cycle at `RUST_LOG=dlock=debug`:
//!
//! ```text
//! DEBUG dlock::locker: lock acquired component="dlock" backend="redis" key=resource-key fencing_token=1795536137178997 waited_ms=2
//! DEBUG dlock::guard: lock released component="dlock" backend="redis" key=resource-key fencing_token=1795536137178997
//! ```
//!
//! (from `REDIS_URL=redis://127.0.0.1:6399/ cargo run --example quickstart`; a call that times out
//! logs `lock call ended without a lock` at debug with the error).
//!
//! Metrics (feature `metrics`, `.meter(meter)` with an OpenTelemetry `Meter`), with attributes
//! `backend` and `key` (`.key_attribute(false)` drops `key` for unbounded key spaces):
//!
//! ```rust
//! # #[cfg(feature = "metrics")]
//! # fn main() -> dlock::Result<()> {
//! let meter = opentelemetry::global::meter("my-service");
//! let locker = dlock::Locker::builder(dlock::Config::default())
//!     .meter(meter)
//!     .key_attribute(false)      // many distinct keys: keep them out of the metric attributes
//!     .build()?;
//! # Ok(()) }
//! # #[cfg(not(feature = "metrics"))] fn main() {}
//! ```
//!
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `dlock_lock_acquired_total` | counter | locks acquired |
//! | `dlock_lock_failed_total` | counter | lock calls that failed or timed out (not `try_lock` finding it held) |
//! | `dlock_lock_released_total` | counter | locks released while still held |
//! | `dlock_lock_hold_duration_seconds` | histogram | acquisition to release |
//! | `dlock_lock_wait_duration_seconds` | histogram | how long a successful lock call waited |
//! | `dlock_ownership_lost_total` | counter | locks lost while held |
