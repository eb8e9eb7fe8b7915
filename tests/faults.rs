//! Fault injection on real servers, loopback only: the locker talks to the server through
//! `support::Proxy`, which delays, blackholes or resets its traffic, while the test watches
//! the server directly. The scenarios common to Redis and etcd are written once.

mod support;

use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker};
#[cfg(feature = "postgres")]
use support::fixtures::Postgres;
use support::fixtures::{Etcd, Proxied, Redis};
use tokio::time::{sleep, timeout, Instant};

const TTL: Duration = Duration::from_secs(2);

fn config(driver: Driver) -> Config {
    dlock::testing::config(driver, "fault:", TTL)
}

/// A server behind a fault-injecting proxy: lockers through it, and direct ones.
struct Target<F: Proxied> {
    fixture: F,
    proxy: support::Proxy,
}

impl<F: Proxied> Target<F> {
    async fn start() -> Self {
        let fixture = F::start().await;
        let proxy = support::Proxy::start(fixture.addr()).await;
        Target { fixture, proxy }
    }
    async fn via_proxy(&self) -> Locker {
        self.fixture
            .locker_via(&self.proxy, config(F::DRIVER))
            .await
    }
    async fn direct(&self) -> Locker {
        self.fixture.locker(config(F::DRIVER)).await
    }
    async fn lock_exists(&self) -> bool {
        self.fixture.exists("fault:", "k").await
    }
}

/// Scenario 1: A blackhole shorter than TTL/2 while held: no false loss, renewal resumes.
async fn short_blackhole_is_survived<F: Proxied>() {
    let target = Target::<F>::start().await;
    let proxy = &target.proxy;
    let locker = target.via_proxy().await;
    let rival = target.direct().await;
    let guard = locker.lock("k").await.expect("lock");
    proxy.blackhole();
    sleep(TTL / 2 - Duration::from_millis(100)).await;
    proxy.pass();
    // Two more full TTLs: only renewals after the blip can keep the lock alive this long.
    for _ in 0..8 {
        sleep(TTL / 4).await;
        assert!(
            !guard.is_lost(),
            "lost() fired after a blip shorter than TTL/2"
        );
        let stolen = rival.try_lock("k").await.expect("rival try_lock");
        assert!(
            stolen.is_none(),
            "the lock expired: renewal did not resume after the blip"
        );
    }
    guard.release().await.expect("release after the blip");
}

/// Scenario 2: A blackhole longer than the TTL while held: `lost()` fires before the server expires
/// the lock (watched directly), so the holder stops before anyone else can take it.
async fn long_blackhole_fires_lost_before_the_server_expiry<F: Proxied>() {
    let target = Target::<F>::start().await;
    let proxy = &target.proxy;
    let locker = target.via_proxy().await;
    let guard = locker.lock("k").await.expect("lock");
    let lost = guard.lost();
    proxy.blackhole();
    let lost_at = tokio::spawn(async move {
        lost.cancelled().await;
        Instant::now()
    });
    let deadline = Instant::now() + TTL * 3;
    let gone_at = loop {
        if !target.lock_exists().await {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the lock outlived three TTLs without renewal"
        );
        sleep(Duration::from_millis(5)).await;
    };
    let lost_at = timeout(Duration::from_secs(1), lost_at)
        .await
        .expect("lost() never fired during a partition longer than the TTL")
        .unwrap();
    assert!(
        lost_at < gone_at,
        "lost() fired {:?} after the server expired the lock",
        lost_at - gone_at
    );
    proxy.pass();
    assert!(matches!(
        guard.release().await,
        Err(Error::OwnershipLost { .. })
    ));
}

/// Scenario 3a: Every connection reset while held: the client reconnects and renewal goes on.
async fn reset_while_held_keeps_the_lock<F: Proxied>() {
    let target = Target::<F>::start().await;
    let proxy = &target.proxy;
    let locker = target.via_proxy().await;
    let rival = target.direct().await;
    let guard = locker.lock("k").await.expect("lock");
    for _ in 0..3 {
        proxy.reset_all();
        sleep(TTL / 2).await;
    }
    sleep(TTL).await;
    assert!(
        !guard.is_lost(),
        "resets shorter than the TTL must not lose the lock"
    );
    assert!(
        rival.try_lock("k").await.expect("try_lock").is_none(),
        "the lock expired"
    );
    guard.release().await.expect("release after resets");
}

/// Scenario 3b: Connections reset while a `lock()` waits: the waiter still acquires after the release.
async fn reset_while_waiting_still_acquires<F: Proxied>() {
    let target = Target::<F>::start().await;
    let proxy = &target.proxy;
    let waiter = target.via_proxy().await;
    let holder = target.direct().await;
    let held = holder.lock("k").await.expect("lock");
    let waiting = tokio::spawn(async move {
        // A reset can fail one call with a backend error; waiting resumes with a new call.
        for attempt in 1..=5 {
            let options = LockOptions::new().wait_timeout(Duration::from_secs(10));
            match waiter.lock_with("k", options).await {
                Ok(guard) => return guard,
                Err(Error::Backend { .. }) if attempt < 5 => sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("waiter failed: {e}"),
            }
        }
        unreachable!("the loop returns or panics")
    });
    sleep(Duration::from_millis(300)).await;
    proxy.reset_all();
    sleep(Duration::from_millis(300)).await;
    held.release().await.expect("release");
    let guard = timeout(Duration::from_secs(8), waiting)
        .await
        .expect("the waiter never acquired after the reset")
        .unwrap();
    guard.release().await.expect("release");
}

