//! Redis release notifications: one subscription per locker and waited-on key, gone when
//! nobody waits, and polling that keeps working when notifications cannot be had.

mod support;

use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker};
use redis::AsyncCommands;
use tokio::time::{sleep, timeout, Instant};

fn config() -> Config {
    Config {
        driver: Driver::Redis,
        prefix: "note:".into(),
        default_ttl: Duration::from_secs(10),
        retry_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

/// A holder without notifications, and a locker for waiters whose notifications come
/// through `pubsub_url`.
async fn holder_and_waiters(server: &support::RedisServer, pubsub_url: &str) -> (Locker, Locker) {
    let holder = Locker::builder(config())
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    let waiters = Locker::builder(config())
        .redis(server.connection_manager().await)
        .redis_pubsub(redis::Client::open(pubsub_url).unwrap())
        .build()
        .expect("build");
    (holder, waiters)
}

async fn subscribers(admin: &mut redis::aio::ConnectionManager, channel: &str) -> i64 {
    let reply: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(admin)
        .await
        .expect("PUBSUB NUMSUB");
    reply.first().map_or(0, |(_, n)| *n)
}

/// Ten waiters of one locker share one subscription, and it is dropped when they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_per_locker_and_key_released_when_nobody_waits() {
    let server = support::RedisServer::start().await;
    let mut admin = server.connection_manager().await;
    let (holder, waiters) = holder_and_waiters(&server, &server.url()).await;
    let held = holder.lock("k").await.expect("lock");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let waiters = waiters.clone();
        tasks.push(tokio::spawn(async move {
            let guard = waiters.lock("k").await.expect("waiter lock");
            guard.release().await.expect("waiter release");
        }));
    }
    let channel = "note:{k}:released";
    let deadline = Instant::now() + Duration::from_secs(5);
    while subscribers(&mut admin, channel).await == 0 {
        assert!(Instant::now() < deadline, "the waiters never subscribed");
        sleep(Duration::from_millis(10)).await;
    }
    sleep(Duration::from_millis(100)).await;
    assert_eq!(
        subscribers(&mut admin, channel).await,
        1,
        "ten waiters, one subscription"
    );
    held.release().await.expect("release");
    for task in tasks {
        timeout(Duration::from_secs(10), task)
            .await
            .expect("a waiter starved")
            .unwrap();
    }
    wait_for_subscribers(&mut admin, channel, 0, "after the last waiter left").await;
}

/// With the notification connection unreachable, waiting falls back to polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_polls_when_notifications_are_unavailable() {
    let server = support::RedisServer::start().await;
    let mut admin = server.connection_manager().await;
    let dead_port = support::free_port();
    let waiter = Locker::builder(config())
        .redis(server.connection_manager().await)
        .redis_pubsub(redis::Client::open(format!("redis://127.0.0.1:{dead_port}/")).unwrap())
        .build()
        .expect("build");
    let holder = Locker::builder(config())
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    let held = holder.lock("k").await.expect("lock");
    let waiting = tokio::spawn(async move {
        waiter
            .lock_with(
                "k",
                LockOptions::new().wait_timeout(Duration::from_secs(10)),
            )
            .await
    });
    sleep(Duration::from_millis(200)).await;
    // Freed behind everyone's back: no notification, no local wake-up; only polling sees it.
    let _: i64 = admin.del("note:{k}").await.expect("DEL");
    let guard = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter never noticed the free lock")
        .unwrap()
        .expect("lock through polling");
    guard.release().await.expect("release");
    drop(held);
}

async fn wait_for_subscribers(
    admin: &mut redis::aio::ConnectionManager,
    channel: &str,
    want: i64,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = subscribers(admin, channel).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} subscribers, expected {want}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// A waiter cancelled while its subscription is being set up leaks nothing, and the next
/// waiter of that key is subscribed (issue 10, defect 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiters_leave_no_subscription_and_later_waiters_subscribe() {
    let server = support::RedisServer::start().await;
    let mut admin = server.connection_manager().await;
    let pubsub_proxy = support::Proxy::start(server.addr()).await;
    let pubsub_url = format!("redis://{}/", pubsub_proxy.addr());
    let (holder, waiters) = holder_and_waiters(&server, &pubsub_url).await;
    let held = holder.lock("k").await.expect("lock");
    pubsub_proxy.delay(Duration::from_millis(300));
    for _ in 0..3 {
        let short = LockOptions::new().wait_timeout(Duration::from_millis(50));
        let outcome = waiters.lock_with("k", short).await;
        assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
    }
    pubsub_proxy.pass();
    let channel = "note:{k}:released";
    wait_for_subscribers(&mut admin, channel, 0, "after the cancelled waiters").await;
    let waiter = {
        let waiters = waiters.clone();
        tokio::spawn(async move { waiters.lock("k").await.map(|g| g.fencing_token()) })
    };
    wait_for_subscribers(&mut admin, channel, 1, "while a new waiter waits").await;
    held.release().await.expect("release");
    timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter was never woken")
        .expect("task")
        .expect("waiter lock");
    wait_for_subscribers(&mut admin, channel, 0, "after the last waiter left").await;
}

