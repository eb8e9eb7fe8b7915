//! The etcd backend: each acquisition is a key of its own in the lock's (or semaphore's)
//! queue, attached to the locker's session lease; waiters queue by create revision.
//!
//! Keys: `<prefix><key>/<lease>.<n>` for a lock, `<prefix><key>/~<N>~<lease>.<n>` for a
//! semaphore of N, where `<key>` has `%` and `/` percent-encoded so that the queue of lock
//! `a` (`<prefix>a/`) never contains the waiters of lock `a/b`, `<lease>` is the session's
//! lease id in hex and `<n>` the smallest number free in the session. Every acquisition gets
//! a key of its own (and so its own place in the queue), even from one locker; a name is
//! reused once nothing can still put or delete it (`session.rs`, [`Name`](session::Name)):
//! etcd keeps every deleted key in its index until the history is compacted, and the
//! put's compare ranges over the whole queue, tombstones included, so a fresh name per
//! acquisition made each acquire of a lock slower than the last (1,342 pairs/s down to 862
//! within 12 s on one key, one task).
//!
//! - **One session lease per locker and TTL** (`session.rs`), kept alive by one stream, as
//!   in etcd's own concurrency package: a lock and its release are two writes, and holding
//!   10,000 locks costs the server one lease. The coupling: if the session's lease is lost
//!   (a partition longer than the TTL, a revoke), every lock and waiter attached to it is
//!   lost at once. A locker per fate separates them.
//! - **Uncontended in one write.** The first put is conditional on an empty queue; only
//!   when someone holds the lock does `lock()` queue its key, and `try_lock()` writes
//!   nothing at all.
//! - **Fair, watch-based waiting.** A queued waiter waits for the deletion of the key
//!   created just before its own (no polling, no thundering herd): the lock is granted in
//!   request order. The watch is opened *from now* and the predecessor re-checked after it is
//!   created, so the handoff does not wait for etcd's periodic sync of watchers that start
//!   at a past revision.
//! - **Semaphores: the first N keys hold.** A key holds while fewer than N keys are ahead of
//!   it (a lock: none), so permits are granted in request order. A waiting put reads, in its
//!   own txn, how many keys are ahead; the waiter then counts the queue's deletions of keys
//!   ahead on one watch (each event carries the deleted key's create revision), from its
//!   put's revision: no polling, and no read per release. `try_acquire` writes nothing when
//!   the queue is full: it reads the queue, then puts on condition that no key joined since.
//! - **One N per name.** Each N has a key range of its own (a hex lease id has no `~`), so
//!   the txn that puts a semaphore's key (or finds the queue held, for a try) also reads
//!   whether any key names another N: then the attempt fails with `PermitsMismatch`, a try
//!   having put nothing, a waiter deleting its key before returning. A semaphore's key that
//!   holds thus only has keys of its own N ahead of it (none can join ahead), and a lock's
//!   holds with none ahead: holders never disagree. A lock's waiter is refused when its
//!   predecessor is a semaphore's key.
//! - **Ownership checks.** Before a waiter is granted the lock it confirms, in the same read,
//!   that its own key still exists (a semaphore's waiter: its key's deletion comes first in
//!   the watch it counts with); while held, the session checks all its keys at once on
//!   every renewal (`session.rs`, invariant 3). The fencing token is the key's create
//!   revision.
//! - **Release** deletes the acquisition's own key. Its name stays reserved in the session
//!   until the delete is answered (one that went unanswered retires the name for good), so
//!   a stale guard can never delete a newer holder's key.

mod queue;
mod session;

use std::collections::HashMap;
use std::time::Duration;

use etcd_client::Client;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Backend, Context, Grant, Lease, Loss, Renewal, Request};
use crate::config::Driver;
use crate::error::Result;
use crate::Holder;
use queue::{Entry, Landed};
use session::{Attachment, Sessions};

pub(crate) struct EtcdBackend {
    client: Client,
    sessions: Sessions,
}

/// What a held etcd lock keeps: its key, attached to its session.
pub(crate) struct EtcdHeld {
    attachment: Attachment,
}

/// Whether a call failed before its request could leave: the connection to the member the
/// channel picked was refused. Sending it again cannot apply it twice.
fn never_sent(e: &crate::Error) -> bool {
    let text = format!("{e:?}");
    text.contains("tcp connect error") || text.contains("ConnectionRefused")
}

/// `%` and `/` percent-encoded: injective, and no key's queue contains another's.
fn escape(key: &str) -> String {
    key.replace('%', "%25").replace('/', "%2F")
}

