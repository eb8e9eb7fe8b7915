//! The one error type of dlock.

use std::time::Duration;

use crate::config::Driver;

/// A boxed error from a backend client (redis, etcd-client), kept opaque so that
/// the public enum does not change with the enabled backends.
///
/// ```
/// use std::error::Error as _;
/// let source: dlock::BoxError = "connection refused".into();
/// let err = dlock::Error::Backend { backend: "redis", key: None, source };
/// assert_eq!(err.source().unwrap().to_string(), "connection refused");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in dlock.
///
/// Every variant that concerns one lock names its key. The Go component's errors map as
/// follows: `ErrConfigNil` → [`Error::InvalidConfig`], `ErrConnectorNil` →
/// [`Error::ConnectorMissing`], `ErrLockNotHeld` → [`Error::LockNotHeld`],
/// `ErrLockAlreadyHeld` → [`Error::LockAlreadyHeld`], `ErrOwnershipLost` →
/// [`Error::OwnershipLost`], `ErrClosed` → [`Error::Closed`].
///
/// ```
/// use dlock::{Config, Error, Locker};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let locker = Locker::builder(Config::default()).build().unwrap();
/// match locker.lock("").await {
///     Err(Error::InvalidKey { reason, .. }) => assert!(reason.contains("empty")),
///     other => panic!("expected InvalidKey, got {other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field is out of range or unparsable (Go: `ErrConfigNil`).
    #[error("dlock: invalid config: `{field}` {reason}")]
    InvalidConfig {
        /// The field at fault, as written in YAML/JSON (`default_ttl`, `prefix`, ...), or
        /// `<yaml>`/`<json>`/`<file>` when the document as a whole is unreadable.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The builder has no connector for the configured driver, or one for another driver
    /// (Go: `ErrConnectorNil`).
    #[error("dlock: connector missing: driver `{driver}` {reason}")]
    ConnectorMissing {
        /// The configured driver.
        driver: Driver,
        /// What the builder expected.
        reason: String,
    },

    /// The key cannot be locked (empty, too long).
    #[error("dlock: invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key, shortened to 64 bytes for display.
        key: String,
        /// Why it was refused.
        reason: String,
    },

    /// A TTL the backend cannot honour (zero, too small, too large, or not whole seconds on etcd).
    #[error("dlock: invalid ttl {ttl:?}{}: {reason}", key_suffix(key))]
    InvalidTtl {
        /// The key, when the TTL was given for one lock.
        key: Option<String>,
        /// The refused TTL.
        ttl: Duration,
        /// The rule it breaks.
        reason: String,
    },

    /// A semaphore's number of permits the backend cannot keep: zero, more than
    /// [`MAX_PERMITS`](crate::MAX_PERMITS), or more than one on a backend that keeps only
    /// locks.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// let err = locker.semaphore("crawler", 0).acquire().await.unwrap_err();
    /// assert!(matches!(err, dlock::Error::InvalidPermits { permits: 0, .. }));
    /// # }
    /// ```
    #[error("dlock: invalid permits {permits} for {key:?}: {reason}")]
    InvalidPermits {
        /// The semaphore's name.
        key: String,
        /// The refused number.
        permits: u32,
        /// The rule it breaks.
        reason: String,
    },

    /// The key is held with another number of permits than this call names: a semaphore
    /// of 3 asked for while holders of a semaphore of 5 hold it, or a lock (1 permit)
    /// asked for on a key held as a semaphore, or the reverse. The first holder's number
    /// stands until the key is free again; nothing was acquired.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let _permit = locker.semaphore("crawler", 5).acquire().await?;
    /// let err = locker.semaphore("crawler", 3).try_acquire().await.unwrap_err();
    /// assert!(matches!(err, dlock::Error::PermitsMismatch { asked: 3, held: 5, .. }));
    /// let err = locker.try_lock("crawler").await.unwrap_err(); // a lock is 1 permit
    /// assert!(matches!(err, dlock::Error::PermitsMismatch { asked: 1, held: 5, .. }));
    /// # Ok(()) }
    /// ```
    #[error("dlock: {key:?} is held with {held} permit(s); this call asked for {asked}")]
    PermitsMismatch {
        /// The key or semaphore name.
        key: String,
        /// The number this call named (1 for a lock).
        asked: u32,
        /// The number its current holders named.
        held: u32,
    },

    /// `compat().unlock(key)` of a key this locker does not hold (Go: `ErrLockNotHeld`).
    #[error("dlock: lock not held: {key:?}")]
    LockNotHeld {
        /// The key.
        key: String,
    },

    /// `compat().lock(key)` of a key this locker already holds (Go: `ErrLockAlreadyHeld`).
    #[error("dlock: lock already held locally: {key:?}")]
    LockAlreadyHeld {
        /// The key.
        key: String,
    },

    /// The lock was lost while held: renewal failed past the TTL, the key was deleted or
    /// taken by another holder, or the lease expired (Go: `ErrOwnershipLost`).
    #[error("dlock: ownership lost: {key:?}")]
    OwnershipLost {
        /// The key.
        key: String,
    },

    /// `wait_timeout` passed before the lock could be acquired.
    #[error("dlock: timed out after {waited:?} waiting for {key:?}")]
    Timeout {
        /// The key.
        key: String,
        /// How long the call waited.
        waited: Duration,
    },

    /// The locker was closed; no new lock can be taken through it (Go: `ErrClosed`).
    #[error("dlock: locker closed")]
    Closed,

    /// The backend failed (connection refused, timeout, protocol error).
    #[error("dlock: {backend} backend error{}: {source}", key_suffix(key))]
    Backend {
        /// `"redis"`, `"etcd"` or `"memory"`.
        backend: &'static str,
        /// The key, when the failing call concerned one lock.
        key: Option<String>,
        /// The client's error.
        #[source]
        source: BoxError,
    },

    /// The server refused a right the backend needs: a Redis ACL user without a command,
    /// key or channel (`NOPERM`), an etcd user whose role does not cover the prefix
    /// (`permission denied`). Not transient: retrying cannot help until an operator grants
    /// the right, so it is reported as it is instead of being retried or hidden behind
    /// polling.
    ///
    /// ```
    /// let err = dlock::Error::PermissionDenied {
    ///     backend: "redis",
    ///     key: Some("job".into()),
    ///     detail: "this user has no permissions to run the 'publish' command".into(),
    /// };
    /// assert_eq!(
    ///     err.to_string(),
    ///     "dlock: redis refused a right for \"job\": this user has no permissions to run the 'publish' command"
    /// );
    /// ```
    #[error("dlock: {backend} refused a right{}: {detail}", key_suffix(key))]
    PermissionDenied {
        /// `"redis"` or `"etcd"`.
        backend: &'static str,
        /// The key, when the refused call concerned one lock.
        key: Option<String>,
        /// The server's own words: which command, key or channel it refused.
        detail: String,
    },
}

