//! Fault injection on real servers, loopback only: the locker talks to the server through
//! `support::Proxy`, which delays, blackholes or resets its traffic, while the test watches
//! the server directly.

mod support;

use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker};
use redis::AsyncCommands;
use tokio::time::{sleep, timeout, Instant};

const TTL: Duration = Duration::from_secs(2);

fn config() -> Config {
    Config {
        driver: Driver::Redis,
        prefix: "fault:".into(),
        default_ttl: TTL,
        retry_interval: Duration::from_millis(20),
    }
}

/// A locker whose every byte goes through `proxy`.
async fn redis_locker_via(proxy: &support::Proxy) -> Locker {
    let url = format!("redis://{}/", proxy.addr());
    let conn = support::connection_manager_at(&url).await;
    let pubsub = redis::Client::open(url).expect("url");
    Locker::builder(config())
        .redis(conn)
        .redis_pubsub(pubsub)
        .build()
        .expect("build")
}

async fn direct_locker(server: &support::RedisServer) -> Locker {
    Locker::builder(config())
        .redis(server.connection_manager().await)
        .build()
        .expect("build")
}

/// 1. A blackhole shorter than TTL/2 while held: no false loss, renewal resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_short_blackhole_is_survived() {
    let server = support::RedisServer::start().await;
    let proxy = support::Proxy::start(server.addr()).await;
    let locker = redis_locker_via(&proxy).await;
    let rival = direct_locker(&server).await;
    let guard = locker.lock("k").await.expect("lock");
    let lost = guard.lost();

    proxy.blackhole();
    sleep(TTL / 2 - Duration::from_millis(100)).await;
    proxy.pass();
    // Two more full TTLs: only renewals after the blip can keep the key alive this long.
    for _ in 0..8 {
        sleep(TTL / 4).await;
        assert!(
            !lost.is_cancelled(),
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

/// 2. A blackhole longer than the TTL while held: `lost()` fires before the server expires
/// the key, so the holder stops before anyone else can take the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_long_blackhole_fires_lost_before_the_server_expiry() {
    let server = support::RedisServer::start().await;
    let proxy = support::Proxy::start(server.addr()).await;
    let locker = redis_locker_via(&proxy).await;
    let guard = locker.lock("k").await.expect("lock");
    let lost = guard.lost();
    let mut watcher = server.connection_manager().await;

    proxy.blackhole();
    let lost_at = tokio::spawn(async move {
        lost.cancelled().await;
        Instant::now()
    });
    // Watch the key from a direct connection until the server expires it.
    let deadline = Instant::now() + TTL * 2;
    let gone_at = loop {
        let exists: bool = watcher.exists("fault:{k}").await.expect("EXISTS");
        if !exists {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the key outlived twice its TTL without renewal"
        );
        sleep(Duration::from_millis(5)).await;
    };
    let lost_at = timeout(Duration::from_secs(1), lost_at)
        .await
        .expect("lost() never fired during a partition longer than the TTL")
        .unwrap();
    assert!(
        lost_at < gone_at,
        "lost() fired {:?} after the server expired the key",
        lost_at - gone_at
    );
    proxy.pass();
    assert!(matches!(
        guard.release().await,
        Err(Error::OwnershipLost { .. })
    ));
}

/// 3a. Every connection reset while held: the connection manager reconnects and renewal goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reset_while_held_keeps_the_lock() {
    let server = support::RedisServer::start().await;
    let proxy = support::Proxy::start(server.addr()).await;
    let locker = redis_locker_via(&proxy).await;
    let rival = direct_locker(&server).await;
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

/// 3b. Connections reset while a `lock()` waits: the waiter still acquires after the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_reset_while_waiting_still_acquires() {
    let server = support::RedisServer::start().await;
    let proxy = support::Proxy::start(server.addr()).await;
    let waiter = redis_locker_via(&proxy).await;
    let holder = direct_locker(&server).await;
    let held = holder.lock("k").await.expect("lock");
    let waiting = tokio::spawn(async move {
        let mut attempts = 0;
        // A reset can fail one attempt with a backend error; waiting resumes with a new call.
        loop {
            attempts += 1;
            match waiter
                .lock_with(
                    "k",
                    LockOptions::new().wait_timeout(Duration::from_secs(10)),
                )
                .await
            {
                Ok(guard) => return (guard, attempts),
                Err(Error::Backend { .. }) if attempts < 5 => {
                    sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("waiter failed: {e}"),
            }
        }
    });
    sleep(Duration::from_millis(200)).await;
    proxy.reset_all();
    sleep(Duration::from_millis(200)).await;
    held.release().await.expect("release");
    let (guard, attempts) = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter never acquired after the reset")
        .unwrap();
    assert!(attempts <= 5);
    guard.release().await.expect("release");
}

/// 4. Redis restarted without persistence while held: `lost()` at the next renewal, and the
/// next holder's fencing token is still greater (the counter restarts from the server clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_fires_lost_and_fencing_still_increases() {
    let mut server = support::RedisServer::start().await;
    let locker = direct_locker(&server).await;
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
    let next = direct_locker(&server).await;
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

/// 5. Server down when `lock()` is called: a typed error within the wait timeout, and no
/// hang without one either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_a_typed_error_not_a_hang() {
    let mut server = support::RedisServer::start().await;
    let locker = direct_locker(&server).await;
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

/// 5b. Blackholed server (accepts, never answers) when `lock()` is called: bounded by the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_blackholed_lock_call_is_bounded() {
    let server = support::RedisServer::start().await;
    let proxy = support::Proxy::start(server.addr()).await;
    let locker = redis_locker_via(&proxy).await;
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

// ---------------------------------------------------------------------------------------
// etcd, through the proxy

async fn etcd_locker_via(proxy: &support::Proxy) -> Locker {
    let client = support::client_at(&[format!("http://{}", proxy.addr())]).await;
    let config = Config {
        driver: Driver::Etcd,
        ..config()
    };
    Locker::builder(config).etcd(client).build().expect("build")
}

async fn etcd_direct_locker(server: &support::EtcdServer) -> Locker {
    let config = Config {
        driver: Driver::Etcd,
        ..config()
    };
    Locker::builder(config)
        .etcd(server.client().await)
        .build()
        .expect("build")
}

async fn etcd_lock_keys(admin: &etcd_client::Client) -> i64 {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let mut kv = admin.kv_client();
    kv.get("fault:k/", Some(options))
        .await
        .expect("count")
        .count()
}

/// 1. etcd: a blackhole shorter than TTL/2 while held is survived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_short_blackhole_is_survived() {
    let server = support::EtcdServer::start().await;
    let proxy = support::Proxy::start(server.client_addr()).await;
    let locker = etcd_locker_via(&proxy).await;
    let rival = etcd_direct_locker(&server).await;
    let guard = locker.lock("k").await.expect("lock");
    proxy.blackhole();
    sleep(TTL / 2 - Duration::from_millis(100)).await;
    proxy.pass();
    for _ in 0..8 {
        sleep(TTL / 4).await;
        assert!(
            !guard.is_lost(),
            "lost() fired after a blip shorter than TTL/2"
        );
        let stolen = rival.try_lock("k").await.expect("rival try_lock");
        assert!(
            stolen.is_none(),
            "the lease expired: keep-alive did not resume after the blip"
        );
    }
    guard.release().await.expect("release after the blip");
}

