//! The [`Backend`] trait: what a lock server must do for dlock, and nothing more.
//!
//! A backend makes single attempts, renews and releases what it holds; it knows nothing of
//! guards, registries or metrics. Waiting ([`Backend::acquire`]) and renewing in batches
//! ([`Backend::renew_many`]) are provided on top of those calls and may be overridden (etcd
//! queues waiters natively). When each lock is renewed is the locker's engine's business
//! (`src/engine/`). The locker erases the backend's type once, when it is given to the
//! builder (`erased.rs`); nothing else in the crate is generic over backends.
//!
//! Public with the cargo feature `unstable-backend`: the trait may still change between
//! minor versions. A backend written outside this crate runs the crate's own conformance
//! suite with the `testing` feature (`dlock::testing`).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Driver;
use crate::error::Result;
use crate::Holder;

pub(crate) mod erased;
#[cfg(feature = "etcd")]
pub(crate) mod etcd;
pub(crate) mod memory;
pub(crate) mod permission;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;
mod support;
mod wake;

#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use support::retry_until_acquired;
#[cfg(feature = "etcd")]
pub(crate) use support::safety_margin;
pub use support::Context;
#[cfg_attr(not(feature = "unstable-backend"), allow(unused_imports))]
pub use support::UndoOnDrop;
pub(crate) use support::{recover, Unsettling};
pub use wake::Wakeups;

