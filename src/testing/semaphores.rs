//! The suite's semaphore behaviours: a backend whose [`max_permits`] is 1 must refuse
//! semaphores with [`Error::InvalidPermits`]; one that keeps them must keep every promise a
//! lock makes, with N holders.
//!
//! [`max_permits`]: crate::backend::Backend::max_permits

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

use super::{locker, Fixture};
use crate::{Error, LockOptions, Locker};

/// Whether the fixture's backend keeps semaphores; if not, checks that it refuses them the
/// documented way, and the caller's test ends there.
async fn keeps_semaphores(locker: &Locker) -> bool {
    match locker.semaphore("probe", 2).try_acquire().await {
        Ok(permit) => {
            drop(permit);
            true
        }
        Err(Error::InvalidPermits { permits: 2, .. }) => false,
        Err(e) => panic!("a semaphore of 2 was neither kept nor refused as InvalidPermits: {e}"),
    }
}

/// Waits until `check` holds, for at most `within`; panics with `what` otherwise.
async fn eventually<Fut: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Fut,
) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} (waited {within:?})");
        sleep(Duration::from_millis(20)).await;
    }
}

/// 12 tasks over 2 lockers share a semaphore of 3, 15 rounds each: never more than 3
/// inside at once, and 3 at once at some point (the permits are really used).
pub async fn semaphore_admits_at_most_n_holders<F: Fixture>(fx: F) {
    let fx = &fx;
    let ttl = Duration::from_secs(5);
    let lockers = [locker(fx, "sn:", ttl).await, locker(fx, "sn:", ttl).await];
    if !keeps_semaphores(&lockers[0]).await {
        return;
    }
    let (inside, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let crawlers = lockers[i % 2].semaphore("crawler", 3);
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                let permit = crawlers.acquire().await.expect("acquire");
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                assert!(now <= 3, "{now} holders of a semaphore of 3");
                sleep(Duration::from_millis(3)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.expect("release while held");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "12 tasks never held all 3 permits at once"
    );
}

/// A locker holding both permits of a semaphore dies without releasing (its runtime is
/// shut down): both permits are free again within their TTL, for another locker.
pub async fn semaphore_permits_die_with_their_holder<F: Fixture>(fx: F) {
    let fx = Arc::new(fx);
    let ttl = Duration::from_secs(3);
    let survivor = locker(&*fx, "sd:", ttl).await;
    if !keeps_semaphores(&survivor).await {
        return;
    }
    let doomed = fx.clone();
    let dead = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the doomed locker");
        let held = runtime.block_on(async {
            let locker = locker(&*doomed, "sd:", ttl).await;
            let pair = locker.semaphore("pair", 2);
            let held = [pair.acquire().await, pair.acquire().await];
            (locker, held.map(|p| p.expect("acquire")))
        });
        drop(runtime); // its renewals stop here, and nothing will release
        held
    })
    .join()
    .expect("the doomed locker's thread");
    let pair = survivor.semaphore("pair", 2);
    assert!(
        pair.try_acquire().await.expect("try_acquire").is_none(),
        "the dead locker's permits were free before their TTL"
    );
    let wait = LockOptions::new().wait_timeout(3 * ttl);
    let first = pair.acquire_with(wait).await.expect("first permit freed");
    let second = pair.acquire_with(wait).await.expect("second permit freed");
    drop(dead);
    first.release().await.expect("release");
    second.release().await.expect("release");
    let fx = &*fx;
    eventually(ttl, "the semaphore is still on the server", || async {
        !fx.exists("sd:", "pair").await
    })
    .await;
}

/// Fencing tokens strictly increase across the acquisitions of one semaphore, and
/// `holders()` lists exactly the current holders.
pub async fn semaphore_tokens_increase_and_holders_are_listed<F: Fixture>(fx: F) {
    let fx = &fx;
    let ttl = Duration::from_secs(5);
    let (a, b) = (locker(fx, "st:", ttl).await, locker(fx, "st:", ttl).await);
    if !keeps_semaphores(&a).await {
        return;
    }
    let (on_a, on_b) = (a.semaphore("s", 3), b.semaphore("s", 3));
    assert!(on_b.holders().await.expect("holders").is_empty());
    let mut last = 0;
    let mut held = Vec::new();
    for round in 0..20 {
        let permit = if round % 2 == 0 { &on_a } else { &on_b }
            .acquire()
            .await
            .expect("acquire");
        assert!(
            permit.fencing_token() > last,
            "fencing token {} after {last}",
            permit.fencing_token()
        );
        last = permit.fencing_token();
        held.push(permit);
        if held.len() == 3 {
            let mut listed: Vec<u64> = on_b
                .holders()
                .await
                .expect("holders")
                .iter()
                .map(|h| {
                    assert!(h.expires_in <= ttl, "{:?} left of {ttl:?}", h.expires_in);
                    h.fencing_token
                })
                .collect();
            listed.sort_unstable();
            let mut expected: Vec<u64> = held.iter().map(|p| p.fencing_token()).collect();
            expected.sort_unstable();
            assert_eq!(listed, expected, "holders() of the 3 holders");
            held.remove(round % 3).release().await.expect("release");
        }
    }
}

