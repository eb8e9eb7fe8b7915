//! Hostile and absurd input: each case gets a typed error or a documented success, never a
//! panic, a hang or a key left behind. Server-independent cases run on the in-process
//! store; the Redis-specific ones on a real `redis-server`.

mod support;

use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker, MemoryStore};
use proptest::prelude::*;
use tokio::time::timeout;

/// Every call below must answer within this; a hang is a failure, not a slow test.
const ANSWER: Duration = Duration::from_secs(5);

fn memory(prefix: &str) -> (Locker, MemoryStore) {
    let store = MemoryStore::new();
    let config = Config {
        prefix: prefix.into(),
        ..Config::default()
    };
    let locker = Locker::builder(config)
        .memory(store.clone())
        .build()
        .expect("build");
    (locker, store)
}

#[derive(Debug)]
enum Expect {
    InvalidKey,
    Acquired,
}

#[tokio::test]
async fn keys_table() {
    let megabyte = "k".repeat(1 << 20);
    let cases: Vec<(&str, String, Expect)> = vec![
        ("empty key", String::new(), Expect::InvalidKey),
        ("1 MiB key", megabyte, Expect::InvalidKey),
        (
            "key of MAX_KEY_LEN + 1 bytes",
            "k".repeat(dlock::MAX_KEY_LEN + 1),
            Expect::InvalidKey,
        ),
        (
            "key of MAX_KEY_LEN bytes",
            "k".repeat(dlock::MAX_KEY_LEN),
            Expect::Acquired,
        ),
        ("NUL", "a\0b".into(), Expect::Acquired),
        ("newline", "a\nb".into(), Expect::Acquired),
        ("braces", "{a}".into(), Expect::Acquired),
        ("empty braces", "{}".into(), Expect::Acquired),
        ("star", "*".into(), Expect::Acquired),
        ("the prefix alone", "app:".into(), Expect::Acquired),
        ("unicode", "ключ🔒".into(), Expect::Acquired),
    ];
    for (name, key, expect) in cases {
        let (locker, store) = memory("app:");
        let outcome = timeout(ANSWER, locker.try_lock(&key)).await.expect("hang");
        match (expect, outcome) {
            (Expect::InvalidKey, Err(Error::InvalidKey { key: shown, .. })) => {
                assert!(
                    shown.len() <= 80,
                    "{name}: error shows a {}-byte key",
                    shown.len()
                )
            }
            (Expect::Acquired, Ok(Some(guard))) => {
                assert_eq!(guard.key(), key, "{name}");
                assert!(
                    store.contains(&format!("app:{key}")),
                    "{name}: no key stored"
                );
                guard
                    .release()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: release: {e}"));
                assert!(
                    !store.contains(&format!("app:{key}")),
                    "{name}: key left behind"
                );
            }
            (expect, outcome) => panic!("{name}: expected {expect:?}, got {outcome:?}"),
        }
    }
}

#[tokio::test]
async fn ttl_table() {
    let cases = [
        ("0", Duration::ZERO, false),
        ("1 ns", Duration::from_nanos(1), false),
        ("1 ms", Duration::from_millis(1), false),
        ("99 ms", Duration::from_millis(99), false),
        ("100 ms", Duration::from_millis(100), true),
        ("24 h", Duration::from_secs(24 * 3600), true),
        (
            "24 h + 1 ms",
            Duration::from_secs(24 * 3600) + Duration::from_millis(1),
            false,
        ),
        ("u64::MAX ms", Duration::from_millis(u64::MAX), false),
        ("Duration::MAX", Duration::MAX, false),
    ];
    for (name, ttl, valid) in cases {
        let (locker, _store) = memory("ttl:");
        let outcome = timeout(
            ANSWER,
            locker.try_lock_with("k", LockOptions::new().ttl(ttl)),
        )
        .await
        .expect("hang");
        match (valid, outcome) {
            (true, Ok(Some(guard))) => guard.release().await.expect("release"),
            (
                false,
                Err(Error::InvalidTtl {
                    key, ttl: refused, ..
                }),
            ) => {
                assert_eq!(key.as_deref(), Some("k"), "{name}");
                assert_eq!(refused, ttl, "{name}");
            }
            (valid, outcome) => panic!("TTL {name} (valid: {valid}): got {outcome:?}"),
        }
        let config = Config {
            default_ttl: ttl,
            ..Config::default()
        };
        let built = Locker::builder(config).build();
        assert_eq!(
            built.is_ok(),
            valid,
            "default_ttl {name}: {:?}",
            built.err()
        );
        if let Err(e) = built {
            assert!(
                matches!(&e, Error::InvalidConfig { field, .. } if field == "default_ttl"),
                "default_ttl {name}: {e:?}"
            );
        }
    }
}

