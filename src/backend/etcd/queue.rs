//! A lock's queue: putting an acquisition's key in it, waiting for the keys before it to
//! go, and taking it out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, WatchStream,
};

use super::super::{Context, Request};
use super::session::{lease_not_found, Attachment, Session};
use crate::error::{Error, Result};

/// The puts of one attempt still in flight: each holds a clone until it has its answer.
#[derive(Default)]
pub(super) struct Landed(Arc<tokio::sync::watch::Sender<()>>);

/// One acquisition's key in its lock's queue.
pub(super) struct Entry<'a> {
    pub key: &'a str,
    pub queue: &'a str,
    /// The key's create revision: its place in the queue, and the fencing token.
    pub revision: i64,
    pub ttl: Duration,
    /// Whether no key was in the queue before ours.
    pub head_is_ours: bool,
    pub attachment: Attachment,
}

/// Why a put did not queue a key.
pub(super) enum Enqueue {
    /// The session's lease no longer exists on the server.
    LeaseGone(Arc<Session>),
    Failed(Error),
}

impl Enqueue {
    pub fn into_error(self) -> Error {
        match self {
            Enqueue::LeaseGone(session) => Error::backend(
                "etcd",
                "",
                format!("session lease {:x} not found", session.lease_id),
            ),
            Enqueue::Failed(e) => e,
        }
    }
}

/// `<queue><token>`: the key of one acquisition.
pub(super) fn own_key(request: &Request<'_>) -> String {
    format!("{}{}", request.storage_key, request.token)
}

/// Puts our key in the queue: always when `wait`, otherwise only if the queue is empty (then
/// nothing is written when the lock is held, and `Ok(None)` says so).
pub(super) async fn enqueue<'a>(
    client: &Client,
    cx: &Context,
    request: &'a Request<'a>,
    session: Arc<Session>,
    wait: bool,
    landed: &Landed,
) -> std::result::Result<Option<Entry<'a>>, Enqueue> {
    let queue = request.storage_key;
    let own_key = own_key(request);
    let put = TxnOp::put(
        own_key.as_str(),
        request.value.unwrap_or_default(),
        Some(PutOptions::new().with_lease(session.lease_id)),
    );
    let queue_is_empty = Compare::create_revision(queue, CompareOp::Equal, 0).with_prefix();
    let txn = Txn::new()
        .when([queue_is_empty])
        .and_then([put.clone()])
        .or_else(if wait { vec![put] } else { vec![] });
    // Attached before the put is sent (session invariant 4): if this future is dropped
    // with the put in flight, the key the put may still write is an orphan to remove.
    let attachment = session.attach(own_key.into());
    let mut kv = client.kv_client();
    // The put runs to its answer on a task of its own, even if this future is dropped:
    // the undo (`delete`) waits for it, since etcd may apply a delete sent after a put
    // before that put, which would then leave its key behind.
    let in_flight = landed.0.clone();
    let put = tokio::spawn(async move {
        let reply = kv.txn(txn).await;
        drop(in_flight);
        reply
    });
    // etcd's own error stays the source, so that `Context::call` can read a refused right.
    let put = async {
        match put.await {
            Ok(reply) => reply.map_err(crate::error::BoxError::from),
            Err(joined) => Err(crate::error::BoxError::from(joined)),
        }
    };
    let reply = match cx
        .call("etcd", request.key, request.useful_for(), put)
        .await
    {
        Ok(reply) => reply,
        Err(e) if lease_not_found(&e) => return Err(Enqueue::LeaseGone(session)),
        Err(e) => return Err(Enqueue::Failed(e)),
    };
    let head_is_ours = reply.succeeded();
    if !head_is_ours && !wait {
        return Ok(None);
    }
    attachment.confirm();
    Ok(Some(Entry {
        key: request.key,
        queue,
        revision: reply.header().map(|h| h.revision()).unwrap_or_default(),
        ttl: request.ttl,
        head_is_ours,
        attachment,
    }))
}