/// Scenario 5: 64 tasks over 4 lockers share a semaphore of 3 while the proxy in front of
/// two of the lockers (whose tasks hold long) cuts them off for longer than the TTL, again
/// and again. Each task
/// records when it held a permit: from its acquisition to its release, or to its `lost()`
/// if that fired first. Never more than 3 of those spans overlap, and the cuts really
/// took permits away (some `lost()` fired).
async fn semaphore_holders_stay_at_most_n_with_renewals_cut<F: Proxied>() {
    let target = std::sync::Arc::new(Target::<F>::start().await);
    let lockers = [
        target.via_proxy().await,
        target.via_proxy().await,
        target.direct().await,
        target.direct().await,
    ];
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let losses = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let until = Instant::now() + 5 * TTL;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let crawlers = lockers[i % 4].semaphore("crawler", 3);
        let (spans, losses) = (spans.clone(), losses.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let options = LockOptions::new().wait_timeout(TTL);
                let Ok(permit) = crawlers.acquire_with(options).await else {
                    continue; // timed out, or cut off while waiting
                };
                let start = Instant::now();
                let lost = permit.lost();
                // Those behind the proxy hold long enough to be cut off while holding.
                let hold = if i % 4 < 2 {
                    Duration::from_millis(fastrand::u64(500..3000))
                } else {
                    Duration::from_millis(fastrand::u64(5..60))
                };
                let end = tokio::select! {
                    _ = lost.cancelled() => {
                        losses.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Instant::now()
                    }
                    _ = sleep(hold) => Instant::now(),
                };
                spans.lock().unwrap().push((start, end));
                let _ = permit.release().await;
            }
        }));
    }
    // Each cut falls while a task behind the proxy surely holds a permit: this one, on a
    // locker of its own (its turn does not wait behind another locker's tasks).
    let cutter = target.via_proxy().await.semaphore("crawler", 3);
    let cuts = tokio::spawn({
        let target = target.clone();
        let (spans, losses) = (spans.clone(), losses.clone());
        async move {
            while Instant::now() + 2 * TTL < until {
                sleep(TTL / 4).await;
                let options = LockOptions::new().wait_timeout(until - Instant::now());
                let Ok(permit) = cutter.acquire_with(options).await else {
                    continue;
                };
                let (start, lost) = (Instant::now(), permit.lost());
                target.proxy.blackhole();
                let fired = timeout(2 * TTL, lost.cancelled()).await.is_ok();
                spans.lock().unwrap().push((start, Instant::now()));
                assert!(fired, "lost() did not fire within 2 TTLs of a cut");
                losses.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                target.proxy.pass();
                let _ = permit.release().await;
            }
        }
    });
    for task in tasks {
        task.await.expect("task panicked");
    }
    cuts.await.expect("cuts");
    target.proxy.pass();
    let spans = spans.lock().unwrap().clone();
    // Ends before starts at one instant: a span ending when another starts does not overlap.
    let mut events: Vec<(Instant, i32)> = spans
        .iter()
        .flat_map(|&(start, end)| [(start, 1), (end, -1)])
        .collect();
    events.sort();
    let (mut inside, mut most) = (0, 0);
    for (_, step) in events {
        inside += step;
        most = most.max(inside);
    }
    assert!(
        most <= 3,
        "{most} holders of a semaphore of 3 at once ({} spans)",
        spans.len()
    );
    assert!(spans.len() > 20, "only {} permits were held", spans.len());
    assert!(
        losses.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the cuts never took a permit away: the test did not test"
    );
}

macro_rules! scenarios {
    ($($name:ident: $scenario:ident::<$target:ty>),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $scenario::<$target>().await
            }
        )+
    };
}

scenarios! {
    redis_short_blackhole_is_survived: short_blackhole_is_survived::<Redis>,
    etcd_short_blackhole_is_survived: short_blackhole_is_survived::<Etcd>,
    redis_long_blackhole_fires_lost_before_the_server_expiry:
        long_blackhole_fires_lost_before_the_server_expiry::<Redis>,
    etcd_long_blackhole_fires_lost_before_the_lease_expires:
        long_blackhole_fires_lost_before_the_server_expiry::<Etcd>,
    redis_reset_while_held_keeps_the_lock: reset_while_held_keeps_the_lock::<Redis>,
    etcd_reset_while_held_keeps_the_lock: reset_while_held_keeps_the_lock::<Etcd>,
    redis_reset_while_waiting_still_acquires: reset_while_waiting_still_acquires::<Redis>,
    etcd_reset_while_waiting_still_acquires: reset_while_waiting_still_acquires::<Etcd>,
    redis_semaphore_holders_stay_at_most_n_with_renewals_cut:
        semaphore_holders_stay_at_most_n_with_renewals_cut::<Redis>,
    etcd_semaphore_holders_stay_at_most_n_with_renewals_cut:
        semaphore_holders_stay_at_most_n_with_renewals_cut::<Etcd>,
}

