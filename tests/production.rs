//! Production connections (the guide's "Production connections" chapter): Redis and etcd over TLS with
//! client certificates, a least-privilege Redis ACL user and an etcd user whose role covers
//! only the prefix, typed errors for a missing right, secrets kept out of logs and `Debug`,
//! and hostile keys kept inside the prefix. Every server is real and started by the test
//! (`tests/support/tls.rs`); certificates are made at test time.

mod support;
#[path = "support/tls.rs"]
mod tls;

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::testing::{conformance, Fixture};
use dlock::{Config, Driver, Error, LockOptions, Locker};
use redis::AsyncCommands;

use support::fixtures;
use tls::{Certs, SecureEtcd, TlsRedis, TlsRedisCluster};

/// The password of every restricted user: no test output may ever show it.
const PASSWORD: &str = "pw-Secret-7f3b9c";

// ---------------------------------------------------------------------------------------
// The guide's ACL line (README's before), the one source of the restricted Redis user.
// ---------------------------------------------------------------------------------------

/// The `ACL SETUSER` line of the guide's "Production connections" chapter
/// (`src/guide/production.rs`; it was the README's), for `user` on `prefix` with `password`:
/// its placeholders (`dlock`, `CHANGE-ME`, `myapp:lock:`) replaced, nothing else. A command
/// dlock starts sending without it being in that line fails the conformance suite below
/// with `NOPERM`.
fn readme_acl(user: &str, password: &str, prefix: &str) -> String {
    readme_acl_line()
        .replacen("ACL SETUSER dlock ", &format!("ACL SETUSER {user} "), 1)
        .replace(">CHANGE-ME", &format!(">{password}"))
        .replace("myapp:lock:", prefix)
}

fn readme_acl_line() -> String {
    // The guide's chapter, as rustdoc shows it: its `//! ` lines.
    let chapter = include_str!("../src/guide/production.rs");
    let lines: Vec<&str> = chapter
        .lines()
        .filter_map(|l| l.strip_prefix("//! "))
        .filter(|l| l.starts_with("ACL SETUSER dlock "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "the guide's Production connections chapter must have exactly one `ACL SETUSER dlock ...` line"
    );
    let line = lines[0];
    for placeholder in [">CHANGE-ME", "~myapp:lock:*", "&myapp:lock:*"] {
        assert!(
            line.contains(placeholder),
            "the guide's ACL line lacks {placeholder}: {line}"
        );
    }
    line.to_owned()
}

/// An ACL user name of its own per prefix (conformance tests use one prefix each).
fn user_for(prefix: &str) -> String {
    let name: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("dlock-{name}")
}

async fn manager(client: redis::Client) -> redis::aio::ConnectionManager {
    support::connection_manager_for(client).await
}

/// Denials Redis recorded (`ACL LOG`): each is a right dlock needed and the user lacked.
async fn acl_denials<C: redis::aio::ConnectionLike>(admin: &mut C) -> Vec<String> {
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(admin)
        .await
        .expect("ACL LOG");
    log.iter().map(|entry| format!("{entry:?}")).collect()
}

// ---------------------------------------------------------------------------------------
// Fixtures: the whole conformance suite over TLS as the restricted users.
// ---------------------------------------------------------------------------------------

/// `redis-server` over TLS (client certificates required); every locker connects as the
/// The guide's ACL user for its prefix, with release notifications on, password in the URL.
pub struct RedisTlsAcl {
    certs: Certs,
    server: TlsRedis,
    admin: redis::aio::ConnectionManager,
    /// `stop_server` was called: no ACL LOG left to read.
    stopped: bool,
}

impl RedisTlsAcl {
    /// A locker on `prefix`'s own ACL user, notifications included.
    async fn restricted_locker(&self, config: Config) -> Locker {
        let user = user_for(&config.prefix);
        tls::redis_set_user(
            &mut self.admin.clone(),
            &readme_acl(&user, PASSWORD, &config.prefix),
        )
        .await;
        let client = self.server.client_as(&self.certs, &user, PASSWORD);
        let conn = manager(client.clone()).await;
        Locker::builder(config)
            .redis(conn)
            .redis_pubsub(client)
            .build()
            .expect("build")
    }
}

impl Drop for RedisTlsAcl {
    /// Every test of the suite ends here: whatever it did, Redis refused nothing.
    fn drop(&mut self) {
        if std::thread::panicking() || self.stopped {
            return;
        }
        let mut admin = self.admin.clone();
        let denials = std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(async { acl_denials(&mut admin).await })
            })
            .join()
            .expect("ACL LOG thread")
        });
        assert!(
            denials.is_empty(),
            "the guide's ACL line lacks rights dlock used (ACL LOG): {denials:#?}"
        );
    }
}

