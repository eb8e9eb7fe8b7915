//! A lock's or semaphore's queue: putting an acquisition's key in it, waiting for the keys
//! before it to go, and taking it out.
//!
//! Key names say how many holders their queue admits: `<queue><lease>.<n>` for a lock (1),
//! `<queue>~<N>~<lease>.<n>` for a semaphore of N (`Session::reserve`). A lease id is hex
//! (`[0-9a-f]`), so a lock's key never starts with `~` after the queue, and each N has a key
//! range of its own: a range read or two around it find any key that names another N.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, GetResponse, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchFilterType, WatchOptions,
    WatchResponse, WatchStream,
};

use super::super::recover;
use super::super::{Context, Request};
use super::session::{lease_not_found, Attachment, Name, Session};
use crate::error::{Error, Result};

/// The puts of one attempt still in flight (each holds a receiver until it has its answer),
/// and the key name they put, once reserved: what the attempt's undo deletes.
#[derive(Default)]
pub(super) struct Landed {
    puts: Arc<tokio::sync::watch::Sender<()>>,
    name: std::sync::Mutex<Option<Arc<Name>>>,
}

/// One acquisition's key in its queue.
pub(super) struct Entry<'a> {
    pub key: &'a str,
    pub queue: &'a str,
    /// The key's create revision: its place in the queue, and the fencing token.
    pub revision: i64,
    pub ttl: Duration,
    /// [`Request::permits`]: our key holds while fewer keys than this are ahead of it.
    pub permits: u32,
    /// How many keys were ahead of ours when it was put, for a semaphore's waiter (exact
    /// as of `revision`).
    pub ahead: i64,
    /// Whether the key holds already: fewer than `permits` keys were ahead of it.
    pub granted: bool,
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

/// The number of holders a key of `queue` names (see the module docs); 0 for a key that no
/// acquisition of dlock wrote, which then agrees with no one.
pub(super) fn permits_of(queue: &str, key: &[u8]) -> u32 {
    let rest = key.strip_prefix(queue.as_bytes()).unwrap_or(key);
    let Some(rest) = rest.strip_prefix(b"~") else {
        return 1;
    };
    let digits = rest.split(|b| *b == b'~').next().unwrap_or_default();
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .filter(|n| *n > 1)
        .unwrap_or(0)
}

/// The first key after every key that starts with `prefix` (etcd's prefix range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The key ranges of `queue` whose keys name another number than `permits`: around the
/// range of `permits` (a lock's: `[queue, queue~)`; N's: the prefix `queue~N~`).
fn other_ranges(queue: &str, permits: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let end = prefix_end(queue.as_bytes());
    if permits == 1 {
        return vec![(format!("{queue}~").into_bytes(), end)];
    }
    let own = format!("{queue}~{permits}~").into_bytes();
    vec![
        (queue.as_bytes().to_vec(), own.clone()),
        (prefix_end(&own), end),
    ]
}

/// Reads, in a txn that found the queue not empty, the earliest key of another number and
/// (for a semaphore: a lock's queue is full with one) how many keys the queue has. Read
/// with [`Census::read`].
fn census(queue: &str, permits: u32) -> Vec<TxnOp> {
    let mut ops = Vec::new();
    for (start, end) in other_ranges(queue, permits) {
        let earliest = GetOptions::new()
            .with_range(end)
            .with_keys_only()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        ops.push(TxnOp::get(start, Some(earliest)));
    }
    if permits > 1 {
        let count = GetOptions::new().with_prefix().with_count_only();
        ops.push(TxnOp::get(queue, Some(count)));
    }
    ops
}

/// What [`census`] saw.
struct Census {
    /// Keys in the queue (a lock's: at least 1, uncounted).
    total: i64,
    /// The number named by the earliest key that names another than ours, if any.
    other: Option<u32>,
}

