//! Regression tests for the safety holes of issue 10, one per defect, each against real
//! servers (Redis with and without persistence, etcd) or the in-process store. Every test
//! here failed on the code before its fix. Defect 5 (release-notification subscriptions)
//! is covered in `tests/notifications.rs`.

mod support;

use std::time::Duration;

use dlock::{Config, Driver, Error, Locker, MemoryStore};
use tokio::time::{sleep, timeout, Instant};

fn config(driver: Driver, ttl: Duration) -> Config {
    Config {
        driver,
        prefix: "safe:".into(),
        default_ttl: ttl,
        retry_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

/// A connection with no response timeout of its own, so that only dlock bounds the calls.
async fn unbounded_connection(url: &str) -> redis::aio::ConnectionManager {
    let client = redis::Client::open(url).expect("redis url");
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(None)
        .set_number_of_retries(1);
    redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .expect("connect")
}

async fn redis_locker(url: &str, ttl: Duration) -> Locker {
    Locker::builder(config(Driver::Redis, ttl))
        .redis(unbounded_connection(url).await)
        .build()
        .expect("build")
}

/// A server, a proxy in front of it, and a locker that talks to the server through the proxy.
async fn behind_a_proxy(ttl: Duration) -> (support::RedisServer, support::Proxy, Locker) {
    let server = support::RedisServer::start().await;
    let proxy = support::Proxy::start(server.addr()).await;
    let locker = redis_locker(&format!("redis://{}/", proxy.addr()), ttl).await;
    (server, proxy, locker)
}

async fn dbsize(admin: &mut redis::aio::ConnectionManager) -> u64 {
    redis::cmd("DBSIZE")
        .query_async(admin)
        .await
        .expect("DBSIZE")
}

/// Locks and releases `key` once, returning the fencing token it got.
async fn token_of_one_lock(locker: &Locker, key: &str) -> u64 {
    let guard = locker.lock(key).await.expect("lock");
    let token = guard.fencing_token();
    guard.release().await.expect("release");
    token
}

// Defect 1: a restart that reloads an older snapshot must not re-issue fencing tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_across_a_restart_that_reloads_an_older_rdb_snapshot() {
    let mut server = support::RedisServer::start().await;
    let mut admin = server.connection_manager().await;
    let locker = redis_locker(&server.url(), Duration::from_secs(5)).await;
    token_of_one_lock(&locker, "k").await;
    // The snapshot a crash would leave behind: taken before the latest acquisitions.
    let _: () = redis::cmd("SAVE")
        .query_async(&mut admin)
        .await
        .expect("SAVE");
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(token_of_one_lock(&locker, "k").await);
    }
    server.restart().await; // SIGKILL, then start again on the same dir: loads dump.rdb
    let locker = redis_locker(&server.url(), Duration::from_secs(5)).await;
    let after = token_of_one_lock(&locker, "k").await;
    let highest = *issued.iter().max().unwrap();
    assert!(
        after > highest,
        "fencing token {after} after the restore is not above {highest}, already handed out \
         before the crash: two holders could carry the same token"
    );
}

// Defect 1, across a failover: a replica that missed the last acquisitions is promoted, and
// the tokens it issues are still above every token the old master handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_across_a_failover_to_a_replica_that_missed_writes() {
    // No 5 s delay before the replica's first sync.
    let master = support::RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]).await;
    // The replication link goes through a proxy, so that the test can cut it.
    let link = support::Proxy::start(master.addr()).await;
    let port = link.port().to_string();
    let replica = support::RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await;
    let locker = redis_locker(&master.url(), Duration::from_secs(5)).await;
    token_of_one_lock(&locker, "k").await;
    let mut admin = master.connection_manager().await;
    // Wait until the replica has the first lock's writes, then cut it off. (WAIT counts
    // acknowledgements of this connection's own last write, hence the marker.)
    let _: () = redis::cmd("SET")
        .arg("marker")
        .arg(1)
        .query_async(&mut admin)
        .await
        .expect("SET");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(500)
            .query_async(&mut admin)
            .await
            .expect("WAIT");
        if acked == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never caught up");
    }
    link.blackhole();
    let mut issued = Vec::new();
    for _ in 0..3 {
        issued.push(token_of_one_lock(&locker, "k").await);
    }
    drop(master); // the master dies with writes the replica never saw...
    drop(link); // ...and the bytes held on the link are lost
    let mut promote = replica.connection_manager().await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut promote)
        .await
        .expect("REPLICAOF NO ONE");
    let locker = redis_locker(&replica.url(), Duration::from_secs(5)).await;
    let after = token_of_one_lock(&locker, "k").await;
    let highest = *issued.iter().max().unwrap();
    assert!(
        after > highest,
        "the promoted replica issued {after}, not above {highest} from the old master"
    );
}