impl Fixture for RedisTlsAcl {
    const DRIVER: Driver = Driver::Redis;
    async fn start() -> Self {
        let certs = Certs::new();
        let server = TlsRedis::start(&certs).await;
        let admin = server.admin().await;
        RedisTlsAcl {
            certs,
            server,
            admin,
            stopped: false,
        }
    }
    async fn locker(&self, config: Config) -> Locker {
        self.restricted_locker(config).await
    }
    async fn exists(&self, prefix: &str, key: &str) -> bool {
        fixtures::redis_exists(&self.admin, prefix, key).await
    }
    async fn delete(&self, prefix: &str, key: &str) {
        fixtures::redis_delete(&self.admin, prefix, key).await
    }
    async fn stop_server(&mut self) {
        self.stopped = true;
        self.server.kill();
    }
    async fn read_counter(&self, name: &str) -> u64 {
        fixtures::redis_read(&self.admin, name).await
    }
    async fn write_counter(&self, name: &str, value: u64) {
        fixtures::redis_write(&self.admin, name, value).await
    }
}

/// etcd over https with client certificates and authentication; every locker connects as
/// a user whose one role grants readwrite on its prefix only.
pub struct EtcdTlsAuth {
    server: SecureEtcd,
    admin: etcd_client::Client,
    users: tokio::sync::Mutex<HashSet<String>>,
    _certs: Certs,
}

impl EtcdTlsAuth {
    async fn restricted_client(&self, prefix: &str) -> etcd_client::Client {
        let user = user_for(prefix);
        let mut users = self.users.lock().await;
        if users.insert(user.clone()) {
            self.server.add_prefix_user(&user, PASSWORD, prefix).await;
        }
        drop(users);
        self.server.client_as(&user, PASSWORD).await
    }
}

impl Fixture for EtcdTlsAuth {
    const DRIVER: Driver = Driver::Etcd;
    async fn start() -> Self {
        let certs = Certs::new();
        let server = SecureEtcd::start(&certs).await;
        let admin = server.admin().await;
        EtcdTlsAuth {
            server,
            admin,
            users: Default::default(),
            _certs: certs,
        }
    }
    async fn locker(&self, config: Config) -> Locker {
        let client = self.restricted_client(&config.prefix).await;
        Locker::builder(config).etcd(client).build().expect("build")
    }
    async fn exists(&self, prefix: &str, key: &str) -> bool {
        fixtures::etcd_exists(&self.admin, prefix, key).await
    }
    async fn delete(&self, prefix: &str, key: &str) {
        fixtures::etcd_delete(&self.admin, prefix, key).await
    }
    async fn stop_server(&mut self) {
        self.server.kill();
    }
    async fn read_counter(&self, name: &str) -> u64 {
        fixtures::etcd_read(&self.admin, name).await
    }
    async fn write_counter(&self, name: &str, value: u64) {
        fixtures::etcd_write(&self.admin, name, value).await
    }
}

conformance!(redis_tls_acl_user, RedisTlsAcl);
conformance!(etcd_tls_prefix_user, EtcdTlsAuth);

// ---------------------------------------------------------------------------------------
// Least privilege: every right of the ACL line is needed, a missing one is a typed error.
// ---------------------------------------------------------------------------------------

