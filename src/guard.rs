//! `LockGuard`: a held lock and its whole lifecycle.
//!
//! Acquisition hands the guard a [`Lease`](crate::backend::Lease) and the backend's held state ([`HeldLock`](crate::backend::erased::HeldLock)). From
//! then on one task per guard, [`lifecycle`], owns both: it keeps it alive until either the guard asks for release (explicit
//! [`LockGuard::release`], drop, or [`Locker::close`](crate::Locker::close)) or ownership is
//! lost, and then it releases. Because that task is the only place that renews and the only
//! place that releases, no renewal can follow a release, and drop needs no runtime of its
//! own: it only signals the task.

use pin_project::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::backend::erased::Acquired;
use crate::backend::{Context, Loss, Settling};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// A held distributed lock. Dropping it releases the lock (asynchronously).
///
/// The lock is renewed in the background every TTL/3 while the guard lives. If ownership is
/// lost (renewal could not be confirmed in time, the key was deleted or taken, the lease
/// ended), the token returned by [`LockGuard::lost`] fires, and
/// [`LockGuard::release`] returns [`Error::OwnershipLost`].
///
/// A guard is `Send + Sync` and may move between tasks: ownership lives in the guard, not in
/// a thread or task.
///
/// # Drop
///
/// Dropping the guard stops renewal and sends the release from the guard's background task,
/// on the runtime that acquired it; drop itself never blocks and never panics. If that
/// runtime is already shut down, nothing is sent and the key expires after its TTL.
///
/// ```
/// use dlock::{Config, Locker};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// let locker = Locker::builder(Config::default()).build()?;
/// {
///     let _guard = locker.lock("report").await?;
///     // ... critical section ...
/// } // released here
/// let guard = locker.lock("report").await?;
/// guard.release().await?; // or release explicitly and see the outcome
/// # Ok(()) }
/// ```
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    key: String,
    fencing_token: u64,
    backend: &'static str,
    lost: CancellationToken,
    release: CancellationToken,
    task: Option<JoinHandle<Result<()>>>,
    /// A dropped guard's release counts as unsettled there until it ends.
    settling: Settling,
}

impl LockGuard {
    /// Starts the lifecycle task of a freshly acquired lock, tracked by the locker. Its
    /// release token is a child of the locker's closing token, so closing the locker
    /// releases every guard.
    pub(crate) fn start(
        backend: &'static str,
        acquired: Acquired,
        cx: &Context,
        metrics: Metrics,
    ) -> LockGuard {
        let (lost, release) = (CancellationToken::new(), cx.closing().child_token());
        let (key, fencing_token) = (acquired.lease.key.clone(), acquired.lease.fencing_token);
        let task = cx.track(lifecycle(
            backend,
            acquired,
            cx.clone(),
            lost.clone(),
            release.clone(),
            metrics,
        ));
        LockGuard {
            key,
            fencing_token,
            backend,
            lost,
            release,
            task: Some(task),
            settling: cx.settling(),
        }
    }

