//! Semaphores on real etcd: at most N holders, FIFO waiters woken by watches, disagreeing
//! numbers of permits refused without a key left behind, permits that die with their holder,
//! cancelled acquires that leave nothing, and `holders()` / fencing tokens.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker};
use tokio::time::{sleep, timeout, Instant};

fn config(ttl: Duration) -> Config {
    Config {
        driver: Driver::Etcd,
        prefix: "etcd-sem:".into(),
        default_ttl: ttl,
        retry_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

fn locker(client: etcd_client::Client, ttl: Duration) -> Locker {
    Locker::builder(config(ttl))
        .etcd(client)
        .build()
        .expect("build")
}

/// How many keys are in the queue of `name` (holders and waiters).
async fn queue_len(client: &etcd_client::Client, name: &str) -> i64 {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let mut kv = client.kv_client();
    kv.get(format!("etcd-sem:{name}/"), Some(options))
        .await
        .expect("count")
        .count()
}

/// Polls until the queue of `name` has `len` keys, failing after `within`.
async fn await_queue_len(client: &etcd_client::Client, name: &str, len: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let queued = queue_len(client, name).await;
        if queued == len {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queued} keys in the queue of {name:?}, expected {len}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

/// 16 tasks over 3 lockers, each on its own client, 20 rounds each: never more than 3 in
/// the section at once, and 3 at some point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_n_hold_at_once() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let mut lockers = Vec::new();
    for _ in 0..3 {
        lockers.push(locker(server.client().await, Duration::from_secs(5)));
    }
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let semaphore = lockers[t % 3].semaphore("pool", 3);
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..20 {
                let permit = if round % 4 == 0 {
                    match semaphore.try_acquire().await.expect("try_acquire") {
                        Some(permit) => permit,
                        None => continue,
                    }
                } else {
                    semaphore.acquire().await.expect("acquire")
                };
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                assert!(now <= 3, "{now} holders of a semaphore of 3");
                sleep(Duration::from_millis(fastrand::u64(1..5))).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.expect("release");
            }
        }));
    }
    for task in tasks {
        timeout(Duration::from_secs(60), task)
            .await
            .expect("a task starved")
            .unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 3, "never 3 holders at once");
    assert_eq!(queue_len(&admin, "pool").await, 0, "keys left in the queue");
}

/// With both permits of 2 held, waiters queued in a known order are granted in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_granted_in_request_order() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let holder = locker(server.client().await, Duration::from_secs(5));
    let first = holder.semaphore("fifo", 2).acquire().await.expect("first");
    let second = holder.semaphore("fifo", 2).acquire().await.expect("second");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..6 {
        let semaphore = locker(server.client().await, Duration::from_secs(5)).semaphore("fifo", 2);
        let order = order.clone();
        let (granted_tx, granted_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        waiters.push((
            tokio::spawn(async move {
                let permit = semaphore.acquire().await.expect("waiter acquire");
                order.lock().unwrap().push(i);
                let _ = granted_tx.send(());
                let _ = release_rx.await;
                permit.release().await.expect("waiter release");
            }),
            granted_rx,
            release_tx,
        ));
        // The next waiter starts only once this one's key is in the queue.
        await_queue_len(&admin, "fifo", i + 3, Duration::from_secs(5)).await;
    }
    // Release one permit at a time, and wait for its grant before the next release: each
    // release grants exactly the next waiter in line (two at once would let the two granted
    // tasks record themselves in either order).
    let mut granted_rx = Vec::new();
    let mut running = Vec::new();
    for (task, granted, release) in waiters {
        granted_rx.push(granted);
        running.push((task, release));
    }
    let mut granted_rx = granted_rx.into_iter().enumerate();
    let mut next_grant = || {
        let (i, granted) = granted_rx.next().expect("a waiter left");
        async move {
            timeout(Duration::from_secs(10), granted)
                .await
                .unwrap_or_else(|_| panic!("waiter {i} starved"))
                .expect("granted");
        }
    };
    first.release().await.expect("release first");
    next_grant().await;
    second.release().await.expect("release second");
    next_grant().await;
    let mut running = running.into_iter();
    for _ in 2..6 {
        let (task, release) = running.next().expect("a running waiter");
        release.send(()).unwrap();
        task.await.unwrap();
        next_grant().await;
    }
    for (task, release) in running {
        release.send(()).unwrap();
        task.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        (0..6).collect::<Vec<_>>(),
        "not granted in request order"
    );
    await_queue_len(&admin, "fifo", 0, Duration::from_secs(5)).await;
}

