//! What dlock is measured against (issue 12): the **floor**, the least a lock + release
//! needs on each server, sent over the same kind of connection, and the **peer** a user would
//! pick instead, run on the same server in the same run.
//!
//! - Redis floor: `SET key token NX PX ttl`, then a compare-and-delete script (`GET` = token
//!   → `DEL`): no fencing token, no renewal, no notification.
//! - Redis peer: `rslock` (Redlock with one server), `lock` + `unlock`.
//! - Redis handoff floor ([`RedisLockFloor`], the `handoff` section): the same lock, its
//!   waiter subscribed to a channel of the key first, its release one script that
//!   compares, deletes and publishes: one round trip to release, one message, one `SET NX`.
//! - etcd floor: one lease granted up front and shared, then per pair a put-if-absent
//!   transaction on that lease and a delete: two writes.
//! - etcd peer: etcd's own lock service (`Lock` + `Unlock` RPCs of etcd-client) on a shared
//!   lease, as its concurrency package does.
//!
//! Semaphores of N permits (issue 21, the `semaphore` section), floors only (no peer crate
//! keeps a semaphore on these servers):
//!
//! - Redis floor ([`RedisSemaphoreFloor`]): one sorted set of holder tokens scored by expiry
//!   in server ms; acquire is one script (`TIME`, drop the expired, `ZCARD` < N → `ZADD`),
//!   release is `ZREM`. No fencing token, no renewal, no check that every caller names the
//!   same N, no tombstone for resent or undone calls. Waiters retry every 1 ms, or, where the
//!   section measures the wake-up itself, listen on a channel the release publishes to.
//! - etcd floor ([`EtcdSemaphoreFloor`]): a key `prefix/token` on the process's one lease
//!   (granted once) per holder; held while fewer than N keys of the prefix have a lower
//!   create revision. Acquire is one transaction (the put, then a range of the prefix's
//!   first N keys by create revision, keys only); release is a delete; a waiter watches the
//!   prefix for deletes and ranges again once the watch is created and after each delete.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, GetResponse, LockOptions, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use futures_util::StreamExt;
use redis::Script;

use super::support::fixtures::{Etcd, Redis};

pub type Op =
    Arc<dyn Fn(usize, u64) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

const TTL: Duration = Duration::from_secs(10);

/// `SET NX PX` + compare-and-delete, on a `ConnectionManager` like dlock's.
pub async fn redis_floor(redis: &Redis) -> Op {
    let conn = redis.connection().await;
    let release = Arc::new(Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    ));
    Arc::new(move |task, i| {
        let (mut conn, release) = (conn.clone(), release.clone());
        Box::pin(async move {
            let (key, token) = (format!("floor:{task}"), format!("{task}-{i}"));
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(TTL.as_millis() as u64)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(set.is_some(), "floor: {key} was held");
            let deleted: i64 = release
                .key(&key)
                .arg(&token)
                .invoke_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(deleted, 1);
        })
    })
}

/// rslock's `lock` + `unlock` on the same server.
pub fn redis_peer(redis: &Redis) -> Op {
    let manager = Arc::new(rslock::LockManager::new(vec![redis.url()]));
    Arc::new(move |task, _| {
        let manager = manager.clone();
        Box::pin(async move {
            let resource = format!("peer:{task}");
            let lock = manager
                .lock(resource.as_bytes(), TTL)
                .await
                .expect("rslock: lock");
            manager.unlock(&lock).await;
        })
    })
}

/// A client of its own and one lease, long enough for the run, that every pair shares.
async fn shared_lease(etcd: &Etcd) -> (etcd_client::Client, i64) {
    let client = etcd.default_client().await;
    let lease = client.lease_client().grant(60, None).await.unwrap().id();
    (client, lease)
}

