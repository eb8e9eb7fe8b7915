//! The Redis backend: one key per lock, renewed by a watchdog, released with a tombstone.
//!
//! `<prefix>{<key>}` holds `<token>:<fencing token>` while the lock is held (`PX` = TTL), and
//! a short-lived tombstone `~<token>` after a release (it counts as free; it lets a release
//! that the cluster client resends recognise its own earlier success). The fencing token is
//! the server clock in microseconds, drawn by the acquiring script: no counter key exists,
//! so nothing leaks and no restored snapshot can roll tokens back. The `{..}` hash tag keeps
//! room for keys of the same lock on Redis Cluster.
//!
//! Bounds: an acquire attempt is useless once its reply could come after the safety
//! deadline, a release once the key has expired; every call is also bounded by the
//! locker's call timeout. Scripts live beside this file, one per operation, each idempotent.

mod notifications;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, ScriptInvocation, Value};
use tokio::time::{timeout, Instant};

use self::notifications::Notifications;
use super::wake::Wakeups;
use super::{poll_until_acquired, safety_margin, watchdog, Context, Lease, Loss, Request};
use crate::error::{Error, Result};

static OBTAIN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/obtain.lua")));
static REFRESH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/refresh.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis/release.lua")));

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

pub(crate) struct RedisBackend {
    scripts: Scripts,
    prefix: Arc<str>,
    notifications: Option<Notifications>,
}

/// What running a script needs; cheap to clone into a background clean-up.
#[derive(Clone)]
struct Scripts {
    conn: RedisConn,
    context: Context,
    /// Waiters of this backend; woken by its own releases and by notifications.
    wakeups: Arc<Wakeups>,
}

/// Where a release of `lock_key` is announced.
fn release_channel(lock_key: &str) -> String {
    format!("{lock_key}{}", notifications::RELEASED)
}

impl RedisBackend {
    /// `pubsub`: a client for the release-notification connection; without one, waiters
    /// of other processes learn of releases by polling.
    pub fn new(
        conn: RedisConn,
        prefix: &str,
        pubsub: Option<redis::Client>,
        context: Context,
    ) -> Self {
        let wakeups = Wakeups::new();
        RedisBackend {
            prefix: prefix.into(),
            notifications: pubsub
                .map(|client| Notifications::new(client, wakeups.clone(), context.clone())),
            scripts: Scripts {
                conn,
                context,
                wakeups,
            },
        }
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}{{{}}}", self.prefix, key)
    }

    pub async fn acquire(&self, request: &Request<'_>) -> Result<Option<Lease>> {
        let lock_key = self.lock_key(request.key);
        // Uncontended fast path: no subscription for a lock that is free.
        let first = self.try_once(request, &lock_key).await?;
        let Some(retry_interval) = request.wait.filter(|_| first.is_none()) else {
            return Ok(first);
        };
        // Waits at most one poll interval for the subscription: a release announced before
        // it is active is caught by the next attempt or poll.
        let _subscription = match &self.notifications {
            Some(n) => Some(
                n.subscribe(release_channel(&lock_key), retry_interval)
                    .await,
            ),
            None => None,
        };
        poll_until_acquired(&self.scripts.wakeups, &lock_key, request.wait, || {
            self.try_once(request, &lock_key)
        })
        .await
    }

    async fn try_once(&self, request: &Request<'_>, lock_key: &str) -> Result<Option<Lease>> {
        // Until the server answers, the script may or may not have run: if this future is
        // dropped or the call fails, release whatever our token may hold.
        let mut pending = PendingAcquire {
            scripts: &self.scripts,
            lock_key,
            token: request.token,
            ttl: request.ttl,
            armed: true,
        };
        let sent = Instant::now();
        let mut obtain = OBTAIN.prepare_invoke();
        obtain
            .key(lock_key)
            .arg(request.token)
            .arg(millis(request.ttl));
        // A reply after the safety deadline could not give a usable guard.
        let useful_for = request.ttl - safety_margin(request.ttl);
        let fence: u64 = self.scripts.call(request.key, useful_for, &obtain).await?;
        pending.armed = false;
        if fence == 0 {
            return Ok(None);
        }
        Ok(Some(Lease {
            key: request.key.to_owned(),
            storage_key: lock_key.to_owned(),
            token: request.token.to_owned(),
            fencing_token: fence,
            ttl: request.ttl,
            confirmed_at: sent,
            lease_id: 0,
        }))
    }

    pub async fn keep(&self, lease: &Lease, confirmed: &mut Instant) -> Loss {
        watchdog("redis", lease, confirmed, || async {
            let mut refresh = REFRESH.prepare_invoke();
            refresh
                .key(&lease.storage_key)
                .arg(&lease.token)
                .arg(millis(lease.ttl));
            let renewed: i64 = self.scripts.call(&lease.key, lease.ttl, &refresh).await?;
            Ok(renewed == 1)
        })
        .await
    }

    /// Releases `lease`, giving up after `limit` (when the key expires anyway).
    pub async fn release(&self, lease: &Lease, limit: Duration) -> Result<bool> {
        self.scripts
            .release(&lease.key, &lease.storage_key, &lease.token, limit)
            .await
    }
}

impl Scripts {
    async fn release(
        &self,
        key: &str,
        lock_key: &str,
        token: &str,
        limit: Duration,
    ) -> Result<bool> {
        let limit = self.context.bound(limit);
        let mut release = RELEASE.prepare_invoke();
        release
            .key(lock_key)
            .arg(token)
            .arg(millis(limit).max(1))
            .arg(release_channel(lock_key))
            .arg(self.wakeups.id());
        let released = self.call::<i64>(key, limit, &release).await? == 1;
        if released {
            self.wakeups.released(lock_key);
        }
        Ok(released)
    }

    /// Runs one script on a clone of the connection (a cheap handle), bounded by `limit`
    /// and by the locker's call timeout.
    async fn call<T: FromRedisValue>(
        &self,
        key: &str,
        limit: Duration,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T> {
        let limit = self.context.bound(limit);
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
/// server's answer was read. The clean-up runs on the locker's task tracker, so `close()`
/// waits for it.
struct PendingAcquire<'a> {
    scripts: &'a Scripts,
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
        let scripts = self.scripts.clone();
        let (lock_key, token, ttl) = (self.lock_key.to_owned(), self.token.to_owned(), self.ttl);
        self.scripts.context.spawn(async move {
            let key = lock_key.clone();
            if let Err(e) = scripts.release(&key, &lock_key, &token, ttl).await {
                tracing::debug!(component = "dlock", backend = "redis", key = %key, error = %e,
                    "cleanup of an interrupted acquire failed; the TTL will remove it");
            }
        });
    }
}