/// A release wakes a waiter at once: with a 30 s retry interval, polling cannot be what
/// grants it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiter_without_polling() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let slow = |client| {
        Locker::builder(Config {
            retry_interval: Duration::from_secs(30),
            ..config(Duration::from_secs(5))
        })
        .etcd(client)
        .build()
        .expect("build")
    };
    let holder = slow(server.client().await);
    let waiter = slow(server.client().await).semaphore("wake", 2);
    let a = holder.semaphore("wake", 2).acquire().await.expect("a");
    let b = holder.semaphore("wake", 2).acquire().await.expect("b");
    let waiting = tokio::spawn(async move { waiter.acquire().await });
    await_queue_len(&admin, "wake", 3, Duration::from_secs(5)).await;
    // Let the waiter settle into its watch.
    sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    b.release().await.expect("release");
    let permit = timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the waiter was not woken within 2 s of a release")
        .unwrap()
        .expect("acquire");
    assert!(released.elapsed() < Duration::from_secs(2));
    assert!(permit.fencing_token() > a.fencing_token());
    drop((a, permit));
}

fn assert_mismatch<T: std::fmt::Debug>(outcome: dlock::Result<T>, asked: u32, held: u32) {
    match outcome {
        Err(Error::PermitsMismatch {
            asked: a, held: h, ..
        }) if (a, h) == (asked, held) => {}
        other => {
            panic!("expected PermitsMismatch {{ asked: {asked}, held: {held} }}, got {other:?}")
        }
    }
}

/// Disagreeing numbers of permits: semaphore 3 vs 2, lock vs semaphore, semaphore vs lock,
/// on the try and the waiting paths; no key is left by a refused attempt, and once every
/// holder is gone the other number works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreeing_permits_are_refused_and_leave_no_key() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let a = locker(server.client().await, Duration::from_secs(5));
    let b = locker(server.client().await, Duration::from_secs(5));
    let wait = LockOptions::new().wait_timeout(Duration::from_secs(3));

    // A semaphore of 3 held (1 of 3): 2 and a lock are refused.
    let held = a.semaphore("mix", 3).acquire().await.expect("acquire");
    assert_mismatch(b.semaphore("mix", 2).try_acquire().await, 2, 3);
    assert_mismatch(b.semaphore("mix", 2).acquire_with(wait).await, 2, 3);
    assert_mismatch(b.try_lock("mix").await, 1, 3);
    assert_mismatch(b.lock_with("mix", wait).await, 1, 3);
    assert_mismatch(b.holder("mix").await, 1, 3);
    assert_mismatch(b.semaphore("mix", 2).holders().await, 2, 3);
    assert_eq!(
        queue_len(&admin, "mix").await,
        1,
        "a refused attempt left a key"
    );
    // Full (3 of 3): still refused, not `None`.
    let more = [
        a.semaphore("mix", 3).acquire().await.expect("2nd"),
        a.semaphore("mix", 3).acquire().await.expect("3rd"),
    ];
    assert_mismatch(b.semaphore("mix", 2).try_acquire().await, 2, 3);
    assert_mismatch(b.semaphore("mix", 2).acquire_with(wait).await, 2, 3);
    assert_mismatch(b.try_lock("mix").await, 1, 3);
    assert_mismatch(b.lock_with("mix", wait).await, 1, 3);
    assert_eq!(
        queue_len(&admin, "mix").await,
        3,
        "a refused attempt left a key"
    );
    held.release().await.expect("release");
    for permit in more {
        permit.release().await.expect("release");
    }
    assert_eq!(queue_len(&admin, "mix").await, 0);

    // Free again: a semaphore of 2 now stands, and 3 is refused.
    let two = b.semaphore("mix", 2).acquire().await.expect("2 after 3");
    assert_mismatch(a.semaphore("mix", 3).try_acquire().await, 3, 2);
    assert_mismatch(a.semaphore("mix", 3).acquire_with(wait).await, 3, 2);
    assert_eq!(
        queue_len(&admin, "mix").await,
        1,
        "a refused attempt left a key"
    );
    two.release().await.expect("release");

    // A lock held: semaphores are refused, on both paths.
    let lock = a.lock("mix").await.expect("lock");
    assert_mismatch(b.semaphore("mix", 5).try_acquire().await, 5, 1);
    assert_mismatch(b.semaphore("mix", 5).acquire_with(wait).await, 5, 1);
    assert_mismatch(b.semaphore("mix", 5).holders().await, 5, 1);
    assert_eq!(
        queue_len(&admin, "mix").await,
        1,
        "a refused attempt left a key"
    );
    // A lock waiter behind it is unaffected.
    assert!(b.try_lock("mix").await.expect("try_lock").is_none());
    lock.release().await.expect("release");
    assert_eq!(queue_len(&admin, "mix").await, 0);
    let five = b
        .semaphore("mix", 5)
        .try_acquire()
        .await
        .expect("5 after the lock");
    assert!(five.is_some());
    drop(five);
    await_queue_len(&admin, "mix", 0, Duration::from_secs(5)).await;
    let lock = a.try_lock("mix").await.expect("lock after 5");
    assert!(lock.is_some());
}

