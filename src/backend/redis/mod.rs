//! The Redis backend: one key per lock, renewed in batches by the locker's engine, released with a tombstone.
//!
//! `<prefix>{<key>}` holds `<token>:<fencing token>` while the lock is held (`PX` = TTL), and
//! a short-lived tombstone `~<token>` after a release (it counts as free; it lets a release
//! that the cluster client resends recognise its own earlier success). The fencing token is
//! the server clock in microseconds, drawn by the acquiring script: no counter key exists,
//! so nothing leaks and no restored snapshot can roll tokens back. The `{..}` hash tag keeps
//! room for keys of the same lock on Redis Cluster.
//!
//! Waiters announce themselves on the lock: an attempt made while subscribed to the lock's
//! release channel marks a held value with how it listens (`!` SUBSCRIBE, `^` SSUBSCRIBE
//! on the key's shard), and only a release that sees a mark publishes on
//! `<lock key>:released`, with PUBLISH or SPUBLISH to match. Nobody waiting, nothing
//! published; the mark lives and dies with the holder's value, so a waiter that dies costs
//! at most one needless publish.
//!
//! Bounds: an acquire attempt is useless once its reply could come after the safety
//! deadline, a release once the key has expired; every call is also bounded by the
//! locker's call timeout. Scripts live beside this file, one per operation, each idempotent.

mod abandoned;
mod batch;
mod notifications;
mod replicas;
mod sentinel;

use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, Script, ScriptInvocation};
use tokio::time::Instant;

use self::notifications::Notifications;
pub(crate) use self::notifications::Source as PubsubSource;
use super::{
    recover, retry_until_acquired, Backend, Context, Grant, Lease, Renewal, Request, Wakeups,
};
use crate::config::Driver;
use crate::error::Result;
use crate::Holder;

pub(crate) use self::replicas::AckSlot;
pub use self::sentinel::SentinelConnection;

static OBTAIN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("obtain.lua")));
static REFRESH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("refresh.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("release.lua")));
static HOLDER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("holder.lua")));

/// Where `LockerBuilder::redis_pubsub` (or `redis_cluster_pubsub`) leaves the notification
/// client, whether it is called before or after `.redis(..)`; the backend takes it when a
/// first waiter needs it.
pub(crate) type PubsubSlot = Arc<Mutex<Option<PubsubSource>>>;

/// The Redis backend over any redis-rs async connection that is a cheap handle (cloned per
/// call): `ConnectionManager`, `MultiplexedConnection`, a cluster connection...
pub(crate) struct RedisBackend<C> {
    scripts: Scripts<C>,
    /// Tokens of this backend's undone attempts, taken over if found holding a lock.
    abandoned: abandoned::Abandoned,
    /// Whether the connection is a Redis Cluster's: renewal batches are split by hash slot.
    cluster: bool,
    pubsub: PubsubSlot,
    notifications: OnceLock<Option<Notifications>>,
    /// Replica acknowledgement of acquisitions and renewals (`replicas.rs`), if configured.
    replica_ack: AckSlot,
}

/// What running a script needs; cheap to clone into a background clean-up.
#[derive(Clone)]
struct Scripts<C> {
    conn: C,
    /// Waiters of this backend; woken by its own releases and by notifications.
    wakeups: Arc<Wakeups>,
}

/// Where a release of `lock_key` is announced.
fn release_channel(lock_key: &str) -> String {
    format!("{lock_key}{}", notifications::RELEASED)
}