/// A lock server, as dlock drives it.
///
/// Implement [`try_acquire`](Backend::try_acquire), [`renew`](Backend::renew) and
/// [`release`](Backend::release), and name the backend; waiting and batched renewal come
/// with it, and the locker's engine decides when each lock is renewed (every TTL/3). Give it to a locker with
/// [`LockerBuilder::backend`](crate::LockerBuilder::backend).
///
/// # Contract
///
/// Every backend must guarantee the following; the conformance suite
/// (`dlock::testing`, feature `testing`) checks each point that can be observed.
///
/// 1. **Mutual exclusion.** While a grant's key is held (renewed within its TTL), no other
///    attempt for the same storage key succeeds, from this process or any other.
/// 2. **Token-checked release and renewal.** [`release`](Backend::release) and
///    [`renew`](Backend::renew) act only on the acquisition they were given: a stale holder
///    can never delete or extend a newer holder's lock. `release` answers `Ok(true)` when
///    the lock was ours and is now free, `Ok(false)` when it was not ours any more.
/// 3. **Fencing tokens strictly increase per key**, across holders, lockers and processes
///    (and, as far as the server allows, across its restarts).
/// 4. **Cancel-safe acquire.** Dropping a [`try_acquire`](Backend::try_acquire) or
///    [`acquire`](Backend::acquire) future at any await point leaves no lock that nobody
///    owns: an attempt whose outcome is unknown is undone in the background
///    ([`Context::undo_on_drop`]), or expires with its TTL.
/// 5. **Renewal outcomes mean what they say.** `Ok(Renewal::Renewed)`: the server extended
///    the lock by its TTL, counted from when the renewal was *sent*. `Ok(Renewal::Lost(_))`:
///    the server proved it is not ours (deleted, taken, its lease ended); the holder is told
///    at once. `Err(_)`: unknown; the engine retries every TTL/10 until the safety deadline.
/// 6. **Bounded calls.** No server call waits longer than it is useful (an attempt: the
///    request's safety deadline; a release: `limit`) nor longer than the locker's call
///    timeout: use [`Context::call`] or [`Context::bound`].
/// 7. **Idempotent under resends.** A client library that resends a command after a dropped
///    connection must not change the outcome: a resent acquire is the same acquisition (same
///    fencing token), a resent release still answers `Ok(true)`.
/// 8. **Times are send times.** [`Grant::confirmed_at`] is when the acquiring command was
///    sent, never when its reply arrived: the server's expiry is at least `ttl` after it.
///
/// # Example
///
/// A backend over a `Mutex<HashMap>` (one process only; `tests/external_backend.rs` runs the
/// whole conformance suite on a backend like it):
///
#[cfg_attr(feature = "unstable-backend", doc = "```")]
#[cfg_attr(not(feature = "unstable-backend"), doc = "```ignore")]
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// use dlock::backend::{Backend, Context, Grant, Lease, Renewal, Request, Wakeups};
/// use tokio::time::Instant;
///
/// #[derive(Default)]
/// struct MapBackend {
///     locks: Mutex<HashMap<String, (String, Instant)>>, // storage key -> (token, expiry)
///     last_fence: Mutex<u64>,
///     wakeups: Arc<Wakeups>,
/// }
///
/// impl Backend for MapBackend {
///     type Held = String; // the acquisition's token
///
///     fn name(&self) -> &'static str {
///         "map"
///     }
///
///     fn wakeups(&self) -> Option<&Arc<Wakeups>> {
///         Some(&self.wakeups)
///     }
///
///     async fn try_acquire(&self, _: &Context, request: &Request<'_>) -> dlock::Result<Option<Grant<String>>> {
///         let now = Instant::now();
///         let mut locks = self.locks.lock().unwrap();
///         if locks.get(request.storage_key).is_some_and(|(_, expiry)| *expiry > now) {
///             return Ok(None);
///         }
///         locks.insert(request.storage_key.to_owned(), (request.token.to_owned(), now + request.ttl));
///         let mut fence = self.last_fence.lock().unwrap();
///         *fence += 1;
///         Ok(Some(Grant { fencing_token: *fence, confirmed_at: now, held: request.token.to_owned() }))
///     }
///
///     async fn renew(&self, _: &Context, lease: &Lease, token: &mut String) -> dlock::Result<Renewal> {
///         let now = Instant::now();
///         match self.locks.lock().unwrap().get_mut(&lease.storage_key) {
///             Some((held, expiry)) if held == token && *expiry > now => {
///                 *expiry = now + lease.ttl;
///                 Ok(Renewal::Renewed)
///             }
///             _ => Ok(Renewal::Lost("the key was deleted or taken")),
///         }
///     }
///
///     async fn release(&self, _: &Context, lease: &Lease, token: String, _: Duration) -> dlock::Result<bool> {
///         let mut locks = self.locks.lock().unwrap();
///         let ours = locks.get(&lease.storage_key).is_some_and(|(held, expiry)| *held == token && *expiry > Instant::now());
///         if ours {
///             locks.remove(&lease.storage_key);
///             self.wakeups.released(&lease.storage_key);
///         }
///         Ok(ours)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// let config = dlock::Config::new(dlock::Driver::Custom);
/// let locker = dlock::Locker::builder(config).backend(MapBackend::default()).build()?;
/// let guard = locker.lock("job").await?;
/// assert!(locker.try_lock("job").await?.is_none());
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub trait Backend: Send + Sync + 'static {
    /// What the backend keeps about one held lock from its grant to its release: a token,
    /// a lease id and its keep-alive stream... Only this backend ever sees it.
    type Held: Send + 'static;

    /// The name in logs, metric attributes and [`Error::Backend`](crate::Error::Backend).
    fn name(&self) -> &'static str;

    /// The config driver that selects this backend: a config naming another driver is
    /// refused by `build()` with [`Error::ConnectorMissing`](crate::Error::ConnectorMissing).
    /// Backends outside this crate keep the default, [`Driver::Custom`].
    fn driver(&self) -> Driver {
        Driver::Custom
    }

    /// A backend-specific TTL rule, on top of [`MIN_TTL`](crate::MIN_TTL) ..=
    /// [`MAX_TTL`](crate::MAX_TTL), checked once per call before anything is sent.
    /// `Err(reason)` becomes [`Error::InvalidTtl`](crate::Error::InvalidTtl).
    fn check_ttl(&self, ttl: Duration) -> std::result::Result<(), String> {
        let _ = ttl;
        Ok(())
    }

    /// Where the lock on `key` lives, given the config's prefix; two keys must never share
    /// a storage key. The default is `prefix + key`.
    fn storage_key(&self, prefix: &str, key: &str) -> String {
        format!("{prefix}{key}")
    }

    /// The largest semaphore this backend keeps: [`Request::permits`] is at most this (and at
    /// most [`MAX_PERMITS`](crate::MAX_PERMITS)); a larger one is refused with
    /// [`Error::InvalidPermits`](crate::Error::InvalidPermits) before anything is sent. The
    /// default, 1: locks only. A backend that returns more keeps up to `permits` holders of
    /// a storage key at once, each with everything the contract promises a lock.
    fn max_permits(&self) -> u32 {
        1
    }

    /// The wake-ups this backend signals when it sees a lock released (see
    /// [`Wakeups::released`]); the default waiting loop then retries at once instead of at
    /// its next poll. `None` (the default): waiters only poll.
    fn wakeups(&self) -> Option<&Arc<Wakeups>> {
        None
    }

    /// One attempt: `Ok(Some(grant))` if the lock was free and is now ours, `Ok(None)` if
    /// someone holds it. Cancel-safe (contract point 4).
    fn try_acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
    ) -> impl Future<Output = Result<Option<Grant<Self::Held>>>> + Send;

    /// Waits until the lock is acquired. The default retries [`try_acquire`](Backend::try_acquire)
    /// every `retry_interval` ±20 %, or as soon as [`wakeups`](Backend::wakeups) announces a
    /// release of the storage key. The locker bounds the wait (`wait_timeout`, close).
    fn acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
        retry_interval: Duration,
    ) -> impl Future<Output = Result<Option<Grant<Self::Held>>>> + Send {
        support::poll_until_acquired(self, cx, request, retry_interval)
    }

    /// One renewal of a held lock: extends it by `lease.ttl` if it is still this
    /// acquisition's (contract point 5).
    fn renew(
        &self,
        cx: &Context,
        lease: &Lease,
        held: &mut Self::Held,
    ) -> impl Future<Output = Result<Renewal>> + Send;

    /// Renews many held locks at once, one answer per lock in the order given (contract
    /// point 5 for each). The locker's engine calls it with every renewal that falls due in
    /// the same tick, so that a backend can send them together (Redis: a few script calls
    /// for hundreds of locks). The default renews each with [`renew`](Backend::renew), all
    /// at once.
    fn renew_many<'a>(
        &'a self,
        cx: &'a Context,
        locks: Vec<(&'a Lease, &'a mut Self::Held)>,
    ) -> impl Future<Output = Vec<Result<Renewal>>> + Send + 'a {
        let renewals = locks
            .into_iter()
            .map(move |(lease, held)| self.renew(cx, lease, held));
        futures_util::future::join_all(renewals)
    }

    /// The send time of the latest command that proved `held` still ours, for a backend
    /// whose locks are kept alive by something else than [`renew`](Backend::renew) (etcd:
    /// one session's keep-alive confirms all its locks). When it is `Some`, a renewal that
    /// answers [`Renewal::Renewed`] only says that nothing proved the lock lost, and the
    /// lock counts as confirmed at this time, not at the renewal's send time. The
    /// default: `None`, every renewal is a server's answer.
    fn confirmed(&self, held: &Self::Held) -> Option<Instant> {
        let _ = held;
        None
    }

    /// A token the backend cancels as soon as it learns that `held` is lost (a session that
    /// ended, a watched key deleted): the guard's `lost()` then fires at once rather than
    /// at the next renewal, which still reports why. The default: `None`.
    fn loss_signal(&self, held: &Self::Held) -> Option<CancellationToken> {
        let _ = held;
        None
    }

    /// Who holds the lock at `storage_key` now (`Ok(None)`: free), with the value its
    /// holder published ([`Request::value`]); `key` is the user's key, for errors. Backs
    /// [`Locker::holder`](crate::Locker::holder). The default answers that this backend
    /// cannot tell.
    fn holder(
        &self,
        cx: &Context,
        key: &str,
        storage_key: &str,
    ) -> impl Future<Output = Result<Option<Holder>>> + Send {
        let _ = (cx, storage_key);
        let refusal = crate::Error::backend(
            self.name(),
            key,
            "this backend cannot tell who holds a lock",
        );
        async move { Err(refusal) }
    }

    /// Every holder of the semaphore at `storage_key` (`permits` > 1), or of the lock
    /// (`permits` = 1), as [`holder`](Backend::holder) reports one; in no particular order.
    /// Backs [`Semaphore::holders`](crate::Semaphore::holders). The default serves locks
    /// with [`holder`](Backend::holder) and refuses semaphores.
    fn holders(
        &self,
        cx: &Context,
        key: &str,
        storage_key: &str,
        permits: u32,
    ) -> impl Future<Output = Result<Vec<Holder>>> + Send {
        let refusal = (permits > 1)
            .then(|| crate::Error::backend(self.name(), key, "this backend keeps no semaphores"));
        let holder = self.holder(cx, key, storage_key);
        async move {
            match refusal {
                Some(refusal) => Err(refusal),
                None => Ok(holder.await?.into_iter().collect()),
            }
        }
    }

    /// Releases the lock if it is still this acquisition's: `Ok(true)` released (now, or by
    /// an earlier copy of this call), `Ok(false)` it was not ours any more. `limit`: the
    /// server forgets the lock by then anyway, so no call is worth waiting longer.
    fn release(
        &self,
        cx: &Context,
        lease: &Lease,
        held: Self::Held,
        limit: Duration,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// One lock request, as the backend sees it. Used in the example on [`Backend`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Request<'a> {
    /// The user's key, without the prefix (for errors and logs).
    pub key: &'a str,
    /// Where the lock lives: [`Backend::storage_key`] of the config's prefix and the key.
    pub storage_key: &'a str,
    /// A fresh ULID for this acquisition: no two requests share one.
    pub token: &'a str,
    /// The lock's TTL, already checked against [`Backend::check_ttl`].
    pub ttl: Duration,
    /// What the holder publishes with the lock, for [`Backend::holder`] readers (an
    /// election's leader identity; at most 4 KiB). `None` for a plain lock.
    pub value: Option<&'a str>,
    /// How many holders the storage key admits at once: 1 for a lock, N for a semaphore
    /// of N permits (at most [`Backend::max_permits`]). Every holder of one storage key
    /// names the same N; an attempt that names another while the key is held fails with
    /// [`Error::PermitsMismatch`](crate::Error::PermitsMismatch).
    pub permits: u32,
}

