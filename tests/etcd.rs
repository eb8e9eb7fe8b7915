//! etcd-specific behaviour on real etcd: FIFO order, failover on a 3-member cluster, TTL
//! rules, unreachable endpoints, waiters whose own lease disappears.

mod support;

use std::sync::Arc;
use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker};
use tokio::time::{sleep, timeout, Instant};

fn config(ttl: Duration) -> Config {
    Config {
        driver: Driver::Etcd,
        prefix: "etcd-test:".into(),
        default_ttl: ttl,
        retry_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

/// The tests that kill or hang members of a 3-member cluster run one at a time: each needs
/// its survivors to elect a leader within 90 % of a TTL, and three clusters electing at once
/// on two cores and one disk made that take longer (a minority-loss run failed twice in
/// full runs beside other work, never alone).
static CLUSTER_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn locker(client: etcd_client::Client, ttl: Duration) -> Locker {
    Locker::builder(config(ttl))
        .etcd(client)
        .build()
        .expect("build")
}

async fn queue_len(client: &etcd_client::Client, key: &str) -> i64 {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let mut kv = client.kv_client();
    kv.get(format!("etcd-test:{key}/"), Some(options))
        .await
        .expect("count")
        .count()
}

/// Ten waiters queued in a known order acquire in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_acquire_in_request_order() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let holder = locker(server.client().await, Duration::from_secs(5)).await;
    let held = holder.lock("fifo").await.expect("lock");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..10 {
        let locker = locker(server.client().await, Duration::from_secs(5)).await;
        let order = order.clone();
        waiters.push(tokio::spawn(async move {
            let guard = locker.lock("fifo").await.expect("waiter lock");
            order.lock().unwrap().push(i);
            guard.release().await.expect("waiter release");
        }));
        // The next waiter starts only once this one's key is in the queue.
        let deadline = Instant::now() + Duration::from_secs(5);
        while queue_len(&admin, "fifo").await < i + 2 {
            assert!(Instant::now() < deadline, "waiter {i} never queued");
            sleep(Duration::from_millis(5)).await;
        }
    }
    held.release().await.expect("release");
    for w in waiters {
        timeout(Duration::from_secs(10), w)
            .await
            .expect("a waiter starved")
            .unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        (0..10).collect::<Vec<_>>(),
        "not granted in request order"
    );
    assert_eq!(queue_len(&admin, "fifo").await, 0, "keys left in the queue");
}

/// etcd TTLs are whole seconds: 0, 500 ms and 1.5 s are refused, at build (default TTL)
/// and per lock.
#[tokio::test]
async fn sub_second_ttls_are_refused() {
    let server = support::EtcdServer::start().await;
    for ttl in [
        Duration::ZERO,
        Duration::from_millis(500),
        Duration::from_millis(1500),
    ] {
        let built = Locker::builder(config(ttl))
            .etcd(server.client().await)
            .build();
        match built {
            Err(Error::InvalidTtl { .. }) | Err(Error::InvalidConfig { .. }) => {}
            other => panic!("default_ttl {ttl:?}: expected InvalidTtl, got {other:?}"),
        }
        let locker = locker(server.client().await, Duration::from_secs(2)).await;
        match locker.try_lock_with("k", LockOptions::new().ttl(ttl)).await {
            Err(Error::InvalidTtl { reason, .. }) => {
                assert!(
                    reason.contains("whole seconds") || ttl.is_zero(),
                    "{ttl:?}: {reason}"
                )
            }
            other => panic!("per-lock ttl {ttl:?}: expected InvalidTtl, got {other:?}"),
        }
    }
    let built = Locker::builder(config(Duration::from_millis(1500)))
        .etcd(server.client().await)
        .build();
    let err = built.expect_err("1.5 s");
    assert!(
        err.to_string().contains("whole seconds"),
        "the message says why: {err}"
    );
}

/// `try_lock` on a held key answers `None` and leaves no key of its own.
#[tokio::test]
async fn try_lock_leaves_no_waiter_key() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let a = locker(server.client().await, Duration::from_secs(5)).await;
    let b = locker(server.client().await, Duration::from_secs(5)).await;
    let _held = a.lock("k").await.expect("lock");
    for _ in 0..5 {
        assert!(b.try_lock("k").await.expect("try_lock").is_none());
    }
    assert_eq!(queue_len(&admin, "k").await, 1, "try_lock left keys behind");
}

