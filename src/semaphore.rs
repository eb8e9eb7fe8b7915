//! `Semaphore`: at most N holders of one name at once, each holding a [`LockGuard`].
//!
//! A semaphore is the lock's own mechanism with N holders instead of one: the same
//! request (its `permits` set to N), the same engine renewing each permit, the same guard.
//! A lock is the case N = 1, on the server as here.

use crate::error::Result;
use crate::{Holder, LockGuard, LockOptions, Locker};

/// At most `permits` holders of one name at once, across every process that uses the
/// same name on the same server: [`Locker::semaphore`] makes one.
///
/// Each permit is a [`LockGuard`]: renewed while it lives, `lost()` by the same deadline
/// rule as a lock, released on drop or with `release().await`, with a fencing token that
/// strictly increases across the acquisitions of the semaphore. A permit whose holder
/// crashes is free again within its TTL.
///
/// Every caller of one name must name the same number of permits: while the name is held,
/// a call that names another fails with [`Error::PermitsMismatch`](crate::Error::PermitsMismatch)
/// (a lock is 1 permit, so a lock and a semaphore never share a name either). Once nobody
/// holds it, the next holder's number stands.
///
/// ```
/// use std::time::Duration;
/// use dlock::{Config, LockOptions, Locker};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// let locker = Locker::builder(Config::default()).build()?;
/// let crawlers = locker.semaphore("crawler", 2);             // at most 2 holders at once
/// let first = crawlers.acquire().await?;                      // waits; cancel-safe
/// let options = LockOptions::new().ttl(Duration::from_secs(30)).wait_timeout(Duration::from_secs(1));
/// let second = crawlers.acquire_with(options).await?;
/// assert!(crawlers.try_acquire().await?.is_none());           // never waits: both are taken
/// assert!(second.fencing_token() > first.fencing_token());    // strictly increasing
/// assert_eq!(crawlers.holders().await?.len(), 2);             // who holds it, as the server says
/// first.run(async { /* crawl */ }).await?;                    // Err(OwnershipLost) if lost first
/// first.release().await?;                                     // or drop it
/// assert!(crawlers.try_acquire().await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Semaphore {
    locker: Locker,
    name: String,
    permits: u32,
    /// Published with each permit, for [`Semaphore::holders`] readers.
    value: Option<String>,
}

impl Locker {
    /// A semaphore of `permits` holders named `name` (a key, as for [`Locker::lock`]).
    /// Nothing is sent until it is used; a bad `permits` (0, more than
    /// [`MAX_PERMITS`](crate::MAX_PERMITS), more than the backend keeps) fails each call with
    /// [`Error::InvalidPermits`](crate::Error::InvalidPermits).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let workers = locker.semaphore("reindex", 3);
    /// assert_eq!((workers.name(), workers.permits()), ("reindex", 3));
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: impl Into<String>, permits: u32) -> Semaphore {
        Semaphore {
            locker: self.clone(),
            name: name.into(),
            permits,
            value: None,
        }
    }
}

impl Semaphore {
    /// The semaphore's name.
    ///
    /// ```
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// assert_eq!(locker.semaphore("crawler", 5).name(), "crawler");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many may hold it at once.
    ///
    /// ```
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// assert_eq!(locker.semaphore("crawler", 5).permits(), 5);
    /// ```
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// This semaphore, publishing `value` (at most 4 KiB: a host name, an address...) with
    /// every permit it hands out, for [`Semaphore::holders`] readers; an empty value
    /// publishes nothing. A value over 4 KiB fails each acquisition with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) (field `value`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let crawlers = locker.semaphore("crawler", 2).publishing("host-a:4242");
    /// let _permit = crawlers.acquire().await?;
    /// let holders = crawlers.holders().await?;
    /// assert_eq!(holders[0].value.as_deref(), Some("host-a:4242"));
    /// # Ok(()) }
    /// ```
    pub fn publishing(mut self, value: impl Into<String>) -> Semaphore {
        self.value = Some(value.into());
        self
    }

    /// Waits for a permit, with the config's default TTL.
    ///
    /// # Cancel safety
    ///
    /// As [`Locker::lock`]: dropping the future at any await point leaves no permit behind;
    /// an attempt whose outcome is unknown is undone in the background.
    ///
    /// # Errors
    ///
    /// Those of [`Locker::lock`], [`Error::InvalidPermits`](crate::Error::InvalidPermits)
    /// and [`Error::PermitsMismatch`](crate::Error::PermitsMismatch).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let permit = locker.semaphore("crawler", 5).acquire().await?;
    /// assert_eq!(permit.key(), "crawler");
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self) -> Result<LockGuard> {
        self.acquire_with(LockOptions::new()).await
    }

    /// [`Semaphore::acquire`] with per-call options: a TTL, and a `wait_timeout` after which
    /// it returns [`Error::Timeout`](crate::Error::Timeout). Cancel-safe like `acquire`.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let one = locker.semaphore("migration", 1);
    /// let held = one.acquire().await?;
    /// let options = dlock::LockOptions::new().wait_timeout(Duration::from_millis(20));
    /// assert!(matches!(one.acquire_with(options).await, Err(dlock::Error::Timeout { .. })));
    /// # drop(held); Ok(()) }
    /// ```
    pub async fn acquire_with(&self, options: LockOptions) -> Result<LockGuard> {
        let (name, permits, value) = (&self.name, self.permits, self.value.as_deref());
        self.locker.lock_call(name, options, value, permits).await
    }

    /// One attempt, never waits: `Ok(None)` when all permits are held. Cancel-safe like
    /// [`Semaphore::acquire`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let pair = locker.semaphore("pair", 2);
    /// let (a, b) = (pair.try_acquire().await?, pair.try_acquire().await?);
    /// assert!(a.is_some() && b.is_some());
    /// assert!(pair.try_acquire().await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>> {
        self.try_acquire_with(LockOptions::new()).await
    }

    /// [`Semaphore::try_acquire`] with per-call options (the TTL; `wait_timeout` bounds
    /// the one attempt). Cancel-safe like [`Semaphore::acquire`].
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let options = dlock::LockOptions::new().ttl(Duration::from_secs(30));
    /// assert!(locker.semaphore("s", 3).try_acquire_with(options).await?.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire_with(&self, options: LockOptions) -> Result<Option<LockGuard>> {
        let (name, permits, value) = (&self.name, self.permits, self.value.as_deref());
        self.locker
            .try_lock_call(name, options, value, permits)
            .await
    }

    /// Every holder now, as the server says: each one's fencing token, what remains of its
    /// TTL, and its published value; in no particular order. A snapshot, for showing; only
    /// a permit proves that you hold one. Cancel-safe: it only reads.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let crawlers = locker.semaphore("crawler", 5);
    /// assert!(crawlers.holders().await?.is_empty());
    /// let permit = crawlers.acquire().await?;
    /// let holders = crawlers.holders().await?;
    /// assert_eq!(holders.iter().map(|h| h.fencing_token).collect::<Vec<_>>(), [permit.fencing_token()]);
    /// # Ok(()) }
    /// ```
    pub async fn holders(&self) -> Result<Vec<Holder>> {
        self.locker.holders(&self.name, self.permits).await
    }
}