/// One of everything dlock sends: an acquire (the script loaded first), renewals, a waiter
/// of another locker subscribed to the release channel, the release that wakes it, the
/// unsubscribe after it. Returns the first error, if any.
async fn one_of_everything(locker: &Locker, waiter: &Locker) -> Result<(), Error> {
    let ttl = LockOptions::new().ttl(Duration::from_millis(300));
    let held = locker.lock_with("k", ttl).await?;
    assert!(
        waiter.holder("k").await?.is_some(),
        "holder() sees the lock"
    );
    let waiting = support::spawn_waiter(waiter, "k", Duration::from_secs(20));
    // Long enough for a few renewals (every 100 ms) and the waiter's subscription.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let released = held.release().await;
    let next = waiting.await.expect("waiter task")?;
    released?;
    next.release().await?;
    // A semaphore on the released lock's name (its tombstone goes), full, with a waiter
    // that is woken; its holders; then a lock on the released semaphore's name (cleared).
    let pair = locker.semaphore("k", 2);
    let held = [pair.acquire_with(ttl).await?, pair.acquire_with(ttl).await?];
    assert_eq!(waiter.semaphore("k", 2).holders().await?.len(), 2);
    let waiting = {
        let pair = waiter.semaphore("k", 2);
        tokio::spawn(async move { pair.acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let [first, second] = held;
    first.release().await?;
    let third = waiting.await.expect("waiter task")?;
    second.release().await?;
    third.release().await?;
    locker.lock("k").await?.release().await?;
    // The waiter's subscription is dropped: let the UNSUBSCRIBE go out.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// Removing any one right of the guide's ACL line makes dlock fail or Redis log a denial:
/// the line is the smallest set (and, with the conformance suite above, a sufficient one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_right_in_the_readme_acl_line_is_needed() {
    let certs = Certs::new();
    let server = TlsRedis::start(&certs).await;
    let mut admin = server.admin().await;
    let prefix = "need:";
    let full = readme_acl("dlock-need", PASSWORD, prefix);
    let rights: Vec<&str> = full
        .split_whitespace()
        .filter(|w| w.starts_with('+') || w.starts_with('~') || w.starts_with('&'))
        .collect();
    assert!(rights.len() >= 3, "no rights found in {full}");
    let mut unneeded = Vec::new();
    for (i, right) in rights.iter().enumerate() {
        let user = format!("dlock-need-{i}");
        // The word itself, not every word it begins (`+zrem` of `+zremrangebyscore`).
        let line = readme_acl(&user, PASSWORD, prefix)
            .split_whitespace()
            .filter(|word| word != right)
            .collect::<Vec<_>>()
            .join(" ");
        tls::redis_set_user(&mut admin, &line).await;
        let () = redis::cmd("ACL")
            .arg("LOG")
            .arg("RESET")
            .query_async(&mut admin)
            .await
            .unwrap();
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut admin)
            .await
            .unwrap();
        let client = server.client_as(&certs, &user, PASSWORD);
        let config = dlock::testing::config(Driver::Redis, prefix, Duration::from_secs(5));
        let build = |conn| {
            Locker::builder(config.clone())
                .redis(conn)
                .redis_pubsub(client.clone())
                .build()
                .unwrap()
        };
        let (a, b) = (
            build(manager(client.clone()).await),
            build(manager(client.clone()).await),
        );
        let outcome = tokio::time::timeout(Duration::from_secs(30), one_of_everything(&a, &b))
            .await
            .expect("no hang without a right");
        let denials = acl_denials(&mut admin).await;
        if outcome.is_ok() && denials.is_empty() {
            unneeded.push(*right);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            a.close().await.ok();
            b.close().await.ok()
        })
        .await;
    }
    assert!(
        unneeded.is_empty(),
        "rights of the guide's ACL line that dlock never used: {unneeded:?} (line: {full})"
    );
}

/// A user without a right gets `Error::PermissionDenied` naming it, at once: the key pattern
/// of another prefix (the acquire), no `+publish` (the release script's announcement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_redis_right_is_a_typed_error_naming_it() {
    let certs = Certs::new();
    let server = TlsRedis::start(&certs).await;
    let mut admin = server.admin().await;
    let config = dlock::testing::config(Driver::Redis, "mine:", Duration::from_secs(5));

    tls::redis_set_user(&mut admin, &readme_acl("dlock-other", PASSWORD, "other:")).await;
    let conn = manager(server.client_as(&certs, "dlock-other", PASSWORD)).await;
    let locker = Locker::builder(config.clone()).redis(conn).build().unwrap();
    match locker.try_lock("k").await {
        Err(Error::PermissionDenied {
            backend: "redis",
            key: Some(key),
            detail,
        }) => {
            assert_eq!(key, "k");
            assert!(
                detail.contains("NOPERM") && detail.contains("key"),
                "the detail should say a key was refused: {detail}"
            );
        }
        other => {
            panic!("a key outside the user's pattern: expected PermissionDenied, got {other:?}")
        }
    }

    let line = readme_acl("dlock-nopub", PASSWORD, "mine:").replace(" +publish", "");
    tls::redis_set_user(&mut admin, &line).await;
    let client = server.client_as(&certs, "dlock-nopub", PASSWORD);
    let locker = Locker::builder(config.clone())
        .redis(manager(client.clone()).await)
        .build()
        .unwrap();
    let waiter = Locker::builder(config)
        .redis(manager(client.clone()).await)
        .redis_pubsub(client)
        .build()
        .unwrap();
    let guard = locker.lock("k").await.expect("acquiring needs no publish");
    // A release publishes only when a waiter announced itself on the lock: have one.
    let waiting = support::spawn_waiter(&waiter, "k", Duration::from_secs(10));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let value: Option<String> = redis::cmd("GET")
            .arg("mine:{k}")
            .query_async(&mut admin)
            .await
            .unwrap();
        if value.is_some_and(|v| v.contains('!')) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waiter never announced itself"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let released = guard.release().await;
    waiting.abort();
    match released {
        Err(err @ Error::PermissionDenied { .. }) => {
            let text = err.to_string();
            assert!(
                text.to_lowercase().contains("publish"),
                "the error should name the refused command: {text}"
            );
        }
        other => panic!("release without +publish: expected PermissionDenied, got {other:?}"),
    }
}