/// An endpoint that is down gives a typed error within the wait timeout, never a hang.
#[tokio::test]
async fn unreachable_endpoint_gives_a_typed_error() {
    let mut server = support::EtcdServer::start().await;
    let locker = locker(server.client().await, Duration::from_secs(2)).await;
    server.kill();
    let options = LockOptions::new().wait_timeout(Duration::from_secs(1));
    let outcome = timeout(Duration::from_secs(5), locker.lock_with("k", options))
        .await
        .expect("lock_with hung against a dead endpoint");
    assert!(
        matches!(
            outcome,
            Err(Error::Backend { .. }) | Err(Error::Timeout { .. })
        ),
        "got {outcome:?}"
    );
    let outcome = timeout(Duration::from_secs(10), locker.lock("k"))
        .await
        .expect("lock() with no timeout hung against a dead endpoint");
    assert!(
        matches!(outcome, Err(Error::Backend { .. })),
        "got {outcome:?}"
    );
}

/// A waiter whose own key disappears (deleted, or its lease revoked) fails at once instead
/// of waiting for its predecessor (etcd issue 19597).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_key_vanishes_fails_at_once() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let holder = locker(server.client().await, Duration::from_secs(3)).await;
    let waiter = locker(server.client().await, Duration::from_secs(3)).await;
    let _held = holder.lock("k").await.expect("lock");
    let waiting = tokio::spawn(async move { waiter.lock("k").await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue_len(&admin, "k").await < 2 {
        assert!(Instant::now() < deadline, "the waiter never queued");
        sleep(Duration::from_millis(5)).await;
    }
    // Delete the waiter's key (the newest in the queue) behind its back.
    let mut kv = admin.kv_client();
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_sort(
            etcd_client::SortTarget::Create,
            etcd_client::SortOrder::Descend,
        )
        .with_limit(1);
    let newest = kv.get("etcd-test:k/", Some(options)).await.expect("get");
    kv.delete(newest.kvs()[0].key().to_vec(), None)
        .await
        .expect("delete");
    let outcome = timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the waiter kept waiting without its key")
        .unwrap();
    assert!(
        outcome.is_err(),
        "a waiter without its key must fail, got {outcome:?}"
    );
}

/// On a 3-member cluster: killing the leader keeps the lock (keep-alive moves to a surviving
/// member) and a rival still gets `None`; losing quorum fires `lost()` within TTL + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_the_lock_and_quorum_loss_fires_lost() {
    let _one_at_a_time = CLUSTER_TESTS.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("dlock=debug")
        .with_test_writer()
        .try_init();
    let ttl = Duration::from_secs(3);
    let mut cluster = support::EtcdCluster::start(3).await;
    let holder = locker(cluster.client().await, ttl).await;
    let rival = locker(cluster.client().await, ttl).await;
    let guard = first_lock(&holder, "failover").await;
    let lost = guard.lost();

    let leader = cluster.leader_index().await;
    cluster.kill_member(leader);
    let new_leader = cluster.leader_index().await;
    assert_ne!(leader, new_leader);
    // Two full TTLs after the leader died: only keep-alives through survivors hold it.
    still_held(
        &lost,
        &rival,
        "failover",
        ttl * 2,
        "after the leader failed over",
    )
    .await;

    let other = (0..3)
        .find(|&i| i != leader && cluster.is_running(i))
        .expect("a survivor");
    cluster.kill_member(other);
    let quorum_lost = Instant::now();
    timeout(ttl + Duration::from_secs(1), lost.cancelled())
        .await
        .expect("lost() did not fire within TTL + 1 s of losing quorum");
    let after = quorum_lost.elapsed();
    assert!(
        after <= ttl + Duration::from_secs(1),
        "lost() after {after:?}"
    );
}