/// Put-if-absent on a shared lease + delete: two writes per pair.
pub async fn etcd_floor(etcd: &Etcd) -> Op {
    let (client, lease) = shared_lease(etcd).await;
    Arc::new(move |task, _| {
        let mut kv = client.kv_client();
        Box::pin(async move {
            let key = format!("floor/{task}");
            let put = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    "",
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            assert!(
                kv.txn(put).await.unwrap().succeeded(),
                "floor: {key} was held"
            );
            kv.delete(key, None).await.unwrap();
        })
    })
}

/// etcd's lock service (`Lock`/`Unlock`) on a shared lease.
pub async fn etcd_peer(etcd: &Etcd) -> Op {
    let (client, lease) = shared_lease(etcd).await;
    Arc::new(move |task, _| {
        let mut lock_client = client.lock_client();
        Box::pin(async move {
            let options = LockOptions::new().with_lease(lease);
            let locked = lock_client
                .lock(format!("peer/{task}"), Some(options))
                .await
                .unwrap();
            lock_client.unlock(locked.key()).await.unwrap();
        })
    })
}

/// The Redis lock handoff floor: `SET NX PX` to take, one script to release that deletes
/// the key if it holds the token and publishes on `<key>:free`; a waiter subscribes first,
/// then tries again at each message (and every second in any case).
#[derive(Clone)]
pub struct RedisLockFloor {
    conn: redis::aio::ConnectionManager,
    release: Arc<Script>,
}

impl RedisLockFloor {
    /// A connection of its own, like a locker.
    pub async fn new(redis: &Redis) -> RedisLockFloor {
        let release = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
            redis.call('DEL', KEYS[1]) redis.call('PUBLISH', KEYS[1] .. ':free', '') return 1 \
            end return 0";
        RedisLockFloor {
            conn: redis.connection().await,
            release: Arc::new(Script::new(release)),
        }
    }

    /// One attempt: true if `token` now holds `key`.
    pub async fn try_lock(&self, key: &str, token: &str) -> bool {
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        set.is_some()
    }

    /// Waits for `key`, subscribed to its channel before the first attempt so that no
    /// release is missed.
    pub async fn lock_notified(&self, key: &str, token: &str, pubsub: &redis::Client) {
        let mut pubsub = pubsub.get_async_pubsub().await.unwrap();
        pubsub.subscribe(format!("{key}:free")).await.unwrap();
        let mut announced = pubsub.on_message();
        while !self.try_lock(key, token).await {
            let _ = tokio::time::timeout(Duration::from_secs(1), announced.next()).await;
        }
    }

    /// Compare, delete and publish, in one script.
    pub async fn release(&self, key: &str, token: &str) {
        let released: i64 = self
            .release
            .key(key)
            .arg(token)
            .invoke_async(&mut self.conn.clone())
            .await
            .unwrap();
        assert_eq!(released, 1, "floor: {key} was not held by {token}");
    }
}

/// The Redis semaphore floor: `key` is a sorted set of holder tokens scored by expiry
/// (server ms). One value per process: its own connection, like a locker.
#[derive(Clone)]
pub struct RedisSemaphoreFloor {
    conn: redis::aio::ConnectionManager,
    key: String,
    permits: u32,
    acquire: Arc<Script>,
}

/// Drops the expired holders, then adds this one if fewer than N are left: 1 if it did.
const FLOOR_ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  return 1
end
return 0
";

impl RedisSemaphoreFloor {
    /// A connection of its own to the semaphore `key` of `permits`.
    pub async fn new(redis: &Redis, key: &str, permits: u32) -> RedisSemaphoreFloor {
        RedisSemaphoreFloor {
            conn: redis.connection().await,
            key: key.to_owned(),
            permits,
            acquire: Arc::new(Script::new(FLOOR_ACQUIRE)),
        }
    }

    /// Where releases are announced, for waiters that listen ([`Self::acquire_notified`]).
    fn channel(&self) -> String {
        format!("{}:free", self.key)
    }

    /// One attempt: true if `token` now holds a permit.
    pub async fn try_acquire(&self, token: &str) -> bool {
        let taken: i64 = self
            .acquire
            .key(&self.key)
            .arg(self.permits)
            .arg(TTL.as_millis() as u64)
            .arg(token)
            .invoke_async(&mut self.conn.clone())
            .await
            .unwrap();
        taken == 1
    }

