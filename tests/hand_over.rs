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

/// A connection that holds back the reply to hand_over.lua for `delay` once armed: the
/// script has run on the server, its caller does not know yet.
#[derive(Clone)]
struct SlowHandOver {
    inner: redis::aio::ConnectionManager,
    delay: Arc<Mutex<Option<Duration>>>,
}

impl SlowHandOver {
    fn is_hand_over(cmd: &redis::Cmd) -> bool {
        static HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            redis::Script::new(include_str!("../src/backend/redis/hand_over.lua"))
                .get_hash()
                .to_owned()
        });
        let packed = cmd.get_packed_command();
        let text = String::from_utf8_lossy(&packed);
        text.contains(HASH.as_str()) || text.contains("Hand a held lock over")
    }
}

impl redis::aio::ConnectionLike for SlowHandOver {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        let delay = Self::is_hand_over(cmd)
            .then(|| *self.delay.lock().unwrap())
            .flatten();
        let mut conn = self.inner.clone();
        Box::pin(async move {
            let reply = conn.req_packed_command(cmd).await;
            if let Some(delay) = delay {
                sleep(delay).await;
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        let mut conn = self.inner.clone();
        Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// The torture checker's overlap (election mode, 2 runs of 10), made deterministic: the
/// holder hands the lock to the head of its locker's line, and the reply to hand_over.lua is
/// slow. Meanwhile the head's own poll reaches the server, finds the lock already under its
/// token (obtain.lua answers it as its own) and returns a guard. The holder then finds the
/// head's channel closed, took that for "the waiter left", and released the head's token:
/// the head's guard lived on while the lock was free, and another locker took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_racing_the_takers_own_attempt_leaves_the_taker_holding() {
    let server = support::RedisServer::start().await;
    let delay = Arc::new(Mutex::new(None));
    let conn = SlowHandOver {
        inner: server.connection_manager().await,
        delay: delay.clone(),
    };
    let locker = Locker::builder(config())
        .redis(conn)
        .build()
        .expect("build");
    let other = Locker::builder(config())
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    // The scripts are loaded first (an unknown script's EVALSHA is sent again as EVAL).
    let warm = locker.lock("race").await.expect("lock");
    let taker = {
        let locker = locker.clone();
        tokio::spawn(async move { locker.lock("race").await.expect("lock") })
    };
    sleep(Duration::from_millis(100)).await;
    warm.release().await.expect("release");
    // Handed over once: both scripts are loaded.
    taker
        .await
        .expect("taker")
        .release()
        .await
        .expect("release");
    let holder = locker.lock("race").await.expect("lock");

    // The head waits in line (polling every 20 ms) while the holder holds.
    let taker = {
        let locker = locker.clone();
        tokio::spawn(async move { locker.lock("race").await.expect("lock") })
    };
    sleep(Duration::from_millis(100)).await;
    // The hand-over's reply takes 300 ms: the head polls about 15 times meanwhile.
    *delay.lock().unwrap() = Some(Duration::from_millis(300));
    holder.release().await.expect("release");
    *delay.lock().unwrap() = None;
    let taken = taker.await.expect("taker");
    assert!(!taken.is_lost(), "the head's guard is lost");
    let intruder = other.try_lock("race").await.expect("try_lock");
    assert!(
        intruder.is_none(),
        "another locker took the lock while the head's guard (fencing token {}) holds it",
        taken.fencing_token()
    );
    let holder = other.holder("race").await.expect("holder");
    assert_eq!(
        holder.map(|h| h.fencing_token),
        Some(taken.fencing_token()),
        "the server does not name the head's guard as the holder"
    );
    taken.release().await.expect("release");
}