impl<C> RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// `pubsub`: where the release-notification client may be left; without one, waiters
    /// of other processes learn of releases by polling.
    /// `replica_ack`: where the builder leaves the acknowledgement setting, if any.
    pub fn new(conn: C, pubsub: PubsubSlot, replica_ack: AckSlot) -> Self {
        // A Cluster's scripts take keys of one hash slot only: its batches are split by slot.
        let cluster = std::any::TypeId::of::<C>()
            == std::any::TypeId::of::<redis::cluster_async::ClusterConnection>();
        RedisBackend {
            cluster,
            abandoned: abandoned::Abandoned::default(),
            scripts: Scripts {
                conn,
                wakeups: Wakeups::new(),
            },
            pubsub,
            notifications: OnceLock::new(),
            replica_ack,
        }
    }

    /// One acquire attempt; `announce`: the waiter's mark (obtain.lua's ARGV[3]) that makes
    /// the release of a held lock publish the way this waiter listens.
    async fn attempt(
        &self,
        cx: &Context,
        request: &Request<'_>,
        announce: Option<&'static str>,
    ) -> Result<Option<Grant<String>>> {
        // Until the server answers, the script may or may not have run: if this future is
        // dropped or the call fails, release whatever our token may hold.
        let sent = Instant::now();
        let undo = cx.undo_on_drop(request, || {
            // Wherever the undo lands, the attempt's key is nobody's (`abandoned.rs`).
            let expiry = sent + request.ttl;
            self.abandoned
                .add(request.storage_key, request.token, expiry);
            let (scripts, cx) = (self.scripts.clone(), cx.clone());
            let (key, lock_key) = (request.key.to_owned(), request.storage_key.to_owned());
            let (token, ttl) = (request.token.to_owned(), request.ttl);
            async move {
                // Releases the attempt if it took the lock; otherwise bars its token for its
                // TTL, so that it takes nothing if it reaches the server later (sent on a
                // connection replaced meanwhile: release.lua, ARGV[4]).
                let (limit, bar) = (cx.bound(ttl), "bar");
                let release =
                    || scripts.release_or_bar(&cx, &key, &lock_key, &token, limit, ttl, bar);
                cx.until_confirmed("redis", &key, sent + ttl, release).await;
            }
        });
        let abandoned = self.abandoned.on(request.storage_key);
        // A reply after the safety deadline could not give a usable guard.
        let fence: u64 = if let Some(ack) = self.replica_ack.get() {
            let mut obtain = replicas::evalsha(&OBTAIN, request.storage_key);
            obtain
                .arg(request.token)
                .arg(millis(request.ttl))
                .arg(announce.unwrap_or("0"))
                .arg(published(request.value))
                .arg(&abandoned);
            let wait = replicas::wait_timeout(cx, ack, request.useful_for());
            let (fence, acked): (u64, i64) = self
                .scripts
                .call_acknowledged(
                    cx,
                    request.key,
                    request.useful_for(),
                    &OBTAIN,
                    obtain,
                    crate::config::ReplicaAck::new(ack.replicas, wait),
                )
                .await?;
            if fence != 0 && acked < i64::from(ack.replicas) {
                // Undone before the error returns, so that a retry finds the key free; if
                // this release fails, the armed undo retries it in the background.
                let (key, lock_key, token) = (request.key, request.storage_key, request.token);
                self.abandoned.add(lock_key, token, sent + request.ttl);
                if self
                    .scripts
                    .release(cx, key, lock_key, token, request.ttl)
                    .await
                    .is_ok()
                {
                    undo.disarm();
                }
                return Err(replicas::too_few(key, "lock", acked, ack, wait));
            }
            fence
        } else {
            let mut obtain = OBTAIN.prepare_invoke();
            obtain
                .key(request.storage_key)
                .arg(request.token)
                .arg(millis(request.ttl))
                .arg(announce.unwrap_or("0"))
                .arg(published(request.value))
                .arg(&abandoned);
            self.scripts
                .call(cx, request.key, request.useful_for(), &obtain)
                .await?
        };
        undo.disarm();
        Ok((fence != 0).then(|| Grant {
            fencing_token: fence,
            confirmed_at: sent,
            held: request.token.to_owned(),
        }))
    }

    fn notifications(&self) -> Option<&Notifications> {
        self.notifications
            .get_or_init(|| {
                let source = recover(self.pubsub.lock()).take()?;
                Some(Notifications::new(source, self.scripts.wakeups.clone()))
            })
            .as_ref()
    }
}

