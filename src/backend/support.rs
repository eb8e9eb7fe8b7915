//! What every backend shares, written once: the locker's [`Context`] (tracked spawns, the
//! bounded call), [`UndoOnDrop`] for interrupted acquires, poisoned-lock recovery, and the
//! provided waiting loop of [`Backend`].
// The in-process backend alone needs none of the helpers for server calls.
#![cfg_attr(
    not(any(
        feature = "redis",
        feature = "etcd",
        feature = "postgres",
        feature = "unstable-backend"
    )),
    allow(dead_code)
)]

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LockResult, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::permission::refused_right;
use super::{Backend, Grant, Request};
use crate::error::{BoxError, Error, Result};

/// What the locker lends its backend: where background work runs (so that
/// [`Locker::close`](crate::Locker::close) waits for it), when the locker shuts down, and
/// how long one server call may take. Cheap to clone. Every [`Backend`] method receives it;
/// see the example there.
#[derive(Clone, Debug)]
pub struct Context {
    tasks: TaskTracker,
    closing: CancellationToken,
    call_timeout: Duration,
    unsettled: Arc<Unsettled>,
}

impl Context {
    pub(crate) fn new(call_timeout: Duration) -> Self {
        Context {
            tasks: TaskTracker::new(),
            closing: CancellationToken::new(),
            call_timeout,
            unsettled: Arc::default(),
        }
    }

    /// Runs `work` in the background, tracked by the locker: `close()` waits for it.
    /// Without a runtime (a drop after shutdown) nothing runs; use it only for work that the
    /// TTL also covers (clean-ups, revokes).
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tasks.spawn(work);
        }
    }

    /// How long a call may take when it is useless after `limit`: the shorter of `limit`
    /// and the locker's call timeout.
    pub fn bound(&self, limit: Duration) -> Duration {
        limit.min(self.call_timeout)
    }

    /// Runs one server call of backend `backend` for `key`, bounded by [`Context::bound`]
    /// of `limit`: its error, or a missing answer, becomes
    /// [`Error::Backend`](crate::Error::Backend), or
    /// [`Error::PermissionDenied`](crate::Error::PermissionDenied) when the server refused a
    /// right (a Redis ACL, an etcd role).
    pub async fn call<T, E: Into<BoxError>>(
        &self,
        backend: &'static str,
        key: &str,
        limit: Duration,
        call: impl Future<Output = std::result::Result<T, E>>,
    ) -> Result<T> {
        let limit = self.bound(limit);
        match timeout(limit, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(refused_right(Error::backend(backend, key, e))),
            Err(_) => Err(Error::backend(
                backend,
                key,
                format!("no answer within {limit:?}"),
            )),
        }
    }

    /// Arms `undo` of the attempt `request` until [`UndoOnDrop::disarm`]: if the returned
    /// value is dropped armed (the acquire future was dropped, or failed before the server's
    /// answer was read), the future `undo` makes runs in the background, tracked like
    /// [`Context::spawn`]. `undo` is called only then, so an attempt that succeeds clones
    /// nothing for it.
    ///
    /// Until that future ends, the locker's next attempts on the same key wait for it
    /// (bounded by the call timeout): a retry never finds the lock held by its own locker's
    /// interrupted attempt. So the undo should retry until the server confirms it or the
    /// attempt's key has expired anyway; [`Context::until_confirmed`] does that.
    pub fn undo_on_drop<'a, F, Fut>(
        &'a self,
        request: &Request<'a>,
        undo: F,
    ) -> UndoOnDrop<'a, F, Fut>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        UndoOnDrop {
            context: self,
            key: request.key,
            undo: Some(undo),
            _future: PhantomData,
        }
    }

    /// Runs `undo` in the background like [`Context::spawn`], counted as unsettled on the
    /// user's `key` until it ends (see [`Context::undo_on_drop`]).
    pub(crate) fn spawn_undo(&self, key: &str, undo: impl Future<Output = ()> + Send + 'static) {
        let registration = Unsettled::register(&self.unsettled, key);
        self.spawn(async move {
            undo.await;
            drop(registration);
        });
    }

    /// The locker's count of work in flight per key that a new attempt must wait for.
    pub(crate) fn settling(&self) -> Settling {
        Settling(self.unsettled.clone())
    }

    /// Waits until no undo or release of this locker on `key` is in flight, at most the
    /// call timeout (one that cannot reach the server leaves the key to its TTL).
    pub(crate) async fn settled(&self, key: &str) {
        // The common path: nothing in flight anywhere, no lock taken and no timer made.
        if self.unsettled.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let _ = timeout(self.call_timeout, self.unsettled.settled(key)).await;
    }

    /// Runs `attempt` (one server call that undoes or releases something) until the server
    /// answers it, retrying errors with a growing pause (10 ms doubling to 1 s), and gives up
    /// at `expiry`, when the server has forgotten what it would undo.
    pub async fn until_confirmed<T, Fut>(
        &self,
        backend: &'static str,
        key: &str,
        expiry: Instant,
        mut attempt: impl FnMut() -> Fut,
    ) -> Option<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let mut pause = Duration::from_millis(10);
        loop {
            match timeout_at(expiry, attempt()).await {
                Ok(Ok(done)) => return Some(done),
                Ok(Err(e)) if Instant::now() + pause < expiry => {
                    tracing::debug!(component = "dlock", backend, key = %key, error = %e,
                        "undoing an interrupted attempt failed; retrying");
                }
                _ => {
                    tracing::debug!(component = "dlock", backend, key = %key,
                        "an interrupted attempt could not be undone; its key expires with its TTL");
                    return None;
                }
            }
            if self.closing.is_cancelled() {
                return None; // `close()` waits for this task: one try is all it gets
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Cancelled when the locker closes.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Held by a lock call until it returns: `close()` waits for calls in flight too.
    pub(crate) fn in_flight(&self) -> TaskTrackerToken {
        self.tasks.token()
    }

    /// Cancels [`Context::closing`], then waits for everything tracked.
    pub(crate) async fn close(&self) {
        self.closing.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Undoes an acquire attempt whose outcome is unknown; see [`Context::undo_on_drop`].
#[must_use = "dropping it at once runs the undo"]
pub struct UndoOnDrop<'a, F, Fut>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    context: &'a Context,
    key: &'a str,
    undo: Option<F>,
    _future: PhantomData<fn() -> Fut>,
}

impl<F, Fut> UndoOnDrop<'_, F, Fut>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    /// The outcome is known: nothing to undo.
    pub fn disarm(mut self) {
        self.undo = None;
    }
}

impl<F, Fut> Drop for UndoOnDrop<'_, F, Fut>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn drop(&mut self) {
        if let Some(undo) = self.undo.take() {
            self.context.spawn_undo(self.key, undo());
        }
    }
}