impl Request<'_> {
    /// How long an attempt is useful: a reply later than this, counted from the send time,
    /// could not give a usable guard (the TTL minus the safety margin). Bound acquire calls
    /// by it.
    ///
    /// ```
    /// # #[cfg(feature = "unstable-backend")] {
    /// let request = dlock::backend::Request::new("k", "dlock:k", "01J", std::time::Duration::from_secs(10));
    /// assert_eq!(request.useful_for(), std::time::Duration::from_secs(9));
    /// # }
    /// ```
    #[cfg_attr(
        not(any(feature = "redis", feature = "etcd", feature = "postgres")),
        allow(dead_code)
    )]
    pub fn useful_for(&self) -> Duration {
        self.ttl - support::safety_margin(self.ttl)
    }

    /// A request, as the locker builds one (for a backend's own tests).
    pub fn new<'a>(
        key: &'a str,
        storage_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> Request<'a> {
        Request {
            key,
            storage_key,
            token,
            ttl,
            value: None,
            permits: 1,
        }
    }
}

impl<'a> Request<'a> {
    /// The same request, publishing `value` with the lock.
    ///
    /// ```
    /// # #[cfg(feature = "unstable-backend")] {
    /// let request = dlock::backend::Request::new("k", "dlock:k", "01J", std::time::Duration::from_secs(10));
    /// assert_eq!(request.with_value(Some("host-1:8080")).value, Some("host-1:8080"));
    /// # }
    /// ```
    pub fn with_value(self, value: Option<&'a str>) -> Request<'a> {
        Request { value, ..self }
    }

    /// The same request, for one of `permits` holders of a semaphore.
    ///
    /// ```
    /// # #[cfg(feature = "unstable-backend")] {
    /// let request = dlock::backend::Request::new("k", "dlock:k", "01J", std::time::Duration::from_secs(10));
    /// assert_eq!(request.permits, 1);
    /// assert_eq!(request.with_permits(5).permits, 5);
    /// # }
    /// ```
    pub fn with_permits(self, permits: u32) -> Request<'a> {
        Request { permits, ..self }
    }
}

