//! `LockGuard`: a held lock, as its holder sees it.
//!
//! The guard owns a slot in its locker's engine (`src/engine/`), which renews the lock while
//! the guard lives and fires the guard's `lost` token when ownership is lost. The guard ends
//! the slot: [`LockGuard::release`] waits for the release, drop hands it to the engine. The
//! whole lifecycle (renew, lose, release) and its invariants are in the engine.

use pin_project::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::backend::erased::Acquired;
use crate::engine::{Engine, SlotId};
use crate::error::{Error, Result};

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
/// Dropping the guard stops renewal and hands the release to the locker's engine, which
/// sends it in the background on the runtime that acquired the lock; drop itself never blocks and never panics. If that
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
    /// Where the lock lives (prefix + key).
    storage_key: String,
    fencing_token: u64,
    backend: &'static str,
    lost: CancellationToken,
    /// The lock in the engine; `None` once released.
    slot: Option<SlotId>,
    engine: Engine,
}

impl LockGuard {
    /// Hands a freshly acquired lock to the locker's engine, which renews it until the
    /// guard releases it (or the locker closes).
    pub(crate) fn start(backend: &'static str, acquired: Acquired, engine: &Engine) -> LockGuard {
        let (key, fencing_token) = (acquired.lease.key.clone(), acquired.lease.fencing_token);
        let storage_key = acquired.lease.storage_key.clone();
        let (slot, lost) = engine.hold(acquired);
        LockGuard {
            key,
            storage_key,
            fencing_token,
            backend,
            lost,
            slot: Some(slot),
            engine: engine.clone(),
        }
    }

    /// Where the lock lives (prefix + key), and the backend that holds it: for calls that
    /// name the lock on its server (`postgres::fence_transaction`).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn location(&self) -> (&'static str, &str) {
        (self.backend, &self.storage_key)
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
        let slot = self.slot.take().expect("a guard is released only once");
        self.engine.release(slot).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // The engine releases in the background; nothing here can block or panic. Until
        // that release ends, the locker's next attempt on this key waits for it rather than
        // find the lock still held by this guard.
        if let Some(slot) = self.slot.take() {
            self.engine.drop_slot(slot, &self.key);
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