/// Undos of interrupted attempts and releases of dropped guards in flight, by the user's key
/// (one locker, one prefix: it names one lock): a new attempt on a key waits for them, so
/// that it never finds its own locker's leftover holding the lock.
#[derive(Debug, Default)]
struct Unsettled {
    /// How many are in flight in all: every lock call reads it, and nearly always finds 0.
    count: AtomicUsize,
    in_flight: Mutex<HashMap<String, usize>>,
    /// Notified each time one ends.
    settled: Notify,
}

impl Unsettled {
    /// Counts one piece of work on `key` until the returned value is dropped.
    fn register(this: &Arc<Unsettled>, key: &str) -> Unsettling {
        *recover(this.in_flight.lock())
            .entry(key.to_owned())
            .or_default() += 1;
        this.count.fetch_add(1, Ordering::SeqCst);
        Unsettling {
            unsettled: this.clone(),
            key: key.to_owned(),
        }
    }

    async fn settled(&self, key: &str) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if !recover(self.in_flight.lock()).contains_key(key) {
                return;
            }
            settled.await;
        }
    }
}

/// One piece of unsettled work on a key, counted until dropped.
pub(crate) struct Unsettling {
    unsettled: Arc<Unsettled>,
    key: String,
}

impl Drop for Unsettling {
    fn drop(&mut self) {
        let mut in_flight = recover(self.unsettled.in_flight.lock());
        if let Some(count) = in_flight.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.key);
            }
        }
        self.unsettled.count.fetch_sub(1, Ordering::SeqCst);
        drop(in_flight);
        self.unsettled.settled.notify_waiters();
    }
}

/// A handle on a locker's unsettled work, small enough for every guard to keep one.
#[derive(Clone, Debug)]
pub(crate) struct Settling(Arc<Unsettled>);

impl Settling {
    /// Counts one piece of work on `key` as unsettled until the returned value is dropped:
    /// the release of a dropped guard.
    pub(crate) fn hold(&self, key: &str) -> Unsettling {
        Unsettled::register(&self.0, key)
    }
}

/// A poisoned mutex still holds consistent data here (every critical section is a few map
/// operations that cannot panic halfway), so a panic elsewhere must not spread.
pub(crate) fn recover<T>(locked: LockResult<T>) -> T {
    locked.unwrap_or_else(|e| e.into_inner())
}

/// How long before the server-side expiry a holder is told it lost the lock: a tenth of the
/// TTL covers clock-rate drift between client and server and gives the holder time to stop.
pub(crate) fn safety_margin(ttl: Duration) -> Duration {
    ttl / 10
}

