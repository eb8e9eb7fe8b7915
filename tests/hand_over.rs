//! Redis: a holder hands the lock over to the next waiter of the same locker in one script,
//! instead of releasing it for every process's waiters to race for (bounded: every ninth
//! release goes to the server). Exclusion and fencing hold across hand-overs, and a waiter
//! that leaves while the lock is being handed to it leaves no lock behind.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{Config, Driver, Locker};
use tokio::time::{sleep, timeout};

fn config() -> Config {
    dlock::testing::config(Driver::Redis, "hand:", Duration::from_secs(10))
}

/// 8 tasks of one locker, 50 acquisitions each, on one key: about one script per
/// acquisition (a release and an obtain are two), fencing tokens strictly increasing in the
/// order the critical sections ran, and never two tasks inside at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_the_lock_to_a_waiter_of_the_same_locker_in_one_script() {
    let server = support::RedisServer::start().await;
    let locker = Locker::builder(config())
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    let mut admin = server.connection_manager().await;
    let before = support::script_calls(&mut admin).await;
    let (tasks, rounds) = (8, 50);
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let inside = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut running = Vec::new();
    for _ in 0..tasks {
        let (locker, tokens, inside) = (locker.clone(), tokens.clone(), inside.clone());
        running.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let guard = locker.lock("hot").await.expect("lock");
                let was = inside.swap(true, std::sync::atomic::Ordering::SeqCst);
                assert!(!was, "two tasks inside the critical section at once");
                tokens.lock().unwrap().push(guard.fencing_token());
                tokio::task::yield_now().await;
                inside.store(false, std::sync::atomic::Ordering::SeqCst);
                guard.release().await.expect("release");
            }
        }));
    }
    for task in running {
        task.await.expect("task");
    }
    let scripts = support::script_calls(&mut admin).await - before;
    let acquisitions = (tasks * rounds) as f64;
    let per_acquisition = scripts as f64 / acquisitions;
    let tokens = tokens.lock().unwrap();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens did not increase across hand-overs"
    );
    assert!(
        per_acquisition <= 1.5,
        "{per_acquisition:.2} scripts per acquisition: releases are not handed over"
    );
    println!("{per_acquisition:.2} scripts per acquisition");
}

/// A waiter dropped at random moments while the holder hands it the lock: afterwards the
/// key is free (absent or a release's tombstone), so nothing was left owned by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_leaves_during_a_hand_over_leaves_no_lock() {
    let server = support::RedisServer::start().await;
    let locker = Locker::builder(config())
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    for round in 0..200u64 {
        let holder = locker.lock("cut").await.expect("lock");
        let waiter = {
            let locker = locker.clone();
            tokio::spawn(async move {
                let _ = timeout(Duration::from_millis(5), locker.lock("cut")).await;
            })
        };
        // Let the waiter get in line, then release around the moment it gives up.
        sleep(Duration::from_micros(4_000 + (round * 37) % 2_000)).await;
        holder.release().await.expect("release");
        waiter.await.expect("waiter");
    }
    // Undos run in the background; then a fresh try_lock must find the key free.
    sleep(Duration::from_millis(500)).await;
    let free = locker.try_lock("cut").await.expect("try_lock");
    assert!(
        free.is_some(),
        "a lock handed to a waiter that left is still held"
    );
}