// Defect 1, with AOF (`appendfsync everysec`): tokens keep increasing across a kill and reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_across_an_aof_restart() {
    let mut server =
        support::RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"])
            .await;
    let locker = redis_locker(&server.url(), Duration::from_secs(5)).await;
    let mut highest = 0;
    for _ in 0..3 {
        highest = highest.max(token_of_one_lock(&locker, "k").await);
    }
    server.restart().await;
    let locker = redis_locker(&server.url(), Duration::from_secs(5)).await;
    let after = token_of_one_lock(&locker, "k").await;
    assert!(
        after > highest,
        "token {after} after the AOF reload is not above {highest}"
    );
}

// Defect 2: releases leave no key behind on the server (after the documented bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_locks_leave_no_key_on_redis() {
    let server = support::RedisServer::start().await;
    let mut admin = server.connection_manager().await;
    let locker = redis_locker(&server.url(), Duration::from_secs(2)).await;
    assert_eq!(dbsize(&mut admin).await, 0);
    for i in 0..200 {
        token_of_one_lock(&locker, &format!("order:{i}")).await;
    }
    // Documented bound: every key is gone within the TTL (2 s here) of its release.
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let left = dbsize(&mut admin).await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} keys are still on the server after 200 released one-off locks"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

// Defect 2, in-process: the store's maps do not grow with the number of distinct keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_and_expired_locks_leave_no_entry_in_the_memory_store() {
    let store = MemoryStore::new();
    let locker = Locker::builder(config(Driver::Memory, Duration::from_millis(200)))
        .memory(store.clone())
        .build()
        .expect("build");
    for i in 0..1000 {
        token_of_one_lock(&locker, &format!("order:{i}")).await;
    }
    assert_eq!(store.entry_count(), 0, "released locks left entries behind");
    // Locks that expire (holder gone without release) are swept too.
    let store2 = MemoryStore::new();
    let locker2 = Locker::builder(config(Driver::Memory, Duration::from_millis(200)))
        .memory(store2.clone())
        .build()
        .expect("build");
    // Holders that vanish without releasing: their runtime (and so their renewal) is gone.
    std::thread::spawn({
        let locker2 = locker2.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                for i in 0..100 {
                    std::mem::forget(locker2.lock(&format!("a:{i}")).await.expect("lock"));
                }
            });
        }
    })
    .join()
    .expect("holder thread");
    assert_eq!(store2.entry_count(), 100);
    sleep(Duration::from_millis(1200)).await; // past the expiry and the store's sweep period
    for i in 0..1000 {
        token_of_one_lock(&locker2, &format!("b:{i}")).await;
    }
    assert_eq!(
        store2.entry_count(),
        0,
        "expired locks of keys never used again stayed in the store"
    );
}