/// Logs captured into a buffer of the test's own (the calling thread's default subscriber;
/// run on a current-thread runtime so that every task logs on this thread).
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buffer = buffer.clone();
            move || Sink(buffer.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(writer)
            .finish();
        (
            Captured(buffer),
            tracing::subscriber::set_default(subscriber),
        )
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A notification user refused SUBSCRIBE: one warning that says so, waiters still get
/// their locks by polling, and the subscriber backs off instead of reconnecting at once.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_subscribe_logs_one_warning_and_waiters_poll() {
    let (logs, _guard) = Captured::start();
    let certs = Certs::new();
    let server = TlsRedis::start(&certs).await;
    let mut admin = server.admin().await;
    let line = readme_acl("dlock-nosub", PASSWORD, "nosub:").replace(" +subscribe", "");
    tls::redis_set_user(&mut admin, &line).await;
    let client = server.client_as(&certs, "dlock-nosub", PASSWORD);
    let mut config = dlock::testing::config(Driver::Redis, "nosub:", Duration::from_secs(5));
    config.retry_interval = Duration::from_millis(50);
    let holder = Locker::builder(config.clone())
        .redis(manager(client.clone()).await)
        .build()
        .unwrap();
    let waiter = Locker::builder(config)
        .redis(manager(client.clone()).await)
        .redis_pubsub(client)
        .build()
        .unwrap();
    let connections = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = connections(
        redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut admin)
            .await
            .unwrap(),
    );
    for round in 0..3 {
        let key = format!("k{round}");
        let held = holder.lock(&key).await.expect("lock");
        let waiting = support::spawn_waiter(&waiter, &key, Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.release().await.expect("release");
        let guard = waiting
            .await
            .unwrap()
            .expect("the waiter gets the lock by polling");
        guard.release().await.expect("release");
    }
    let after = connections(
        redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut admin)
            .await
            .unwrap(),
    );
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("NOPERM"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "expected exactly one warning naming the refused SUBSCRIBE; got {} ({} connections were opened meanwhile). Logs:\n{}",
        warnings.len(),
        after - before,
        text.lines().filter(|l| !l.contains("TRACE")).take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(
        warnings[0].contains("subscribe"),
        "the warning should name the refused command: {}",
        warnings[0]
    );
}

