//! `LockOptions`: per-call settings of `Locker::lock_with` (Go: `WithTTL`).

use std::time::Duration;

/// Settings for one [`Locker::lock_with`](crate::Locker::lock_with) or
/// [`Locker::try_lock_with`](crate::Locker::try_lock_with) call.
///
/// Unset fields fall back to the locker's [`Config`](crate::Config): `ttl` to `default_ttl`;
/// with no `wait_timeout` a waiting call waits until acquired, the locker is closed, or the
/// future is dropped.
///
/// ```
/// use std::time::Duration;
/// use dlock::LockOptions;
///
/// let options = LockOptions::new()
///     .ttl(Duration::from_secs(30))
///     .wait_timeout(Duration::from_secs(2));
/// assert_eq!(options.get_ttl(), Some(Duration::from_secs(30)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockOptions {
    ttl: Option<Duration>,
    wait_timeout: Option<Duration>,
}

impl LockOptions {
    /// No overrides: the config's TTL, and no wait timeout.
    ///
    /// ```
    /// assert_eq!(dlock::LockOptions::new(), dlock::LockOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The TTL of this lock (renewed every TTL/3 while held). Checked when the lock is
    /// requested: outside 100 ms ..= 24 h, or not whole seconds on etcd, is
    /// [`Error::InvalidTtl`](crate::Error::InvalidTtl).
    ///
    /// ```
    /// let options = dlock::LockOptions::new().ttl(std::time::Duration::from_secs(30));
    /// assert_eq!(options.get_ttl().unwrap().as_secs(), 30);
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The longest a waiting call waits before returning [`Error::Timeout`](crate::Error::Timeout).
    /// `Duration::ZERO` makes one attempt. The deadline also bounds calls to an unreachable
    /// server.
    ///
    /// ```
    /// let options = dlock::LockOptions::new().wait_timeout(std::time::Duration::from_secs(1));
    /// assert_eq!(options.get_wait_timeout().unwrap().as_secs(), 1);
    /// ```
    pub fn wait_timeout(mut self, wait_timeout: Duration) -> Self {
        self.wait_timeout = Some(wait_timeout);
        self
    }

    /// The TTL set by [`LockOptions::ttl`], if any.
    ///
    /// ```
    /// assert_eq!(dlock::LockOptions::new().get_ttl(), None);
    /// ```
    pub fn get_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The timeout set by [`LockOptions::wait_timeout`], if any.
    ///
    /// ```
    /// assert_eq!(dlock::LockOptions::new().get_wait_timeout(), None);
    /// ```
    pub fn get_wait_timeout(&self) -> Option<Duration> {
        self.wait_timeout
    }
}