// Defect 3: while a release hangs, `lost()` still fires at the safety deadline, before a
// rival can take the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_by_the_safety_deadline_while_a_release_hangs() {
    let ttl = Duration::from_secs(1);
    let (server, proxy, holder) = behind_a_proxy(ttl).await;
    let rival = redis_locker(&server.url(), ttl).await;
    let guard = holder.lock("k").await.expect("lock");
    sleep(Duration::from_millis(100)).await;
    proxy.blackhole();
    sleep(Duration::from_millis(200)).await;
    let lost = guard.lost();
    drop(guard); // the release is sent into the blackhole
    loop {
        if rival.try_lock("k").await.expect("rival try_lock").is_some() {
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    assert!(
        lost.is_cancelled(),
        "a rival holds the lock while the old guard's lost() has not fired"
    );
}

// Defect 4: an acquire reply that arrives after the safety deadline never yields a guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_acquire_reply_never_yields_a_guard() {
    let ttl = Duration::from_secs(2);
    let (server, proxy, locker) = behind_a_proxy(ttl).await;
    // Warm the connection (script load), then make the round trip take 1.9 s of the 2 s TTL.
    token_of_one_lock(&locker, "warm").await;
    proxy.delay(Duration::from_millis(950));
    match locker.try_lock("k").await {
        Ok(Some(guard)) => panic!(
            "got a guard (is_lost = {}) from a reply that came after the safety deadline",
            guard.is_lost()
        ),
        Ok(None) => panic!("the lock is free; expected a typed error for the late reply"),
        Err(Error::Backend { .. }) | Err(Error::Timeout { .. }) => {}
        Err(other) => panic!("unexpected error {other:?}"),
    }
    proxy.pass();
    // And the undo freed the key: a direct locker gets it.
    let direct = redis_locker(&server.url(), ttl).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while direct.try_lock("k").await.expect("try_lock").is_none() {
        assert!(
            Instant::now() < deadline,
            "the late acquisition was never undone"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

// Defect 6: a script sent twice (the cluster client resends after a connection drop) gives
// the same answer as when sent once, even when a waiter took the lock in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_scripts_answer_as_if_sent_once() {
    let server = support::RedisServer::start().await;
    let mut conn = server.connection_manager().await;
    let obtain = redis::Script::new(include_str!("../src/backend/redis/obtain.lua"));
    let release = redis::Script::new(include_str!("../src/backend/redis/release.lua"));
    let lock = "safe:{k}";
    let mut obtain_as = async |token: &str| -> u64 {
        let mut call = obtain.prepare_invoke();
        // No waiter announcing itself, no published value.
        call.key(lock).arg(token).arg(5000).arg("0").arg("");
        call.invoke_async(&mut conn).await.expect("obtain")
    };
    let first = obtain_as("01TOKENA").await;
    assert!(first > 0);
    let resent = obtain_as("01TOKENA").await;
    assert_eq!(
        resent, first,
        "a resent acquire reported the lock as held by someone else"
    );
    assert_eq!(obtain_as("01TOKENB").await, 0, "a rival got a held lock");
    let mut conn = server.connection_manager().await;
    let mut release_as = async |token: &str| -> i64 {
        let mut call = release.prepare_invoke();
        call.key(lock).arg(token).arg(5000).arg("me");
        call.invoke_async(&mut conn).await.expect("release")
    };
    assert_eq!(release_as("01TOKENA").await, 1);
    assert_eq!(
        release_as("01TOKENA").await,
        1,
        "a resent release reported the lock as lost"
    );
    assert_eq!(
        release_as("01TOKENB").await,
        0,
        "a rival that never held it released it"
    );
    // A waiter takes the lock between the release and its resent copy.
    let mut conn2 = server.connection_manager().await;
    let mut call = obtain.prepare_invoke();
    call.key(lock).arg("01TOKENB").arg(5000).arg("0").arg("");
    let rival: u64 = call.invoke_async(&mut conn2).await.expect("obtain");
    assert!(
        rival > first,
        "fencing tokens went backwards: {rival} after {first}"
    );
    assert_eq!(
        release_as("01TOKENA").await,
        1,
        "a release resent after a waiter took the lock reported the lock as lost"
    );
    assert_eq!(
        release_as("01TOKENB").await,
        1,
        "the new holder could not release"
    );
}

// Defect 7: `close()` returns after the lease revokes it started, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_the_work_it_started_on_etcd() {
    let server = support::EtcdServer::start().await;
    let mut admin = server.client().await;
    let locker = Locker::builder(config(Driver::Etcd, Duration::from_secs(10)))
        .etcd(server.client().await)
        .build()
        .expect("build");
    let mut held = Vec::new();
    for i in 0..50 {
        held.push(locker.lock(&format!("k{i}")).await.expect("lock"));
    }
    locker.close().await.expect("close");
    let leases = admin.leases().await.expect("leases").leases().len();
    assert_eq!(
        leases, 0,
        "close() returned with {leases} leases not yet revoked"
    );
    drop(held);
}

// Defect 8: a release in one store does not steal the wake-up meant for a waiter of another
// store that uses the same prefix and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakeups_do_not_cross_stores() {
    let slow_polling = Config {
        retry_interval: Duration::from_secs(30),
        ..config(Driver::Memory, Duration::from_secs(10))
    };
    let locker_on = |store: &MemoryStore| {
        Locker::builder(slow_polling.clone())
            .memory(store.clone())
            .build()
            .expect("build")
    };
    let (one, two) = (MemoryStore::new(), MemoryStore::new());
    let (a, b) = (locker_on(&one), locker_on(&two));
    let held_one = a.lock("k").await.expect("lock in store one");
    let _held_two = b.lock("k").await.expect("lock in store two");
    // The waiter in store two registers first, so a shared wake-up would go to it.
    let waiting_two = tokio::spawn({
        let b = b.clone();
        async move { b.lock("k").await.map(drop) }
    });
    sleep(Duration::from_millis(50)).await;
    let waiting_one = tokio::spawn({
        let a = a.clone();
        async move { a.lock("k").await.map(|g| g.fencing_token()) }
    });
    sleep(Duration::from_millis(50)).await;
    held_one.release().await.expect("release");
    let woke = timeout(Duration::from_secs(3), waiting_one).await;
    assert!(
        woke.is_ok(),
        "the waiter of store one was not woken by the release in store one"
    );
    waiting_two.abort();
}

