//! Sessions: one lease per locker and TTL, kept alive by one task over one keep-alive stream.
//! Every key the locker queues or holds with that TTL is attached to it.
//!
//! Invariants:
//! 1. A session's `confirmed` is the send time of the last keep-alive the server answered
//!    with TTL > 0: every attached key lives at least until `confirmed + ttl`.
//! 2. A session ends exactly once ([`Session::end`]), when its lease is proven gone (a
//!    keep-alive answered TTL 0, a put found no lease) or could not be confirmed before the
//!    safety deadline; ending fires every attachment. An ended session is never handed out
//!    again: the next acquisition grants a new lease.
//! 3. Ownership of attached keys is checked once per renewal for the whole session (the
//!    lease's key list, `LeaseTimeToLive` with keys), not once per key; a key missing from it
//!    is confirmed gone with a read of that key before its attachment fires. The check
//!    follows the keep-alive and never delays its confirmation: one that fails or hangs is
//!    tried again at the next renewal. A key is
//!    attached *before* its put is sent and confirmed once the put is known to be written,
//!    and only confirmed keys can be found missing.
//! 4. A key on the lease that nobody has attached is an orphan — a put still in flight when
//!    its acquire was dropped, applied after the undo's delete — and the same check deletes
//!    it. Without this, the session would keep it, and block its lock, for as long as the
//!    locker lives.
//! 5. The lease is revoked when the locker closes (once nothing is attached any more) or
//!    its backend is dropped; otherwise, if the process dies, it expires after one TTL.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions};
use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use super::super::{recover, safety_margin, Context, Loss, TAKEN};
use crate::error::{Error, Result};

/// The sessions of one backend (one locker), by TTL in whole seconds.
pub(super) struct Sessions {
    client: Client,
    live: Mutex<HashMap<u64, Arc<Session>>>,
    /// Held while a lease is granted, so that concurrent first acquisitions share one.
    granting: tokio::sync::Mutex<()>,
    /// Cancelled when the backend is dropped: every session revokes its lease and stops.
    dropped: CancellationToken,
}

impl Drop for Sessions {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

impl Sessions {
    pub fn new(client: Client) -> Self {
        Sessions {
            client,
            live: Mutex::default(),
            granting: tokio::sync::Mutex::new(()),
            dropped: CancellationToken::new(),
        }
    }

    /// The live session for `ttl`, granting its lease first if there is none (`limit`
    /// bounds that call).
    pub async fn get(
        &self,
        cx: &Context,
        key: &str,
        ttl: Duration,
        limit: Duration,
    ) -> Result<Arc<Session>> {
        if let Some(session) = self.live(ttl) {
            return Ok(session);
        }
        let _granting = self.granting.lock().await;
        if let Some(session) = self.live(ttl) {
            return Ok(session);
        }
        let sent = Instant::now();
        let mut leases = self.client.lease_client();
        let grant = leases.grant(ttl.as_secs() as i64, None);
        let lease_id = cx.call("etcd", key, limit, grant).await?.id();
        let session = Arc::new(Session::new(lease_id, ttl, sent));
        cx.spawn(keep_alive(
            self.client.clone(),
            cx.clone(),
            session.clone(),
            self.dropped.clone(),
        ));
        recover(self.live.lock()).insert(ttl.as_secs(), session.clone());
        tracing::debug!(
            component = "dlock",
            backend = "etcd",
            lease_id,
            ?ttl,
            "session started"
        );
        Ok(session)
    }

    fn live(&self, ttl: Duration) -> Option<Arc<Session>> {
        recover(self.live.lock())
            .get(&ttl.as_secs())
            .filter(|session| !session.ended.is_cancelled())
            .cloned()
    }
}

/// One lease and what is attached to it.
pub(super) struct Session {
    pub lease_id: i64,
    ttl: Duration,
    /// Invariant 1.
    confirmed: watch::Sender<Instant>,
    /// Invariant 2: cancelled once, when the session ends; attachments are its children.
    ended: CancellationToken,
    why_ended: OnceLock<Loss>,
    attached: Mutex<Attached>,
    /// Signalled when the last attachment goes.
    emptied: Notify,
}

#[derive(Default)]
struct Attached {
    /// Own key → (generation at which its put was confirmed, or [`UNCONFIRMED`]; fired when
    /// the key is gone).
    keys: HashMap<Arc<str>, (u64, CancellationToken)>,
    generation: u64,
    /// Key names in use ([`Name`]): an acquisition's, or a delete's that may still land.
    reserved: HashSet<Arc<str>>,
    /// Names never handed out again: a delete of theirs went unanswered and may land late.
    retired: HashSet<Arc<str>>,
}

/// The generation of a key whose put is not yet known to be written (invariant 3).
const UNCONFIRMED: u64 = u64::MAX;

impl Session {
    fn new(lease_id: i64, ttl: Duration, confirmed: Instant) -> Self {
        Session {
            lease_id,
            ttl,
            confirmed: watch::Sender::new(confirmed),
            ended: CancellationToken::new(),
            why_ended: OnceLock::new(),
            attached: Mutex::default(),
            emptied: Notify::new(),
        }
    }

