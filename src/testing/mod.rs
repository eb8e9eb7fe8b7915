//! The conformance suite: one behaviour suite that every backend must pass, on a real
//! server. The crate runs it on each of its backends (`tests/conformance.rs`); a backend
//! written elsewhere runs exactly the same tests with a [`Fixture`] and one line:
//!
//! ```text
//! // tests/conformance.rs of your crate, with dev-dependency features = ["testing", "unstable-backend"]
//! dlock::testing::conformance!(my_backend, MyFixture);
//! ```
//!
//! which expands to one `#[test]` per behaviour in a module `my_backend`, each on a fresh
//! fixture (`MyFixture::start()`), in a two-worker Tokio runtime. `tests/external_backend.rs`
//! in this repository does it for a backend defined in that file.
//!
//! Each test is also a public function, generic over the fixture, for running a subset.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

use crate::{Config, Driver, Error, LockOptions, Locker};

mod semaphores;
pub use semaphores::*;

/// What the suite needs from one backend.
pub trait Fixture: Send + Sync + Sized + 'static {
    /// The driver the fixture's lockers are configured with ([`Driver::Custom`] for a
    /// backend given with `LockerBuilder::backend`).
    const DRIVER: Driver;
    /// A fresh server (or store) for one test.
    fn start() -> impl Future<Output = Self> + Send;
    /// A locker with a connection of its own.
    fn locker(&self, config: Config) -> impl Future<Output = Locker> + Send;
    /// Whether any server-side key of the lock `prefix + key` exists (holder or waiter).
    fn exists(&self, prefix: &str, key: &str) -> impl Future<Output = bool> + Send;
    /// Deletes the lock's keys behind the holder's back, as an operator would.
    fn delete(&self, prefix: &str, key: &str) -> impl Future<Output = ()> + Send;
    /// Takes the server down (killed, or offline).
    fn stop_server(&mut self) -> impl Future<Output = ()> + Send;
    /// A plain read and a plain write of a counter on the server: together, not atomic.
    fn read_counter(&self, name: &str) -> impl Future<Output = u64> + Send;
    /// See [`Fixture::read_counter`].
    fn write_counter(&self, name: &str, value: u64) -> impl Future<Output = ()> + Send;
}