    /// Waits for a permit by trying again every 1 ms.
    pub async fn acquire_polling(&self, token: &str) {
        while !self.try_acquire(token).await {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits for a permit, trying again when a release is announced (subscribed before the
    /// first attempt, so that no announcement is missed; every second in any case).
    pub async fn acquire_notified(&self, token: &str, pubsub: &redis::Client) {
        let mut pubsub = pubsub.get_async_pubsub().await.unwrap();
        pubsub.subscribe(self.channel()).await.unwrap();
        let mut announced = pubsub.on_message();
        while !self.try_acquire(token).await {
            let _ = tokio::time::timeout(Duration::from_secs(1), announced.next()).await;
        }
    }

    /// `ZREM`: the permit is free.
    pub async fn release(&self, token: &str) {
        let _: i64 = redis::cmd("ZREM")
            .arg(&self.key)
            .arg(token)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
    }

    /// `ZREM` and `PUBLISH` on the semaphore's channel, pipelined (one round trip).
    pub async fn release_announced(&self, token: &str) {
        let _: (i64, i64) = redis::pipe()
            .cmd("ZREM")
            .arg(&self.key)
            .arg(token)
            .cmd("PUBLISH")
            .arg(self.channel())
            .arg(token)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
    }
}

/// The etcd semaphore floor: a key `prefix/token` per holder on the process's one lease,
/// held while it is among the prefix's N oldest keys (by create revision). One value per
/// process: its own client and lease, like a locker.
#[derive(Clone)]
pub struct EtcdSemaphoreFloor {
    client: etcd_client::Client,
    lease: i64,
    prefix: String,
    permits: u32,
}

impl EtcdSemaphoreFloor {
    /// A client of its own, its lease granted once, for the semaphore `prefix` of `permits`.
    pub async fn new(etcd: &Etcd, prefix: &str, permits: u32) -> EtcdSemaphoreFloor {
        let (client, lease) = shared_lease(etcd).await;
        EtcdSemaphoreFloor {
            client,
            lease,
            prefix: format!("{prefix}/"),
            permits,
        }
    }

    /// The prefix's first N keys by create revision, keys only: the holders.
    fn holders(&self) -> GetOptions {
        GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(self.permits as i64)
    }

    /// Waits for a permit; returns the key to release.
    pub async fn acquire(&self, token: &str) -> String {
        let key = format!("{}{token}", self.prefix);
        let held = |reply: &GetResponse| reply.kvs().iter().any(|kv| kv.key() == key.as_bytes());
        let mut kv = self.client.kv_client();
        let put = TxnOp::put(
            key.as_str(),
            "",
            Some(PutOptions::new().with_lease(self.lease)),
        );
        let first = TxnOp::get(self.prefix.as_str(), Some(self.holders()));
        let reply = kv.txn(Txn::new().and_then([put, first])).await.unwrap();
        match &reply.op_responses()[1] {
            TxnOpResponse::Get(range) if held(range) => return key,
            _ => {}
        }
        // Deletes of the prefix from now on, each of which may make this key one of the
        // first N. From now, not from the put's revision: etcd serves a watch that starts in
        // the past from a loop that catches up every 100 ms. A delete between the put and the
        // watch's creation is caught by ranging again once the watch is created.
        let options = WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut]);
        let mut watch = self
            .client
            .watch_client()
            .watch(self.prefix.as_str(), Some(options))
            .await
            .unwrap();
        loop {
            let message = watch.message().await.unwrap().expect("the watch ended");
            if message.events().is_empty() && !message.created() {
                continue; // a progress notice
            }
            let range = kv
                .get(self.prefix.as_str(), Some(self.holders()))
                .await
                .unwrap();
            if held(&range) {
                return key;
            }
        }
    }

    /// Deletes the holder's key.
    pub async fn release(&self, key: &str) {
        self.client.kv_client().delete(key, None).await.unwrap();
    }
}