/// Callers that name another number of permits while the name is held are refused with
/// `PermitsMismatch`; a lock is 1 permit. Once nobody holds the name, the next holder's
/// number stands.
pub async fn semaphore_callers_that_disagree_on_n_are_refused<F: Fixture>(fx: F) {
    let fx = &fx;
    let ttl = Duration::from_secs(5);
    let (a, b) = (locker(fx, "sm:", ttl).await, locker(fx, "sm:", ttl).await);
    if !keeps_semaphores(&a).await {
        return;
    }
    let mismatch = |outcome: crate::Result<Option<crate::LockGuard>>, asked, held| match outcome {
        Err(Error::PermitsMismatch {
            asked: a, held: h, ..
        }) if (a, h) == (asked, held) => {}
        other => {
            panic!("expected PermitsMismatch {{ asked: {asked}, held: {held} }}, got {other:?}")
        }
    };
    let three = a
        .semaphore("k", 3)
        .acquire()
        .await
        .expect("a semaphore of 3");
    mismatch(b.semaphore("k", 2).try_acquire().await, 2, 3);
    mismatch(b.try_lock("k").await, 1, 3);
    let waited = LockOptions::new().wait_timeout(Duration::from_secs(2));
    mismatch(
        b.semaphore("k", 2).acquire_with(waited).await.map(Some),
        2,
        3,
    );
    assert!(matches!(
        b.semaphore("k", 2).holders().await,
        Err(Error::PermitsMismatch {
            asked: 2,
            held: 3,
            ..
        })
    ));
    three.release().await.expect("release");

    let two = b
        .semaphore("k", 2)
        .try_acquire()
        .await
        .expect("try")
        .expect("now free for 2");
    mismatch(a.try_lock("k").await, 1, 2);
    two.release().await.expect("release");

    let lock = b.lock("k").await.expect("now free for a lock");
    mismatch(a.semaphore("k", 3).try_acquire().await, 3, 1);
    mismatch(
        a.semaphore("k", 3).acquire_with(waited).await.map(Some),
        3,
        1,
    );
    assert!(matches!(
        a.holder("k").await,
        Ok(Some(ref h)) if h.fencing_token == lock.fencing_token()
    ));
    lock.release().await.expect("release");
    let again = a.semaphore("k", 3).try_acquire().await.expect("try");
    assert!(again.is_some(), "the name is free for a semaphore again");
    drop(again);
    eventually(ttl, "a refused attempt left a key behind", || async {
        !fx.exists("sm:", "k").await
    })
    .await;
}

/// 300 acquire futures of a semaphore of 2, dropped at random points while both permits
/// are held and while they are free, leave no permit behind: afterwards a fresh locker
/// takes both permits at once.
pub async fn semaphore_cancelled_acquires_leave_no_permit<F: Fixture>(fx: F) {
    let fx = &fx;
    let ttl = Duration::from_secs(30);
    let lockers = [locker(fx, "sc:", ttl).await, locker(fx, "sc:", ttl).await];
    if !keeps_semaphores(&lockers[0]).await {
        return;
    }
    let holder = locker(fx, "sc:", ttl).await;
    for phase in 0..2 {
        // Phase 0: both permits held by `holder`; phase 1: free.
        let held = if phase == 0 {
            let pair = holder.semaphore("pair", 2);
            vec![
                pair.acquire().await.expect("acquire"),
                pair.acquire().await.expect("acquire"),
            ]
        } else {
            Vec::new()
        };
        let mut tasks = Vec::new();
        for i in 0..150 {
            let pair = lockers[i % 2].semaphore("pair", 2);
            let cut = Duration::from_micros(fastrand::u64(0..3000));
            tasks.push(tokio::spawn(async move {
                // A permit won before the cut is dropped at once.
                let _ = timeout(cut, pair.acquire()).await;
            }));
        }
        for task in tasks {
            task.await.expect("task panicked");
        }
        for permit in held {
            permit.release().await.expect("release");
        }
        let fresh = locker(fx, "sc:", ttl).await.semaphore("pair", 2);
        let mut both = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while both.len() < 2 {
            assert!(
                Instant::now() < deadline,
                "a cancelled acquire kept a permit (phase {phase}): {} of 2 free after 10 s",
                both.len()
            );
            match fresh.try_acquire().await.expect("try_acquire") {
                Some(permit) => both.push(permit),
                None => sleep(Duration::from_millis(20)).await,
            }
        }
        drop(both);
    }
}