/// The README's promise that a lock survives the loss of a minority of members, again and
/// again: the leader, then a follower, is killed twice each; each stays down for two TTLs
/// (only renewals through the survivors can keep the lock), then rejoins before the next
/// kill. `lost()` must never fire and no rival may get the lock.
///
/// The TTL is 5 s: a leader's loss leaves the lease without renewal until the survivors have
/// elected a new leader, which must happen within the safety margin (90 % of the TTL). With
/// 3 s it failed once in a full run beside two `cargo` builds (round 0, the leader down),
/// though never in isolation, even at a load average of 12: the likely cause is disk stalls
/// delaying the survivors' election (its vote is fsynced), which a real deployment's TTL
/// (10 s by default) covers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_survives_a_minority_killed_again_and_again() {
    let _one_at_a_time = CLUSTER_TESTS.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("dlock=debug")
        .with_test_writer()
        .try_init();
    let ttl = Duration::from_secs(5);
    let mut cluster = support::EtcdCluster::start(3).await;
    let holder = locker(cluster.client().await, ttl).await;
    let rival = locker(cluster.client().await, ttl).await;
    let guard = first_lock(&holder, "minority").await;
    let lost = guard.lost();
    for round in 0..2 {
        for role in ["leader", "follower"] {
            let leader = cluster.leader_index().await;
            let victim = if role == "leader" {
                leader
            } else {
                (leader + 1) % 3
            };
            cluster.kill_member(victim);
            let what = format!("in round {round} with the {role} (member {victim}) down");
            still_held(&lost, &rival, "minority", ttl * 2, &what).await;
            cluster.restart_member(victim);
            cluster.wait_member_ready(victim).await;
        }
    }
    assert!(!lost.is_cancelled(), "lost() fired after the last rejoin");
    guard
        .release()
        .await
        .expect("the lock was still held at the end");
}

/// A member that stops answering (its endpoint hangs: no reset, no refusal) must not cost
/// the holder its lock while two members answer: renewals give up on the hung connection
/// and reach a surviving member before the safety deadline. Each member's endpoint hangs in
/// turn for two TTLs, so one of them is the one the holder's keep-alive stream uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_reach_a_surviving_member_when_one_endpoint_hangs() {
    let _one_at_a_time = CLUSTER_TESTS.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("dlock=debug")
        .with_test_writer()
        .try_init();
    let ttl = Duration::from_secs(3);
    let cluster = support::EtcdCluster::start(3).await;
    let mut proxies = Vec::new();
    for addr in cluster.client_addrs() {
        proxies.push(support::Proxy::start(addr).await);
    }
    let endpoints: Vec<String> = proxies
        .iter()
        .map(|p| format!("http://127.0.0.1:{}", p.port()))
        .collect();
    let holder = locker(support::client_at(&endpoints).await, ttl).await;
    let rival = locker(cluster.client().await, ttl).await;
    let guard = first_lock(&holder, "hung").await;
    let lost = guard.lost();
    for (member, proxy) in proxies.iter().enumerate() {
        proxy.blackhole();
        let what = format!("while only member {member}'s endpoint hung");
        still_held(&lost, &rival, "hung", ttl * 2, &what).await;
        proxy.pass();
        sleep(ttl / 2).await;
    }
    assert!(
        !lost.is_cancelled(),
        "lost() fired after the last endpoint healed"
    );
    guard
        .release()
        .await
        .expect("the lock was still held at the end");
}

/// The lock a member-loss test starts from. On a loaded machine a fresh cluster's first
/// requests can fail with a transport error (an HTTP/2 keep-alive of the test client's 1 s
/// missed: seen once in a README run beside the test loops); the test is about what
/// happens afterwards, so such a first lock is tried again.
async fn first_lock(holder: &Locker, key: &str) -> dlock::LockGuard {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match holder.lock(key).await {
            Ok(guard) => return guard,
            Err(Error::Backend { .. }) if Instant::now() < deadline => {
                sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the first lock of {key}: {e}"),
        }
    }
}

