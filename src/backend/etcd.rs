//! The etcd backend: each acquisition is a key of its own, attached to a lease of its own
//! that dlock keeps alive; waiters queue by create revision.
//!
//! Keys: `<prefix><key>/<ulid>`, where `<key>` has `%` and `/` percent-encoded so that the
//! queue of lock `a` (`<prefix>a/`) never contains the waiters of lock `a/b`. Every
//! acquisition gets its own key (and so its own place in the queue), even from one locker.
//!
//! - **One lease per lock.** Granted with the lock's TTL (whole seconds), kept alive every
//!   TTL/3 while waiting and while held, revoked on release (which deletes the key
//!   atomically). The loss of one lease never affects another lock. The cost: a LeaseGrant
//!   and a keep-alive stream per held lock, where a shared session lease would need one per
//!   locker; we chose isolation and one mechanism for every TTL.
//! - **Fair, watch-based waiting.** A waiter puts its key, then waits for the deletion of
//!   the key created just before its own (no polling, no thundering herd): the lock is
//!   granted in request order. The watch is opened *from now* and the predecessor re-checked
//!   after it is created, so the handoff does not wait for etcd's periodic sync of watchers
//!   that start at a past revision.
//! - **Ownership checks.** Before a waiter is granted the lock it confirms, in the same read,
//!   that its own key still exists; while held, every renewal confirms both the lease (TTL > 0)
//!   and the key (same create revision). The fencing token is the key's create revision.
//! - **Release** deletes the key only if its create revision is ours (one transaction), then
//!   revokes the lease in the background: a stale guard can never delete a newer holder's key.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchStream,
};
use tokio::time::{sleep_until, Instant};

use super::{safety_margin, Backend, Context, Grant, Lease, Renewal, Request};
use crate::config::Driver;
use crate::error::{Error, Result};

pub(crate) struct EtcdBackend {
    client: Client,
}

/// What a held etcd lock keeps: its own key, its lease and the lease's keep-alive stream.
pub(crate) struct EtcdHeld {
    own_key: String,
    lease_id: i64,
    keepalive: KeepAlive,
}

/// `%` and `/` percent-encoded: injective, and no key's queue contains another's.
fn escape(key: &str) -> String {
    key.replace('%', "%25").replace('/', "%2F")
}

/// One queued acquisition.
struct Entry<'a> {
    key: &'a str,
    queue: &'a str,
    own_key: String,
    revision: i64,
    lease_id: i64,
    ttl: Duration,
    head_is_ours: bool,
}

impl Entry<'_> {
    fn grant(self, keepalive: KeepAlive) -> Grant<EtcdHeld> {
        Grant {
            fencing_token: self.revision as u64,
            confirmed_at: keepalive.confirmed,
            held: EtcdHeld {
                own_key: self.own_key,
                lease_id: self.lease_id,
                keepalive,
            },
        }
    }
}

impl EtcdBackend {
    pub fn new(client: Client) -> Self {
        EtcdBackend { client }
    }

    /// A lease of the request's TTL, for the key that queues it.
    async fn grant_lease(&self, cx: &Context, request: &Request<'_>) -> Result<i64> {
        let mut lease_client = self.client.lease_client();
        let grant = lease_client.grant(request.ttl.as_secs() as i64, None);
        Ok(cx
            .call("etcd", request.key, request.useful_for(), grant)
            .await?
            .id())
    }

    /// Revokes a lease (and so deletes its key), for the background: if it fails, the lease
    /// expires after its TTL.
    fn revoke(
        &self,
        cx: &Context,
        key: &str,
        lease_id: i64,
        ttl: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (mut lease_client, cx, key) = (self.client.lease_client(), cx.clone(), key.to_owned());
        async move {
            if let Err(e) = cx
                .call("etcd", &key, ttl, lease_client.revoke(lease_id))
                .await
            {
                tracing::debug!(component = "dlock", backend = "etcd", key = %key, lease_id,
                    error = %e, "revoking a lease failed; it will expire after its TTL");
            }
        }
    }