impl<C> Backend for RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// The acquisition's token.
    type Held = String;

    fn name(&self) -> &'static str {
        "redis"
    }

    fn driver(&self) -> Driver {
        Driver::Redis
    }

    /// `<prefix>{<key>}`: the hash tag keeps room for keys of the same lock on a Cluster.
    fn storage_key(&self, prefix: &str, key: &str) -> String {
        format!("{prefix}{{{key}}}")
    }

    fn wakeups(&self) -> Option<&Arc<Wakeups>> {
        Some(&self.scripts.wakeups)
    }

    async fn try_acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
    ) -> Result<Option<Grant<String>>> {
        self.attempt(cx, request, None).await
    }

    async fn acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
        retry_interval: Duration,
    ) -> Result<Option<Grant<String>>> {
        // Uncontended fast path: no subscription for a lock that is free. Not when tasks of
        // this backend already wait for the key: this call joins their line (`wake.rs`).
        let waited_for = self.scripts.wakeups.has_waiters(request.storage_key);
        if !waited_for {
            if let Some(grant) = self.attempt(cx, request, None).await? {
                return Ok(Some(grant));
            }
        }
        // Waits at most one poll interval for the subscription: a release announced before
        // it is active is caught by the next attempt or poll.
        let subscription = match self.notifications() {
            Some(n) => Some(
                n.subscribe(cx, release_channel(request.storage_key), retry_interval)
                    .await,
            ),
            None => None,
        };
        // With a subscription, every later attempt that finds the lock held marks it, so
        // that its release publishes the way we listen (obtain.lua); without one, nobody
        // would hear it.
        let announce = subscription.as_ref().map(|s| s.mark());
        let wakeups = Some(&self.scripts.wakeups);
        retry_until_acquired(wakeups, request, retry_interval, || {
            self.attempt(cx, request, announce)
        })
        .await
    }

    async fn renew(&self, cx: &Context, lease: &Lease, token: &mut String) -> Result<Renewal> {
        if let Some(ack) = self.replica_ack.get() {
            // Unacknowledged, the new expiry may be missing on the replica that gets
            // promoted: an `Err`, which the engine retries until the safety deadline.
            let mut refresh = replicas::evalsha(&REFRESH, &lease.storage_key);
            refresh.arg(&*token).arg(millis(lease.ttl));
            let wait = replicas::wait_timeout(cx, ack, lease.ttl / 10);
            let (renewed, acked): (i64, i64) = self
                .scripts
                .call_acknowledged(
                    cx,
                    &lease.key,
                    lease.ttl,
                    &REFRESH,
                    refresh,
                    crate::config::ReplicaAck::new(ack.replicas, wait),
                )
                .await?;
            if renewed == 1 && acked < i64::from(ack.replicas) {
                return Err(replicas::too_few(&lease.key, "renewal", acked, ack, wait));
            }
            return Ok(Renewal::still_ours(renewed == 1));
        }
        let mut refresh = REFRESH.prepare_invoke();
        refresh
            .key(&lease.storage_key)
            .arg(&*token)
            .arg(millis(lease.ttl));
        let renewed: i64 = self
            .scripts
            .call(cx, &lease.key, lease.ttl, &refresh)
            .await?;
        Ok(Renewal::still_ours(renewed == 1))
    }

    /// As few script calls as the batch allows (`batch.rs`). With replica acknowledgement,
    /// one by one: each renewal waits for its own acknowledgement.
    async fn renew_many(
        &self,
        cx: &Context,
        locks: Vec<(&Lease, &mut String)>,
    ) -> Vec<Result<Renewal>> {
        if self.replica_ack.get().is_some() {
            let renewals = locks
                .into_iter()
                .map(|(lease, token)| self.renew(cx, lease, token));
            return futures_util::future::join_all(renewals).await;
        }
        batch::renew_many(&self.scripts, cx, &locks, self.cluster).await
    }

    async fn holder(&self, cx: &Context, key: &str, lock_key: &str) -> Result<Option<Holder>> {
        let mut holder = HOLDER.prepare_invoke();
        holder.key(lock_key);
        let reply: Option<(String, i64)> =
            self.scripts.call(cx, key, Duration::MAX, &holder).await?;
        Ok(reply.and_then(|(value, pttl)| {
            let expires_in = Duration::from_millis(pttl.max(0) as u64);
            parse_holder(&value, expires_in)
        }))
    }

    async fn release(
        &self,
        cx: &Context,
        lease: &Lease,
        token: String,
        limit: Duration,
    ) -> Result<bool> {
        self.scripts
            .release(cx, &lease.key, &lease.storage_key, &token, limit)
            .await
    }
}