/// An etcd user whose role covers another prefix gets `Error::PermissionDenied`, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_etcd_right_is_a_typed_error() {
    let certs = Certs::new();
    let server = SecureEtcd::start(&certs).await;
    server
        .add_prefix_user("dlock-other", PASSWORD, "other:")
        .await;
    let client = server.client_as("dlock-other", PASSWORD).await;
    let config = dlock::testing::config(Driver::Etcd, "mine:", Duration::from_secs(5));
    let locker = Locker::builder(config).etcd(client).build().unwrap();
    match tokio::time::timeout(Duration::from_secs(30), locker.try_lock("k"))
        .await
        .expect("no hang")
    {
        Err(Error::PermissionDenied {
            backend: "etcd",
            key: Some(key),
            detail,
        }) => {
            assert_eq!(key, "k");
            assert!(
                detail.contains("permission denied"),
                "the detail should be etcd's words: {detail}"
            );
        }
        other => panic!("a key outside the user's role: expected PermissionDenied, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Redis Cluster over TLS.
// ---------------------------------------------------------------------------------------

/// What a Cluster user needs beyond the guide's line: redis-rs's cluster client asks for the
/// topology (CLUSTER SLOTS) and checks its node connections with PING; notifications on the
/// lock's shard (`redis_cluster_pubsub`) use the sharded pub/sub commands.
const CLUSTER_EXTRA: &str = " +cluster|slots +ping +spublish +ssubscribe +sunsubscribe";

/// Lock, renewal, release and a release notification on the lock's shard on a 3-master
/// cluster whose client and bus connections are all TLS, as the guide's ACL user (plus the
/// guide's Cluster additions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_over_tls_locks_renews_releases_and_notifies() {
    let certs = Certs::new();
    let cluster = TlsRedisCluster::start(&certs).await;
    let prefix = "tlsc:";
    for mut admin in cluster.admins().await {
        let line = readme_acl("dlock-c", PASSWORD, prefix) + CLUSTER_EXTRA;
        tls::redis_set_user(&mut admin, &line).await;
    }
    let mut config = dlock::testing::config(Driver::Redis, prefix, Duration::from_secs(1));
    config.retry_interval = Duration::from_secs(3600); // a waiter can only be woken
    let holder = Locker::builder(config.clone())
        .redis_cluster(cluster.connection_as(&certs, "dlock-c", PASSWORD).await)
        .build()
        .unwrap();
    let waiter = Locker::builder(config)
        .redis_cluster(cluster.connection_as(&certs, "dlock-c", PASSWORD).await)
        .redis_cluster_pubsub(cluster.cluster_pubsub_client_as(&certs, "dlock-c", PASSWORD))
        .build()
        .unwrap();
    for i in 0..6 {
        let key = format!("job-{i}");
        let held = holder.lock(&key).await.expect("lock over TLS");
        let lost = held.lost();
        let waiting = {
            let (waiter, key) = (waiter.clone(), key.clone());
            tokio::spawn(async move { waiter.lock(&key).await })
        };
        // Past the 1 s TTL: only renewals over TLS keep the lock.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !lost.is_cancelled(),
            "renewal over TLS failed: the lock was lost"
        );
        assert!(
            !waiting.is_finished(),
            "the waiter got a lock that renewal should have kept"
        );
        held.release().await.expect("release over TLS");
        let next = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the waiter (polling every hour) was never notified of the release")
            .unwrap()
            .expect("the waiter's lock");
        next.release().await.expect("release");
    }
    for mut admin in cluster.admins().await {
        let denials = acl_denials(&mut admin).await;
        assert!(
            denials.is_empty(),
            "a cluster node refused a right: {denials:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Hostile keys stay inside the prefix.
// ---------------------------------------------------------------------------------------

/// Keys a caller might pass: glob and hash-tag characters, the etcd separator and escape,
/// control bytes, 1 KiB, and keys that look like another key's storage key plus a suffix.
fn hostile_keys(prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = [
        "k",
        "*",
        "?",
        "[",
        "]",
        "[a-z]*",
        "{",
        "}",
        "{}",
        "}{",
        "{k}",
        "k}",
        "k}:released",
        ":released",
        "/",
        "k/",
        "/k",
        "a/b",
        "%",
        "%2F",
        "a%2Fb",
        "k%",
        "\0",
        "k\0x",
        "\n",
        "k\r\nFLUSHALL\r\n",
        "..",
        "../..",
        "*{*}?[/]%\0\n",
        "k/01ARZ3NDEKTSV4RRFFQ69G5FAV",
    ]
    .map(String::from)
    .to_vec();
    keys.push("é".repeat(512)); // 1 KiB, multi-byte
    keys.push("\u{1}".repeat(1024));
    keys.push(format!("{prefix}{{k}}")); // another key's Redis storage key
    keys.push(format!("{prefix}k/")); // another key's etcd queue
    keys
}

/// Keys outside the prefix that exist before, with names dlock might produce by mistake.
fn outside_keys(prefix: &str) -> Vec<String> {
    let bare = prefix.trim_end_matches(':');
    ["*", "k", "{k}", "k/", "{k}:released", "\0"]
        .map(String::from)
        .into_iter()
        .chain([bare.to_owned(), format!("{bare}{{k}}"), format!("{bare}k/")])
        .collect()
}

/// try_lock, contention, a waiter woken by the release, for every hostile key; `channels`
/// is asked while each waiter waits and must name only channels inside the prefix.
async fn exercise_hostile_keys<F, Fut>(a: &Locker, b: &Locker, prefix: &str, channels: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    for key in hostile_keys(prefix) {
        let shown = format!("{:?}", key.chars().take(40).collect::<String>());
        let held = a
            .try_lock(&key)
            .await
            .unwrap_or_else(|e| panic!("try_lock {shown}: {e}"));
        let held = held.unwrap_or_else(|| panic!("try_lock {shown} found it held"));
        assert!(
            b.try_lock(&key).await.expect("try_lock").is_none(),
            "two holders of {shown}"
        );
        let waiting = support::spawn_waiter(b, &key, Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
        for channel in channels().await {
            assert!(
                channel.starts_with(prefix),
                "channel {channel:?} outside the prefix, waiting on {shown}"
            );
        }
        held.release()
            .await
            .unwrap_or_else(|e| panic!("release {shown}: {e}"));
        let next = waiting
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("waiter on {shown}: {e}"));
        next.release().await.expect("release");
    }
}

async fn redis_keys(admin: &mut redis::aio::ConnectionManager) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(admin)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Every key the server holds after the hostile keys is inside the prefix, and the keys
/// that were outside before are untouched (same value, no TTL).
async fn assert_redis_keys_inside(admins: &mut [redis::aio::ConnectionManager], prefix: &str) {
    let outside = outside_keys(prefix);
    for admin in admins.iter_mut() {
        for key in redis_keys(admin).await {
            let text = String::from_utf8_lossy(&key);
            if outside.iter().any(|o| o.as_bytes() == key) {
                let value: String = admin.get(&key).await.expect("GET");
                let ttl: i64 = admin.pttl(&key).await.expect("PTTL");
                assert_eq!(
                    (value.as_str(), ttl),
                    ("outside", -1),
                    "the outside key {text:?} was touched"
                );
                continue;
            }
            assert!(
                key.starts_with(prefix.as_bytes()),
                "key {text:?} outside the prefix {prefix:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_stay_inside_the_prefix_on_redis() {
    let fx = RedisTlsAcl::start().await;
    let prefix = "hk:";
    let mut admin = fx.admin.clone();
    for key in outside_keys(prefix) {
        let () = admin.set(&key, "outside").await.expect("SET");
    }
    let config = dlock::testing::config(Driver::Redis, prefix, Duration::from_secs(5));
    let (a, b) = (fx.locker(config.clone()).await, fx.locker(config).await);
    exercise_hostile_keys(&a, &b, prefix, || {
        let mut admin = admin.clone();
        async move {
            redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .query_async(&mut admin)
                .await
                .expect("PUBSUB CHANNELS")
        }
    })
    .await;
    assert_redis_keys_inside(&mut [admin.clone()], prefix).await;
    // The fixture's drop also asserts that Redis refused the ACL user nothing.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_stay_inside_the_prefix_on_etcd() {
    let fx = EtcdTlsAuth::start().await;
    let prefix = "hk:";
    let mut kv = fx.admin.kv_client();
    for key in outside_keys(prefix) {
        kv.put(key, "outside", None).await.expect("put");
    }
    let config = dlock::testing::config(Driver::Etcd, prefix, Duration::from_secs(5));
    let (a, b) = (fx.locker(config.clone()).await, fx.locker(config).await);
    exercise_hostile_keys(&a, &b, prefix, || async { Vec::new() }).await;
    let all = kv
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .expect("range over all keys");
    let outside = outside_keys(prefix);
    for entry in all.kvs() {
        let key = entry.key();
        let text = String::from_utf8_lossy(key);
        if outside.iter().any(|o| o.as_bytes() == key) {
            assert_eq!(
                entry.value(),
                b"outside",
                "the outside key {text:?} was changed"
            );
            assert_eq!(
                entry.version(),
                1,
                "the outside key {text:?} was written again"
            );
            continue;
        }
        assert!(
            key.starts_with(prefix.as_bytes()) || key == b"dlock-test-probe",
            "key {text:?} outside the prefix"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Secrets stay secret.
// ---------------------------------------------------------------------------------------

const WRONG_PASSWORD: &str = "wrong-Secret-0d1e2f";

/// Passwords (in Redis URLs, in etcd's connect options) appear in no log line, error or
/// `Debug` output of dlock: normal operation, a refused password, a server that dies.
#[tokio::test(flavor = "current_thread")]
async fn secrets_never_appear_in_logs_errors_or_debug() {
    let (logs, _guard) = Captured::start();
    let mut shown = Vec::new(); // every error and Debug text dlock produced

    // Redis over TLS, the password in the URL of both the connection and the pubsub client.
    let certs = Certs::new();
    let mut server = TlsRedis::start(&certs).await;
    let mut admin = server.admin().await;
    tls::redis_set_user(&mut admin, &readme_acl("dlock-s", PASSWORD, "sec:")).await;
    let client = server.client_as(&certs, "dlock-s", PASSWORD);
    // (redis-rs 1.8 redacts the password in its Client's Debug; older ones printed it, and
    // etcd-client's ConnectOptions still does: dlock must never print what it was given.)
    let config = dlock::testing::config(Driver::Redis, "sec:", Duration::from_secs(1));
    let builder = Locker::builder(config.clone())
        .redis(manager(client.clone()).await)
        .redis_pubsub(client.clone());
    shown.push(format!("{builder:?}"));
    let holder = builder.build().unwrap();
    // A notification client with a refused password: its failure is logged.
    let refused = server.client_as(&certs, "dlock-s", WRONG_PASSWORD);
    let waiter = Locker::builder(config)
        .redis(manager(client).await)
        .redis_pubsub(refused)
        .build()
        .unwrap();
    shown.push(format!("{holder:?} {waiter:?}"));
    let held = holder.lock("k").await.expect("lock");
    let waiting = support::spawn_waiter(&waiter, "k", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.release().await.expect("release");
    waiting
        .await
        .unwrap()
        .expect("waiter")
        .release()
        .await
        .expect("release");
    // The server dies under a held lock: renewal warnings, a lost lock, failed calls.
    let held = holder.lock("k").await.expect("lock");
    server.kill();
    held.lost().cancelled().await;
    shown.push(format!("{:?}", held.release().await));
    for result in [
        holder.try_lock("k").await.map(|_| ()),
        waiter.lock("k2").await.map(|_| ()),
    ] {
        let err = result.expect_err("the server is down");
        shown.push(format!("{err} {err:?}"));
    }

    // etcd over TLS, the password in etcd-client's connect options.
    let etcd = SecureEtcd::start(&certs).await;
    etcd.add_prefix_user("dlock-s", PASSWORD, "sec:").await;
    let Err(refused) = etcd.try_client_as("dlock-s", WRONG_PASSWORD).await else {
        panic!("etcd accepted a wrong password");
    };
    shown.push(format!("{refused} {refused:?}"));
    let builder = Locker::builder(dlock::testing::config(
        Driver::Etcd,
        "sec:",
        Duration::from_secs(2),
    ))
    .etcd(etcd.client_as("dlock-s", PASSWORD).await);
    shown.push(format!("{builder:?}"));
    let locker = builder.build().unwrap();
    shown.push(format!("{locker:?}"));
    support::lock_and_release(&locker, "k").await;
    let mut etcd = etcd;
    let held = locker.lock("k").await.expect("lock");
    etcd.kill();
    held.lost().cancelled().await;
    shown.push(format!("{:?}", held.release().await));
    let err = locker.try_lock("k").await.expect_err("etcd is down");
    shown.push(format!("{err} {err:?}"));

    let text = logs.text();
    for expected in [
        "lock acquired",
        "AuthenticationFailed",
        "renewal failed",
        "lock attempt failed",
    ] {
        assert!(
            text.contains(expected),
            "the captured logs lack {expected:?}: the capture is broken\n{text}"
        );
    }
    for secret in [PASSWORD, WRONG_PASSWORD, tls::ETCD_ROOT_PASSWORD] {
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            leaks.is_empty(),
            "a password in the logs:\n{}",
            leaks.join("\n")
        );
        for output in &shown {
            assert!(
                !output.contains(secret),
                "a password in dlock's output: {output}"
            );
        }
    }
}
