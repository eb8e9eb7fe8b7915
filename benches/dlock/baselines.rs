//! What dlock is measured against (issue 12): the **floor**, the least a lock + release
//! needs on each server, sent over the same kind of connection, and the **peer** a user would
//! pick instead, run on the same server in the same run.
//!
//! - Redis floor: `SET key token NX PX ttl`, then a compare-and-delete script (`GET` = token
//!   → `DEL`): no fencing token, no renewal, no notification.
//! - Redis peer: `rslock` (Redlock with one server), `lock` + `unlock`.
//! - etcd floor: one lease granted up front and shared, then per pair a put-if-absent
//!   transaction on that lease and a delete: two writes.
//! - etcd peer: etcd's own lock service (`Lock` + `Unlock` RPCs of etcd-client) on a shared
//!   lease, as its concurrency package does.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, LockOptions, PutOptions, Txn, TxnOp};
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
    let client = etcd.client().await;
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