/// What a successful attempt returns. Used in the example on [`Backend`].
#[derive(Debug)]
pub struct Grant<H> {
    /// Strictly increasing per key (contract point 3).
    pub fencing_token: u64,
    /// When the command that acquired the lock was *sent* (contract point 8).
    pub confirmed_at: Instant,
    /// The backend's own state of the held lock, handed back to `renew` and `release`.
    pub held: H,
}

/// A held lock, as every backend sees it; the backend's own state travels beside it. Used
/// in the example on [`Backend`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Lease {
    /// The user's key, without the prefix.
    pub key: String,
    /// Where the lock lives ([`Request::storage_key`]).
    pub storage_key: String,
    /// The grant's fencing token.
    pub fencing_token: u64,
    /// The lock's TTL.
    pub ttl: Duration,
    /// [`Request::permits`]: 1 for a lock.
    #[cfg_attr(not(any(feature = "redis", feature = "etcd")), allow(dead_code))]
    pub permits: u32,
}

impl Lease {
    pub(crate) fn new(request: &Request<'_>, fencing_token: u64) -> Lease {
        Lease {
            key: request.key.to_owned(),
            storage_key: request.storage_key.to_owned(),
            fencing_token,
            ttl: request.ttl,
            permits: request.permits,
        }
    }