/// The head of `queue` (the holder's key), if any: its create revision, value and lease.
pub(super) async fn head(
    client: &Client,
    cx: &Context,
    key: &str,
    queue: &str,
) -> Result<Option<(i64, String, i64)>> {
    let first = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let mut kv = client.kv_client();
    let reply = cx
        .call("etcd", key, Duration::MAX, kv.get(queue, Some(first)))
        .await?;
    Ok(reply.kvs().first().map(|kv| {
        let value = String::from_utf8_lossy(kv.value()).into_owned();
        (kv.create_revision(), value, kv.lease())
    }))
}

/// Deletes an acquisition's key, whatever it holds, for the background: the undo of an
/// attempt whose outcome is unknown. Retried for a TTL; if that fails, the session's next
/// key check deletes the orphan (session.rs, invariant 4).
pub(super) fn delete(
    client: &Client,
    cx: &Context,
    request: &Request<'_>,
    landed: &Landed,
) -> impl Future<Output = ()> + Send + 'static {
    let (kv, cx) = (client.kv_client(), cx.clone());
    let (key, own_key, ttl) = (request.key.to_owned(), own_key(request), request.ttl);
    let expiry = tokio::time::Instant::now() + ttl;
    let mut puts = landed.0.subscribe();
    async move {
        // Every put of this attempt has its answer (or its task is gone): none can land
        // after the delete.
        while puts.changed().await.is_ok() {}
        let delete = || {
            let (mut kv, own_key) = (kv.clone(), own_key.clone());
            let (cx, key) = (&cx, &key);
            async move { cx.call("etcd", key, ttl, kv.delete(own_key, None)).await }
        };
        cx.until_confirmed("etcd", &key, expiry, delete).await;
    }
}

/// Waits until every key created before ours is gone, or ours is.
///
/// No key can join the queue ahead of ours (a new key has a higher create revision), so
/// when the last read saw a single key ahead and the watch reports its deletion, the lock is
/// ours without another read: the handoff costs the release's write and one watch event.
pub(super) async fn wait_for_turn(client: &Client, cx: &Context, entry: &Entry<'_>) -> Result<()> {
    let mut watching: Option<(Vec<u8>, WatchStream)> = None;
    loop {
        let Ahead::Key(predecessor, ahead) = predecessor(client, cx, entry).await? else {
            return Ok(());
        };
        match &mut watching {
            Some((watched, stream)) if *watched == predecessor => {
                let deleted = tokio::select! {
                    event = stream.message() => event,
                    _ = entry.attachment.gone() => {
                        tracing::warn!(component = "dlock", backend = "etcd", key = %entry.key,
                            reason = %entry.attachment.loss(), "a waiter's own key is gone");
                        return Err(Error::lost(entry.key));
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
                            if ahead == 1 {
                                return Ok(());
                            }
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
                let mut watch_client = client.watch_client();
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

/// What is ahead of our key in the queue.
enum Ahead {
    /// Nothing: the lock is ours.
    Nothing,
    /// The key just before ours, and how many keys are ahead in all.
    Key(Vec<u8>, i64),
}

/// In one read: fails if our own key is gone; otherwise what is ahead of it.
async fn predecessor(client: &Client, cx: &Context, entry: &Entry<'_>) -> Result<Ahead> {
    let own_key = entry.attachment.own_key.as_bytes();
    let read = Txn::new().and_then([
        TxnOp::get(own_key, None),
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
    let mut kv = client.kv_client();
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
            kv.create_revision() == entry.revision
                && kv.lease() == entry.attachment.session.lease_id
        })
    });
    if !own_exists {
        tracing::warn!(component = "dlock", backend = "etcd", key = %entry.key,
            "the waiter's own key or lease disappeared while waiting");
        return Err(Error::lost(entry.key));
    }
    // The range's count is of every key ahead, whatever the limit.
    Ok(
        match gets
            .get(1)
            .and_then(|g| Some((g.kvs().first()?, g.count())))
        {
            Some((kv, count)) => Ahead::Key(kv.key().to_vec(), count),
            None => Ahead::Nothing,
        },
    )
}