    /// Puts our key in the queue and reads the head of the queue, in one step.
    async fn enqueue<'a>(
        &self,
        cx: &Context,
        request: &'a Request<'a>,
        lease_id: i64,
    ) -> Result<Entry<'a>> {
        let queue = request.storage_key;
        let own_key = format!("{queue}{}", request.token);
        let put = Txn::new()
            .when([Compare::create_revision(
                own_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    own_key.clone(),
                    "",
                    Some(PutOptions::new().with_lease(lease_id)),
                ),
                TxnOp::get(
                    queue,
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Ascend)
                            .with_limit(1),
                    ),
                ),
            ]);
        let mut kv = self.client.kv_client();
        let reply = cx
            .call("etcd", request.key, request.useful_for(), kv.txn(put))
            .await?;
        let revision = reply.header().map(|h| h.revision()).unwrap_or_default();
        let head_is_ours = reply.op_responses().iter().any(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .is_some_and(|kv| kv.key() == own_key.as_bytes()),
            _ => false,
        });
        Ok(Entry {
            key: request.key,
            queue,
            own_key,
            revision,
            lease_id,
            ttl: request.ttl,
            head_is_ours,
        })
    }

    /// Waits until every key created before ours is gone, keeping our lease alive.
    async fn wait_for_turn(
        &self,
        cx: &Context,
        entry: &Entry<'_>,
        keepalive: &mut KeepAlive,
    ) -> Result<()> {
        let mut watching: Option<(Vec<u8>, WatchStream)> = None;
        let mut next_renewal = Instant::now() + entry.ttl / 3;
        loop {
            let Some(predecessor) = self.predecessor(cx, entry).await? else {
                return Ok(());
            };
            match &mut watching {
                Some((watched, stream)) if *watched == predecessor => {
                    let deleted = tokio::select! {
                        event = stream.message() => event,
                        _ = sleep_until(next_renewal) => {
                            keepalive.renew_while_waiting(cx, entry).await?;
                            next_renewal = Instant::now() + entry.ttl / 3;
                            continue;
                        }
                    };
                    match deleted {
                        Ok(Some(reply)) if reply.canceled() => watching = None,
                        Ok(Some(reply)) => {
                            if reply
                                .events()
                                .iter()
                                .any(|e| e.event_type() == EventType::Delete)
                            {
                                watching = None;
                            }
                        }
                        // The watch broke (a member went away): open another.
                        Ok(None) | Err(_) => watching = None,
                    }
                }
                _ => {
                    // Watch from now, then loop: the predecessor is checked again after the
                    // watch exists, so a deletion in between is not missed.
                    let mut watch_client = self.client.watch_client();
                    let watch = watch_client.watch(predecessor.clone(), None);
                    let mut stream = cx.call("etcd", entry.key, entry.ttl, watch).await?;
                    let created = cx
                        .call("etcd", entry.key, entry.ttl, stream.message())
                        .await?;
                    if created.is_some_and(|r| r.created() && !r.canceled()) {
                        watching = Some((predecessor, stream));
                    } else {
                        // Refused or closed at once (a member going away): do not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }

    /// In one read: fails if our own key is gone; otherwise the key just before ours, if any.
    async fn predecessor(&self, cx: &Context, entry: &Entry<'_>) -> Result<Option<Vec<u8>>> {
        let read = Txn::new().and_then([
            TxnOp::get(entry.own_key.clone(), None),
            TxnOp::get(
                entry.queue,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_max_create_revision(entry.revision - 1)
                        .with_sort(SortTarget::Create, SortOrder::Descend)
                        .with_limit(1),
                ),
            ),
        ]);
        let mut kv = self.client.kv_client();
        let reply = cx.call("etcd", entry.key, entry.ttl, kv.txn(read)).await?;
        let gets: Vec<_> = reply
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                TxnOpResponse::Get(get) => Some(get),
                _ => None,
            })
            .collect();
        let own_exists = gets.first().is_some_and(|g| {
            g.kvs().first().is_some_and(|kv| {
                kv.create_revision() == entry.revision && kv.lease() == entry.lease_id
            })
        });
        if !own_exists {
            tracing::warn!(component = "dlock", backend = "etcd", key = %entry.key,
                "the waiter's own key or lease disappeared while waiting");
            return Err(Error::lost(entry.key));
        }
        Ok(gets
            .get(1)
            .and_then(|g| g.kvs().first())
            .map(|kv| kv.key().to_vec()))
    }

    /// Whether our key still exists with our create revision and lease.
    async fn still_ours(&self, cx: &Context, lease: &Lease, held: &EtcdHeld) -> Result<bool> {
        let mut kv = self.client.kv_client();
        let get = kv.get(held.own_key.clone(), None);
        let reply = cx.call("etcd", &lease.key, lease.ttl, get).await?;
        Ok(reply.kvs().first().is_some_and(|kv| {
            kv.create_revision() as u64 == lease.fencing_token && kv.lease() == held.lease_id
        }))
    }
}

impl Backend for EtcdBackend {
    type Held = EtcdHeld;

    fn name(&self) -> &'static str {
        "etcd"
    }

    fn driver(&self) -> Driver {
        Driver::Etcd
    }

    /// etcd leases take whole seconds.
    fn check_ttl(&self, ttl: Duration) -> std::result::Result<(), String> {
        if ttl.subsec_nanos() != 0 || ttl < Duration::from_secs(1) {
            return Err(format!(
                "is {ttl:?}; etcd leases take whole seconds (>= 1s)"
            ));
        }
        Ok(())
    }

    /// The lock's queue, `<prefix><escaped key>/`: each acquisition puts its own key in it.
    fn storage_key(&self, prefix: &str, key: &str) -> String {
        format!("{prefix}{}/", escape(key))
    }

    async fn try_acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
    ) -> Result<Option<Grant<EtcdHeld>>> {
        let sent = Instant::now();
        let lease_id = self.grant_lease(cx, request).await?;
        let undo = cx.undo_on_drop(|| self.revoke(cx, request.key, lease_id, request.ttl));
        let entry = self.enqueue(cx, request, lease_id).await?;
        if !entry.head_is_ours {
            // try_lock: leave nothing behind (revoking the lease deletes our key).
            let mut lease_client = self.client.lease_client();
            let revoke = lease_client.revoke(lease_id);
            cx.call("etcd", request.key, request.useful_for(), revoke)
                .await?;
            undo.disarm();
            return Ok(None);
        }
        undo.disarm();
        let keepalive = KeepAlive::new(self.client.clone(), lease_id, sent);
        Ok(Some(entry.grant(keepalive)))
    }

    /// FIFO: a waiter keeps its key in the queue, its lease alive, and watches the key
    /// created just before its own.
    async fn acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
        _retry_interval: Duration,
    ) -> Result<Option<Grant<EtcdHeld>>> {
        let sent = Instant::now();
        let lease_id = self.grant_lease(cx, request).await?;
        let undo = cx.undo_on_drop(|| self.revoke(cx, request.key, lease_id, request.ttl));
        let entry = self.enqueue(cx, request, lease_id).await?;
        let mut keepalive = KeepAlive::new(self.client.clone(), lease_id, sent);
        if !entry.head_is_ours {
            self.wait_for_turn(cx, &entry, &mut keepalive).await?;
        }
        undo.disarm();
        Ok(Some(entry.grant(keepalive)))
    }

    async fn renew(&self, cx: &Context, lease: &Lease, held: &mut EtcdHeld) -> Result<Renewal> {
        if !held.keepalive.renew(cx, &lease.key, lease.ttl).await? {
            return Ok(Renewal::Lost("the lease was revoked or expired"));
        }
        Ok(Renewal::still_ours(self.still_ours(cx, lease, held).await?))
    }

    async fn release(
        &self,
        cx: &Context,
        lease: &Lease,
        held: EtcdHeld,
        limit: Duration,
    ) -> Result<bool> {
        let delete_if_ours = Txn::new()
            .when([Compare::create_revision(
                held.own_key.clone(),
                CompareOp::Equal,
                lease.fencing_token as i64,
            )])
            .and_then([TxnOp::delete(held.own_key, None)]);
        let mut kv = self.client.kv_client();
        let released = cx
            .call("etcd", &lease.key, limit, kv.txn(delete_if_ours))
            .await?
            .succeeded();
        // The lease holds no key any more: revoking it only frees server memory, so the
        // release does not wait for it (but `close()` does).
        cx.spawn(self.revoke(cx, &lease.key, held.lease_id, lease.ttl));
        Ok(released)
    }
}

