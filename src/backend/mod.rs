//! What a backend does: acquire, keep (renew until ownership can no longer be proven),
//! release. Backends know nothing of guards, registries or metrics.
//!
//! Redis and the in-process store share two helpers: [`poll_until_acquired`] (retry with
//! jitter, woken early by releases seen in this process) and [`watchdog`] (renew every TTL/3,
//! declare loss before the server-side expiry). etcd queues waiters natively and keeps a
//! lease alive instead.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LockResult};
use std::time::Duration;

use tokio::time::{sleep, sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Result;

#[cfg(feature = "etcd")]
pub(crate) mod etcd;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod wake;

/// One lock request as the backend sees it.
pub(crate) struct Request<'a> {
    /// The user's key (without prefix).
    pub key: &'a str,
    /// A fresh ULID for this acquisition (Redis and in-process; etcd uses its own lease key).
    pub token: &'a str,
    pub ttl: Duration,
    /// `Some(retry interval)` to wait until acquired, `None` for a single attempt.
    pub wait: Option<Duration>,
}

/// A held lock, as the backend needs it to renew and release.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// The user's key (without prefix), for logs and errors.
    pub key: String,
    /// The key as stored on the server.
    pub storage_key: String,
    /// What proves ownership: the ULID (Redis, in-process) or the lease id (etcd).
    pub token: String,
    pub fencing_token: u64,
    pub ttl: Duration,
    /// When the command that last proved ownership was *sent*: the server's expiry is at
    /// least `ttl` after it, so deadlines measured from here are safe.
    pub confirmed_at: Instant,
    /// The etcd lease the key is attached to (0 on other backends).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub lease_id: i64,
}

impl Lease {
    /// When the holder must consider the lock lost unless a renewal sent after `confirmed`
    /// is confirmed: a safety margin before the server-side expiry.
    pub fn deadline(&self, confirmed: Instant) -> Instant {
        confirmed + (self.ttl - safety_margin(self.ttl))
    }
}

/// What the locker lends its backend: where background work runs (so that `close()` waits
/// for it), when the locker shuts down, and how long one server call may take.
#[derive(Clone)]
pub(crate) struct Context {
    tasks: TaskTracker,
    pub shutdown: CancellationToken,
    call_timeout: Duration,
}

impl Context {
    pub fn new(tasks: TaskTracker, shutdown: CancellationToken, call_timeout: Duration) -> Self {
        Context {
            tasks,
            shutdown,
            call_timeout,
        }
    }

    /// Runs `work` in the background, tracked by the locker. Without a runtime (a drop after
    /// shutdown) nothing runs; callers use this only for clean-ups the TTL also covers.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.tasks.spawn(work);
        }
    }

    /// How long a call may take when it is useless after `limit`: the shorter of the two.
    pub fn bound(&self, limit: Duration) -> Duration {
        limit.min(self.call_timeout)
    }
}

/// A poisoned mutex still holds consistent data here (every critical section is a few map
/// operations that cannot panic halfway), so a panic elsewhere must not spread.
pub(crate) fn recover<T>(locked: LockResult<T>) -> T {
    locked.unwrap_or_else(|e| e.into_inner())
}

/// Why a held lock is no longer ours.
#[derive(Debug)]
pub(crate) enum Loss {
    /// The key is gone or holds another token: someone deleted or took it.
    Taken,
    /// Renewal could not be confirmed before the safety deadline.
    Unconfirmed { last_error: Option<String> },
    /// The etcd lease was revoked or expired.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    LeaseEnded,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loss::Taken => f.write_str("the key was deleted or taken by another holder"),
            Loss::Unconfirmed { last_error: None } => {
                f.write_str("renewal could not be confirmed before the TTL ran out")
            }
            Loss::Unconfirmed {
                last_error: Some(e),
            } => {
                write!(
                    f,
                    "renewal could not be confirmed before the TTL ran out (last error: {e})"
                )
            }
            Loss::LeaseEnded => f.write_str("the lease was revoked or expired"),
        }
    }
}