/// [`Backend::acquire`]'s default: [`retry_until_acquired`] with the backend's attempts.
pub(crate) async fn poll_until_acquired<B: Backend + ?Sized>(
    backend: &B,
    cx: &Context,
    request: &Request<'_>,
    retry_interval: Duration,
) -> Result<Option<Grant<B::Held>>> {
    let wakeups = backend.wakeups();
    retry_until_acquired(wakeups, request, retry_interval, None, || {
        backend.try_acquire(cx, request)
    })
    .await
}

/// The acquisition a waiter offers to take the lock over as, from a holder of the same
/// store (`wake.rs`, [`Offer`](super::wake::Offer)).
pub(crate) struct TakeOver<'a> {
    pub token: &'a str,
    pub ttl: Duration,
    pub value: Option<&'a str>,
}

/// Runs `attempt` until it acquires. Between attempts it sleeps `retry_interval` ±20 %, or
/// less when `wakeups` announce a release of the request's storage key. The wake-up is registered
/// before each attempt, so a release that lands between a failed attempt and the sleep is
/// not missed. With `wakeups`, the tasks of the store that wait for the key take turns: only
/// the head of their line tries the server (see `wake.rs`); with `take_over` too, the head
/// offers to take the lock over from a holder of the same store, which then hands it over
/// instead of releasing it.
pub(crate) async fn retry_until_acquired<H, F, Fut>(
    wakeups: Option<&std::sync::Arc<super::Wakeups>>,
    request: &Request<'_>,
    retry_interval: Duration,
    take_over: Option<TakeOver<'_>>,
    mut attempt: F,
) -> Result<Option<Grant<H>>>
where
    H: Send + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<Grant<H>>>>,
{
    let mut waiter = wakeups.map(|w| w.wait_for(request.storage_key));
    // The offer goes in at once, in this waiter's place: a holder may hand the lock over
    // before this waiter heads the line.
    let mut handed = None;
    let mut held = false;
    if let Some(waiter) = &mut waiter {
        if let Some(offer) = &take_over {
            handed = Some(waiter.offer(offer.token, offer.ttl, offer.value));
        }
        let handing = handed_grant::<H>(&mut handed);
        tokio::select! {
            last_head_held = waiter.turn() => held = last_head_held,
            grant = handing => match grant {
                Some(grant) => {
                    waiter.acquired();
                    return Ok(Some(grant));
                }
                None => held = waiter.turn().await,
            },
        }
    }
    let no_wakeups = Notify::new();
    loop {
        let released = match &waiter {
            Some(waiter) => waiter.released(),
            None => no_wakeups.notified(),
        };
        tokio::pin!(released);
        released.as_mut().enable();
        if held {
            // The head before us holds the lock: its release (or the poll) comes first.
            held = false;
        } else {
            // Never an attempt while a hand-over to this waiter is under way: the offer is
            // taken back first, or, if a holder has it, its outcome awaited (`withdraw`).
            if let (Some(waiter), Some(_)) = (&waiter, &handed) {
                if waiter.withdraw() {
                    handed = None;
                } else if let Some(grant) = handed_grant::<H>(&mut handed).await {
                    waiter.acquired();
                    return Ok(Some(grant));
                }
            }
            if let Some(grant) = attempt().await? {
                // A semaphore may still have a permit for the next head.
                if let Some(waiter) = waiter.as_ref().filter(|_| request.permits == 1) {
                    waiter.acquired();
                }
                return Ok(Some(grant));
            }
        }
        // Until the next attempt, a holder of this store may hand the lock over.
        if let (Some(waiter), Some(offer), None) = (&waiter, &take_over, &handed) {
            handed = Some(waiter.offer(offer.token, offer.ttl, offer.value));
        }
        tokio::select! {
            _ = released => {}
            _ = sleep(jittered(retry_interval)) => {}
            grant = handed_grant::<H>(&mut handed) => {
                if let Some(grant) = grant {
                    if let Some(waiter) = &waiter {
                        waiter.acquired();
                    }
                    return Ok(Some(grant));
                }
            }
        }
    }
}

/// The grant a holder of the same store handed over on `handed`; `None` when it released
/// on the server instead (the offer is then spent: `handed` is emptied). Never completes
/// without an offer.
async fn handed_grant<H: Send + 'static>(
    handed: &mut Option<tokio::sync::oneshot::Receiver<Box<dyn std::any::Any + Send>>>,
) -> Option<Grant<H>> {
    let Some(receiver) = handed.as_mut() else {
        return std::future::pending().await;
    };
    let grant = receiver.await.ok();
    *handed = None;
    grant
        .and_then(|grant| grant.downcast::<Grant<H>>().ok())
        .map(|grant| *grant)
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * fastrand::f64())
}