/// An unreachable notification server does not make each new waiter wait in turn (issue 10,
/// defect 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_notification_server_does_not_delay_waiters() {
    let server = support::RedisServer::start().await;
    let dead = support::Proxy::start(server.addr()).await;
    dead.blackhole(); // accepts, never answers
    let locker = Locker::builder(config())
        .redis(server.connection_manager().await)
        .redis_pubsub(redis::Client::open(format!("redis://{}/", dead.addr())).unwrap())
        .build()
        .expect("build");
    let started = Instant::now();
    // Four rounds, each with a new first waiter: each would try to subscribe again.
    for _ in 0..4 {
        let held = locker.lock("k").await.expect("lock");
        let waiter = tokio::spawn({
            let locker = locker.clone();
            async move { locker.lock("k").await.expect("waiter lock").release().await }
        });
        sleep(Duration::from_millis(20)).await;
        held.release().await.expect("release");
        waiter.await.expect("task").expect("waiter release");
    }
    // Handoffs within this process need no notification at all; 1 s per waiter spent on
    // subscription attempts would make this take 4 s.
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "four handoffs took {took:?}: each waiter waited for the unreachable notification server"
    );
}

/// PUBLISH commands the server has run so far, from `INFO commandstats`.
async fn publishes(admin: &mut redis::aio::ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .expect("INFO commandstats");
    info.lines()
        .find(|l| l.starts_with("cmdstat_publish:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Nobody waits, so no release publishes (issue 12): the uncontended pair costs the server
/// no PUBLISH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_waiters_publishes_nothing() {
    let server = support::RedisServer::start().await;
    let mut admin = server.connection_manager().await;
    let (holder, waiters) = holder_and_waiters(&server, &server.url()).await;
    for locker in [&holder, &waiters, &holder] {
        for _ in 0..5 {
            support::lock_and_release(locker, "k").await;
        }
    }
    assert_eq!(
        publishes(&mut admin).await,
        0,
        "releases nobody waited for published"
    );
}

/// A waiter of another locker announces itself on the held lock, so the release wakes it
/// at once, long before its next poll (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_an_announced_waiter_of_another_locker() {
    let server = support::RedisServer::start().await;
    let mut admin = server.connection_manager().await;
    let holder = Locker::builder(config())
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    let slow_polling = Config {
        retry_interval: Duration::from_secs(60),
        ..config()
    };
    let waiter = Locker::builder(slow_polling)
        .redis(server.connection_manager().await)
        .redis_pubsub(redis::Client::open(server.url()).unwrap())
        .build()
        .expect("build");
    let held = holder.lock("k").await.expect("lock");
    let waiting = tokio::spawn(async move { waiter.lock("k").await.map(|g| g.fencing_token()) });
    wait_for_subscribers(&mut admin, "note:{k}:released", 1, "while the waiter waits").await;
    held.release().await.expect("release");
    timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter was not woken by the release (it would poll only after 60 s)")
        .expect("task")
        .expect("waiter lock");
}

/// A waiter that gave up leaves its mark on the held lock: its release publishes once, the
/// next holder's release does not (issue 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gave_up_costs_at_most_one_publish() {
    let server = support::RedisServer::start().await;
    let mut admin = server.connection_manager().await;
    let (holder, waiters) = holder_and_waiters(&server, &server.url()).await;
    let held = holder.lock("k").await.expect("lock");
    let short = LockOptions::new().wait_timeout(Duration::from_millis(300));
    let outcome = waiters.lock_with("k", short).await;
    assert!(matches!(outcome, Err(Error::Timeout { .. })), "{outcome:?}");
    held.release().await.expect("release");
    let after_marked = publishes(&mut admin).await;
    assert!(
        after_marked <= 1,
        "{after_marked} publishes for one marked release"
    );
    support::lock_and_release(&holder, "k").await;
    assert_eq!(
        publishes(&mut admin).await,
        after_marked,
        "the mark of a waiter that gave up outlived the holder it marked"
    );
}