// Defect 9: with a 1 h TTL, a blackholed server does not hold calls for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_bounded_even_with_a_long_ttl() {
    let ttl = Duration::from_secs(3600);
    let (_server, proxy, locker) = behind_a_proxy(ttl).await;
    let guard = locker.lock("held").await.expect("lock");
    proxy.blackhole();
    let bound = Duration::from_secs(10);
    let started = Instant::now();
    let (release, attempt) = tokio::join!(
        timeout(bound, guard.release()),
        timeout(bound, locker.try_lock("other")),
    );
    assert!(
        matches!(release, Ok(Err(Error::Backend { .. }))),
        "release against a blackholed server: {release:?} after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(attempt, Ok(Err(Error::Backend { .. }))),
        "try_lock against a blackholed server: {attempt:?}"
    );
    let closed = timeout(bound, locker.close()).await;
    assert!(closed.is_ok(), "close() hung on a blackholed server");
}

/// An attempt that times out, is undone on another connection, and only then reaches the
/// server must not take the lock: nobody would own it, and the next try_lock of the same
/// locker would find it held for a whole TTL ("nobody holds `after`" in the Sentinel
/// failover test). The undo bars the attempt's token, so its late copy acquires nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_lands_after_its_undo_takes_nothing() {
    let server = support::RedisServer::start().await;
    let proxy = support::Proxy::start(server.addr()).await;
    let proxied = format!("redis://{}/", proxy.addr());
    let conn = Routed::open(&proxied, &server.url(), &server.url()).await;
    let routes = conn.routes.clone();
    let locker = routed_locker(conn);
    // The scripts are loaded on the server first (a late EVALSHA of an unknown script would
    // fail for that reason alone).
    load_scripts(&locker).await;
    // The attempt's script waits in the proxy past the call timeout; its undo goes at once.
    proxy.delay(Duration::from_millis(400));
    routes.lock().unwrap().push_back(Route::Slow);
    let first = locker.try_lock("late").await;
    assert!(matches!(first, Err(Error::Backend { .. })), "{first:?}");
    // Past the moment the attempt's script reached the server.
    sleep(Duration::from_millis(800)).await;
    let retry = locker.try_lock("late").await.expect("try_lock");
    assert!(
        retry.is_some(),
        "the late attempt took the lock after its undo: nobody holds it, yet try_lock says held"
    );
}