/// The configured backend. An enum rather than a trait object: three variants, no boxing
/// per call, and each arm is one line. Cloned into every guard's task, hence the `Arc`s.
#[derive(Clone)]
pub(crate) enum Backend {
    Memory(Arc<memory::MemoryBackend>),
    #[cfg(feature = "redis")]
    Redis(Arc<redis::RedisBackend>),
    #[cfg(feature = "etcd")]
    Etcd(Arc<etcd::EtcdBackend>),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            Backend::Redis(_) => "redis",
            #[cfg(feature = "etcd")]
            Backend::Etcd(_) => "etcd",
        }
    }

    /// A backend-specific TTL rule on top of the general one (etcd: whole seconds).
    pub fn check_ttl(&self, ttl: Duration) -> std::result::Result<(), String> {
        match self {
            #[cfg(feature = "etcd")]
            Backend::Etcd(_) => etcd::check_ttl(ttl),
            _ => {
                let _ = ttl;
                Ok(())
            }
        }
    }

    /// Acquires the lock, waiting if `request.wait` says so. Cancel-safe: dropping the future
    /// at any point leaves no key that nobody owns.
    pub async fn acquire(&self, request: &Request<'_>) -> Result<Option<Lease>> {
        match self {
            Backend::Memory(b) => b.acquire(request).await,
            #[cfg(feature = "redis")]
            Backend::Redis(b) => b.acquire(request).await,
            #[cfg(feature = "etcd")]
            Backend::Etcd(b) => b.acquire(request).await,
        }
    }

    /// Keeps the lock alive; returns only when ownership is lost. `confirmed` is the send
    /// time of the last command that proved ownership, kept current for the caller. Dropping
    /// the future stops all renewal. Boxed: it lives as long as the guard, and the backends'
    /// futures differ in size by kilobytes (etcd's gRPC state), which every guard would
    /// otherwise pay for.
    pub async fn keep(&self, lease: &Lease, confirmed: &mut Instant) -> Loss {
        let keep: Pin<Box<dyn Future<Output = Loss> + Send + '_>> = match self {
            Backend::Memory(b) => Box::pin(b.keep(lease, confirmed)),
            #[cfg(feature = "redis")]
            Backend::Redis(b) => Box::pin(b.keep(lease, confirmed)),
            #[cfg(feature = "etcd")]
            Backend::Etcd(b) => Box::pin(b.keep(lease, confirmed)),
        };
        keep.await
    }

    /// Deletes the key if it is still this lease's. `Ok(false)`: it was not ours any more.
    /// `expiry` is when the server forgets the key anyway: no call is worth waiting longer.
    /// Boxed for the same reason as `keep`.
    pub async fn release(&self, lease: &Lease, expiry: Instant) -> Result<bool> {
        let limit = expiry.saturating_duration_since(Instant::now());
        let release: Pin<Box<dyn Future<Output = Result<bool>> + Send + '_>> = match self {
            Backend::Memory(b) => Box::pin(b.release(lease)),
            #[cfg(feature = "redis")]
            Backend::Redis(b) => Box::pin(b.release(lease, limit)),
            #[cfg(feature = "etcd")]
            Backend::Etcd(b) => Box::pin(b.release(lease, limit)),
        };
        release.await
    }
}

/// Retries `attempt` until it acquires (or once, when `wait` is `None`). Between attempts
/// it sleeps `retry_interval` ±20 %, or less when a release of `storage_key` is seen in
/// this process. The wake-up is registered before each attempt, so a release that lands
/// between a failed attempt and the sleep is not missed.
pub(crate) async fn poll_until_acquired<F, Fut>(
    wakeups: &Arc<wake::Wakeups>,
    storage_key: &str,
    wait: Option<Duration>,
    mut attempt: F,
) -> Result<Option<Lease>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<Lease>>>,
{
    let Some(retry_interval) = wait else {
        return attempt().await;
    };
    let waiter = wakeups.wait_for(storage_key);
    loop {
        let released = waiter.released();
        tokio::pin!(released);
        released.as_mut().enable();
        if let Some(lease) = attempt().await? {
            return Ok(Some(lease));
        }
        tokio::select! {
            _ = released => {}
            _ = sleep(jittered(retry_interval)) => {}
        }
    }
}

fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// How long before the server-side expiry a holder is told it lost the lock: a tenth of the
/// TTL covers clock-rate drift between client and server and gives the holder time to stop.
pub(crate) fn safety_margin(ttl: Duration) -> Duration {
    ttl / 10
}

/// Renews every TTL/3 with `renew` (`Ok(true)`: still ours; `Ok(false)`: not ours;
/// `Err`: unknown). Transient errors are retried every TTL/10 until the safety deadline,
/// measured from the send time of the last confirmed command (`confirmed`, kept current);
/// then the lock is declared lost.
pub(crate) async fn watchdog<F, Fut>(
    backend: &'static str,
    lease: &Lease,
    confirmed: &mut Instant,
    mut renew: F,
) -> Loss
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let period = lease.ttl / 3;
    let retry = (lease.ttl / 10).max(Duration::from_millis(5));
    let mut next = *confirmed + period;
    let mut last_error = None;
    loop {
        let deadline = lease.deadline(*confirmed);
        sleep_until(next.min(deadline)).await;
        let sent = Instant::now();
        if sent >= deadline {
            return Loss::Unconfirmed { last_error };
        }
        // Boxed: a guard sleeps far more than it renews, so keep its resident state small.
        match timeout_at(deadline, Box::pin(renew())).await {
            Ok(Ok(true)) => {
                *confirmed = sent;
                next = sent + period;
                last_error = None;
            }
            Ok(Ok(false)) => return Loss::Taken,
            Ok(Err(e)) => {
                tracing::warn!(
                    component = "dlock",
                    backend,
                    key = %lease.key,
                    fencing_token = lease.fencing_token,
                    error = %e,
                    "renewal failed; retrying until the lock can no longer be proven held"
                );
                last_error = Some(e.to_string());
                next = sent + retry;
            }
            Err(_) => return Loss::Unconfirmed { last_error },
        }
    }
}
