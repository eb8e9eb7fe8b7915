//! Redis release notifications: one subscription per locker and waited-on key, gone when
//! nobody waits, and polling that keeps working when notifications cannot be had.

mod support;

use std::time::Duration;

use dlock::{Config, Driver, LockOptions, Locker};
use redis::AsyncCommands;
use tokio::time::{sleep, timeout, Instant};

fn config() -> Config {
    Config {
        driver: Driver::Redis,
        prefix: "note:".into(),
        default_ttl: Duration::from_secs(10),
        retry_interval: Duration::from_millis(50),
    }
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
    let holder = Locker::builder(config())
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    let waiters = Locker::builder(config())
        .redis(server.connection_manager().await)
        .redis_pubsub(redis::Client::open(server.url()).unwrap())
        .build()
        .expect("build");
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
    let deadline = Instant::now() + Duration::from_secs(2);
    while subscribers(&mut admin, channel).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the subscription outlived the last waiter"
        );
        sleep(Duration::from_millis(10)).await;
    }
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
