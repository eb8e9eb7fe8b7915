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
mod permits;
mod replicas;
mod sentinel;

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, Script, ScriptInvocation};
use tokio::time::Instant;

use self::notifications::Notifications;
pub(crate) use self::notifications::Source as PubsubSource;
use super::support::TakeOver;
use super::wake::Offer;
use super::{
    recover, retry_until_acquired, Backend, Context, Grant, Lease, Renewal, Request, Wakeups,
};
use crate::config::Driver;
use crate::error::{Error, Result};
use crate::Holder;

pub(crate) use self::replicas::AckSlot;
pub use self::sentinel::SentinelConnection;

static OBTAIN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("obtain.lua")));
static HAND_OVER: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("hand_over.lua")));
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
    /// Undoes `request`'s acquisition, whose outcome is unknown (sent at `sent`): releases
    /// it if it took the lock; otherwise bars its token for its TTL, so that it takes nothing
    /// if it reaches the server later (sent on a connection replaced meanwhile: release.lua,
    /// ARGV[4]). Wherever the undo lands, the attempt's key is nobody's (`abandoned.rs`).
    fn undo(
        &self,
        cx: &Context,
        request: &Request<'_>,
        sent: Instant,
    ) -> impl Future<Output = ()> + Send + 'static {
        let expiry = sent + request.ttl;
        self.abandoned
            .add(request.storage_key, request.token, expiry);
        let (scripts, cx) = (self.scripts.clone(), cx.clone());
        let (key, lock_key) = (request.key.to_owned(), request.storage_key.to_owned());
        let (token, ttl, permits) = (request.token.to_owned(), request.ttl, request.permits);
        async move {
            let (limit, bar) = (cx.bound(ttl), "bar");
            let target = Target::new(&lock_key, &token, permits);
            let release = || scripts.release_or_bar(&cx, &key, &target, limit, ttl, bar);
            cx.until_confirmed("redis", &key, expiry, release).await;
        }
    }

    /// the release of a held lock publish the way this waiter listens. A lock attempt that
    /// meets a semaphore nobody holds any more clears it and tries again.
    /// `patience`: how long a waiting semaphore attempt keeps its place in line without
    /// trying again, in ms (0: it takes none; `permits::patience`).
    async fn attempt(
        &self,
        cx: &Context,
        request: &Request<'_>,
        announce: Option<&'static str>,
        patience: u64,
    ) -> Result<Option<Grant<String>>> {
        loop {
            match self.attempt_once(cx, request, announce, patience).await {
                Err(e) if request.permits == 1 && permits::wrong_type(&e) => {
                    let mut clear = permits::CLEAR.prepare_invoke();
                    for key in permits::attempt_keys(request.storage_key) {
                        clear.key(key);
                    }
                    let limit = request.useful_for();
                    let held: u32 = self.scripts.call(cx, request.key, limit, &clear).await?;
                    if held > 0 {
                        return Err(Error::permits_mismatch(request.key, 1, held));
                    }
                }
                outcome => return outcome,
            }
        }
    }

    async fn attempt_once(
        &self,
        cx: &Context,
        request: &Request<'_>,
        announce: Option<&'static str>,
        patience: u64,
    ) -> Result<Option<Grant<String>>> {
        // Until the server answers, the script may or may not have run: if this future is
        // dropped or the call fails, release whatever our token may hold.
        let sent = Instant::now();
        let permits = request.permits;
        let undo = cx.undo_on_drop(request, || self.undo(cx, request, sent));
        let (script, keys, args) = if permits > 1 {
            let args = vec![
                request.token.to_owned(),
                millis(request.ttl).to_string(),
                permits.to_string(),
                announce.unwrap_or("0").to_owned(),
                published(request.value),
                patience.to_string(),
            ];
            let keys = permits::attempt_keys(request.storage_key);
            (&*permits::OBTAIN, keys, args)
        } else {
            let mut args = vec![
                request.token.to_owned(),
                millis(request.ttl).to_string(),
                announce.unwrap_or("0").to_owned(),
                published(request.value),
            ];
            args.extend(self.abandoned.on(request.storage_key));
            (&*OBTAIN, vec![request.storage_key.to_owned()], args)
        };
        // A reply after the safety deadline could not give a usable guard.
        let outcome: Result<i64> = if let Some(ack) = self.replica_ack.get() {
            let mut obtain = replicas::evalsha(script, &keys);
            obtain.arg(&args);
            let wait = replicas::wait_timeout(cx, ack, request.useful_for());
            let acked = self
                .scripts
                .call_acknowledged(
                    cx,
                    request.key,
                    request.useful_for(),
                    script,
                    obtain,
                    crate::config::ReplicaAck::new(ack.replicas, wait),
                )
                .await;
            match acked {
                Ok((fence, acked)) if fence > 0 && acked < i64::from(ack.replicas) => {
                    // Undone before the error returns, so that a retry finds the key free;
                    // if this release fails, the armed undo retries it in the background.
                    let (key, lock_key, token) = (request.key, request.storage_key, request.token);
                    self.abandoned.add(lock_key, token, sent + request.ttl);
                    let target = Target::new(lock_key, token, permits);
                    if self
                        .scripts
                        .release(cx, key, &target, request.ttl)
                        .await
                        .is_ok()
                    {
                        undo.disarm();
                    }
                    return Err(replicas::too_few(key, "lock", acked, ack, wait));
                }
                acked => acked.map(|(fence, _)| fence),
            }
        } else {
            let mut obtain = script.prepare_invoke();
            for key in &keys {
                obtain.key(key);
            }
            obtain.arg(&args);
            self.scripts
                .call(cx, request.key, request.useful_for(), &obtain)
                .await
        };
        let fence = match outcome {
            // The script stopped at its first read: it took nothing.
            Err(e) if permits::wrong_type(&e) => {
                undo.disarm();
                return Err(e);
            }
            outcome => outcome?,
        };
        undo.disarm();
        if fence < 0 {
            let held = u32::try_from(-fence).unwrap_or(u32::MAX);
            return Err(Error::permits_mismatch(request.key, permits, held));
        }
        Ok((fence != 0).then(|| Grant {
            fencing_token: fence as u64,
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

    fn max_permits(&self) -> u32 {
        crate::MAX_PERMITS
    }

    fn wakeups(&self) -> Option<&Arc<Wakeups>> {
        Some(&self.scripts.wakeups)
    }

    async fn try_acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
    ) -> Result<Option<Grant<String>>> {
        self.attempt(cx, request, None, 0).await
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
            if let Some(grant) = self.attempt(cx, request, None, 0).await? {
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
        // A waiter for a permit takes its place in the semaphore's line (permits.rs).
        let patience = permits::patience(retry_interval, request.ttl);
        // A holder of this backend hands the lock over to the head of its waiters rather
        // than release it (`hand_over`); replica acknowledgement is the attempt's business.
        let take_over =
            (self.replica_ack.get().is_none() && request.permits == 1).then_some(TakeOver {
                token: request.token,
                ttl: request.ttl,
                value: request.value,
            });
        // A lock handed over to this call and not yet taken from its channel when the call
        // ends otherwise (dropped, or failed) would be nobody's: undone then.
        // (Its TTL counts from the drop: any lock handed over was granted before.)
        let undo = take_over
            .is_some()
            .then(|| cx.undo_on_drop(request, || self.undo(cx, request, Instant::now())));
        let acquired = retry_until_acquired(wakeups, request, retry_interval, take_over, || {
            self.attempt(cx, request, announce, patience)
        })
        .await;
        if let (Ok(Some(_)), Some(undo)) = (&acquired, undo) {
            undo.disarm();
        }
        acquired
    }

    async fn renew(&self, cx: &Context, lease: &Lease, token: &mut String) -> Result<Renewal> {
        let Some(ack) = self.replica_ack.get() else {
            let mut one = batch::renew_many(&self.scripts, cx, &[(lease, token)], false).await;
            return one
                .pop()
                .unwrap_or_else(|| Err(Error::backend("redis", &lease.key, "not sent")));
        };
        // Unacknowledged, the new expiry may be missing on the replica that gets promoted:
        // an `Err`, which the engine retries until the safety deadline.
        let (script, keys) = if lease.permits > 1 {
            (
                &*permits::REFRESH_MANY,
                permits::keys(&lease.storage_key, lease.permits),
            )
        } else {
            (&*REFRESH, vec![lease.storage_key.clone()])
        };
        let mut refresh = replicas::evalsha(script, &keys);
        refresh.arg(&*token).arg(millis(lease.ttl));
        let wait = replicas::wait_timeout(cx, ack, lease.ttl / 10);
        let (renewed, acked): (redis::Value, i64) = self
            .scripts
            .call_acknowledged(
                cx,
                &lease.key,
                lease.ttl,
                script,
                refresh,
                crate::config::ReplicaAck::new(ack.replicas, wait),
            )
            .await?;
        // refresh.lua answers 1, permit_refresh_many.lua [1].
        let renewed = match renewed {
            redis::Value::Array(items) => items.first() == Some(&redis::Value::Int(1)),
            value => value == redis::Value::Int(1),
        };
        if renewed && acked < i64::from(ack.replicas) {
            return Err(replicas::too_few(&lease.key, "renewal", acked, ack, wait));
        }
        Ok(Renewal::still_ours(renewed))
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
            match self.scripts.call(cx, key, Duration::MAX, &holder).await {
                // A semaphore keeps the name: its holders are no lock's.
                Err(e) if permits::wrong_type(&e) => {
                    return match self.scripts.holders(cx, key, lock_key).await?.0 {
                        0 => Ok(None),
                        held => Err(Error::permits_mismatch(key, 1, held)),
                    };
                }
                reply => reply?,
            };
        Ok(reply.and_then(|(value, pttl)| {
            let expires_in = Duration::from_millis(pttl.max(0) as u64);
            parse_holder(&value, expires_in)
        }))
    }

    async fn holders(
        &self,
        cx: &Context,
        key: &str,
        storage_key: &str,
        permits: u32,
    ) -> Result<Vec<Holder>> {
        if permits == 1 {
            return Ok(self
                .holder(cx, key, storage_key)
                .await?
                .into_iter()
                .collect());
        }
        match self.scripts.holders(cx, key, storage_key).await? {
            (0, _) => Ok(Vec::new()),
            (held, holders) if held == permits => Ok(holders),
            (held, _) => Err(Error::permits_mismatch(key, permits, held)),
        }
    }

    /// Hands the lock over to the head of this backend's waiters for it, when there is one
    /// (at most 8 times in a row: then the release goes to the server, where the waiters of
    /// other processes get their chance); otherwise releases it.
    async fn release(
        &self,
        cx: &Context,
        lease: &Lease,
        token: String,
        limit: Duration,
    ) -> Result<bool> {
        let offer = (lease.permits == 1)
            .then(|| self.scripts.wakeups.take_offer(&lease.storage_key))
            .flatten();
        if let Some(offer) = offer {
            // On an error, handed over or not: the release below finds out (release.lua
            // recognises a lock handed over from this token as released), and frees it in
            // the second case.
            if let Ok(handed) = self.hand_over(cx, lease, &token, offer, limit).await {
                return Ok(handed);
            }
        }
        let target = Target::new(&lease.storage_key, &token, lease.permits);
        self.scripts.release(cx, &lease.key, &target, limit).await
    }
}

/// What a release names: the keys of a lock or of a semaphore, and the acquisition's token.
struct Target<'a> {
    keys: Vec<String>,
    token: &'a str,
    permits: u32,
}

impl<'a> Target<'a> {
    fn new(storage_key: &str, token: &'a str, permits: u32) -> Self {
        Target {
            keys: permits::keys(storage_key, permits),
            token,
            permits,
        }
    }
}

impl<C> RedisBackend<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// One hand_over.lua call: `Ok(true)` handed over (the taker has its grant, or, gone
    /// meanwhile, had it released), `Ok(false)` the lock was not ours any more.
    async fn hand_over(
        &self,
        cx: &Context,
        lease: &Lease,
        token: &str,
        offer: Offer,
        limit: Duration,
    ) -> Result<bool> {
        let sent = Instant::now();
        let mut hand_over = HAND_OVER.prepare_invoke();
        hand_over
            .key(&lease.storage_key)
            .arg(token)
            .arg(&offer.token)
            .arg(millis(offer.ttl))
            .arg(published(offer.value.as_deref()));
        let fence: u64 = self.scripts.call(cx, &lease.key, limit, &hand_over).await?;
        if fence == 0 {
            return Ok(false); // the offer is dropped: its waiter tries the server
        }
        let grant = Grant {
            fencing_token: fence,
            confirmed_at: sent,
            held: offer.token.clone(),
        };
        if offer.taker.send(Box::new(grant)).is_err() {
            // The waiter left meanwhile: nobody owns the taker's acquisition.
            let target = Target::new(&lease.storage_key, &offer.token, 1);
            let _ = self
                .scripts
                .release(cx, &lease.key, &target, offer.ttl)
                .await;
        }
        Ok(true)
    }
}

impl<C: ConnectionLike + Clone + Send + Sync> Scripts<C> {
    async fn release(
        &self,
        cx: &Context,
        key: &str,
        target: &Target<'_>,
        limit: Duration,
    ) -> Result<bool> {
        let limit = cx.bound(limit);
        self.release_or_bar(cx, key, target, limit, limit, "").await
    }

    /// One release.lua (permit_release.lua) call bounded by `limit`, leaving its tombstone
    /// for `tombstone`.
    async fn release_or_bar(
        &self,
        cx: &Context,
        key: &str,
        target: &Target<'_>,
        limit: Duration,
        tombstone: Duration,
        bar: &str,
    ) -> Result<bool> {
        let script = if target.permits > 1 {
            &*permits::RELEASE
        } else {
            &*RELEASE
        };
        let mut release = script.prepare_invoke();
        for k in &target.keys {
            release.key(k);
        }
        release
            .arg(target.token)
            .arg(millis(tombstone).max(1))
            .arg(self.wakeups.id())
            .arg(bar);
        let released = self.call::<i64>(cx, key, limit, &release).await? == 1;
        if released {
            self.wakeups.released(&target.keys[0]);
        }
        Ok(released)
    }

    /// permit_holders.lua: the number of permits of the semaphore at `storage_key` (0:
    /// nobody holds it; 1: a lock holds the name) and its holders.
    async fn holders(
        &self,
        cx: &Context,
        key: &str,
        storage_key: &str,
    ) -> Result<(u32, Vec<Holder>)> {
        let mut holders = permits::HOLDERS.prepare_invoke();
        for k in permits::keys(storage_key, 2) {
            holders.key(k);
        }
        let reply: Vec<String> = self.call(cx, key, Duration::MAX, &holders).await?;
        Ok(permits::parse_holders(&reply))
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