impl Census {
    /// The census: the last gets of `reply`; fails if they are not there.
    fn read(request: &Request<'_>, reply: &TxnResponse) -> Result<Census> {
        let (queue, permits) = (request.storage_key, request.permits);
        let gets = gets(reply);
        let ranges = other_ranges(queue, permits).len();
        let ops = ranges + usize::from(permits > 1);
        let gets = &gets[gets.len().saturating_sub(ops)..];
        let other = gets
            .iter()
            .take(ranges)
            .filter_map(|g| g.kvs().first())
            .min_by_key(|kv| kv.create_revision())
            .map(|kv| permits_of(queue, kv.key()));
        let total = match permits {
            1 => Some(1),
            _ => gets.get(ranges).map(|g| g.count()),
        };
        let total = total.ok_or_else(|| {
            Error::backend("etcd", request.key, "a txn answered without its reads")
        })?;
        Ok(Census { total, other })
    }
}

/// The get responses of a txn, in order.
fn gets(reply: &TxnResponse) -> Vec<GetResponse> {
    reply
        .op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        })
        .collect()
}

/// Puts our key in the queue.
///
/// When `wait`: always (in one write when the queue is empty). Otherwise only while fewer
/// than `permits` keys are in it: `Ok(None)` says it is full, and nothing is written. etcd's
/// compares cannot count, so a semaphore's try reads the queue (in the txn that found it not
/// empty) and puts on condition that no key was added since that read; a key deleted
/// meanwhile only leaves more room. A lock's try never needs the second txn.
///
/// A key that would disagree on the number of holders with a key in the queue fails with
/// [`Error::PermitsMismatch`]: not put (try), or put and to be deleted by the caller (wait).
/// A lock's waiting put reads nothing more (its wait sees its predecessor's number).
pub(super) async fn enqueue<'a>(
    client: &Client,
    cx: &Context,
    request: &'a Request<'a>,
    session: Arc<Session>,
    wait: bool,
    landed: &Landed,
) -> std::result::Result<Option<Entry<'a>>, Enqueue> {
    let (queue, permits) = (request.storage_key, request.permits);
    // Reserved before the put is sent, and kept by the undo if there is one: no other
    // acquisition of this session puts the name while this one's key may still land.
    let name = session.reserve(queue, permits);
    *recover(landed.name.lock()) = Some(name.clone());
    let put = TxnOp::put(
        name.key.as_bytes(),
        request.value.unwrap_or_default(),
        Some(PutOptions::new().with_lease(session.lease_id)),
    );
    // Attached before the put is sent (session invariant 4): if this future is dropped
    // with the put in flight, the key the put may still write is an orphan to remove.
    let attachment = session.attach(name);
    let deadline = tokio::time::Instant::now() + request.useful_for();
    // The revision of a census that found room (0: none yet, the queue must be empty).
    let mut room_at = 0;
    loop {
        let room = match room_at {
            0 => Compare::create_revision(queue, CompareOp::Equal, 0).with_prefix(),
            // No key in the queue was written after the census: none was added.
            at => Compare::mod_revision(queue, CompareOp::Less, at + 1).with_prefix(),
        };
        let otherwise = match (wait, permits) {
            (true, 1) => vec![put.clone()],
            (true, _) => [vec![put.clone()], census(queue, permits)].concat(),
            (false, _) => census(queue, permits),
        };
        let txn = Txn::new()
            .when([room])
            .and_then([put.clone()])
            .or_else(otherwise);
        let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
        let reply = match put_txn(client, cx, request.key, limit, txn, landed).await {
            Ok(reply) => reply,
            Err(e) if lease_not_found(&e) => return Err(Enqueue::LeaseGone(session)),
            Err(e) => return Err(Enqueue::Failed(e)),
        };
        let revision = reply.header().map(|h| h.revision()).unwrap_or_default();
        let (ahead, granted) = if reply.succeeded() {
            // Either the queue was empty, or it had room and nobody joined since.
            (0, true)
        } else if wait && permits == 1 {
            (1, false)
        } else {
            let census = Census::read(request, &reply).map_err(Enqueue::Failed)?;
            if let Some(held) = census.other {
                return Err(Enqueue::Failed(Error::permits_mismatch(
                    request.key,
                    permits,
                    held,
                )));
            }
            if wait {
                // Our key is the newest: every other key is ahead of it.
                let ahead = census.total - 1;
                (ahead, ahead < i64::from(permits))
            } else if census.total >= i64::from(permits) {
                return Ok(None);
            } else {
                room_at = revision;
                continue;
            }
        };
        attachment.confirm();
        return Ok(Some(Entry {
            key: request.key,
            queue,
            revision,
            ttl: request.ttl,
            permits,
            ahead,
            granted,
            attachment,
        }));
    }
}