impl<C: ConnectionLike + Clone + Send + Sync> Scripts<C> {
    async fn release(
        &self,
        cx: &Context,
        key: &str,
        lock_key: &str,
        token: &str,
        limit: Duration,
    ) -> Result<bool> {
        let limit = cx.bound(limit);
        self.release_or_bar(cx, key, lock_key, token, limit, limit, "")
            .await
    }

    /// One release.lua call bounded by `limit`, leaving its tombstone for `tombstone`.
    #[allow(
        clippy::too_many_arguments,
        reason = "the script's arguments, one each"
    )]
    async fn release_or_bar(
        &self,
        cx: &Context,
        key: &str,
        lock_key: &str,
        token: &str,
        limit: Duration,
        tombstone: Duration,
        bar: &str,
    ) -> Result<bool> {
        let mut release = RELEASE.prepare_invoke();
        release
            .key(lock_key)
            .arg(token)
            .arg(millis(tombstone).max(1))
            .arg(self.wakeups.id())
            .arg(bar);
        let released = self.call::<i64>(cx, key, limit, &release).await? == 1;
        if released {
            self.wakeups.released(lock_key);
        }
        Ok(released)
    }

    /// Runs one script on a clone of the connection (a cheap handle), bounded by `limit`
    /// and by the locker's call timeout.
    async fn call<T: FromRedisValue>(
        &self,
        cx: &Context,
        key: &str,
        limit: Duration,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        cx.call("redis", key, limit, invocation.invoke_async(&mut conn))
            .await
    }
}

/// The obtain script's `#<hex>` field for a published value, or nothing.
fn published(value: Option<&str>) -> String {
    let Some(value) = value else {
        return String::new();
    };
    let mut field = String::with_capacity(1 + 2 * value.len());
    field.push('#');
    for byte in value.bytes() {
        field.push_str(&format!("{byte:02x}"));
    }
    field
}

/// A held value `<token>:<fence>[#<hex>][!...][~...]` read back as a [`Holder`].
fn parse_holder(value: &str, expires_in: Duration) -> Option<Holder> {
    let (_token, rest) = value.split_once(':')?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let fence = rest[..digits].parse().ok()?;
    let published = rest[digits..].strip_prefix('#').map(|hex| {
        let hex = &hex.as_bytes()[..hex.bytes().take_while(u8::is_ascii_hexdigit).count()];
        let bytes: Vec<u8> = hex
            .chunks(2)
            .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    });
    Some(Holder::new(fence, expires_in, published))
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_values_read_back_whatever_they_hold() {
        let ttl = Duration::from_secs(3);
        for value in [
            "host-a:8080",
            "",
            "~!:#",
            "é ünïcode\n\0",
            "a".repeat(4096).as_str(),
        ] {
            let stored = format!(
                "01JTOKEN:1795616126328485{}~01JPREV",
                published(Some(value))
            );
            let holder = parse_holder(&stored, ttl).expect("parsed");
            assert_eq!(holder.fencing_token, 1795616126328485);
            assert_eq!(holder.value.as_deref(), Some(value), "{stored}");
        }
        let plain = parse_holder("01JTOKEN:42!~01JPREV", ttl).expect("parsed");
        assert_eq!((plain.fencing_token, plain.value), (42, None));
    }
}