/// For `how_long`, every 200 ms: `lost` has not fired and `rival` cannot take `key` (a
/// backend error of the rival is allowed: its own client may first try a dead member).
async fn still_held(
    lost: &tokio_util::sync::CancellationToken,
    rival: &Locker,
    key: &str,
    how_long: Duration,
    what: &str,
) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        assert!(
            !lost.is_cancelled(),
            "lost() fired {what}, although a quorum survived"
        );
        match rival.try_lock(key).await {
            Ok(None) | Err(Error::Backend { .. }) => {}
            Ok(Some(_)) => panic!("a rival got the lock {what}"),
            Err(e) => panic!("rival: {e}"),
        }
        sleep(Duration::from_millis(200)).await;
    }
}

async fn lease_count(client: &etcd_client::Client) -> usize {
    let mut leases = client.lease_client();
    leases.leases().await.expect("leases").leases().len()
}

async fn revision(client: &etcd_client::Client) -> i64 {
    let mut kv = client.kv_client();
    let reply = kv.get("no-such-key", None).await.expect("get");
    reply.header().expect("header").revision()
}

/// One locker holding 50 locks and queueing 5 waiters keeps one lease on the server (its
/// session), not one per lock; closing it revokes that lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locker_attaches_all_its_locks_to_one_session_lease() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let holder = locker(server.client().await, Duration::from_secs(5)).await;
    let mut held = Vec::new();
    for i in 0..50 {
        held.push(holder.lock(&format!("many-{i}")).await.expect("lock"));
    }
    let mut waiters = Vec::new();
    for i in 0..5 {
        let holder = holder.clone();
        waiters.push(tokio::spawn(async move {
            holder.lock(&format!("many-{i}")).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue_len(&admin, "many-4").await < 2 {
        assert!(Instant::now() < deadline, "the waiters never queued");
        sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        lease_count(&admin).await,
        1,
        "50 held locks and 5 waiters of one locker"
    );
    drop(held);
    for waiter in waiters {
        let guard = timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a waiter was not granted after the release")
            .unwrap()
            .expect("waiter lock");
        drop(guard);
    }
    holder.close().await.expect("close");
    assert_eq!(
        lease_count(&admin).await,
        0,
        "close() left the session lease"
    );
}

/// `try_lock` on a held key writes nothing: the store's revision does not move.
#[tokio::test]
async fn try_lock_on_a_held_key_writes_nothing() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let a = locker(server.client().await, Duration::from_secs(5)).await;
    let b = locker(server.client().await, Duration::from_secs(5)).await;
    let _held = a.lock("k").await.expect("lock");
    // b's session lease is granted by its first call; count from the second.
    assert!(b.try_lock("k").await.expect("try_lock").is_none());
    let before = revision(&admin).await;
    for _ in 0..5 {
        assert!(b.try_lock("k").await.expect("try_lock").is_none());
    }
    assert_eq!(
        revision(&admin).await,
        before,
        "try_lock on a held key wrote"
    );
}

/// The session lease revoked behind the locker's back: every guard attached to it reports
/// the loss, its waiter fails at once instead of waiting for its turn (etcd issue 19597),
/// and the next lock call starts a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_session_lease_fires_lost_on_every_guard_and_fails_its_waiters() {
    let ttl = Duration::from_secs(3);
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let rival = locker(server.client().await, ttl).await;
    let holder = locker(server.client().await, ttl).await;
    let guards: Vec<_> = futures_lock_all(&holder, &["a", "b", "c"]).await;
    let lost: Vec<_> = guards.iter().map(|g| g.lost()).collect();
    let _rivals = rival.lock("d").await.expect("rival lock");
    let waiter = {
        let holder = holder.clone();
        tokio::spawn(async move { holder.lock("d").await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue_len(&admin, "d").await < 2 {
        assert!(Instant::now() < deadline, "the waiter never queued");
        sleep(Duration::from_millis(5)).await;
    }
    // The holder's session is the lease that is not the rival's: revoke both of the
    // holder's keys' lease.
    let mut kv = admin.kv_client();
    let a_key = kv
        .get(
            "etcd-test:a/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    let session = a_key.kvs()[0].lease();
    let mut leases = admin.lease_client();
    leases.revoke(session).await.expect("revoke");
    let revoked = Instant::now();

    let outcome = timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the waiter kept waiting after its session was revoked")
        .unwrap();
    assert!(
        matches!(outcome, Err(Error::OwnershipLost { .. })),
        "a waiter whose session is gone must fail, got {outcome:?}"
    );
    for (i, lost) in lost.iter().enumerate() {
        timeout(ttl / 3 + Duration::from_millis(500), lost.cancelled())
            .await
            .unwrap_or_else(|_| panic!("guard {i}: lost() did not fire after the revoke"));
    }
    let noticed = revoked.elapsed();
    for guard in guards {
        assert!(
            matches!(guard.release().await, Err(Error::OwnershipLost { .. })),
            "release after the session was revoked ({noticed:?})"
        );
    }
    let again = holder.lock("a").await.expect("a lock on a new session");
    assert!(!again.is_lost());
    assert_eq!(
        lease_count(&admin).await,
        2,
        "the rival's session and the new one"
    );
}

async fn futures_lock_all(locker: &Locker, keys: &[&str]) -> Vec<dlock::LockGuard> {
    let mut guards = Vec::new();
    for key in keys {
        guards.push(locker.lock(key).await.expect("lock"));
    }
    guards
}

/// Acquires interrupted at random points, the put possibly still in flight, leave no key on
/// the session's lease: the session would keep such a key, and so block its lock, for as
/// long as the locker lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_acquires_leave_no_key_on_the_session() {
    let ttl = Duration::from_secs(2);
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let holder = locker(server.client().await, ttl).await;
    let waiter = locker(server.client().await, ttl).await;
    let _held = holder.lock("cut").await.expect("lock");
    let mut cuts = Vec::new();
    for _ in 0..8 {
        let waiter = waiter.clone();
        cuts.push(tokio::spawn(async move {
            for _ in 0..250 {
                let cut = Duration::from_micros(fastrand::u64(0..3_000));
                let _ = timeout(cut, waiter.lock("cut")).await;
            }
        }));
    }
    for cut in cuts {
        cut.await.unwrap();
    }
    // Undone at once, or by the session's next key check (every TTL/3).
    let deadline = Instant::now() + ttl + Duration::from_secs(1);
    loop {
        let queued = queue_len(&admin, "cut").await;
        if queued == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{queued} keys in the queue of a lock with one holder and no waiter left"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// One of etcd's own counters, read from its `/metrics` page on the client port.
async fn etcd_metric(server: &support::EtcdServer, name: &str) -> i64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.client_addr())
        .await
        .expect("connect to etcd's metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("ask for etcd's metrics");
    let mut page = String::new();
    stream
        .read_to_string(&mut page)
        .await
        .expect("read etcd's metrics");
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("etcd's /metrics has no {name}"))
        .trim()
        .parse::<f64>()
        .expect("a number") as i64
}

/// Reads (ranges, in or out of a txn) the server has served so far.
async fn ranges(server: &support::EtcdServer) -> i64 {
    etcd_metric(server, "etcd_mvcc_range_total").await
}

/// A waiter with exactly one key ahead takes the lock on that key's deletion, without
/// reading the queue again: etcd's range count ignores the create-revision bound (it counts
/// the whole prefix), so the waiter tells "one ahead" by the reply's `more` flag instead.
/// Ten handoffs; a waiter's reads before it is parked on its watch can at worst add a few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_next_in_line_is_granted_by_the_deletion_without_another_read() {
    let server = support::EtcdServer::start().await;
    let holder = locker(server.client().await, Duration::from_secs(5)).await;
    let waiter = Arc::new(locker(server.client().await, Duration::from_secs(5)).await);
    // What a release reads by itself, nobody waiting.
    let held = holder.lock("handoff").await.expect("lock");
    let before = ranges(&server).await;
    held.release().await.expect("release");
    let release_reads = ranges(&server).await - before;

    let mut extra = 0;
    for round in 0..10 {
        let held = holder.lock("handoff").await.expect("lock");
        let watchers = etcd_metric(&server, "etcd_debugging_mvcc_watcher_total").await;
        let waiting = {
            let waiter = waiter.clone();
            tokio::spawn(async move { waiter.lock("handoff").await.expect("waiter lock") })
        };
        // Parked: its watch exists and its reads have stopped.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = ranges(&server).await;
        loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: the waiter never parked"
            );
            sleep(Duration::from_millis(300)).await;
            let now = ranges(&server).await;
            let watching = etcd_metric(&server, "etcd_debugging_mvcc_watcher_total").await;
            if watching > watchers && now == last {
                break;
            }
            last = now;
        }
        held.release().await.expect("release");
        let granted = timeout(Duration::from_secs(20), waiting)
            .await
            .expect("the waiter was never granted")
            .expect("waiter task");
        extra += ranges(&server).await - last - release_reads;
        granted.release().await.expect("waiter release");
    }
    assert!(
        extra < 10,
        "waiters read {extra} ranges beyond the releases' over 10 handoffs (2 per handoff: \
         one more read of the queue each time)"
    );
}

/// Every key name ever put in a lock's queue, tombstones included: the distinct keys of the
/// queue's history, read by a watch from the first revision (the test server never compacts).
async fn names_ever_put(
    client: &etcd_client::Client,
    key: &str,
) -> std::collections::HashSet<Vec<u8>> {
    let options = etcd_client::WatchOptions::new()
        .with_prefix()
        .with_start_revision(1);
    let mut stream = client
        .watch_client()
        .watch(format!("etcd-test:{key}/"), Some(options))
        .await
        .expect("watch the queue's history");
    let now = revision(client).await;
    let mut names = std::collections::HashSet::new();
    let mut seen = 0;
    while seen < now {
        // The last write was this prefix's own (a release), so its event ends the loop; the
        // bound only ends a history whose last event is another prefix's, generously, so
        // that a loaded machine's slow first message is not mistaken for the end.
        let Ok(Ok(Some(reply))) = timeout(Duration::from_secs(10), stream.message()).await else {
            break; // the history is all delivered; no event reaches `now` on this prefix
        };
        for event in reply.events() {
            if let Some(kv) = event.kv() {
                seen = seen.max(kv.mod_revision());
                names.insert(kv.key().to_vec());
            }
        }
    }
    names
}

/// One locker locking and releasing the same key again and again reuses one key name: etcd
/// keeps a tombstone in its index for every deleted key until the history is compacted, and
/// the put's compare (the queue is empty) walks the whole queue's range, tombstones included.
/// A fresh name per acquisition made each acquire of a busy lock slower than the last (1,342
/// pairs/s down to 862 within 12 s on one key). Concurrent acquisitions of one locker still
/// get names of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_acquisitions_reuse_their_key_name() {
    let server = support::EtcdServer::start().await;
    let admin = server.client().await;
    let locker = locker(server.client().await, Duration::from_secs(5)).await;
    for _ in 0..20 {
        let guard = locker.lock("reused").await.expect("lock");
        guard.release().await.expect("release");
    }
    assert_eq!(names_ever_put(&admin, "reused").await.len(), 1);
    // Two held at once by one locker (a waiter behind the holder): two names, each reused.
    for _ in 0..5 {
        let held = locker.lock("pair").await.expect("lock");
        let waiter = {
            let locker = locker.clone();
            tokio::spawn(async move { locker.lock("pair").await.expect("wait").release().await })
        };
        while queue_len(&admin, "pair").await < 2 {
            sleep(Duration::from_millis(5)).await;
        }
        held.release().await.expect("release");
        waiter.await.expect("waiter").expect("release");
    }
    assert_eq!(names_ever_put(&admin, "pair").await.len(), 2);
}