    /// When the holder must consider the lock lost unless a renewal sent after `confirmed`
    /// is confirmed: a safety margin before the server-side expiry.
    pub fn deadline(&self, confirmed: Instant) -> Instant {
        confirmed + (self.ttl - support::safety_margin(self.ttl))
    }
}

/// The outcome of one [`Backend::renew`] that the server answered. Used in the example on
/// [`Backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, extended by the TTL from the renewal's send time.
    Renewed,
    /// Proven not ours any more; the reason is logged ("the lease was revoked or expired").
    Lost(&'static str),
}

#[cfg(any(feature = "redis", feature = "etcd", feature = "postgres"))]
impl Renewal {
    /// The outcome of a renewal that found the lock still ours, or gone or taken.
    pub(crate) fn still_ours(ours: bool) -> Renewal {
        if ours {
            Renewal::Renewed
        } else {
            Renewal::Lost(TAKEN)
        }
    }
}

/// Why a held lock is no longer ours, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loss {
    /// The server proved the lock is not ours: deleted, taken, its lease ended.
    NotHeld(&'static str),
    /// No renewal could be confirmed before the safety deadline.
    Unconfirmed {
        /// The error of the last failed renewal, if one failed rather than went unanswered.
        last_error: Option<String>,
    },
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loss::NotHeld(reason) => f.write_str(reason),
            Loss::Unconfirmed { last_error: None } => {
                f.write_str("renewal could not be confirmed before the TTL ran out")
            }
            Loss::Unconfirmed {
                last_error: Some(e),
            } => write!(
                f,
                "renewal could not be confirmed before the TTL ran out (last error: {e})"
            ),
        }
    }
}

/// The reason of a renewal that found the key gone or holding another acquisition.
pub(crate) const TAKEN: &str = "the key was deleted or taken by another holder";