/// Sends a txn that may put a key: it runs to its answer even if this future is dropped, and
/// `landed` knows until then. The undo (`delete`) waits for it, since etcd may apply a
/// delete sent after a put before that put, which would then leave its key behind.
async fn put_txn(
    client: &Client,
    cx: &Context,
    key: &str,
    limit: Duration,
    txn: Txn,
    landed: &Landed,
) -> Result<TxnResponse> {
    let mut kv = client.kv_client();
    let in_flight = landed.puts.subscribe();
    let put = ToItsAnswer(Some(Box::pin(async move {
        let reply = kv.txn(txn).await;
        drop(in_flight);
        reply
    })));
    // etcd's own error stays the source, so that `Context::call` can read a refused right.
    let put = async { put.await.map_err(crate::error::BoxError::from) };
    cx.call("etcd", key, limit, put).await
}

/// A put polled in the caller's task, not on a task of its own (a spawn and a wake-up from
/// another worker per acquire): only if it is dropped before its answer (a timeout, a
/// dropped acquire) does the rest run on a task of its own, to its answer.
struct ToItsAnswer<T: Send + 'static>(
    Option<std::pin::Pin<Box<dyn Future<Output = T> + Send + 'static>>>,
);

impl<T: Send + 'static> Future for ToItsAnswer<T> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        let put = self.0.as_mut().expect("polled after its answer");
        let answer = std::task::ready!(put.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(answer)
    }
}

impl<T: Send + 'static> Drop for ToItsAnswer<T> {
    fn drop(&mut self) {
        if let (Some(put), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(put);
        }
    }
}

/// One key at the front of a queue.
pub(super) struct Front {
    /// Its create revision: the fencing token.
    pub revision: i64,
    /// The number of holders it names.
    pub permits: u32,
    pub value: String,
    pub lease: i64,
}

/// The first `limit` keys of `queue`, in queue order.
pub(super) async fn front(
    client: &Client,
    cx: &Context,
    key: &str,
    queue: &str,
    limit: u32,
) -> Result<Vec<Front>> {
    let first = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(i64::from(limit));
    let mut kv = client.kv_client();
    let reply = cx
        .call("etcd", key, Duration::MAX, kv.get(queue, Some(first)))
        .await?;
    Ok(reply
        .kvs()
        .iter()
        .map(|kv| Front {
            revision: kv.create_revision(),
            permits: permits_of(queue, kv.key()),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            lease: kv.lease(),
        })
        .collect())
}