    /// Invariant 1: the send time of the last confirmed keep-alive.
    pub fn confirmed(&self) -> Instant {
        *self.confirmed.borrow()
    }

    /// Ends the session (invariant 2); the first reason given is kept.
    pub fn end(&self, why: Loss) {
        let attached = recover(self.attached.lock()).keys.len();
        if self.why_ended.set(why.clone()).is_ok() && attached > 0 {
            tracing::warn!(component = "dlock", backend = "etcd", lease_id = self.lease_id,
                attached, reason = %why,
                "session lease lost: every lock and waiter attached to it is lost");
        }
        self.ended.cancel();
    }

    /// A key name of this session in `queue` for one of `permits` holders, reserved until
    /// the returned value is dropped: `<queue><lease>.<n>` (a semaphore's:
    /// `<queue>~<N>~<lease>.<n>`) with the smallest `n` free. Names are reused from one
    /// acquisition to the next: etcd keeps each deleted key in its index until the history
    /// is compacted, and the put's compare walks the queue's whole range, tombstones
    /// included, so a fresh name per acquisition made every acquire slower than the last.
    pub fn reserve(self: &Arc<Self>, queue: &str, permits: u32) -> Arc<Name> {
        let mut attached = recover(self.attached.lock());
        let lease_id = self.lease_id;
        for n in 0u64.. {
            let key: Arc<str> = match permits {
                1 => format!("{queue}{lease_id:x}.{n}"),
                permits => format!("{queue}~{permits}~{lease_id:x}.{n}"),
            }
            .into();
            if !attached.reserved.contains(&key) && !attached.retired.contains(&key) {
                attached.reserved.insert(key.clone());
                return Arc::new(Name {
                    session: self.clone(),
                    key,
                });
            }
        }
        unreachable!("u64 names run out")
    }

    /// Attaches `name`, about to be put with this session's lease: from now on the key is
    /// not an orphan; once [`Attachment::confirm`]ed, it can be found missing.
    pub fn attach(self: &Arc<Self>, name: Arc<Name>) -> Attachment {
        let gone = self.ended.child_token();
        let mut attached = recover(self.attached.lock());
        attached
            .keys
            .insert(name.key.clone(), (UNCONFIRMED, gone.clone()));
        Attachment {
            session: self.clone(),
            name,
            gone,
        }
    }

    /// Resolves once nothing is attached.
    async fn emptied(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if recover(self.attached.lock()).keys.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// Starts a key check: the keys attached so far must appear in the lease's key list.
    fn next_generation(&self) -> u64 {
        let mut attached = recover(self.attached.lock());
        attached.generation += 1;
        attached.generation
    }

    /// Listed keys that nobody has attached (invariant 4), each reserved for its delete: no
    /// acquisition puts the name again while that delete may still land.
    fn orphans(self: &Arc<Self>, listed: &HashSet<&[u8]>) -> Vec<Arc<Name>> {
        let mut attached = recover(self.attached.lock());
        let mut orphans = Vec::new();
        for key in listed {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            // Attached keys are reserved too; a reserved one without an attachment has a
            // delete of its own in flight (an undo).
            if attached.reserved.contains(key) {
                continue;
            }
            let key: Arc<str> = key.into();
            attached.reserved.insert(key.clone());
            orphans.push(Arc::new(Name {
                session: self.clone(),
                key,
            }));
        }
        orphans
    }

    /// Attached keys of an earlier generation than `generation` that `listed` lacks.
    fn missing(
        &self,
        generation: u64,
        listed: &HashSet<&[u8]>,
    ) -> Vec<(Arc<str>, CancellationToken)> {
        recover(self.attached.lock())
            .keys
            .iter()
            .filter(|(key, (attached_at, _))| {
                *attached_at < generation && !listed.contains(key.as_bytes())
            })
            .map(|(key, (_, gone))| (key.clone(), gone.clone()))
            .collect()
    }
}

/// A key name of one session, reserved while anything may still put or delete it (an
/// acquisition, its undo, a release or an orphan's delete): nobody else is handed it
/// meanwhile, so a late delete of one acquisition's key can never delete another's.
pub(super) struct Name {
    session: Arc<Session>,
    pub key: Arc<str>,
}

impl Name {
    /// A delete of this name went unanswered and may still land: the session never hands the
    /// name out again (its key, if still there, is an orphan for the key check to delete).
    pub fn retire(&self) {
        recover(self.session.attached.lock())
            .retired
            .insert(self.key.clone());
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        recover(self.session.attached.lock())
            .reserved
            .remove(&self.key);
    }
}

/// A key attached to a session: its holder or waiter learns from `gone` that the key is no
/// longer there (or that the whole session ended). Dropping it detaches the key.
pub(super) struct Attachment {
    pub session: Arc<Session>,
    /// The key's name, reserved while attached (and after, while a delete may land).
    pub name: Arc<Name>,
    gone: CancellationToken,
}

impl Attachment {
    /// The key's put is written: from the next key check on, its absence is a loss.
    pub fn confirm(&self) {
        let mut attached = recover(self.session.attached.lock());
        let generation = attached.generation;
        if let Some(entry) = attached.keys.get_mut(&self.name.key) {
            entry.0 = generation;
        }
    }