/// The config every test of the suite uses: a short retry interval, the fixture's driver.
///
/// ```
/// use std::time::Duration;
/// let config = dlock::testing::config(dlock::Driver::Custom, "t:", Duration::from_secs(1));
/// assert_eq!(config.retry_interval, Duration::from_millis(20));
/// ```
pub fn config(driver: Driver, prefix: &str, ttl: Duration) -> Config {
    Config {
        driver,
        prefix: prefix.to_owned(),
        default_ttl: ttl,
        retry_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn locker<F: Fixture>(fx: &F, prefix: &str, ttl: Duration) -> Locker {
    fx.locker(config(F::DRIVER, prefix, ttl)).await
}

/// 16 tasks over 2 lockers with separate connections, 200 non-atomic increments each.
pub async fn mutual_exclusion<F: Fixture>(fx: F) {
    let fx = Arc::new(fx);
    let lockers = [
        locker(&*fx, "mx:", Duration::from_secs(5)).await,
        locker(&*fx, "mx:", Duration::from_secs(5)).await,
    ];
    fx.write_counter("mx:counter", 0).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (fx, locker) = (fx.clone(), lockers[i % 2].clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                let guard = locker.lock("counter").await.expect("lock");
                let value = fx.read_counter("mx:counter").await;
                tokio::task::yield_now().await;
                fx.write_counter("mx:counter", value + 1).await;
                guard.release().await.expect("release while held");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    assert_eq!(
        fx.read_counter("mx:counter").await,
        16 * 200,
        "increments were lost: two tasks were in the critical section at once"
    );
}

/// A 1 s TTL lock stays held for 5 s through renewal.
pub async fn renewal_keeps_a_short_ttl_lock<F: Fixture>(fx: F) {
    let fx = &fx;
    let holder = locker(fx, "renew:", Duration::from_secs(1)).await;
    let rival = locker(fx, "renew:", Duration::from_secs(1)).await;
    let guard = holder.lock("k").await.expect("lock");
    let lost = guard.lost();
    for _ in 0..10 {
        sleep(Duration::from_millis(500)).await;
        assert!(
            !lost.is_cancelled(),
            "lost() fired while renewal should keep the lock"
        );
        assert!(
            rival.try_lock("k").await.expect("try_lock").is_none(),
            "a rival got a lock that renewal should have kept"
        );
    }
    guard.release().await.expect("release after 5 s of renewal");
}

/// The key deleted behind the holder's back: `lost()` within TTL/3 + 200 ms, and
/// `release()` reports `OwnershipLost`.
pub async fn deleted_key_is_reported_as_lost<F: Fixture>(fx: F) {
    let fx = &fx;
    let ttl = Duration::from_secs(1);
    let holder = locker(fx, "del:", ttl).await;
    let guard = holder.lock("k").await.expect("lock");
    let lost = guard.lost();
    fx.delete("del:", "k").await;
    let deleted_at = Instant::now();
    timeout(ttl / 3 + Duration::from_millis(200), lost.cancelled())
        .await
        .expect("lost() did not fire within TTL/3 + 200 ms of the deletion");
    assert!(guard.is_lost());
    let waited = deleted_at.elapsed();
    match guard.release().await {
        Err(Error::OwnershipLost { key }) => assert_eq!(key, "k"),
        other => {
            panic!("release after deletion: expected OwnershipLost, got {other:?} ({waited:?})")
        }
    }
}

/// The server killed while a lock is held: `lost()` fires before the TTL has elapsed.
pub async fn server_down_is_reported_before_the_ttl<F: Fixture>(mut fx: F) {
    let ttl = Duration::from_secs(2);
    let holder = locker(&fx, "down:", ttl).await;
    let guard = holder.lock("k").await.expect("lock");
    let lost = guard.lost();
    sleep(Duration::from_millis(300)).await;
    fx.stop_server().await;
    let stopped_at = Instant::now();
    timeout(ttl, lost.cancelled())
        .await
        .expect("lost() did not fire within the TTL after the server went down");
    let fired_after = stopped_at.elapsed();
    assert!(
        fired_after < ttl,
        "lost() fired {fired_after:?} after the outage; TTL is {ttl:?}"
    );
    assert!(
        guard.release().await.is_err(),
        "release with the server down must report an error"
    );
}

/// Dropping a guard frees the key long before its TTL.
pub async fn drop_releases_promptly<F: Fixture>(fx: F) {
    let fx = &fx;
    let holder = locker(fx, "drop:", Duration::from_secs(30)).await;
    let guard = holder.lock("k").await.expect("lock");
    assert!(
        fx.exists("drop:", "k").await,
        "the key must exist while held"
    );
    drop(guard);
    let deadline = Instant::now() + Duration::from_millis(200);
    while fx.exists("drop:", "k").await {
        assert!(
            Instant::now() < deadline,
            "the key was still there 200 ms after drop"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

/// A stale holder's release never deletes the next holder's key.
pub async fn stale_release_never_deletes_another_holders_key<F: Fixture>(fx: F) {
    let fx = &fx;
    let ttl = Duration::from_secs(10);
    let first = locker(fx, "stale:", ttl).await;
    let second = locker(fx, "stale:", ttl).await;
    let stale = first.lock("k").await.expect("first lock");
    fx.delete("stale:", "k").await;
    let current = second.lock("k").await.expect("second lock after deletion");
    assert!(
        stale.release().await.is_err(),
        "a stale release must not succeed"
    );
    assert!(
        fx.exists("stale:", "k").await,
        "the stale release deleted the new holder's key"
    );
    assert!(
        first.try_lock("k").await.expect("try_lock").is_none(),
        "the new holder's lock was freed by a stale release"
    );
    current
        .release()
        .await
        .expect("the new holder releases normally");
}

/// Fencing tokens strictly increase across holders and lockers.
pub async fn fencing_tokens_strictly_increase<F: Fixture>(fx: F) {
    let fx = &fx;
    let lockers = [
        locker(fx, "fence:", Duration::from_secs(5)).await,
        locker(fx, "fence:", Duration::from_secs(5)).await,
    ];
    let mut last = 0;
    for i in 0..20 {
        let guard = lockers[i % 2].lock("k").await.expect("lock");
        let token = guard.fencing_token();
        assert!(token > last, "fencing token went from {last} to {token}");
        last = token;
        guard.release().await.expect("release");
    }
}

/// `try_lock` on a held key answers `None` without waiting.
pub async fn try_lock_on_a_held_key_returns_none<F: Fixture>(fx: F) {
    let fx = &fx;
    let a = locker(fx, "try:", Duration::from_secs(5)).await;
    let b = locker(fx, "try:", Duration::from_secs(5)).await;
    let _held = a.lock("k").await.expect("lock");
    let attempt = timeout(Duration::from_secs(2), b.try_lock("k"))
        .await
        .expect("try_lock waited instead of answering at once");
    assert!(
        attempt.expect("try_lock").is_none(),
        "try_lock got a held lock"
    );
    let same_locker = a.try_lock("k").await.expect("try_lock");
    assert!(
        same_locker.is_none(),
        "try_lock through the holder's own locker got it too"
    );
}

/// An attempt cut off after its request may have left (its reply never read), retried at
/// once through the same locker, finds the lock free: a locker never mistakes its own
/// interrupted attempt for another holder (`try_lock` answering `None` with nobody there).
pub async fn a_retry_after_an_interrupted_attempt_finds_the_lock_free<F: Fixture>(fx: F) {
    let fx = &fx;
    let locker = locker(fx, "retry:", Duration::from_secs(30)).await;
    // The fastest of a few whole try_locks, to spread the cuts from "not sent yet" to
    // "answered".
    let mut round_trip = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let guard = locker.try_lock("calibrate").await.expect("try_lock");
        round_trip = round_trip.min(started.elapsed());
        guard.expect("free").release().await.expect("release");
    }
    let round_trip = round_trip.max(Duration::from_micros(50));
    let mut cut_off = 0;
    for round in 0..300 {
        let key = format!("k{round}");
        let cut = round_trip.mul_f64(fastrand::f64() * 1.5);
        match timeout(cut, locker.try_lock(&key)).await {
            Err(_) => cut_off += 1,
            Ok(attempt) => {
                // Answered before the cut: release it, and the retry below must find it free.
                if let Some(guard) = attempt.expect("try_lock") {
                    guard.release().await.expect("release");
                }
            }
        }
        let retry = timeout(Duration::from_secs(10), locker.try_lock(&key))
            .await
            .expect("the retry did not answer within 10 s")
            .expect("try_lock");
        assert!(
            retry.is_some(),
            "round {round} (cut after {cut:?}, {cut_off} attempts cut so far): try_lock \
             answered None although only this locker's own interrupted attempt was there"
        );
    }
    println!("{cut_off} of 300 attempts were cut before their answer");
    // A dropped guard's release is on its way too: the next attempt waits for it.
    for round in 0..100 {
        let key = format!("dropped{round}");
        drop(
            locker
                .try_lock(&key)
                .await
                .expect("try_lock")
                .expect("free"),
        );
        let retry = locker.try_lock(&key).await.expect("try_lock");
        assert!(
            retry.is_some(),
            "round {round}: try_lock right after dropping the guard answered None, although \
             only this locker's own release was on its way"
        );
    }
}

/// `wait_timeout` ends a wait with `Timeout`, and a release lets the next waiter in.
pub async fn wait_timeout_returns_timeout<F: Fixture>(fx: F) {
    let fx = &fx;
    let a = locker(fx, "wait:", Duration::from_secs(5)).await;
    let b = locker(fx, "wait:", Duration::from_secs(5)).await;
    let held = a.lock("k").await.expect("lock");
    let options = LockOptions::new().wait_timeout(Duration::from_millis(300));
    match b.lock_with("k", options).await {
        Err(Error::Timeout { key, waited }) => {
            assert_eq!(key, "k");
            assert!(
                waited >= Duration::from_millis(300),
                "timed out early: {waited:?}"
            );
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            b.lock_with(
                "k",
                LockOptions::new().wait_timeout(Duration::from_secs(10)),
            )
            .await
        }
    });
    sleep(Duration::from_millis(100)).await;
    held.release().await.expect("release");
    let guard = waiter
        .await
        .unwrap()
        .expect("the waiter gets the lock after the release");
    guard.release().await.expect("release");
}

/// 1,000 acquire futures dropped at random points leave no key behind.
pub async fn cancelled_acquires_leave_no_key<F: Fixture>(fx: F) {
    let fx = &fx;
    let lockers = [
        locker(fx, "cancel:", Duration::from_secs(30)).await,
        locker(fx, "cancel:", Duration::from_secs(30)).await,
    ];
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let locker = lockers[i % 2].clone();
        let key = keys[i % keys.len()].clone();
        let cut = Duration::from_micros(fastrand::u64(0..3000));
        tasks.push(tokio::spawn(async move {
            // An acquire that wins before the cut returns a guard, dropped at once.
            let _ = timeout(cut, locker.lock(&key)).await;
        }));
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    sleep(Duration::from_millis(500)).await;
    for key in &keys {
        assert!(
            !fx.exists("cancel:", key).await,
            "key {key} left behind by a cancelled acquire"
        );
    }
}

/// The Go-style layer: `LockAlreadyHeld`, `LockNotHeld`, `OwnershipLost`.
pub async fn compat_errors_match_go<F: Fixture>(fx: F) {
    let fx = &fx;
    let locker = locker(fx, "go:", Duration::from_secs(1)).await;
    let go = locker.compat();
    go.lock("k").await.expect("lock");
    assert!(matches!(
        go.lock("k").await,
        Err(Error::LockAlreadyHeld { .. })
    ));
    assert!(matches!(
        go.try_lock("k").await,
        Err(Error::LockAlreadyHeld { .. })
    ));
    go.unlock("k").await.expect("unlock");
    assert!(matches!(
        go.unlock("k").await,
        Err(Error::LockNotHeld { .. })
    ));
    assert!(matches!(
        go.unlock("never").await,
        Err(Error::LockNotHeld { .. })
    ));

    let other = locker_with_same_backend(fx, "go:").await.compat();
    assert!(go.try_lock("k").await.expect("try_lock"));
    assert!(
        !other.try_lock("k").await.expect("try_lock"),
        "two lockers both got the lock"
    );

    fx.delete("go:", "k").await;
    sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        go.unlock("k").await,
        Err(Error::OwnershipLost { .. })
    ));
}

async fn locker_with_same_backend<F: Fixture>(fx: &F, prefix: &str) -> Locker {
    locker(fx, prefix, Duration::from_secs(1)).await
}

/// `close()` releases everything and refuses later calls.
pub async fn close_releases_everything<F: Fixture>(fx: F) {
    let fx = &fx;
    let locker = locker(fx, "close:", Duration::from_secs(30)).await;
    let guard = locker.lock("a").await.expect("lock a");
    locker.compat().lock("b").await.expect("lock b");
    locker.close().await.expect("close");
    assert!(!fx.exists("close:", "a").await, "close() left guard key a");
    assert!(!fx.exists("close:", "b").await, "close() left compat key b");
    assert!(matches!(locker.lock("c").await, Err(Error::Closed)));
    assert!(matches!(locker.try_lock("c").await, Err(Error::Closed)));
    assert!(matches!(
        locker.compat().lock("c").await,
        Err(Error::Closed)
    ));
    assert!(
        guard.release().await.is_ok(),
        "a guard released by close() reports success"
    );
    locker.close().await.expect("close is idempotent");
}

/// `Locker::holder` from another locker: nobody, then the holder's fencing token, remaining
/// TTL and published value, then nobody again after the release; a plain lock publishes no
/// value.
pub async fn holder_reports_the_current_holder_and_its_value<F: Fixture>(fx: F) {
    let fx = &fx;
    let ttl = Duration::from_secs(2);
    let (holder, reader) = (locker(fx, "who:", ttl).await, locker(fx, "who:", ttl).await);
    assert_eq!(
        reader.holder("k").await.expect("holder"),
        None,
        "a free lock"
    );
    let guard = holder
        .lock_publishing("k", LockOptions::new(), "host-a:8080")
        .await
        .expect("lock");
    let seen = reader.holder("k").await.expect("holder").expect("held");
    assert_eq!(seen.fencing_token, guard.fencing_token());
    assert_eq!(seen.value.as_deref(), Some("host-a:8080"));
    assert!(
        seen.expires_in <= ttl,
        "{:?} left of a {ttl:?} TTL",
        seen.expires_in
    );
    guard.release().await.expect("release");
    assert_eq!(reader.holder("k").await.expect("holder"), None, "released");
    let plain = holder.lock("k").await.expect("plain lock");
    let seen = reader.holder("k").await.expect("holder").expect("held");
    assert_eq!(seen.fencing_token, plain.fencing_token());
    assert_eq!(seen.value, None, "a plain lock publishes nothing");
}

/// Runs one test of the suite on a fresh fixture, in a two-worker multi-thread runtime: what
/// each test generated by [`conformance!`] does.
pub fn run<F, Fut>(test: impl FnOnce(F) -> Fut)
where
    F: Fixture,
    Fut: Future<Output = ()>,
{
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime for the conformance test")
        .block_on(async { test(F::start().await).await })
}

/// Generates the whole suite for one backend: `conformance!(module_name, FixtureType)`, one
/// `#[test]` per behaviour in `mod module_name` (which sees the caller's items through
/// `use super::*`). See [the module](crate::testing).
#[doc(hidden)]
#[macro_export]
macro_rules! __dlock_conformance {
    ($module:ident, $fixture:ty) => {
        $crate::__dlock_conformance!(@tests $module, $fixture,
            mutual_exclusion,
            renewal_keeps_a_short_ttl_lock,
            deleted_key_is_reported_as_lost,
            server_down_is_reported_before_the_ttl,
            drop_releases_promptly,
            stale_release_never_deletes_another_holders_key,
            fencing_tokens_strictly_increase,
            try_lock_on_a_held_key_returns_none,
            a_retry_after_an_interrupted_attempt_finds_the_lock_free,
            wait_timeout_returns_timeout,
            cancelled_acquires_leave_no_key,
            compat_errors_match_go,
            close_releases_everything,
            holder_reports_the_current_holder_and_its_value,
            semaphore_admits_at_most_n_holders,
            semaphore_permits_die_with_their_holder,
            semaphore_tokens_increase_and_holders_are_listed,
            semaphore_callers_that_disagree_on_n_are_refused,
            semaphore_cancelled_acquires_leave_no_permit
        );
    };
    (@tests $module:ident, $fixture:ty, $($test:ident),+) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $test() {
                    $crate::testing::run($crate::testing::$test::<$fixture>)
                }
            )+
        }
    };
}

#[doc(inline)]
pub use crate::__dlock_conformance as conformance;
