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

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchStream,
};
use tokio::sync::Mutex;
use tokio::time::{sleep_until, timeout, Instant};

use super::{safety_margin, watchdog, Context, Lease, Loss, Request};
use crate::config::Config;
use crate::error::{Error, Result};

pub(crate) struct EtcdBackend {
    client: Client,
    prefix: Arc<str>,
    context: Context,
}

/// etcd leases take whole seconds; the general 100 ms ..= 24 h rule is checked elsewhere.
pub(crate) fn check_ttl(ttl: Duration) -> std::result::Result<(), String> {
    if ttl.subsec_nanos() != 0 || ttl < Duration::from_secs(1) {
        return Err(format!(
            "is {ttl:?}; etcd leases take whole seconds (>= 1s)"
        ));
    }
    Ok(())
}

/// `%` and `/` percent-encoded: injective, and no key's queue contains another's.
fn escape(key: &str) -> String {
    key.replace('%', "%25").replace('/', "%2F")
}

fn etcd_error(key: &str, e: impl Into<crate::error::BoxError>) -> Error {
    Error::backend("etcd", key, e)
}

/// Runs one etcd call bounded by `limit` (already bounded by the locker's call timeout).
async fn bounded<T>(
    key: &str,
    limit: Duration,
    call: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(etcd_error(key, e)),
        Err(_) => Err(etcd_error(key, format!("no answer within {limit:?}"))),
    }
}

/// One queued acquisition.
struct Entry<'a> {
    key: &'a str,
    queue: String,
    own_key: String,
    revision: i64,
    lease_id: i64,
    ttl: Duration,
}

impl EtcdBackend {
    pub fn new(client: Client, config: &Config, context: Context) -> Self {
        EtcdBackend {
            client,
            prefix: config.prefix.as_str().into(),
            context,
        }
    }

    /// The bound of one call that is useless after `limit`.
    fn bound(&self, limit: Duration) -> Duration {
        self.context.bound(limit)
    }