    /// Resolves when the key is gone.
    pub async fn gone(&self) {
        self.gone.cancelled().await
    }

    /// Whether the key is gone.
    pub fn is_gone(&self) -> bool {
        self.gone.is_cancelled()
    }

    /// Cancelled when the key is gone.
    pub fn gone_token(&self) -> CancellationToken {
        self.gone.clone()
    }

    /// Why the key is gone: its session ended, or the key alone was deleted.
    pub fn loss(&self) -> Loss {
        self.session
            .why_ended
            .get()
            .cloned()
            .unwrap_or(Loss::NotHeld(TAKEN))
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut attached = recover(self.session.attached.lock());
        attached.keys.remove(&self.name.key);
        if attached.keys.is_empty() {
            self.session.emptied.notify_waiters();
        }
    }
}

/// The session's task: renews every TTL/3 and checks the attached keys (invariants 1–3),
/// retries errors every TTL/30 (an unanswered renewal at once) until the safety deadline, and revokes the lease at the end
/// (invariant 4).
async fn keep_alive(
    client: Client,
    cx: Context,
    session: Arc<Session>,
    dropped: CancellationToken,
) {
    let ttl = session.ttl;
    let (period, retry) = (ttl / 3, (ttl / 30).max(Duration::from_millis(20)));
    // One renewal may wait this long before it is abandoned and sent again on a new stream:
    // a request to a member that just died can hang until HTTP/2 notices, and the channel
    // sends the next one to another member. Several tries fit before the safety deadline.
    let attempt_bound = cx.bound((ttl / 6).max(Duration::from_millis(250)));
    let shutdown = async {
        tokio::select! {
            _ = dropped.cancelled() => {}
            _ = async { cx.closing().cancelled().await; session.emptied().await } => {}
        }
    };
    tokio::pin!(shutdown);
    let mut renewer = Renewer {
        client: &client,
        cx: &cx,
        session: &session,
        stream: None,
    };
    let mut next = session.confirmed() + period;
    let mut last_error = None;
    loop {
        let deadline = session.confirmed() + ttl - safety_margin(ttl);
        tokio::select! {
            biased;
            _ = session.ended.cancelled() => return,
            _ = &mut shutdown => {
                session.end(Loss::NotHeld("the locker was closed"));
                let mut leases = client.lease_client();
                let revoke = leases.revoke(session.lease_id);
                if let Err(e) = cx.call("etcd", "", ttl, revoke).await {
                    tracing::debug!(component = "dlock", backend = "etcd", lease_id = session.lease_id,
                        error = %e, "revoking the session lease failed; it expires after its TTL");
                }
                return;
            }
            _ = sleep_until(next.min(deadline)) => {}
        }
        let sent = Instant::now();
        if sent >= deadline {
            return session.end(Loss::Unconfirmed { last_error });
        }
        match timeout_at(deadline.min(sent + attempt_bound), renewer.keep_alive()).await {
            Ok(Ok(true)) => {
                session.confirmed.send_replace(sent);
                next = sent + period;
                last_error = None;
                // The lease is renewed whatever the key check says; a check that fails or
                // hangs is tried again at the next renewal.
                match timeout(attempt_bound, renewer.check_keys()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(component = "dlock", backend = "etcd",
                        lease_id = session.lease_id, error = %e, "key check failed; retried at the next renewal"),
                    Err(_) => tracing::debug!(
                        component = "dlock",
                        backend = "etcd",
                        lease_id = session.lease_id,
                        "key check unanswered; retried at the next renewal"
                    ),
                }
            }
            Ok(Ok(false)) => {
                return session.end(Loss::NotHeld("the session lease expired or was revoked"))
            }
            Ok(Err(e)) => {
                tracing::warn!(component = "dlock", backend = "etcd", lease_id = session.lease_id,
                    error = %e, "session renewal failed; retrying until its locks can no longer be proven held");
                last_error = Some(e.to_string());
                renewer.stream = None;
                next = sent + retry;
            }
            Err(_) => {
                tracing::warn!(
                    component = "dlock",
                    backend = "etcd",
                    lease_id = session.lease_id,
                    "session renewal unanswered; sending it again on a new stream"
                );
                last_error = Some(format!("no answer within {attempt_bound:?}"));
                renewer.stream = None;
                next = Instant::now();
            }
        }
    }
}

/// Whether etcd answered that the lease does not exist (a put on it, a keep-alive of it).
pub(super) fn lease_not_found(e: &Error) -> bool {
    e.to_string().contains("lease not found")
}

/// How many fresh keep-alive streams a renewal opens at once when it has none: one per
/// member of a 3-member cluster. Two were not enough: a CI run saw two renewals in a row,
/// each on two fresh streams, all sent to the one member whose endpoint hung
/// (`etcd::renewals_reach_a_surviving_member_when_one_endpoint_hangs`).
const FRESH_STREAMS: usize = 3;

/// One renewal of a session: a keep-alive (`keep_alive`), then the key check (`check_keys`).
struct Renewer<'a> {
    client: &'a Client,
    cx: &'a Context,
    session: &'a Arc<Session>,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl Renewer<'_> {
    /// One keep-alive. `Ok(true)`: renewed; `Ok(false)`: the lease is gone; `Err`: unknown.
    ///
    /// On the open stream; with none open (the first renewal, or the last one failed or
    /// went unanswered), on [`FRESH_STREAMS`] fresh streams at once, keeping the first that
    /// answers. The client's channel sends each new stream to a member it picks (two at
    /// random, the less loaded of them) and cannot tell a member that hangs from one that
    /// answers; a hung member whose connection was just replaced has nothing in flight, so
    /// it is the less loaded one and a lone stream lands on it again and again. Streams
    /// opened together spread: each one in flight loads the member it went to.
    async fn keep_alive(&mut self) -> Result<bool> {
        let lease_id = self.session.lease_id;
        let failed = |e: etcd_client::Error| Error::backend("etcd", "", e);
        let reply = match self.stream.as_mut() {
            Some((keeper, replies)) => {
                let sent = async {
                    keeper.keep_alive().await?;
                    replies.message().await
                };
                match sent.await.map_err(failed) {
                    Ok(Some(reply)) => Ok(reply.ttl() > 0),
                    Ok(None) => Err(Error::backend("etcd", "", "keep-alive stream closed")),
                    Err(e) => Err(e),
                }
            }
            None => {
                // Opening a stream sends a keep-alive and reads its answer (TTL 0: an error).
                let open = || {
                    let mut leases = self.client.lease_client();
                    async move { leases.keep_alive(lease_id).await.map_err(failed) }
                };
                let opens = (0..FRESH_STREAMS).map(|_| Box::pin(open()));
                let opened = futures_util::future::select_ok(opens).await;
                opened.map(|(stream, _others)| {
                    self.stream = Some(stream);
                    true
                })
            }
        };
        match reply {
            Err(e) if lease_not_found(&e) => Ok(false),
            other => other,
        }
    }

    /// Invariant 3: fires the attachment of every key the lease no longer carries.
    async fn check_keys(&self) -> Result<()> {
        let generation = self.session.next_generation();
        let mut leases = self.client.lease_client();
        let list = leases.time_to_live(
            self.session.lease_id,
            Some(LeaseTimeToLiveOptions::new().with_keys()),
        );
        let reply = self.cx.call("etcd", "", self.session.ttl, list).await?;
        let listed: HashSet<&[u8]> = reply.keys().iter().map(Vec::as_slice).collect();
        for orphan in self.session.orphans(&listed) {
            let mut kv = self.client.kv_client();
            let key = &orphan.key;
            let deleted = self
                .cx
                .call(
                    "etcd",
                    key,
                    self.session.ttl,
                    kv.delete(key.as_bytes(), None),
                )
                .await;
            if deleted.is_err() {
                orphan.retire();
            }
            deleted?;
            tracing::debug!(component = "dlock", backend = "etcd", key = %key,
                "deleted a queue key whose acquire was dropped while its put was in flight");
        }
        for (own_key, gone) in self.session.missing(generation, &listed) {
            let mut kv = self.client.kv_client();
            let read = kv.get(own_key.as_bytes(), None);
            let reply = self
                .cx
                .call("etcd", &own_key, self.session.ttl, read)
                .await?;
            let still_attached = reply
                .kvs()
                .first()
                .is_some_and(|kv| kv.lease() == self.session.lease_id);
            if !still_attached {
                gone.cancel();
            }
        }
        Ok(())
    }
}
