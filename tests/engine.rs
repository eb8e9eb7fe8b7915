//! The locker's engine, seen through a backend that records what the engine asks of it:
//! renewals leave in batches, a release never precedes nor follows a renewal of its lock,
//! `lost()` keeps its deadline while a renewal hangs, and dropped guards stop renewing.
//! No server: the backend is this file's, so that every step can be observed and held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::backend::{Backend, Context, Grant, Lease, Renewal, Request};
use dlock::{Config, Driver, Error, Locker};
use tokio::sync::Notify;
use tokio::time::{sleep, timeout, Instant};

/// What the engine did, in order, per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    RenewSent,
    RenewAnswered,
    Released,
}

/// A backend that grants every attempt, and renews after `renew_delay` (or never, when
/// `hang` is set), logging each step.
#[derive(Default)]
struct Recording {
    log: Mutex<HashMap<String, Vec<Step>>>,
    /// The size of each `renew_many` batch.
    batches: Mutex<Vec<usize>>,
    renew_delay: Duration,
    hang: bool,
    fence: AtomicU64,
    /// Notified when a renewal is sent.
    renewing: Notify,
}

impl Recording {
    fn record(&self, key: &str, step: Step) {
        let mut log = self.log.lock().unwrap();
        log.entry(key.to_owned()).or_default().push(step);
    }

    fn steps(&self, key: &str) -> Vec<Step> {
        let log = self.log.lock().unwrap();
        log.get(key).cloned().unwrap_or_default()
    }
}

/// Shared by the test and the locker.
#[derive(Clone, Default)]
struct Shared(Arc<Recording>);

impl Backend for Shared {
    type Held = ();

    fn name(&self) -> &'static str {
        "recording"
    }

    async fn try_acquire(&self, _: &Context, _: &Request<'_>) -> dlock::Result<Option<Grant<()>>> {
        let fencing_token = self.0.fence.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Some(Grant {
            fencing_token,
            confirmed_at: Instant::now(),
            held: (),
        }))
    }

    async fn renew(&self, _: &Context, lease: &Lease, _: &mut ()) -> dlock::Result<Renewal> {
        self.0.record(&lease.key, Step::RenewSent);
        self.0.renewing.notify_waiters();
        if self.0.hang {
            std::future::pending::<()>().await;
        }
        sleep(self.0.renew_delay).await;
        self.0.record(&lease.key, Step::RenewAnswered);
        Ok(Renewal::Renewed)
    }

    async fn renew_many(
        &self,
        cx: &Context,
        locks: Vec<(&Lease, &mut ())>,
    ) -> Vec<dlock::Result<Renewal>> {
        self.0.batches.lock().unwrap().push(locks.len());
        let renewals = locks
            .into_iter()
            .map(|(lease, held)| self.renew(cx, lease, held));
        futures_util::future::join_all(renewals).await
    }

    async fn release(&self, _: &Context, lease: &Lease, _: (), _: Duration) -> dlock::Result<bool> {
        self.0.record(&lease.key, Step::Released);
        Ok(true)
    }
}

fn locker(backend: Shared, ttl: Duration) -> Locker {
    let config = Config {
        default_ttl: ttl,
        ..Config::new(Driver::Custom)
    };
    Locker::builder(config)
        .backend(backend)
        .build()
        .expect("build")
}

/// A release asked for while a renewal of the lock is away waits for its answer, and no
/// renewal is sent after it (the trap of Redisson issue 7272).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_waits_for_the_renewal_in_flight_and_nothing_renews_after_it() {
    let ttl = Duration::from_secs(1);
    let backend = Shared(Arc::new(Recording {
        renew_delay: Duration::from_millis(200),
        ..Recording::default()
    }));
    let locker = locker(backend.clone(), ttl);
    let guard = locker.lock("k").await.expect("lock");
    let renewing = backend.0.renewing.notified();
    timeout(ttl, renewing)
        .await
        .expect("no renewal within the TTL");
    guard.release().await.expect("release");
    assert_eq!(
        backend.0.steps("k"),
        [Step::RenewSent, Step::RenewAnswered, Step::Released],
        "the release did not wait for the renewal that was away"
    );
    sleep(ttl * 2).await;
    assert_eq!(
        backend.0.steps("k").last(),
        Some(&Step::Released),
        "a renewal was sent after the release"
    );
}

/// A renewal that never answers cannot keep `lost()` from firing at the safety deadline,
/// before the server's expiry, nor keep `release()` from returning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_at_the_deadline_while_a_renewal_hangs() {
    let ttl = Duration::from_secs(2);
    let backend = Shared(Arc::new(Recording {
        hang: true,
        ..Recording::default()
    }));
    let locker = locker(backend.clone(), ttl);
    let acquired = Instant::now();
    let guard = locker.lock("k").await.expect("lock");
    let lost = guard.lost();
    timeout(ttl * 2, lost.cancelled())
        .await
        .expect("lost() did not fire while the renewal hung");
    let fired = acquired.elapsed();
    assert!(
        fired < ttl,
        "lost() fired {fired:?} after the grant, after the server's expiry ({ttl:?})"
    );
    let released = timeout(ttl * 5, guard.release())
        .await
        .expect("release() hung behind the renewal that never answered");
    assert!(
        matches!(released, Err(Error::OwnershipLost { .. })),
        "release after a loss: {released:?}"
    );
}

/// Renewals that fall due together leave in few batches, not one call per lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_due_together_leave_in_batches() {
    let ttl = Duration::from_secs(1);
    let backend = Shared::default();
    let locker = locker(backend.clone(), ttl);
    let mut guards = Vec::new();
    for i in 0..500 {
        guards.push(locker.lock(&format!("k{i}")).await.expect("lock"));
    }
    sleep(ttl * 2).await;
    let batches = backend.0.batches.lock().unwrap().clone();
    let renewals: usize = batches.iter().sum();
    assert!(
        renewals >= 500 * 4,
        "{renewals} renewals of 500 locks in two TTLs: some locks were not renewed every TTL/3"
    );
    assert!(
        batches.len() * 10 <= renewals,
        "{renewals} renewals took {} batches: they are not batched",
        batches.len()
    );
    assert!(guards.iter().all(|g| !g.is_lost()), "a lock was lost");
}

/// Dropped guards stop renewing at once and are released, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_guards_are_released_once_and_never_renewed_again() {
    let ttl = Duration::from_secs(1);
    let backend = Shared::default();
    let locker = locker(backend.clone(), ttl);
    let mut guards = Vec::new();
    for i in 0..200 {
        guards.push(locker.lock(&format!("k{i}")).await.expect("lock"));
    }
    sleep(ttl / 2).await; // one renewal each
    drop(guards);
    sleep(ttl * 2).await;
    for i in 0..200 {
        let steps = backend.0.steps(&format!("k{i}"));
        let releases = steps.iter().filter(|s| **s == Step::Released).count();
        assert_eq!(releases, 1, "k{i}: {steps:?}");
        assert_eq!(
            steps.last(),
            Some(&Step::Released),
            "k{i} was renewed after its drop: {steps:?}"
        );
    }
}
