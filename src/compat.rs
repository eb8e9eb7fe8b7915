//! The Go-style API: `lock(key)`, `try_lock(key) -> bool`, `unlock(key)`, over a registry of
//! the guards this locker holds, so Go code ports line by line.

use crate::error::{Error, Result};
use crate::locker::Locker;
use crate::options::LockOptions;
use crate::registry::Reservation;

/// The Go component's `Locker` interface, returned by [`Locker::compat`].
///
/// Semantics as in Go: locking a key this locker already holds (or is acquiring) returns
/// [`Error::LockAlreadyHeld`] instead of deadlocking; unlocking a key it does not hold
/// returns [`Error::LockNotHeld`]; unlocking a lock that was lost returns
/// [`Error::OwnershipLost`]. Held locks are renewed like guards, and released by `unlock`
/// or [`Locker::close`].
///
/// Every method is cancel-safe: a dropped `lock` leaves no lock and no registry entry; a
/// dropped `unlock` still releases the lock in the background.
///
/// Go's `Lock`, `TryLock` and `Unlock` are [`Compat::lock`], [`Compat::try_lock`] and
/// [`Compat::unlock`] (`WithTTL` is [`LockOptions::ttl`] through the `_with` variants); the
/// whole Go → Rust mapping is one table in the guide ([coming from
/// Go](crate::guide::from_go)).
///
/// ```
/// use dlock::{Config, Error, Locker};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// let go = Locker::builder(Config::default()).build()?.compat();
/// go.lock("resource-key").await?;
/// assert!(matches!(go.lock("resource-key").await, Err(Error::LockAlreadyHeld { .. })));
/// go.unlock("resource-key").await?;
/// assert!(matches!(go.unlock("resource-key").await, Err(Error::LockNotHeld { .. })));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Compat {
    locker: Locker,
}

impl Locker {
    /// The Go-style API (`lock`/`try_lock`/`unlock` by key) over a key → guard registry held
    /// by this locker.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let go = locker.compat();
    /// go.lock("resource-key").await?;
    /// go.unlock("resource-key").await?;
    /// # Ok(()) }
    /// ```
    pub fn compat(&self) -> Compat {
        Compat {
            locker: self.clone(),
        }
    }
}

impl Compat {
    /// Go `Lock`: waits until acquired and records the lock under `key`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let go = dlock::Locker::builder(dlock::Config::default()).build()?.compat();
    /// go.lock("database:migration:lock").await?;
    /// // run the migration
    /// go.unlock("database:migration:lock").await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self, key: &str) -> Result<()> {
        self.lock_with(key, LockOptions::new()).await
    }

    /// Go `Lock` with options (`WithTTL`, and a wait timeout).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let go = dlock::Locker::builder(dlock::Config::default()).build()?.compat();
    /// let ttl = dlock::LockOptions::new().ttl(std::time::Duration::from_secs(30));
    /// go.lock_with("inventory:1001", ttl).await?;
    /// go.unlock("inventory:1001").await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock_with(&self, key: &str, options: LockOptions) -> Result<()> {
        let reservation = self.reserve(key)?;
        let guard = self.locker.lock_with(key, options).await?;
        reservation.fill(guard);
        Ok(())
    }

    /// Go `TryLock`: `Ok(true)` if acquired, `Ok(false)` if someone else holds it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let go = dlock::Locker::builder(dlock::Config::default()).build()?.compat();
    /// if go.try_lock("scheduled-task:cleanup").await? {
    ///     // run the task
    ///     go.unlock("scheduled-task:cleanup").await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_lock(&self, key: &str) -> Result<bool> {
        self.try_lock_with(key, LockOptions::new()).await
    }

    /// Go `TryLock` with options.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let go = dlock::Locker::builder(dlock::Config::default()).build()?.compat();
    /// let ttl = dlock::LockOptions::new().ttl(std::time::Duration::from_secs(5));
    /// assert!(go.try_lock_with("k", ttl).await?);
    /// # Ok(()) }
    /// ```
    pub async fn try_lock_with(&self, key: &str, options: LockOptions) -> Result<bool> {
        let reservation = self.reserve(key)?;
        match self.locker.try_lock_with(key, options).await? {
            Some(guard) => {
                reservation.fill(guard);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Go `Unlock`: releases the lock held under `key`.
    ///
    /// Errors: [`Error::LockNotHeld`] if this locker does not hold `key`,
    /// [`Error::OwnershipLost`] if the lock was lost while held (it is forgotten either way).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let go = dlock::Locker::builder(dlock::Config::default()).build()?.compat();
    /// let err = go.unlock("never-locked").await.unwrap_err();
    /// assert!(matches!(err, dlock::Error::LockNotHeld { .. }));
    /// # Ok(()) }
    /// ```
    pub async fn unlock(&self, key: &str) -> Result<()> {
        let guard = self.locker.registry().take(key)?;
        guard.release().await
    }

    /// Whether this locker's registry holds `key` (it may have been lost since; `unlock`
    /// tells).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let go = dlock::Locker::builder(dlock::Config::default()).build()?.compat();
    /// go.lock("k2").await?;
    /// assert!(go.is_held("k2"));
    /// # Ok(()) }
    /// ```
    pub fn is_held(&self, key: &str) -> bool {
        self.locker.registry().is_held(key)
    }

    fn reserve<'a>(&'a self, key: &'a str) -> Result<Reservation<'a>> {
        if self.locker.is_closed() {
            return Err(Error::Closed);
        }
        self.locker.registry().reserve(key)
    }
}