#[cfg(feature = "postgres")]
scenarios! {
    postgres_short_blackhole_is_survived: short_blackhole_is_survived::<Postgres>,
    postgres_long_blackhole_fires_lost_before_the_server_expiry:
        long_blackhole_fires_lost_before_the_server_expiry::<Postgres>,
    postgres_reset_while_held_keeps_the_lock: reset_while_held_keeps_the_lock::<Postgres>,
    postgres_reset_while_waiting_still_acquires: reset_while_waiting_still_acquires::<Postgres>,
    postgres_semaphore_holders_stay_at_most_n_with_renewals_cut:
        semaphore_holders_stay_at_most_n_with_renewals_cut::<Postgres>,
}

// ---------------------------------------------------------------------------------------
// Redis only: data-losing restart, server down, blackholed server at lock time. (etcd keeps
// its data across restarts; its dead-endpoint case is in tests/etcd.rs.)

/// A locker on a server the test restarts or kills itself.
async fn redis_direct(server: &support::RedisServer) -> Locker {
    let conn = server.connection_manager().await;
    Locker::builder(config(Driver::Redis))
        .redis(conn)
        .build()
        .expect("build")
}

/// Scenario 4: Redis restarted without persistence while held: `lost()` at the next renewal, and the
/// next holder's fencing token is still greater (the counter restarts from the server clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_fires_lost_and_fencing_still_increases() {
    let mut server = support::RedisServer::start().await;
    let locker = redis_direct(&server).await;
    let guard = locker.lock("k").await.expect("lock");
    let old_token = guard.fencing_token();
    let lost = guard.lost();
    server.restart().await;
    let restarted = Instant::now();
    timeout(TTL, lost.cancelled())
        .await
        .expect("lost() did not fire after a data-losing restart");
    let noticed = restarted.elapsed();
    assert!(noticed < TTL, "loss noticed {noticed:?} after the restart");
    let next = redis_direct(&server).await;
    let new_guard = next.lock("k").await.expect("lock after restart");
    assert!(
        new_guard.fencing_token() > old_token,
        "fencing token went backwards across a restart: {} -> {}",
        old_token,
        new_guard.fencing_token()
    );
    assert!(guard.release().await.is_err());
    new_guard.release().await.expect("release");
}

/// Scenario 5: Server down when `lock()` is called: a typed error within the wait timeout, and no
/// hang without one either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_a_typed_error_not_a_hang() {
    let mut server = support::RedisServer::start().await;
    let locker = redis_direct(&server).await;
    server.kill();
    let options = LockOptions::new().wait_timeout(Duration::from_secs(1));
    let outcome = timeout(Duration::from_secs(3), locker.lock_with("k", options))
        .await
        .expect("lock_with hung past its wait timeout");
    assert!(
        matches!(
            outcome,
            Err(Error::Backend { .. }) | Err(Error::Timeout { .. })
        ),
        "expected a backend error or Timeout, got {outcome:?}"
    );
    let outcome = timeout(TTL + Duration::from_secs(2), locker.lock("k"))
        .await
        .expect("lock() with no timeout hung with the server down");
    assert!(
        matches!(outcome, Err(Error::Backend { .. })),
        "got {outcome:?}"
    );
    let outcome = timeout(TTL + Duration::from_secs(2), locker.try_lock("k")).await;
    assert!(
        matches!(outcome, Ok(Err(Error::Backend { .. }))),
        "try_lock: {outcome:?}"
    );
}

/// Scenario 5b: Blackholed server (accepts, never answers) when `lock()` is called: bounded by the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_blackholed_lock_call_is_bounded() {
    blackholed_lock_call_is_bounded::<Redis>().await
}

/// Scenario 5b on PostgreSQL: every pooled connection, and any new one, is blackholed.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_blackholed_lock_call_is_bounded() {
    blackholed_lock_call_is_bounded::<Postgres>().await
}

async fn blackholed_lock_call_is_bounded<F: Proxied>() {
    let target = Target::<F>::start().await;
    let proxy = &target.proxy;
    let locker = target.via_proxy().await;
    proxy.blackhole();
    let started = Instant::now();
    let outcome = timeout(TTL * 3, locker.lock("k"))
        .await
        .expect("lock() hung on a blackholed server");
    assert!(
        matches!(outcome, Err(Error::Backend { .. })),
        "got {outcome:?}"
    );
    assert!(started.elapsed() < TTL * 2, "took {:?}", started.elapsed());
    proxy.pass();
}
