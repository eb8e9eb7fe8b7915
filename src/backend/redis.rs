//! The Redis backend: one key per lock holding the holder's token, with a TTL renewed by a
//! watchdog, and a fencing counter drawn in the same script.
//!
//! Keys (both in the hash slot of `{key}`, so they work on Redis Cluster):
//! - `<prefix>{<key>}`: the lock, value = the acquisition's ULID, `PX` = TTL;
//! - `<prefix>{<key>}:fence`: the fencing counter, never expires.
//!
//! Every command is bounded by the lock's TTL, so a blackholed server yields a typed error,
//! never a hang. Scripts live beside this file, one per operation.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, ScriptInvocation, Value};
use tokio::time::{timeout, Instant};

use super::{poll_until_acquired, wake, watchdog, Lease, Loss, Request};
use crate::error::{Error, Result};

static OBTAIN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/obtain.lua")));
static REFRESH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("redis/refresh.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("redis/release.lua")));

/// The injected connection: a multiplexed single-node connection or a cluster connection.
#[derive(Clone)]
pub(crate) enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct RedisBackend {
    conn: RedisConn,
    prefix: Arc<str>,
}

/// The server-side names of one lock.
struct Keys {
    lock: String,
    fence: String,
}

/// Where a release of `lock_key` is announced.
fn release_channel(lock_key: &str) -> String {
    format!("{lock_key}:released")
}

impl RedisBackend {
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        RedisBackend {
            conn,
            prefix: prefix.into(),
        }
    }

    fn keys(&self, key: &str) -> Keys {
        let lock = format!("{}{{{}}}", self.prefix, key);
        Keys {
            fence: format!("{lock}:fence"),
            lock,
        }
    }

    pub async fn acquire(&self, request: &Request<'_>) -> Result<Option<Lease>> {
        let keys = self.keys(request.key);
        poll_until_acquired(&keys.lock, request.wait, || self.try_once(request, &keys)).await
    }

    async fn try_once(&self, request: &Request<'_>, keys: &Keys) -> Result<Option<Lease>> {
        // Until the server answers, the script may or may not have run: if this future is
        // dropped or the call fails, release whatever our token may hold.
        let mut pending = PendingAcquire {
            backend: self,
            lock_key: &keys.lock,
            token: request.token,
            ttl: request.ttl,
            armed: true,
        };
        let sent = Instant::now();
        let mut obtain = OBTAIN.prepare_invoke();
        obtain
            .key(&keys.lock)
            .key(&keys.fence)
            .arg(request.token)
            .arg(millis(request.ttl));
        let fence: u64 = self.call(request.key, request.ttl, &obtain).await?;
        pending.armed = false;
        if fence == 0 {
            return Ok(None);
        }
        Ok(Some(Lease {
            key: request.key.to_owned(),
            storage_key: keys.lock.clone(),
            token: request.token.to_owned(),
            fencing_token: fence,
            ttl: request.ttl,
            confirmed_at: sent,
            lease_id: 0,
        }))
    }

    pub async fn keep(&self, lease: &Lease) -> Loss {
        watchdog("redis", lease, || async {
            let mut refresh = REFRESH.prepare_invoke();
            refresh
                .key(&lease.storage_key)
                .arg(&lease.token)
                .arg(millis(lease.ttl));
            let renewed: i64 = self.call(&lease.key, lease.ttl, &refresh).await?;
            Ok(renewed == 1)
        })
        .await
    }

    pub async fn release(&self, lease: &Lease) -> Result<bool> {
        let released = self
            .release_token(&lease.key, &lease.storage_key, &lease.token, lease.ttl)
            .await?;
        if released {
            wake::released(&lease.storage_key);
        }
        Ok(released)
    }

    async fn release_token(
        &self,
        key: &str,
        lock_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let mut release = RELEASE.prepare_invoke();
        release
            .key(lock_key)
            .arg(token)
            .arg(release_channel(lock_key));
        let released: i64 = self.call(key, ttl, &release).await?;
        Ok(released == 1)
    }

    /// Runs one script on a clone of the connection (a cheap handle), bounded by `limit`.
    async fn call<T: FromRedisValue>(
        &self,
        key: &str,
        limit: Duration,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        match timeout(limit, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Error::backend("redis", key, e)),
            Err(_) => Err(Error::backend(
                "redis",
                key,
                format!("no answer within {limit:?}"),
            )),
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Releases a possibly-set lock when an acquire attempt is dropped or fails before the
/// server's answer was read.
struct PendingAcquire<'a> {
    backend: &'a RedisBackend,
    lock_key: &'a str,
    token: &'a str,
    ttl: Duration,
    armed: bool,
}

impl Drop for PendingAcquire<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the TTL will clean up.
        };
        let backend = self.backend.clone();
        let (lock_key, token, ttl) = (self.lock_key.to_owned(), self.token.to_owned(), self.ttl);
        runtime.spawn(async move {
            let key = lock_key.clone();
            if let Err(e) = backend.release_token(&key, &lock_key, &token, ttl).await {
                tracing::debug!(component = "dlock", backend = "redis", key = %key, error = %e,
                    "cleanup of an interrupted acquire failed; the TTL will remove it");
            }
        });
    }
}