#[tokio::test]
async fn retry_interval_zero_is_refused() {
    let config = Config {
        retry_interval: Duration::ZERO,
        ..Config::default()
    };
    match Locker::builder(config).build() {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "retry_interval"),
        other => panic!("expected InvalidConfig(retry_interval), got {other:?}"),
    }
}

#[tokio::test]
async fn wait_timeout_zero_makes_one_attempt() {
    let (locker, _store) = memory("w0:");
    let zero = LockOptions::new().wait_timeout(Duration::ZERO);
    let guard = timeout(ANSWER, locker.lock_with("k", zero))
        .await
        .expect("hang");
    let guard = guard.expect("a free lock is acquired with wait_timeout(0)");
    match timeout(ANSWER, locker.lock_with("k", zero))
        .await
        .expect("hang")
    {
        Err(Error::Timeout { key, .. }) => assert_eq!(key, "k"),
        other => panic!("a held lock with wait_timeout(0): expected Timeout, got {other:?}"),
    }
    guard.release().await.expect("release");
    let forever = LockOptions::new().wait_timeout(Duration::MAX);
    let guard = timeout(ANSWER, locker.lock_with("k", forever))
        .await
        .expect("hang");
    guard
        .expect("wait_timeout(Duration::MAX) must not overflow")
        .release()
        .await
        .expect("release");
}

#[tokio::test]
async fn builder_without_or_with_the_wrong_connector() {
    for driver in [Driver::Redis, Driver::Etcd] {
        match Locker::builder(Config::new(driver)).build() {
            Err(Error::ConnectorMissing { driver: d, .. }) => assert_eq!(d, driver),
            other => panic!("{driver} without connector: {other:?}"),
        }
        let wrong = Locker::builder(Config::new(driver))
            .memory(MemoryStore::new())
            .build();
        match wrong {
            Err(Error::ConnectorMissing { reason, .. }) => {
                assert!(reason.contains("memory"), "{driver}: {reason}")
            }
            other => panic!("{driver} with a memory store: {other:?}"),
        }
    }
}