    pub async fn acquire(&self, request: &Request<'_>) -> Result<Option<Lease>> {
        let key = request.key;
        let ttl = request.ttl;
        let queue = format!("{}{}/", self.prefix, escape(key));
        let own_key = format!("{queue}{}", request.token);
        let mut pending = PendingAcquire {
            client: self.client.clone(),
            context: self.context.clone(),
            lease_id: None,
        };
        let limit = self.bound(ttl - safety_margin(ttl));

        let sent = Instant::now();
        let mut lease_client = self.client.lease_client();
        let grant = bounded(key, limit, lease_client.grant(ttl.as_secs() as i64, None)).await?;
        let lease_id = grant.id();
        pending.lease_id = Some(lease_id);

        // Put our key and read the head of the queue in one step.
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
                    queue.clone(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Ascend)
                            .with_limit(1),
                    ),
                ),
            ]);
        let mut kv = self.client.kv_client();
        let reply = bounded(key, limit, kv.txn(put)).await?;
        let revision = reply.header().map(|h| h.revision()).unwrap_or_default();
        let head_is_ours = reply.op_responses().iter().any(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .is_some_and(|kv| kv.key() == own_key.as_bytes()),
            _ => false,
        });
        let entry = Entry {
            key,
            queue,
            own_key,
            revision,
            lease_id,
            ttl,
        };
        let mut keepalive = KeepAlive::new(self.client.clone(), lease_id, sent);
        if !head_is_ours {
            if request.wait.is_none() {
                // try_lock: leave nothing behind (revoking the lease deletes our key).
                bounded(key, limit, lease_client.revoke(lease_id)).await?;
                pending.lease_id = None;
                return Ok(None);
            }
            self.wait_for_turn(&entry, &mut keepalive).await?;
        }
        pending.lease_id = None;
        Ok(Some(Lease {
            key: key.to_owned(),
            storage_key: entry.own_key,
            token: request.token.to_owned(),
            fencing_token: revision as u64,
            ttl,
            confirmed_at: keepalive.confirmed,
            lease_id,
        }))
    }

    /// Waits until every key created before ours is gone, keeping our lease alive.
    async fn wait_for_turn(&self, entry: &Entry<'_>, keepalive: &mut KeepAlive) -> Result<()> {
        let mut watching: Option<(Vec<u8>, WatchStream)> = None;
        let mut next_renewal = Instant::now() + entry.ttl / 3;
        loop {
            let Some(predecessor) = self.predecessor(entry).await? else {
                return Ok(());
            };
            match &mut watching {
                Some((watched, stream)) if *watched == predecessor => {
                    let deleted = tokio::select! {
                        event = stream.message() => event,
                        _ = sleep_until(next_renewal) => {
                            keepalive.renew_while_waiting(entry, self.bound(entry.ttl / 3)).await?;
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
                    let mut stream = bounded(
                        entry.key,
                        self.bound(entry.ttl),
                        watch_client.watch(predecessor.clone(), None),
                    )
                    .await?;
                    let created =
                        bounded(entry.key, self.bound(entry.ttl), stream.message()).await?;
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
    async fn predecessor(&self, entry: &Entry<'_>) -> Result<Option<Vec<u8>>> {
        let read = Txn::new().and_then([
            TxnOp::get(entry.own_key.clone(), None),
            TxnOp::get(
                entry.queue.clone(),
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
        let reply = bounded(entry.key, self.bound(entry.ttl), kv.txn(read)).await?;
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

    pub async fn keep(&self, lease: &Lease, confirmed: &mut Instant) -> Loss {
        let keepalive = Mutex::new(KeepAlive::new(
            self.client.clone(),
            lease.lease_id,
            lease.confirmed_at,
        ));
        let lease_gone = std::sync::atomic::AtomicBool::new(false);
        let limit = self.bound(lease.ttl);
        let loss = watchdog("etcd", lease, confirmed, || async {
            let alive = keepalive.lock().await.renew(&lease.key, limit).await?;
            if !alive {
                lease_gone.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(false);
            }
            self.still_ours(lease).await
        })
        .await;
        match loss {
            Loss::Taken if lease_gone.load(std::sync::atomic::Ordering::Relaxed) => {
                Loss::LeaseEnded
            }
            other => other,
        }
    }

    /// Whether our key still exists with our create revision and lease.
    async fn still_ours(&self, lease: &Lease) -> Result<bool> {
        let mut kv = self.client.kv_client();
        let reply = bounded(
            &lease.key,
            self.bound(lease.ttl),
            kv.get(lease.storage_key.clone(), None),
        )
        .await?;
        Ok(reply.kvs().first().is_some_and(|kv| {
            kv.create_revision() as u64 == lease.fencing_token && kv.lease() == lease.lease_id
        }))
    }

    /// Releases `lease`, giving up after `limit` (when the lease expires anyway).
    pub async fn release(&self, lease: &Lease, limit: Duration) -> Result<bool> {
        let delete_if_ours = Txn::new()
            .when([Compare::create_revision(
                lease.storage_key.clone(),
                CompareOp::Equal,
                lease.fencing_token as i64,
            )])
            .and_then([TxnOp::delete(lease.storage_key.clone(), None)]);
        let mut kv = self.client.kv_client();
        let held = bounded(&lease.key, self.bound(limit), kv.txn(delete_if_ours))
            .await?
            .succeeded();
        // The lease holds no key any more: revoking it only frees server memory, so the
        // release does not wait for it (but `close()` does). If it fails, the lease expires
        // after its TTL.
        let (mut lease_client, id) = (self.client.lease_client(), lease.lease_id);
        let revoke_limit = self.bound(lease.ttl);
        self.context.spawn(async move {
            let _ = timeout(revoke_limit, lease_client.revoke(id)).await;
        });
        Ok(held)
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

    /// `Ok(true)`: renewed; `Ok(false)`: the lease is gone; `Err`: unknown.
    async fn renew(&mut self, key: &str, limit: Duration) -> Result<bool> {
        let sent = Instant::now();
        let outcome = timeout(limit, async {
            if self.stream.is_none() {
                let mut lease_client = self.client.lease_client();
                self.stream = Some(lease_client.keep_alive(self.lease_id).await?);
            }
            let (keeper, stream) = self.stream.as_mut().expect("opened above");
            keeper.keep_alive().await?;
            stream.message().await
        })
        .await;
        match outcome {
            Ok(Ok(Some(reply))) => {
                let alive = reply.ttl() > 0;
                if alive {
                    self.confirmed = sent;
                }
                Ok(alive)
            }
            Ok(Ok(None)) => {
                self.stream = None;
                Err(etcd_error(key, "keep-alive stream closed"))
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(etcd_error(key, e))
            }
            Err(_) => {
                self.stream = None;
                Err(etcd_error(
                    key,
                    format!("keep-alive unanswered within {limit:?}"),
                ))
            }
        }
    }

    /// Renewal for a waiter: a transient error is tolerated until the lease could have
    /// expired; a lease that is gone ends the wait at once.
    async fn renew_while_waiting(&mut self, entry: &Entry<'_>, limit: Duration) -> Result<()> {
        let deadline = self.confirmed + entry.ttl - safety_margin(entry.ttl);
        match self.renew(entry.key, limit).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::lost(entry.key)),
            Err(e) if Instant::now() >= deadline => Err(e),
            Err(_) => Ok(()),
        }
    }
}

/// Revokes the lease (and so deletes the waiter key) of an acquisition that is dropped or
/// fails before it hands its lease to a guard.
struct PendingAcquire {
    client: Client,
    context: Context,
    lease_id: Option<i64>,
}

impl Drop for PendingAcquire {
    fn drop(&mut self) {
        let Some(lease_id) = self.lease_id else {
            return;
        };
        // Without a runtime nothing runs: the lease expires after its TTL, and the key with it.
        let mut lease_client = self.client.lease_client();
        let limit = self.context.bound(Duration::from_secs(5));
        self.context.spawn(async move {
            if let Err(e) = timeout(limit, lease_client.revoke(lease_id)).await {
                tracing::debug!(component = "dlock", backend = "etcd", lease_id, error = %e,
                    "cleanup of an interrupted acquire timed out; the lease will expire");
            }
        });
    }
}