/// Sends each command where the test says: the next ones in `routes` (the slow path
/// through a proxy, or another server), then the direct path. As a Sentinel or
/// `ConnectionManager` connection does when a timed-out command's connection is replaced
/// (or the sentinels name a new master) while the command is still on its way.
#[derive(Clone)]
struct Routed {
    slow: redis::aio::MultiplexedConnection,
    other: redis::aio::MultiplexedConnection,
    direct: redis::aio::MultiplexedConnection,
    routes: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Route>>>,
}

/// Locks and releases once through `locker`, so that its server has the scripts loaded.
async fn load_scripts(locker: &Locker) {
    let warm = locker
        .try_lock("warm")
        .await
        .expect("try_lock")
        .expect("free");
    warm.release().await.expect("release");
}

/// A locker over `conn` whose calls give up after 100 ms (the delayed route takes longer).
fn routed_locker(conn: Routed) -> Locker {
    Locker::builder(config(Driver::Redis, Duration::from_secs(30)))
        .redis(conn)
        .call_timeout(Duration::from_millis(100))
        .build()
        .expect("build")
}

#[derive(Clone, Copy)]
enum Route {
    Slow,
    Other,
}

impl Routed {
    /// Connections to the three places a command can be sent, no route set.
    async fn open(slow: &str, other: &str, direct: &str) -> Routed {
        let connect = |url: String| async move {
            let client = redis::Client::open(url).expect("url");
            client
                .get_multiplexed_async_connection()
                .await
                .expect("connect")
        };
        Routed {
            slow: connect(slow.to_owned()).await,
            other: connect(other.to_owned()).await,
            direct: connect(direct.to_owned()).await,
            routes: Default::default(),
        }
    }

    fn pick(&self) -> redis::aio::MultiplexedConnection {
        match self.routes.lock().unwrap().pop_front() {
            Some(Route::Slow) => self.slow.clone(),
            Some(Route::Other) => self.other.clone(),
            None => self.direct.clone(),
        }
    }
}

impl redis::aio::ConnectionLike for Routed {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        let mut conn = self.pick();
        Box::pin(async move { conn.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        let mut conn = self.pick();
        Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// An attempt that times out, whose undo reaches *another* server (the sentinels named a
/// new master in between), and which then lands on the first: its key there is owned by
/// no guard. The same locker's next try_lock takes it over rather than find the lock held
/// for a whole TTL ("nobody holds `after`" in the Sentinel failover test, 1 run in 20 under
/// load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undone_attempt_left_on_another_server_is_taken_over_by_its_locker() {
    let (first, second) = (
        support::RedisServer::start().await,
        support::RedisServer::start().await,
    );
    let proxy = support::Proxy::start(first.addr()).await;
    let proxied = format!("redis://{}/", proxy.addr());
    let conn = Routed::open(&proxied, &second.url(), &first.url()).await;
    let routes = conn.routes.clone();
    let locker = routed_locker(conn);
    // The scripts are loaded on both servers first (an EVALSHA of an unknown script is
    // answered NOSCRIPT and sent again: more commands than the routes expect).
    let on_second = Locker::builder(config(Driver::Redis, Duration::from_secs(30)))
        .redis(second.connection_manager().await)
        .build()
        .expect("build");
    for locker in [&locker, &on_second] {
        load_scripts(locker).await;
    }
    // The attempt's script waits in the proxy past the call timeout; its undo goes at once,
    // to the other server.
    proxy.delay(Duration::from_millis(400));
    routes.lock().unwrap().extend([Route::Slow, Route::Other]);
    let attempt = locker.try_lock("late").await;
    assert!(matches!(attempt, Err(Error::Backend { .. })), "{attempt:?}");
    // Past the moment the attempt's script took the lock on the first server.
    sleep(Duration::from_millis(800)).await;
    let mut direct = first.connection_manager().await;
    let left: Option<String> = redis::cmd("GET")
        .arg("safe:{late}")
        .query_async(&mut direct)
        .await
        .expect("GET");
    assert!(
        left.as_deref().is_some_and(|v| !v.starts_with('~')),
        "the scenario did not happen: the attempt left no lock on the first server ({left:?})"
    );
    let retry = locker.try_lock("late").await.expect("try_lock");
    assert!(
        retry.is_some(),
        "the locker's own undone attempt holds the lock on the first server: nobody owns it, \
         yet try_lock says held"
    );
}