/// A locker holding both permits of 2 whose client is cut without releasing (its runtime
/// shut down): another locker gets both within TTL + 2 s, and nothing is left in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_die_with_their_holder() {
    let ttl = Duration::from_secs(2);
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let endpoint = server.endpoint();
    let doomed = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let client = support::client_at(&[endpoint]).await;
            let locker = locker(client, ttl);
            let a = locker.semaphore("crash", 2).acquire().await.expect("a");
            let b = locker.semaphore("crash", 2).acquire().await.expect("b");
            std::mem::forget((a, b, locker));
        });
        // Every task of the locker (its keep-alive included) stops here, nothing released.
        runtime.shutdown_background();
    });
    tokio::task::spawn_blocking(move || doomed.join().unwrap())
        .await
        .unwrap();
    assert_eq!(queue_len(&admin, "crash").await, 2);
    let other = locker(server.client().await, ttl).semaphore("crash", 2);
    assert!(other.try_acquire().await.expect("try").is_none());
    let cut = Instant::now();
    let both = timeout(ttl + Duration::from_secs(2), async {
        (
            other.acquire().await.expect("1st"),
            other.acquire().await.expect("2nd"),
        )
    })
    .await
    .expect("the permits of a dead holder were not freed within TTL + 2 s");
    assert!(cut.elapsed() <= ttl + Duration::from_secs(2));
    assert_eq!(queue_len(&admin, "crash").await, 2);
    drop(both);
    await_queue_len(&admin, "crash", 0, Duration::from_secs(5)).await;
}