/// The keep-alive stream of one lease, opened on first use and again after an error.
struct KeepAlive {
    client: Client,
    lease_id: i64,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// Send time of the last keep-alive the server answered with TTL > 0.
    confirmed: Instant,
}

impl KeepAlive {
    fn new(client: Client, lease_id: i64, confirmed: Instant) -> Self {
        KeepAlive {
            client,
            lease_id,
            stream: None,
            confirmed,
        }
    }

    /// `Ok(true)`: renewed; `Ok(false)`: the lease is gone; `Err`: unknown (the stream is
    /// opened again next time).
    async fn renew(&mut self, cx: &Context, key: &str, limit: Duration) -> Result<bool> {
        let sent = Instant::now();
        let (client, lease_id, stream) = (&self.client, self.lease_id, &mut self.stream);
        let reply = cx
            .call("etcd", key, limit, async {
                if stream.is_none() {
                    *stream = Some(client.lease_client().keep_alive(lease_id).await?);
                }
                let (keeper, replies) = stream.as_mut().expect("opened above");
                keeper.keep_alive().await?;
                replies.message().await
            })
            .await;
        match reply {
            Ok(Some(reply)) => {
                let alive = reply.ttl() > 0;
                if alive {
                    self.confirmed = sent;
                }
                Ok(alive)
            }
            Ok(None) => {
                self.stream = None;
                Err(Error::backend("etcd", key, "keep-alive stream closed"))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// Renewal for a waiter: a transient error is tolerated until the lease could have
    /// expired; a lease that is gone ends the wait at once.
    async fn renew_while_waiting(&mut self, cx: &Context, entry: &Entry<'_>) -> Result<()> {
        let deadline = self.confirmed + entry.ttl - safety_margin(entry.ttl);
        match self.renew(cx, entry.key, entry.ttl / 3).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::lost(entry.key)),
            Err(e) if Instant::now() >= deadline => Err(e),
            Err(_) => Ok(()),
        }
    }
}