impl EtcdBackend {
    pub fn new(client: Client) -> Self {
        EtcdBackend {
            sessions: Sessions::new(client.clone()),
            client,
        }
    }

    /// Puts a key for `request` in its queue (only if the queue is empty when `wait` is
    /// false: `Ok(None)` then says the lock is held), on the live session. A session whose
    /// lease turns out to be gone is ended, and the put tried once more on a new one.
    async fn enqueue<'a>(
        &self,
        cx: &Context,
        request: &'a Request<'a>,
        wait: bool,
        landed: &Landed,
    ) -> Result<Option<Entry<'a>>> {
        let limit = request.useful_for();
        let session = self
            .sessions
            .get(cx, request.key, request.ttl, limit)
            .await?;
        match queue::enqueue(&self.client, cx, request, session, wait, landed).await {
            Err(queue::Enqueue::LeaseGone(session)) => {
                session.end(Loss::NotHeld("the session lease expired or was revoked"));
                let session = self
                    .sessions
                    .get(cx, request.key, request.ttl, limit)
                    .await?;
                queue::enqueue(&self.client, cx, request, session, wait, landed)
                    .await
                    .map_err(queue::Enqueue::into_error)
            }
            other => other.map_err(queue::Enqueue::into_error),
        }
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

    /// Every number of permits up to [`crate::MAX_PERMITS`]: a semaphore is the same queue.
    fn max_permits(&self) -> u32 {
        crate::MAX_PERMITS
    }

    /// The lock's queue, `<prefix><escaped key>/`: each acquisition puts its own key in it.
    fn storage_key(&self, prefix: &str, key: &str) -> String {
        format!("{prefix}{}/", escape(key))
    }

    /// One conditional put: nothing is written when the lock (every permit) is held.
    async fn try_acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
    ) -> Result<Option<Grant<EtcdHeld>>> {
        let landed = Landed::default();
        let undo = cx.undo_on_drop(request, || {
            queue::delete(&self.client, cx, request, &landed)
        });
        match self.enqueue(cx, request, false, &landed).await {
            Ok(entry) => {
                undo.disarm();
                Ok(entry.map(Entry::grant))
            }
            // Refused after a read: nothing was put.
            Err(e @ crate::Error::PermitsMismatch { .. }) => {
                undo.disarm();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// FIFO: a waiter keeps its key in the queue and watches the key created just before
    /// its own (a semaphore's waiter: the deletions of the keys ahead of its own).
    async fn acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
        _retry_interval: Duration,
    ) -> Result<Option<Grant<EtcdHeld>>> {
        // Armed until the outcome is known: a waiter dropped anywhere leaves no key.
        let landed = Landed::default();
        let undo = cx.undo_on_drop(request, || {
            queue::delete(&self.client, cx, request, &landed)
        });
        let waited = match self.enqueue(cx, request, true, &landed).await {
            Ok(Some(entry)) if entry.granted => Ok(entry),
            Ok(Some(entry)) => {
                let waited = match request.permits {
                    1 => queue::wait_for_turn(&self.client, cx, &entry).await,
                    _ => queue::wait_for_permit(&self.client, cx, &entry).await,
                };
                waited.map(|()| entry)
            }
            Ok(None) => Err(crate::Error::backend(
                "etcd",
                request.key,
                "a waiting put did not queue its key",
            )),
            Err(e) => Err(e),
        };
        match waited {
            Ok(entry) => {
                undo.disarm();
                Ok(Some(entry.grant()))
            }
            // A refused request leaves no key: its own is deleted before the error returns
            // (dropped meanwhile, the undo still does it).
            Err(e @ crate::Error::PermitsMismatch { .. }) => {
                queue::delete(&self.client, cx, request, &landed).await;
                undo.disarm();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Answers from the session, with no server call: the session's keep-alive renews
    /// every lock attached to it at once and checks their keys (`session.rs`), and it
    /// cancels a lock's attachment as soon as the lock is lost.
    async fn renew(&self, _cx: &Context, lease: &Lease, held: &mut EtcdHeld) -> Result<Renewal> {
        local_renewal(lease, held)
    }

    /// All local: each answer is ready at once, so none is a future of its own.
    async fn renew_many(
        &self,
        _cx: &Context,
        locks: Vec<(&Lease, &mut EtcdHeld)>,
    ) -> Vec<Result<Renewal>> {
        locks
            .into_iter()
            .map(|(lease, held)| local_renewal(lease, held))
            .collect()
    }

    /// Every renewal of the session confirms each lock attached to it.
    fn confirmed(&self, held: &EtcdHeld) -> Option<Instant> {
        Some(held.attachment.session.confirmed())
    }

    /// The attachment's token: cancelled when the session ends or the key alone is gone.
    fn loss_signal(&self, held: &EtcdHeld) -> Option<CancellationToken> {
        Some(held.attachment.gone_token())
    }

    /// The head of the queue ([`Backend::holders`] of one permit).
    async fn holder(&self, cx: &Context, key: &str, queue: &str) -> Result<Option<Holder>> {
        Ok(self.holders(cx, key, queue, 1).await?.into_iter().next())
    }

    /// The first `permits` keys of the queue, up to the first that names another number
    /// (a refused request's, about to go); each lease's remaining TTL is what remains of its
    /// holders'.
    async fn holders(
        &self,
        cx: &Context,
        key: &str,
        queue: &str,
        permits: u32,
    ) -> Result<Vec<Holder>> {
        let front = queue::front(&self.client, cx, key, queue, permits).await?;
        match front.first() {
            None => return Ok(Vec::new()),
            Some(head) if head.permits != permits => {
                return Err(crate::Error::permits_mismatch(key, permits, head.permits))
            }
            Some(_) => {}
        }
        let holders: Vec<_> = front
            .into_iter()
            .take_while(|k| k.permits == permits)
            .collect();
        let mut leases: Vec<i64> = holders.iter().map(|k| k.lease).collect();
        leases.sort_unstable();
        leases.dedup();
        let remaining = leases.iter().map(|lease_id| {
            let mut leases = self.client.lease_client();
            async move {
                let ttl = leases.time_to_live(*lease_id, None);
                let remaining = cx.call("etcd", key, Duration::MAX, ttl).await?.ttl();
                Ok::<_, crate::Error>((*lease_id, remaining))
            }
        });
        let remaining: HashMap<i64, i64> = futures_util::future::try_join_all(remaining)
            .await?
            .into_iter()
            .collect();
        Ok(holders
            .into_iter()
            .map(|k| {
                let remaining = remaining.get(&k.lease).copied().unwrap_or_default();
                let expires_in = Duration::from_secs(remaining.max(0) as u64);
                let value = (!k.value.is_empty()).then_some(k.value);
                Holder::new(k.revision as u64, expires_in, value)
            })
            .collect())
    }

    async fn release(
        &self,
        cx: &Context,
        lease: &Lease,
        held: EtcdHeld,
        limit: Duration,
    ) -> Result<bool> {
        // The key's name is this acquisition's until the delete is answered (or for good,
        // if it is not): deleting it can only ever delete our own acquisition, so no compare
        // is needed (a txn costs etcd more).
        let own_key = held.attachment.name.key.as_bytes();
        let mut tries = 0;
        loop {
            let mut kv = self.client.kv_client();
            let delete = kv.delete(own_key, None);
            match cx.call("etcd", &lease.key, limit, delete).await {
                Ok(reply) => return Ok(reply.deleted() == 1),
                // The channel had a dead connection to a member (one that restarted): the
                // delete never left, and the next try goes to a member picked again.
                Err(e) if never_sent(&e) && tries < 3 => tries += 1,
                Err(e) => {
                    // The delete may still land: the name is never put again.
                    held.attachment.name.retire();
                    return Err(e);
                }
            }
        }
    }
}

/// What the session knows of one lock: still attached, or lost and why.
fn local_renewal(lease: &Lease, held: &EtcdHeld) -> Result<Renewal> {
    if !held.attachment.is_gone() {
        return Ok(Renewal::Renewed);
    }
    match held.attachment.loss() {
        Loss::NotHeld(reason) => Ok(Renewal::Lost(reason)),
        // Unconfirmed until the safety deadline: the engine sees that deadline too.
        Loss::Unconfirmed { last_error } => Err(crate::Error::backend(
            "etcd",
            &lease.key,
            last_error.unwrap_or_else(|| "the session's renewal went unanswered".into()),
        )),
    }
}

impl Entry<'_> {
    /// The key is ours and exists: it lives at least a TTL after its session's last
    /// confirmation (a waiter may have waited through many).
    fn grant(self) -> Grant<EtcdHeld> {
        Grant {
            fencing_token: self.revision as u64,
            confirmed_at: self.attachment.session.confirmed(),
            held: EtcdHeld {
                attachment: self.attachment,
            },
        }
    }
}