#[tokio::test]
async fn yaml_configs_table() {
    let cases = [
        ("unknown field", "driver: redis\nttl: 5s\n", "ttl"),
        (
            "negative duration",
            "driver: redis\ndefault_ttl: -5s\n",
            "default_ttl",
        ),
        (
            "unparsable duration",
            "driver: redis\nretry_interval: fast\n",
            "retry_interval",
        ),
        (
            "number without unit",
            "driver: redis\ndefault_ttl: 10\n",
            "default_ttl",
        ),
        ("unknown driver", "driver: consul\n", "driver"),
        ("missing driver", "prefix: x\n", "driver"),
        ("not a mapping", "- driver\n", "<yaml>"),
    ];
    for (name, yaml, field) in cases {
        match Config::from_yaml(yaml) {
            Err(e @ Error::InvalidConfig { .. }) => {
                assert!(
                    e.to_string().contains(field),
                    "{name}: {e} does not name {field}"
                )
            }
            other => panic!("{name}: expected InvalidConfig, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_call_after_close_is_refused() {
    let (locker, _store) = memory("closed:");
    let guard = locker.lock("held").await.expect("lock");
    locker.close().await.expect("close");
    assert!(matches!(locker.lock("k").await, Err(Error::Closed)));
    assert!(matches!(locker.try_lock("k").await, Err(Error::Closed)));
    let options = LockOptions::new().ttl(Duration::from_secs(1));
    assert!(matches!(
        locker.lock_with("k", options).await,
        Err(Error::Closed)
    ));
    assert!(matches!(
        locker.try_lock_with("k", options).await,
        Err(Error::Closed)
    ));
    let go = locker.compat();
    assert!(matches!(go.lock("k").await, Err(Error::Closed)));
    assert!(matches!(go.try_lock("k").await, Err(Error::Closed)));
    assert!(matches!(
        go.unlock("held").await,
        Err(Error::LockNotHeld { .. })
    ));
    assert!(
        guard.release().await.is_ok(),
        "close() released it; release reports success"
    );
    locker.close().await.expect("a second close is fine");
}

#[tokio::test]
async fn a_waiter_is_woken_by_close_with_closed() {
    let (locker, _store) = memory("closewait:");
    let _held = locker.lock("k").await.expect("lock");
    let waiter = tokio::spawn({
        let locker = locker.clone();
        async move { locker.lock("k").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    locker.close().await.expect("close");
    let outcome = timeout(ANSWER, waiter)
        .await
        .expect("the waiter hung")
        .unwrap();
    assert!(
        matches!(outcome, Err(Error::Closed)),
        "waiter got {outcome:?}"
    );
}

#[tokio::test]
async fn wait_timeout_zero_makes_one_attempt_on_redis() {
    let server = support::RedisServer::start().await;
    let locker = Locker::builder(Config::new(Driver::Redis))
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    let zero = LockOptions::new().wait_timeout(Duration::ZERO);
    let guard = timeout(ANSWER, locker.lock_with("k", zero))
        .await
        .expect("hang");
    let guard = guard.expect("a free lock is acquired with wait_timeout(0) over the network");
    match timeout(ANSWER, locker.lock_with("k", zero))
        .await
        .expect("hang")
    {
        Err(Error::Timeout { .. }) => {}
        other => panic!("a held lock with wait_timeout(0): expected Timeout, got {other:?}"),
    }
    guard.release().await.expect("release");
}

/// A lock overwritten by another client: the original holder's release reports the loss
/// and leaves the other client's value alone.
#[tokio::test]
async fn release_after_the_key_was_overwritten_on_redis() {
    use redis::AsyncCommands;
    let server = support::RedisServer::start().await;
    let locker = Locker::builder(Config::new(Driver::Redis))
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    let guard = locker.lock("k").await.expect("lock");
    let mut other = server.connection_manager().await;
    let _: () = other.set("dlock:{k}", "someone-else").await.expect("SET");
    match timeout(ANSWER, guard.release()).await.expect("hang") {
        Err(Error::OwnershipLost { key }) => assert_eq!(key, "k"),
        other => panic!("expected OwnershipLost, got {other:?}"),
    }
    let value: Option<String> = other.get("dlock:{k}").await.expect("GET");
    assert_eq!(
        value.as_deref(),
        Some("someone-else"),
        "the release deleted another client's key"
    );
}

/// Odd keys on a real Redis: acquired, stored under their own name, released without residue.
#[tokio::test]
async fn odd_keys_on_redis() {
    use redis::AsyncCommands;
    let server = support::RedisServer::start().await;
    let locker = Locker::builder(Config::new(Driver::Redis))
        .redis(server.connection_manager().await)
        .build()
        .expect("build");
    let mut admin = server.connection_manager().await;
    for key in ["a\0b", "a\nb", "{a}", "{}", "}{", "*", "dlock:", "k:fence"] {
        let guard = locker
            .try_lock(key)
            .await
            .expect("try_lock")
            .expect("free key");
        let stored: bool = admin
            .exists(format!("dlock:{{{key}}}"))
            .await
            .expect("EXISTS");
        assert!(stored, "{key:?}: not stored under its own name");
        guard
            .release()
            .await
            .unwrap_or_else(|e| panic!("{key:?}: release: {e}"));
        // Released: at most a tombstone (`~<token>`) that counts as free and expires
        // within the call timeout.
        let left: Option<String> = admin.get(format!("dlock:{{{key}}}")).await.expect("GET");
        assert!(
            left.as_deref().is_none_or(|v| v.starts_with('~')),
            "{key:?}: still held after release: {left:?}"
        );
        let ttl_ms: i64 = admin.pttl(format!("dlock:{{{key}}}")).await.expect("PTTL");
        assert!(
            ttl_ms <= dlock::DEFAULT_CALL_TIMEOUT.as_millis() as i64,
            "{key:?}: the tombstone lives {ttl_ms} ms"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Any key either is refused with `InvalidKey` (empty, too long) or locks and unlocks
    /// cleanly; no key panics.
    #[test]
    fn any_key_is_refused_or_round_trips(key in proptest::collection::vec(any::<char>(), 0..40)
        .prop_map(|c| c.into_iter().collect::<String>())) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (locker, store) = memory("p:");
            match locker.try_lock(&key).await {
                Err(Error::InvalidKey { .. }) => prop_assert!(key.is_empty() || key.len() > dlock::MAX_KEY_LEN),
                Ok(Some(guard)) => {
                    let stored = format!("p:{key}");
                    prop_assert!(store.contains(&stored), "not stored: {:?}", stored);
                    guard.release().await.unwrap();
                    prop_assert!(!store.contains(&stored), "left behind: {:?}", stored);
                }
                other => prop_assert!(false, "key {:?}: {:?}", key, other),
            }
            Ok(())
        })?;
    }

    /// Any TTL is accepted exactly when it lies in MIN_TTL ..= MAX_TTL; none panics.
    #[test]
    fn any_ttl_is_checked_without_panicking(nanos in any::<u64>(), secs in any::<u64>()) {
        let ttl = Duration::new(secs % (1 << 20), (nanos % 1_000_000_000) as u32);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (locker, _store) = memory("t:");
            let valid = (dlock::MIN_TTL..=dlock::MAX_TTL).contains(&ttl);
            match locker.try_lock_with("k", LockOptions::new().ttl(ttl)).await {
                Ok(Some(guard)) => { prop_assert!(valid, "{:?} accepted", ttl); guard.release().await.unwrap(); }
                Err(Error::InvalidTtl { .. }) => prop_assert!(!valid, "{:?} refused", ttl),
                other => prop_assert!(false, "{:?}: {:?}", ttl, other),
            }
            Ok(())
        })?;
    }
}

/// On Redis Cluster, odd keys work, including one starting with `}` (a lock is one key, so
/// no two keys of a lock can land in different hash slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_keys_on_redis_cluster() {
    let cluster = support::RedisCluster::start(3).await;
    let locker = Locker::builder(Config::new(Driver::Redis))
        .redis_cluster(cluster.cluster_connection().await)
        .build()
        .expect("build");
    for key in ["}x", "a\0b", "{a}", "*", "x}y{z"] {
        let guard = locker
            .try_lock(key)
            .await
            .expect("try_lock")
            .expect("free key");
        guard
            .release()
            .await
            .unwrap_or_else(|e| panic!("{key:?}: release: {e}"));
    }
}

/// A guard dropped after its runtime is gone, or while the runtime shuts down, must not
/// panic; with no runtime left to send the release, the key expires after its TTL.
#[test]
fn dropping_guards_without_a_runtime_does_not_panic() {
    let store = MemoryStore::new();
    let config = Config {
        default_ttl: Duration::from_millis(300),
        ..Config::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let locker = Locker::builder(config)
        .memory(store.clone())
        .build()
        .unwrap();
    let guard = runtime.block_on(locker.lock("outside")).expect("lock");
    // A second guard lives inside a task that the shutdown drops.
    let held_in_task = runtime.block_on(locker.lock("in-task")).expect("lock");
    runtime.spawn(async move {
        let _held = held_in_task;
        std::future::pending::<()>().await;
    });
    drop(runtime);
    drop(guard);
    assert!(
        store.contains("dlock:outside"),
        "nothing could release it: it waits for its TTL"
    );
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !store.contains("dlock:outside"),
        "the TTL cleans up after a lost runtime"
    );
    assert!(!store.contains("dlock:in-task"));
}

/// The shipped example config loads, and says what the README says.
#[test]
fn the_example_config_file_loads() {
    let config = Config::from_file("examples/config.yaml").expect("examples/config.yaml");
    assert_eq!(config.driver, Driver::Redis);
    assert_eq!(config.prefix, "myapp:lock:");
    assert_eq!(config.default_ttl, Duration::from_secs(10));
    assert_eq!(config.retry_interval, Duration::from_millis(100));
    let json = Config::from_file("examples/config.json").expect("examples/config.json");
    assert_eq!(
        (json.driver, json.default_ttl),
        (Driver::Etcd, Duration::from_secs(30))
    );
    let missing = Config::from_file("examples/no-such-file.yaml").unwrap_err();
    assert!(
        matches!(missing, Error::InvalidConfig { .. }),
        "{missing:?}"
    );
}