/// Acquires dropped at random points, with both permits of 2 held and with permits free,
/// leave no key once settled, and never let a third in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_leave_no_key() {
    let ttl = Duration::from_secs(2);
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let holder = locker(server.client().await, ttl);
    let cutter = locker(server.client().await, ttl);
    let semaphore = cutter.semaphore("cut", 2);

    // Both held: every cut attempt is a waiter (or a `None`).
    let held = [
        holder.semaphore("cut", 2).acquire().await.expect("a"),
        holder.semaphore("cut", 2).acquire().await.expect("b"),
    ];
    for i in 0..50 {
        let cut = Duration::from_micros(fastrand::u64(0..4_000));
        if i % 2 == 0 {
            let got = timeout(cut, semaphore.acquire()).await;
            assert!(!matches!(got, Ok(Ok(_))), "a third permit of 2 was granted");
        } else {
            let got = timeout(cut, semaphore.try_acquire()).await;
            assert!(
                !matches!(got, Ok(Ok(Some(_)))),
                "a third permit of 2 was granted"
            );
        }
    }
    // Undone at once, or by the session's next key check (every TTL/3).
    await_queue_len(&admin, "cut", 2, ttl + Duration::from_secs(2)).await;
    drop(held);
    await_queue_len(&admin, "cut", 0, Duration::from_secs(5)).await;

    // Free: a cut attempt may or may not have been granted; a grant is dropped at once.
    for i in 0..50 {
        let cut = Duration::from_micros(fastrand::u64(0..4_000));
        if i % 2 == 0 {
            let _ = timeout(cut, semaphore.acquire()).await;
        } else {
            let _ = timeout(cut, semaphore.try_acquire()).await;
        }
    }
    await_queue_len(&admin, "cut", 0, ttl + Duration::from_secs(2)).await;
    // And the semaphore still counts right: 2 granted, a third is not.
    let a = semaphore.try_acquire().await.expect("a").expect("free");
    let b = semaphore.try_acquire().await.expect("b").expect("free");
    assert!(semaphore.try_acquire().await.expect("c").is_none());
    drop((a, b));
}

/// `holders()` lists exactly the current holders' fencing tokens, which strictly increase
/// across acquisitions; waiters are not holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_and_fencing_tokens() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let a = locker(server.client().await, Duration::from_secs(5));
    let b = locker(server.client().await, Duration::from_secs(5));
    let semaphore = a.semaphore("list", 3);
    assert!(semaphore.holders().await.expect("holders").is_empty());
    let mut last = 0;
    let mut held = Vec::new();
    for _ in 0..3 {
        let permit = semaphore.acquire().await.expect("acquire");
        assert!(
            permit.fencing_token() > last,
            "fencing tokens must increase"
        );
        last = permit.fencing_token();
        held.push(permit);
    }
    // A waiter from another locker is queued but does not hold.
    let waiter = b.semaphore("list", 3);
    let waiting = tokio::spawn(async move { waiter.acquire().await });
    await_queue_len(&admin, "list", 4, Duration::from_secs(5)).await;
    let tokens = |holders: Vec<dlock::Holder>| {
        let mut tokens: Vec<u64> = holders.iter().map(|h| h.fencing_token).collect();
        tokens.sort();
        tokens
    };
    let expected: Vec<u64> = held.iter().map(|p| p.fencing_token()).collect();
    let holders = b.semaphore("list", 3).holders().await.expect("holders");
    assert!(holders
        .iter()
        .all(|h| h.expires_in <= Duration::from_secs(5) && h.value.is_none()));
    assert_eq!(tokens(holders), expected);
    // Releasing the second grants the waiter, with a newer token.
    let second = held.remove(1);
    second.release().await.expect("release");
    let granted = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("waiter starved")
        .unwrap()
        .expect("acquire");
    assert!(granted.fencing_token() > last);
    last = granted.fencing_token();
    let mut expected: Vec<u64> = held.iter().map(|p| p.fencing_token()).collect();
    expected.push(granted.fencing_token());
    assert_eq!(
        tokens(semaphore.holders().await.expect("holders")),
        expected
    );
    drop((held, granted));
    await_queue_len(&admin, "list", 0, Duration::from_secs(5)).await;
    for _ in 0..10 {
        let permit = semaphore.try_acquire().await.expect("try").expect("free");
        assert!(
            permit.fencing_token() > last,
            "fencing tokens must increase"
        );
        last = permit.fencing_token();
        permit.release().await.expect("release");
    }
}