/// Deletes an acquisition's key, whatever it holds, for the background: the undo of an
/// attempt whose outcome is unknown. Retried for a TTL; if that fails, the name is retired
/// and the session's next key check deletes the orphan (session.rs, invariant 4). The name
/// stays reserved until then. Nothing to do if no name was reserved: no put was sent.
pub(super) fn delete(
    client: &Client,
    cx: &Context,
    request: &Request<'_>,
    landed: &Landed,
) -> impl Future<Output = ()> + Send + 'static {
    let (kv, cx) = (client.kv_client(), cx.clone());
    let (key, ttl) = (request.key.to_owned(), request.ttl);
    let expiry = tokio::time::Instant::now() + ttl;
    let puts = landed.puts.clone();
    let name = recover(landed.name.lock()).clone();
    async move {
        let Some(name) = name else {
            return;
        };
        // Every put of this attempt has its answer (or its task is gone): none can land
        // after the delete.
        puts.closed().await;
        let delete = || {
            let (mut kv, own_key) = (kv.clone(), name.key.clone());
            let (cx, key) = (&cx, &key);
            async move {
                cx.call("etcd", key, ttl, kv.delete(own_key.as_bytes(), None))
                    .await
            }
        };
        if cx
            .until_confirmed("etcd", &key, expiry, delete)
            .await
            .is_none()
        {
            name.retire();
        }
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
        let Ahead::Key(predecessor, alone) = predecessor(client, cx, entry).await? else {
            return Ok(());
        };
        // A lock queued behind a semaphore's key: a refused request, not a wait.
        match permits_of(entry.queue, &predecessor) {
            1 => {}
            held => return Err(Error::permits_mismatch(entry.key, 1, held)),
        }
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
                            // The only key ahead is gone: the lock is ours.
                            if alone {
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

/// A semaphore's waiter: waits until fewer than `permits` keys are ahead of ours, or ours
/// is gone.
///
/// No key can join the queue ahead of ours, so the count only goes down, and the deletions
/// tell by how much: one watch on the queue's deletions from now, with each deleted key's
/// create revision (its previous version), and one count of the keys ahead (names only)
/// once the watch exists. A release costs every waiter one event and no read; the count is
/// read again only when it cannot be kept (a watch that breaks). Our own
/// key's deletion comes in the same stream, in revision order: a waiter whose key went
/// first is never granted.
///
/// The keys ahead all name our number: they were in the queue when ours was put, and that
/// put found none that named another (`enqueue`).
pub(super) async fn wait_for_permit(
    client: &Client,
    cx: &Context,
    entry: &Entry<'_>,
) -> Result<()> {
    let permits = i64::from(entry.permits);
    // Exact as of revision `seen`.
    let mut count = Count {
        ahead: entry.ahead,
        seen: entry.revision,
    };
    loop {
        if count.ahead < permits {
            return Ok(());
        }
        // From now, not from `count.seen`: etcd serves a watch that starts at a past
        // revision from its unsynced loop, which catches up every 100 ms, and every
        // handoff under contention waited for it (16 tasks on a semaphore of 5: 172
        // pairs/s). The keys ahead are counted again once the watch exists: deletions up
        // to that count's revision are in it, later ones come through the watch.
        let deletions = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_filters([WatchFilterType::NoPut]);
        let mut watch_client = client.watch_client();
        let watch = watch_client.watch(entry.queue, Some(deletions));
        let mut stream = cx.call("etcd", entry.key, entry.ttl, watch).await?;
        let mut message = cx
            .call("etcd", entry.key, entry.ttl, stream.message())
            .await
            .map(|reply| reply.filter(|r| r.created()));
        if matches!(message, Ok(Some(_))) {
            count = count_ahead(client, cx, entry).await?;
            if count.ahead < permits {
                return Ok(());
            }
        } else {
            // Refused or closed at once (a member going away): do not spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every message of the watch, its first included, until it breaks.
        while let Ok(Some(reply)) = message {
            // Cancelled (compacted past `seen`): count again.
            if reply.canceled() || !count.deletions(entry, &reply)? {
                break;
            }
            if count.ahead < permits {
                return Ok(());
            }
            message = tokio::select! {
                message = stream.message() => message.map_err(|e| Error::backend("etcd", entry.key, e)),
                _ = entry.attachment.gone() => {
                    tracing::warn!(component = "dlock", backend = "etcd", key = %entry.key,
                        reason = %entry.attachment.loss(), "a waiter's own key is gone");
                    return Err(Error::lost(entry.key));
                }
            };
        }
        tracing::debug!(component = "dlock", backend = "etcd", key = %entry.key,
            "a waiter's watch broke or lost track; counting the keys ahead again");
        count = count_ahead(client, cx, entry).await?;
    }
}

/// How many keys are ahead of a semaphore's waiter, exactly, as of revision `seen`.
struct Count {
    ahead: i64,
    seen: i64,
}

impl Count {
    /// Counts the deletions of keys ahead in one watch message. `Ok(false)`: one of them
    /// can no longer be placed (its previous version is compacted), the count is not
    /// exact any more. Fails when our own key is gone.
    fn deletions(&mut self, entry: &Entry<'_>, reply: &WatchResponse) -> Result<bool> {
        let own_key = entry.attachment.name.key.as_bytes();
        // One revision's events all come in one message.
        let mut last = self.seen;
        let mut exact = true;
        for event in reply.events() {
            let revision = event.kv().map(|kv| kv.mod_revision()).unwrap_or_default();
            if event.event_type() != EventType::Delete || revision <= self.seen {
                continue;
            }
            last = last.max(revision);
            match event.prev_kv() {
                Some(prev) if prev.key() == own_key => {
                    tracing::warn!(component = "dlock", backend = "etcd", key = %entry.key,
                        "the waiter's own key or lease disappeared while waiting");
                    return Err(Error::lost(entry.key));
                }
                Some(prev) if prev.create_revision() < entry.revision => self.ahead -= 1,
                Some(_) => {}
                None => exact = false,
            }
        }
        self.seen = last;
        Ok(exact)
    }
}

/// In one read: fails if our own key is gone; otherwise how many keys are ahead of it, and
/// the revision of that count.
async fn count_ahead(client: &Client, cx: &Context, entry: &Entry<'_>) -> Result<Count> {
    // The names of every key ahead: etcd's count ignores the create-revision bound.
    let names = GetOptions::new().with_prefix().with_keys_only();
    let (ahead, revision) = read_ahead(client, cx, entry, names).await?;
    Ok(Count {
        ahead: ahead.map_or(0, |g| g.kvs().len()) as i64,
        seen: revision,
    })
}

/// In one read: our own key, failing if it is gone, and the keys created before it that
/// `ahead` selects (its create-revision bound is set here), with the reply's revision.
async fn read_ahead(
    client: &Client,
    cx: &Context,
    entry: &Entry<'_>,
    ahead: GetOptions,
) -> Result<(Option<GetResponse>, i64)> {
    let own_key = entry.attachment.name.key.as_bytes();
    let ahead = ahead.with_max_create_revision(entry.revision - 1);
    let read = Txn::new().and_then([
        TxnOp::get(own_key, None),
        TxnOp::get(entry.queue, Some(ahead)),
    ]);
    let mut kv = client.kv_client();
    let reply = cx.call("etcd", entry.key, entry.ttl, kv.txn(read)).await?;
    let mut gets = gets(&reply).into_iter();
    if !own_exists(gets.next().as_ref(), entry) {
        tracing::warn!(component = "dlock", backend = "etcd", key = %entry.key,
            "the waiter's own key or lease disappeared while waiting");
        return Err(Error::lost(entry.key));
    }
    let revision = reply.header().map(|h| h.revision()).unwrap_or_default();
    Ok((gets.next(), revision))
}

/// Whether `get` (of our own key) found it, ours, on our session's lease.
fn own_exists(get: Option<&GetResponse>, entry: &Entry<'_>) -> bool {
    get.is_some_and(|g| {
        g.kvs().first().is_some_and(|kv| {
            kv.create_revision() == entry.revision
                && kv.lease() == entry.attachment.session.lease_id
        })
    })
}

/// What is ahead of our key in the queue.
enum Ahead {
    /// Nothing: the lock is ours.
    Nothing,
    /// The key just before ours, and whether it is the only key ahead.
    Key(Vec<u8>, bool),
}

/// In one read: fails if our own key is gone; otherwise what is ahead of it.
async fn predecessor(client: &Client, cx: &Context, entry: &Entry<'_>) -> Result<Ahead> {
    let last = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(1);
    let (ahead, _) = read_ahead(client, cx, entry, last).await?;
    // Not the range's count: etcd counts the whole prefix, ignoring the create-revision
    // bound. `more` says whether keys ahead were left out by the limit of one.
    Ok(
        match ahead
            .as_ref()
            .and_then(|g| Some((g.kvs().first()?, !g.more())))
        {
            Some((kv, alone)) => Ahead::Key(kv.key().to_vec(), alone),
            None => Ahead::Nothing,
        },
    )
}