fn key_suffix(key: &Option<String>) -> String {
    key.as_deref()
        .map(|k| format!(" for {k:?}"))
        .unwrap_or_default()
}

/// A key as shown in errors: long keys are cut at 64 bytes (on a char boundary).
pub(crate) fn display_key(key: &str) -> String {
    const MAX: usize = 64;
    if key.len() <= MAX {
        return key.to_owned();
    }
    let mut end = MAX;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

impl Error {
    pub(crate) fn backend(backend: &'static str, key: &str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            // "": a call for no one lock (an etcd session's renewal).
            key: (!key.is_empty()).then(|| display_key(key)),
            source: source.into(),
        }
    }

    /// `key` is held with `held` permits; the call named `asked` ([`Error::PermitsMismatch`]).
    #[cfg_attr(
        not(any(feature = "redis", feature = "etcd", feature = "postgres")),
        allow(dead_code)
    )]
    pub(crate) fn permits_mismatch(key: &str, asked: u32, held: u32) -> Self {
        Error::PermitsMismatch {
            key: display_key(key),
            asked,
            held,
        }
    }

    pub(crate) fn lost(key: &str) -> Self {
        Error::OwnershipLost {
            key: display_key(key),
        }
    }

    /// The key this error concerns, if any.
    ///
    /// ```
    /// let err = dlock::Error::LockNotHeld { key: "job".into() };
    /// assert_eq!(err.key(), Some("job"));
    /// assert_eq!(dlock::Error::Closed.key(), None);
    /// ```
    pub fn key(&self) -> Option<&str> {
        match self {
            Error::InvalidKey { key, .. }
            | Error::LockNotHeld { key }
            | Error::LockAlreadyHeld { key }
            | Error::OwnershipLost { key }
            | Error::Timeout { key, .. }
            | Error::InvalidPermits { key, .. }
            | Error::PermitsMismatch { key, .. } => Some(key),
            Error::InvalidTtl { key, .. }
            | Error::Backend { key, .. }
            | Error::PermissionDenied { key, .. } => key.as_deref(),
            Error::InvalidConfig { .. } | Error::ConnectorMissing { .. } | Error::Closed => None,
        }
    }
}

/// `Result<T, dlock::Error>`.
///
/// ```
/// fn check() -> dlock::Result<()> {
///     dlock::Config::default().validate()
/// }
/// assert!(check().is_ok());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_are_shortened_on_a_char_boundary() {
        let key = "é".repeat(100);
        let shown = display_key(&key);
        assert!(
            shown.len() <= 64 + "…".len(),
            "shown key too long: {}",
            shown.len()
        );
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn messages_name_the_key() {
        let err = Error::Timeout {
            key: "job".into(),
            waited: Duration::from_millis(5),
        };
        assert_eq!(
            err.to_string(),
            "dlock: timed out after 5ms waiting for \"job\""
        );
        let err = Error::backend("redis", "job", "connection refused");
        assert_eq!(
            err.to_string(),
            "dlock: redis backend error for \"job\": connection refused"
        );
    }
}
