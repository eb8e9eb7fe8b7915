//! The Redis backend: one key per lock holding the holder's token, with a TTL renewed by a
//! watchdog, and a fencing counter drawn in the same script.
//!
//! Keys (both in the hash slot of `{key}`, so they work on Redis Cluster):
//! - `<prefix>{<key>}`: the lock, value = the acquisition's ULID, `PX` = TTL;
//! - `<prefix>{<key>}:fence`: the fencing counter, never expires.
//!
//! Every command is bounded by the lock's TTL, so a blackholed server yields a typed error,
//! never a hang. Scripts live beside this file, one per operation.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, ScriptInvocation, Value};
use tokio::time::{timeout, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{poll_until_acquired, wake, watchdog, Lease, Loss, Request};
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

#[derive(Clone)]
pub(crate) struct RedisBackend {
    conn: RedisConn,
    prefix: Arc<str>,
    notifications: Option<Arc<Notifications>>,
}

/// The server-side names of one lock.
struct Keys {
    lock: String,
    fence: String,
}

const RELEASED: &str = ":released";

/// The part of a key Redis Cluster hashes: the first non-empty `{...}`, else the whole key.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Where a release of `lock_key` is announced.
fn release_channel(lock_key: &str) -> String {
    format!("{lock_key}{RELEASED}")
}

impl RedisBackend {
    /// `pubsub`: a client for the release-notification connection; without one, waiters
    /// of other processes learn of releases by polling.
    pub fn new(conn: RedisConn, prefix: &str, pubsub: Option<redis::Client>) -> Self {
        RedisBackend {
            conn,
            prefix: prefix.into(),
            notifications: pubsub.map(|client| Arc::new(Notifications::new(client))),
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
        if matches!(self.conn, RedisConn::Cluster(_))
            && hash_tag(&keys.lock) != hash_tag(&keys.fence)
        {
            return Err(Error::InvalidKey {
                key: crate::error::display_key(request.key),
                reason:
                    "on Redis Cluster, this key with this prefix puts the lock and its fencing \
                         counter in different hash slots (a key starting with `}` or a prefix \
                         with braces)"
                        .into(),
            });
        }
        // Uncontended fast path: no subscription for a lock that is free.
        let first = self.try_once(request, &keys).await?;
        if first.is_some() || request.wait.is_none() {
            return Ok(first);
        }
        let _subscribed = match &self.notifications {
            Some(n) => Some(n.subscribe(&keys.lock).await),
            None => None,
        };
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
            .arg(release_channel(lock_key))
            .arg(wake::process_id());
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

/// Release notifications: one subscription connection per locker, subscribed to a lock's
/// release channel while at least one task of this locker waits for it. A message wakes one
/// waiter of this process (see `wake`). Everything here is best effort: when the connection
/// is down, waiters keep polling at `retry_interval`, and the next subscription reconnects.
pub(crate) struct Notifications {
    client: redis::Client,
    sink: Arc<tokio::sync::Mutex<Option<PubSubSink>>>,
    /// Release channel → number of waiting tasks.
    waiting: std::sync::Mutex<HashMap<String, usize>>,
    /// Stops the reader task when the locker's backend is dropped.
    _stop: DropGuard,
    stop: CancellationToken,
}

/// A waiting task's subscription; unsubscribes when the last waiter of the lock leaves.
pub(crate) struct Subscribed {
    notifications: Arc<Notifications>,
    channel: String,
}

impl Notifications {
    fn new(client: redis::Client) -> Self {
        let stop = CancellationToken::new();
        Notifications {
            client,
            sink: Default::default(),
            waiting: Default::default(),
            _stop: stop.clone().drop_guard(),
            stop,
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn subscribe(self: &Arc<Self>, lock_key: &str) -> Subscribed {
        let channel = release_channel(lock_key);
        let first = {
            let mut waiting = self.waiting();
            let count = waiting.entry(channel.clone()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            if let Some(mut sink) = self.connected_sink().await {
                if let Err(e) = timeout(SUBSCRIBE_TIMEOUT, sink.subscribe(&channel)).await {
                    tracing::debug!(component = "dlock", backend = "redis", channel = %channel,
                        error = %e, "subscribe timed out; polling instead");
                }
            }
        }
        Subscribed {
            notifications: self.clone(),
            channel,
        }
    }

    /// The live subscription connection, (re)connecting if needed; on (re)connect every
    /// channel with a waiter is subscribed again.
    async fn connected_sink(&self) -> Option<PubSubSink> {
        let mut slot = self.sink.lock().await;
        if slot.is_none() {
            let pubsub = match timeout(SUBSCRIBE_TIMEOUT, self.client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(e)) => {
                    tracing::warn!(component = "dlock", backend = "redis", error = %e,
                        "release notifications unavailable; waiters poll");
                    return None;
                }
                Err(_) => return None,
            };
            let (mut sink, stream) = pubsub.split();
            let channels: Vec<String> = self.waiting().keys().cloned().collect();
            if !channels.is_empty() {
                let _ = timeout(SUBSCRIBE_TIMEOUT, sink.subscribe(channels)).await;
            }
            tokio::spawn(read_notifications(
                stream,
                self.sink.clone(),
                self.stop.clone(),
            ));
            *slot = Some(sink);
        }
        slot.clone()
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        let last = {
            let mut waiting = self.notifications.waiting();
            match waiting.get_mut(&self.channel) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => {
                    waiting.remove(&self.channel);
                    true
                }
            }
        };
        if !last {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (sink, channel) = (self.notifications.sink.clone(), self.channel.clone());
        runtime.spawn(async move {
            let sink = sink.lock().await.clone();
            if let Some(mut sink) = sink {
                let _ = timeout(SUBSCRIBE_TIMEOUT, sink.unsubscribe(channel)).await;
            }
        });
    }
}

const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Wakes a waiter for each release message; when the connection ends, clears the slot so
/// that the next subscription reconnects.
async fn read_notifications(
    mut stream: PubSubStream,
    slot: Arc<tokio::sync::Mutex<Option<PubSubSink>>>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = stream.next() => message,
        };
        match message {
            Some(message) => {
                // A release made by this process has already woken one of its waiters.
                let from_here = message.get_payload_bytes() == wake::process_id().as_bytes();
                if let Some(lock_key) = message.get_channel_name().strip_suffix(RELEASED) {
                    if !from_here {
                        wake::released(lock_key);
                    }
                }
            }
            None => {
                tracing::debug!(
                    component = "dlock",
                    backend = "redis",
                    "release-notification connection closed; reconnecting on next wait"
                );
                slot.lock().await.take();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::hash_tag;

    #[test]
    fn hash_tags_follow_the_cluster_rule() {
        assert_eq!(hash_tag("p:{job}"), "job");
        assert_eq!(hash_tag("p:{job}:fence"), "job");
        assert_eq!(
            hash_tag("p:{}x}"),
            "p:{}x}",
            "an empty tag hashes the whole key"
        );
        assert_eq!(hash_tag("a{b}{c}"), "b", "only the first tag counts");
        assert_eq!(hash_tag("plain"), "plain");
    }
}