/// Locks and semaphores of 3 racing for one name, on the try and the waiting paths: the
/// holders never disagree (never a lock holder beside a permit, never two locks, never four
/// permits); the losers get `PermitsMismatch`, `None` or a timeout, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_semaphores_never_hold_one_name_together() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let mut lockers = Vec::new();
    for _ in 0..3 {
        lockers.push(locker(server.client().await, Duration::from_secs(5)));
    }
    // (locks, permits) inside the section now.
    let inside = Arc::new(std::sync::Mutex::new((0u32, 0u32)));
    // Grants of (locks, permits).
    let granted = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for t in 0..12 {
        let locker = lockers[t % 3].clone();
        let (inside, granted) = (inside.clone(), granted.clone());
        tasks.push(tokio::spawn(async move {
            let is_lock = t % 2 == 0;
            let wait = LockOptions::new().wait_timeout(Duration::from_millis(200));
            for round in 0..30 {
                // A waiting lock's key refuses every semaphore while it waits: locks wait
                // less often, so that both kinds get their turns.
                let try_only = if is_lock {
                    round % 5 != 0
                } else {
                    round % 3 == 0
                };
                let outcome = match (is_lock, try_only) {
                    (true, true) => locker.try_lock("race").await,
                    (true, false) => locker.lock_with("race", wait).await.map(Some),
                    (false, true) => locker.semaphore("race", 3).try_acquire().await,
                    (false, false) => locker
                        .semaphore("race", 3)
                        .acquire_with(wait)
                        .await
                        .map(Some),
                };
                let guard = match outcome {
                    Ok(Some(guard)) => guard,
                    Ok(None) | Err(Error::PermitsMismatch { .. }) | Err(Error::Timeout { .. }) => {
                        let pause = if is_lock { 5..20 } else { 0..5 };
                        sleep(Duration::from_millis(fastrand::u64(pause))).await;
                        continue;
                    }
                    Err(e) => panic!("unexpected error: {e:?}"),
                };
                match is_lock {
                    true => granted.0.fetch_add(1, Ordering::SeqCst),
                    false => granted.1.fetch_add(1, Ordering::SeqCst),
                };
                {
                    let mut now = inside.lock().unwrap();
                    if is_lock {
                        now.0 += 1;
                    } else {
                        now.1 += 1;
                    }
                    assert!(
                        (now.0 <= 1 && now.1 == 0) || (now.0 == 0 && now.1 <= 3),
                        "holders disagree: {} lock(s) and {} permit(s) at once",
                        now.0,
                        now.1
                    );
                }
                sleep(Duration::from_millis(fastrand::u64(1..5))).await;
                {
                    let mut now = inside.lock().unwrap();
                    if is_lock {
                        now.0 -= 1;
                    } else {
                        now.1 -= 1;
                    }
                }
                guard.release().await.expect("release");
            }
        }));
    }
    for task in tasks {
        timeout(Duration::from_secs(60), task)
            .await
            .expect("a task hung")
            .unwrap();
    }
    let (locks, permits) = (
        granted.0.load(Ordering::SeqCst),
        granted.1.load(Ordering::SeqCst),
    );
    eprintln!("granted {locks} lock(s) and {permits} permit(s)");
    assert!(
        locks > 0 && permits > 0,
        "granted {locks} lock(s) and {permits} permit(s)"
    );
    await_queue_len(&admin, "race", 0, Duration::from_secs(5)).await;
}

/// A waiter whose watch breaks (its connections reset) counts the queue again and is still
/// granted when a permit frees, even one freed while its watch was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_watch_breaks_counts_again() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("dlock=debug")
        .with_test_writer()
        .try_init();
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let proxy = support::Proxy::start(server.client_addr()).await;
    let through_proxy = support::client_at(&[format!("http://127.0.0.1:{}", proxy.port())]).await;
    let holder = locker(server.client().await, Duration::from_secs(5));
    let waiter = locker(through_proxy, Duration::from_secs(5)).semaphore("reset", 2);
    let a = holder.semaphore("reset", 2).acquire().await.expect("a");
    let b = holder.semaphore("reset", 2).acquire().await.expect("b");
    let waiting = tokio::spawn(async move { waiter.acquire().await });
    await_queue_len(&admin, "reset", 3, Duration::from_secs(5)).await;
    sleep(Duration::from_millis(300)).await;
    proxy.reset_all();
    b.release().await.expect("release");
    let permit = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter was not granted after its watch broke")
        .unwrap()
        .expect("acquire");
    assert!(permit.fencing_token() > a.fencing_token());
    drop((a, permit));
    await_queue_len(&admin, "reset", 0, Duration::from_secs(5)).await;
}
