//! [`Holder`]: who holds a lock now, as the server says.

use std::time::Duration;

/// Who holds a lock now, as the server says: what [`Locker::holder`](crate::Locker::holder)
/// returns while the lock is held.
///
/// A snapshot: by the time you read it the lock may have changed hands. Use it to show or
/// observe ownership (a status page, an election's current leader), never to decide that
/// you may act — only a [`LockGuard`](crate::LockGuard) proves that.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// let locker = dlock::Locker::builder(dlock::Config::default())
///     .memory(dlock::MemoryStore::new())
///     .build()?;
/// assert_eq!(locker.holder("report").await?, None);
/// let guard = locker.lock("report").await?;
/// let holder = locker.holder("report").await?.expect("held");
/// assert_eq!(holder.fencing_token, guard.fencing_token());
/// assert!(holder.expires_in <= locker.config().default_ttl);
/// assert_eq!(holder.value, None); // nothing published with a plain lock()
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holder's fencing token ([`LockGuard::fencing_token`](crate::LockGuard::fencing_token)).
    pub fencing_token: u64,
    /// What remains of the lock's TTL on the server (etcd: whole seconds).
    pub expires_in: Duration,
    /// What the holder published with its lock (an election's leader publishes its
    /// identity), if anything.
    pub value: Option<String>,
}

impl Holder {
    /// A holder, as a backend reports it.
    pub fn new(fencing_token: u64, expires_in: Duration, value: Option<String>) -> Self {
        Holder {
            fencing_token,
            expires_in,
            value,
        }
    }
}

/// The largest value a lock may publish.
pub(crate) const MAX_VALUE: usize = 4096;