/// 2. etcd: a blackhole longer than the TTL fires `lost()` before the lease expires on the
/// server (watched directly: the key disappears with the lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_long_blackhole_fires_lost_before_the_lease_expires() {
    let server = support::EtcdServer::start().await;
    let proxy = support::Proxy::start(server.client_addr()).await;
    let locker = etcd_locker_via(&proxy).await;
    let admin = server.client().await;
    let guard = locker.lock("k").await.expect("lock");
    let lost = guard.lost();
    proxy.blackhole();
    let lost_at = tokio::spawn(async move {
        lost.cancelled().await;
        Instant::now()
    });
    let deadline = Instant::now() + TTL * 3;
    let gone_at = loop {
        if etcd_lock_keys(&admin).await == 0 {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the lease outlived three TTLs without keep-alive"
        );
        sleep(Duration::from_millis(5)).await;
    };
    let lost_at = timeout(Duration::from_secs(1), lost_at)
        .await
        .expect("lost() never fired during a partition longer than the TTL")
        .unwrap();
    assert!(
        lost_at < gone_at,
        "lost() fired {:?} after the lease expired",
        lost_at - gone_at
    );
    proxy.pass();
    assert!(guard.release().await.is_err());
}

/// 3. etcd: connections reset while held (keep-alive reconnects) and while a `lock()` waits
/// (it still acquires once the holder releases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_resets_while_held_and_waiting() {
    let server = support::EtcdServer::start().await;
    let proxy = support::Proxy::start(server.client_addr()).await;
    let locker = etcd_locker_via(&proxy).await;
    let rival = etcd_direct_locker(&server).await;
    let guard = locker.lock("k").await.expect("lock");
    for _ in 0..3 {
        proxy.reset_all();
        sleep(TTL / 2).await;
    }
    assert!(
        !guard.is_lost(),
        "resets shorter than the TTL must not lose the lease"
    );
    assert!(
        rival.try_lock("k").await.expect("try_lock").is_none(),
        "the lease expired"
    );

    let waiter = etcd_locker_via(&proxy).await;
    let waiting = tokio::spawn(async move {
        for attempt in 1..=5 {
            let options = LockOptions::new().wait_timeout(Duration::from_secs(10));
            match waiter.lock_with("k", options).await {
                Ok(guard) => return guard,
                Err(Error::Backend { .. }) if attempt < 5 => sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("waiter failed: {e}"),
            }
        }
        unreachable!()
    });
    sleep(Duration::from_millis(300)).await;
    proxy.reset_all();
    sleep(Duration::from_millis(300)).await;
    guard.release().await.expect("release");
    let next = timeout(Duration::from_secs(8), waiting)
        .await
        .expect("the waiter never acquired after the reset")
        .unwrap();
    next.release().await.expect("release");
}