    /// The key as given to `lock` (without the config's prefix).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let guard = locker.lock("invoice:42").await?;
    /// assert_eq!(guard.key(), "invoice:42");
    /// # Ok(()) }
    /// ```
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A number that strictly increases with every acquisition of this key, across all
    /// holders. Pass it to the resource you protect and have it refuse writes carrying a
    /// token smaller than one it has seen: a holder that lost the lock without noticing
    /// (a long pause, a partition) can then do no harm.
    ///
    /// Redis: the server clock in microseconds, drawn by the acquiring script. etcd: the create revision
    /// of the holder's key. In-process: a per-key counter.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let first = locker.lock("fenced").await?;
    /// let t1 = first.fencing_token();
    /// first.release().await?;
    /// let second = locker.lock("fenced").await?;
    /// assert!(second.fencing_token() > t1);
    /// # Ok(()) }
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// A token that is cancelled when ownership is lost. It is a child token: cancelling it
    /// yourself does not affect the lock. It is also cancelled once the lock is released.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let guard = locker.lock("job").await?;
    /// let lost = guard.lost();
    /// tokio::select! {
    ///     _ = lost.cancelled() => { /* stop: someone else may hold the lock now */ }
    ///     _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => { /* work done */ }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> CancellationToken {
        self.lost.child_token()
    }

    /// Whether ownership has been lost.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let guard = locker.lock("job").await?;
    /// assert!(!guard.is_lost());
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Runs `work` while the lock is held: resolves to `Ok(output)` if `work` finishes first,
    /// or to `Err(Error::OwnershipLost)` as soon as ownership is lost, dropping `work` at its
    /// next await point. The guard stays held either way; release it afterwards.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let guard = locker.lock("migration").await?;
    /// let rows = guard.run(async { 42 }).await?;
    /// assert_eq!(rows, 42);
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn run<F: Future>(&self, work: F) -> Run<F> {
        Run {
            work,
            lost: self.lost.clone().cancelled_owned(),
            key: Some(self.key.clone()),
        }
    }

    /// Releases the lock and reports the outcome: `Ok(())` if it was still held and is now
    /// free, [`Error::OwnershipLost`] if it had been lost, [`Error::Backend`] if the server
    /// could not be reached (the key then expires after its TTL).
    ///
    /// Consumes the guard, so a lock cannot be released twice. Cancel-safe: if this future is
    /// dropped, the release still happens in the background.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let guard = locker.lock("job").await?;
    /// guard.release().await?;
    /// assert!(locker.try_lock("job").await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn release(mut self) -> Result<()> {
        self.release.cancel();
        let task = self.task.take().expect("a guard is released only once");
        match task.await {
            Ok(result) => result,
            Err(e) => Err(Error::backend(self.backend, &self.key, e)),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // The lifecycle task sees this and releases; nothing here can block or panic.
        self.release.cancel();
        // Until that release ends, the locker's next attempt on this key waits for it
        // rather than find the lock still held by this guard.
        if let Some(task) = self.task.take().filter(|task| !task.is_finished()) {
            self.settling.after(&self.key, async move {
                let _ = task.await;
            });
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("fencing_token", &self.fencing_token)
            .field("backend", &self.backend)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// The future returned by [`LockGuard::run`]: the work, cut short with
/// [`Error::OwnershipLost`] as soon as the lock is lost.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
/// let guard = locker.lock("report").await?;
/// let run: dlock::Run<_> = guard.run(async { 1 + 1 });
/// assert_eq!(run.await?, 2);
/// # Ok(()) }
/// ```
#[pin_project]
#[must_use = "futures do nothing unless awaited"]
pub struct Run<F> {
    #[pin]
    work: F,
    #[pin]
    lost: WaitForCancellationFutureOwned,
    key: Option<String>,
}

impl<F: Future> Future for Run<F> {
    type Output = Result<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Loss first: once it is known, no further step of the work may run.
        if this.lost.poll(cx).is_ready() {
            let key = this.key.take().unwrap_or_default();
            return Poll::Ready(Err(Error::lost(&key)));
        }
        this.work.poll(cx).map(Ok)
    }
}

/// Keeps the lock until release is requested or ownership is lost, then releases it.
///
/// `lost` fires no later than the safety deadline measured from the last confirmed renewal,
/// whatever the release is doing: a release that hangs must not let the holder believe it
/// still holds a lock that a rival may already have taken.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of its arguments for the guard's life"
)]
fn lifecycle(
    name: &'static str,
    mut acquired: Acquired,
    cx: Context,
    lost: CancellationToken,
    release: CancellationToken,
    metrics: Metrics,
) -> impl Future<Output = Result<()>> + Send {
    // An `async` block rather than an `async fn`, and `acquired` used in place rather than
    // destructured: either would keep a second copy of the arguments in the task for the
    // guard's whole life.
    async move {
        let mut confirmed = acquired.confirmed_at;
        let loss = tokio::select! {
            biased;
            _ = release.cancelled() => None,
            loss = acquired.held.keep(&cx, &acquired.lease, &mut confirmed) => Some(loss),
        };
        if let Some(later) = acquired.held.confirmed() {
            confirmed = confirmed.max(later);
        }
        // Boxed: the ending runs once, so the task that lives as long as the guard need
        // not reserve room for its state (the release call and the deadline timer).
        Box::pin(end(name, acquired, confirmed, loss, cx, lost, metrics)).await
    }
}

/// Releases the lock once renewal stopped: after a `loss`, or on request (`None`).
/// `confirmed`: the send time of the last command that proved ownership.
async fn end(
    name: &'static str,
    acquired: Acquired,
    confirmed: Instant,
    loss: Option<Loss>,
    cx: Context,
    lost: CancellationToken,
    metrics: Metrics,
) -> Result<()> {
    let Acquired {
        lease,
        confirmed_at: held_since,
        held,
    } = acquired;
    // Past this instant the server has forgotten the key: no release call is worth more.
    let expiry = confirmed + lease.ttl;
    if let Some(loss) = loss {
        lost.cancel();
        metrics.lost(name, &lease.key);
        tracing::warn!(component = "dlock", backend = name, key = %lease.key,
            fencing_token = lease.fencing_token, reason = %loss, "ownership lost");
        // If renewal merely went unconfirmed, the key may still be ours: free it for the next
        // holder now rather than at expiry. A token-checked release cannot harm another holder.
        let _ = held.release(&cx, &lease, expiry).await;
        return Err(Error::lost(&lease.key));
    }
    let releasing = held.release(&cx, &lease, expiry);
    tokio::pin!(releasing);
    let outcome = tokio::select! {
        outcome = &mut releasing => outcome,
        _ = sleep_until(lease.deadline(confirmed)) => {
            lost.cancel();
            releasing.await
        }
    };
    lost.cancel();
    match outcome {
        Ok(true) => {
            metrics.released(name, &lease.key, Instant::now() - held_since);
            tracing::debug!(component = "dlock", backend = name, key = %lease.key,
                fencing_token = lease.fencing_token, "lock released");
            Ok(())
        }
        Ok(false) => {
            metrics.lost(name, &lease.key);
            tracing::warn!(component = "dlock", backend = name, key = %lease.key,
                fencing_token = lease.fencing_token,
                "ownership lost before release: the key was deleted or taken");
            Err(Error::lost(&lease.key))
        }
        Err(e) => {
            tracing::error!(component = "dlock", backend = name, key = %lease.key,
                fencing_token = lease.fencing_token, error = %e,
                "release failed; the key will expire after its TTL");
            Err(e)
        }
    }
}
