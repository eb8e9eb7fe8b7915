//! Redis semaphores beyond the conformance suite: a release wakes a waiter of another
//! process without polling, and a waiter of one locker is not starved by the busy tasks of
//! another (the bound stated in the guide's guarantees chapter).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{Config, Driver, Locker};
use tokio::time::{sleep, timeout, Instant};

fn config(retry_interval: Duration) -> Config {
    Config {
        driver: Driver::Redis,
        prefix: "rs:".into(),
        default_ttl: Duration::from_secs(10),
        retry_interval,
        ..Default::default()
    }
}

/// A locker with its own connection, and release notifications when `pubsub`.
async fn locker(server: &support::RedisServer, retry_interval: Duration, pubsub: bool) -> Locker {
    let builder = Locker::builder(config(retry_interval)).redis(server.connection_manager().await);
    let builder = if pubsub {
        builder.redis_pubsub(redis::Client::open(server.url()).unwrap())
    } else {
        builder
    };
    builder.build().expect("build")
}

/// How many waiters have a place in the semaphore's line on the server.
async fn queued(admin: &mut redis::aio::ConnectionManager, name: &str) -> u64 {
    redis::cmd("ZCARD")
        .arg(format!("rs:{{{name}}}:wait"))
        .query_async(admin)
        .await
        .expect("ZCARD")
}

/// Polls are 30 s apart: a waiter that gets the permit within 2 s of the release was woken
/// by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_permit_waiter_of_another_locker() {
    let server = support::RedisServer::start().await;
    let slow_polls = Duration::from_secs(30);
    let holder = locker(&server, slow_polls, false).await;
    let waiters = locker(&server, slow_polls, true).await;
    let pair = holder.semaphore("pair", 2);
    let held = [pair.acquire().await.unwrap(), pair.acquire().await.unwrap()];
    let waiting = tokio::spawn(async move { waiters.semaphore("pair", 2).acquire().await });
    // Until the waiter has tried once (and marked the semaphore), a release could not
    // announce anything to it.
    sleep(Duration::from_millis(500)).await;
    let [first, second] = held;
    first.release().await.expect("release");
    let permit = timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the waiter was not woken by the release (its next poll is 30 s away)")
        .unwrap()
        .expect("acquire");
    assert!(permit.fencing_token() > second.fencing_token());
}

/// Six tasks of one locker try for permits of a semaphore of 2 back to back (`try_acquire`
/// in a tight loop: never in line), each holding one for 2 ms. A task of another locker, farther from the server
/// (10 ms each way), starts waiting: from the moment it has its place in the line on the
/// server, the busy tasks never again hold both permits (beyond at most N acquisitions
/// decided before), however much nearer the server they are: the next free permit is the
/// waiter's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_of_another_locker_is_not_starved_by_busy_tasks() {
    let server = support::RedisServer::start().await;
    let mut admin = server.connection_manager().await;
    let busy = locker(&server, Duration::from_millis(100), true).await;
    let far = support::Proxy::start(server.addr()).await;
    far.delay(Duration::from_millis(10));
    let far_url = format!("redis://{}/", far.addr());
    let patient = Locker::builder(config(Duration::from_millis(100)))
        .redis(support::connection_manager_at(&far_url).await)
        .redis_pubsub(redis::Client::open(far_url).unwrap())
        .build()
        .expect("build");
    let inside = Arc::new(AtomicU64::new(0));
    let (queued_now, overtook) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let (acquisitions, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let pair = busy.semaphore("pair", 2);
        let (inside, queued_now, overtook) = (inside.clone(), queued_now.clone(), overtook.clone());
        let (acquisitions, stop) = (acquisitions.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let Some(permit) = pair.try_acquire().await.expect("busy try") else {
                    sleep(Duration::from_micros(200)).await;
                    continue;
                };
                acquisitions.fetch_add(1, Ordering::SeqCst);
                if inside.fetch_add(1, Ordering::SeqCst) + 1 == 2
                    && queued_now.load(Ordering::SeqCst)
                {
                    overtook.fetch_add(1, Ordering::SeqCst);
                }
                sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.expect("busy release");
            }
        }));
    }
    sleep(Duration::from_millis(300)).await;
    let before = acquisitions.load(Ordering::SeqCst);
    assert!(
        before > 10,
        "the busy tasks are not cycling ({before} acquisitions)"
    );
    let mut rounds_in_line = 0;
    for round in 0..5 {
        overtook.store(0, Ordering::SeqCst);
        let waiting = {
            let pair = patient.semaphore("pair", 2);
            tokio::spawn(async move { pair.acquire().await })
        };
        let started = Instant::now();
        while !queued_now.load(Ordering::SeqCst) && !waiting.is_finished() {
            if queued(&mut admin, "pair").await > 0 {
                queued_now.store(true, Ordering::SeqCst);
            }
        }
        let permit = timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap_or_else(|_| panic!("round {round}: starved for 10 s"))
            .unwrap()
            .expect("patient acquire");
        let was_queued = queued_now.swap(false, Ordering::SeqCst);
        let overtaken = overtook.load(Ordering::SeqCst);
        assert!(
            overtaken <= 2,
            "round {round}: the busy tasks took the second permit {overtaken} times while the \
             waiter had its place in line (bound: N = 2 decided before); waited {:?}",
            started.elapsed()
        );
        rounds_in_line += u32::from(was_queued);
        permit.release().await.expect("patient release");
        sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("busy task");
    }
    // A round whose waiter found a permit free at its first attempt tests nothing.
    assert!(
        rounds_in_line >= 3,
        "the waiter had to wait in line in only {rounds_in_line} of 5 rounds"
    );
}

/// A waiter far from the server (300 ms each way) has its place in line when a permit is
/// released: a newcomer near the server that tries at once finds no permit (it is the
/// waiter's), and the waiter gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_never_takes_the_permit_a_waiter_is_due() {
    let server = support::RedisServer::start().await;
    let mut admin = server.connection_manager().await;
    let holder = locker(&server, Duration::from_millis(100), false).await;
    let newcomer = locker(&server, Duration::from_millis(100), false).await;
    let far = support::Proxy::start(server.addr()).await;
    let far_url = format!("redis://{}/", far.addr());
    let waiter = Locker::builder(config(Duration::from_secs(30)))
        .redis(support::connection_manager_at(&far_url).await)
        .redis_pubsub(redis::Client::open(far_url).unwrap())
        .build()
        .expect("build");
    let pair = holder.semaphore("pair", 2);
    let held = [pair.acquire().await.unwrap(), pair.acquire().await.unwrap()];
    let waiting = tokio::spawn(async move { waiter.semaphore("pair", 2).acquire().await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while queued(&mut admin, "pair").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the waiter never took its place in line"
        );
        sleep(Duration::from_millis(5)).await;
    }
    far.delay(Duration::from_millis(300));
    let [first, second] = held;
    first.release().await.expect("release");
    let taken = newcomer
        .semaphore("pair", 2)
        .try_acquire()
        .await
        .expect("try");
    assert!(
        taken.is_none(),
        "a newcomer took the permit that the waiter in line was due"
    );
    let permit = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter did not get the permit it was due")
        .unwrap()
        .expect("acquire");
    drop((permit, second));
}
