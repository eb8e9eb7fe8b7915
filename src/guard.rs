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
    /// Where the lock lives (prefix + key): `fence_transaction` names its row.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
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

#[cfg(feature = "postgres")]
impl LockGuard {
    /// PostgreSQL only: confirms, inside the caller's own transaction `tx`, that this guard
    /// still holds its lock, and keeps the lock from passing to anyone until `tx` ends. A
    /// write that `tx` commits after this call is known to have committed while the lock was
    /// held: stronger than a fencing token, with no change to the caller's tables.
    ///
    /// It takes a `FOR KEY SHARE` row lock on the guard's lease row, checked live by the
    /// server's clock (`expires > clock_timestamp()`). The guard's own renewals go on (they
    /// update no key column); a rival's attempt must first delete the row once it has
    /// expired, and that delete waits for `tx` to commit or roll back, so the rival's
    /// write comes after. A holder that pauses past its TTL before committing either commits
    /// while the rival still waits, or finds `tx` failed; never after the rival's write.
    /// Keep `tx` short: while it is open, a rival waits even for an expired lock.
    ///
    /// Tested under READ COMMITTED (PostgreSQL's default). Under REPEATABLE READ or
    /// SERIALIZABLE the check may fail with a serialization error; retry the transaction.
    ///
    /// Errors: [`Error::OwnershipLost`](crate::Error::OwnershipLost) when the lock is not
    /// held (expired, released, deleted, taken); [`Error::Backend`](crate::Error::Backend)
    /// for a guard of another backend or a failed query (the transaction is then aborted).
    ///
    /// ```no_run
    /// # async fn decrement(locker: &dlock::Locker, pool: &sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let guard = locker.lock("sku:42").await?;
    /// let mut tx = pool.begin().await?;
    /// guard.fence_transaction(&mut tx).await?;
    /// sqlx::query("UPDATE inventory SET stock = stock - 1 WHERE sku = 42")
    ///     .execute(&mut *tx)
    ///     .await?;
    /// tx.commit().await?; // committed while the lock was held, or not at all
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn fence_transaction(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> crate::Result<()> {
        if self.backend != "postgres" {
            return Err(crate::Error::backend(
                self.backend,
                &self.key,
                "fence_transaction needs the guard of a PostgreSQL locker",
            ));
        }
        let fence = i64::try_from(self.fencing_token).unwrap_or(i64::MAX);
        let held = sqlx::query(crate::backend::postgres::FENCE_TRANSACTION)
            .bind(&self.storage_key)
            .bind(fence)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| {
                crate::backend::permission::refused_right(crate::Error::backend(
                    "postgres", &self.key, e,
                ))
            })?;
        match held {
            Some(_) => Ok(()),
            None => Err(crate::Error::lost(&self.key)),
        }
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
