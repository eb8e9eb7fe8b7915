//! Renewals batched per backend: a guard's renewal joins a queue, and one task sends the
//! queue as few `refresh_many.lua` calls as it can (at most [`MAX_BATCH`] locks each, and
//! on a Cluster one call per hash slot, since a script's keys must share one).
//!
//! Renewals fall due together: the watchdog moves them onto a shared grid
//! (`support::on_renewal_grid`), so the locks of one TTL wake in the same timer tick and
//! their renewals meet in the queue. The sending task yields once before it takes the
//! queue, so that renewals woken in the same tick join it; renewals that arrive while a
//! batch is in flight go in the next one. A guard still owns its renewal: it decides when
//! to renew, waits for its own answer, and stops renewing when it is dropped.
//!
//! A renewal is counted from its send time by the watchdog (contract point 5), before it
//! waits in the queue: the server's new expiry is later, never earlier.
//!
//! A guard that is released stops waiting for its renewal, and a batch leaves out every
//! renewal nobody waits for any more. A renewal already in a batch on its way can reach
//! the server just after the release; it is token-checked like every renewal, so it finds
//! the release's tombstone (or a newer holder) and extends nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Script;
use tokio::sync::oneshot;

use super::{millis, Scripts};
use crate::backend::{recover, Context};
use crate::error::{Error, Result};

static REFRESH_MANY: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("refresh_many.lua")));

/// Locks per script call: long enough to amortise the call, short enough not to hold the
/// server (a single-threaded Redis runs nothing else during a script) for long.
pub(super) const MAX_BATCH: usize = 100;

/// The queue of one backend's renewals.
pub(super) struct Batcher {
    queue: Mutex<Queue>,
    /// Whether the connection is a Redis Cluster's: then batches are split by hash slot.
    cluster: bool,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// Whether a task is sending (it takes what is pending until the queue is empty).
    sending: bool,
}

struct Pending {
    key: String,
    storage_key: String,
    token: String,
    ttl: Duration,
    answer: oneshot::Sender<Result<bool>>,
}

impl Batcher {
    pub fn new(cluster: bool) -> Arc<Batcher> {
        Arc::new(Batcher {
            queue: Mutex::default(),
            cluster,
        })
    }

    /// Renews one lock in the next batch: `Ok(true)` renewed, `Ok(false)` not ours.
    pub async fn renew<C>(
        self: &Arc<Self>,
        scripts: &Scripts<C>,
        cx: &Context,
        key: &str,
        storage_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool>
    where
        C: ConnectionLike + Clone + Send + Sync + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let start_sending = {
            let mut queue = recover(self.queue.lock());
            queue.pending.push(Pending {
                key: key.to_owned(),
                storage_key: storage_key.to_owned(),
                token: token.to_owned(),
                ttl,
                answer,
            });
            !std::mem::replace(&mut queue.sending, true)
        };
        if start_sending {
            cx.spawn(send_all(self.clone(), scripts.clone(), cx.clone()));
        }
        answered.await.unwrap_or_else(|_| {
            // The sending task was not run (no runtime any more) or panicked.
            Err(Error::backend(
                "redis",
                key,
                "the renewal batch was dropped",
            ))
        })
    }
}

/// Sends what is queued, batch after batch, until the queue is empty.
async fn send_all<C>(batcher: Arc<Batcher>, scripts: Scripts<C>, cx: Context)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    loop {
        // Renewals woken in the same timer tick join before the queue is taken.
        tokio::task::yield_now().await;
        let pending = {
            let mut queue = recover(batcher.queue.lock());
            if queue.pending.is_empty() {
                queue.sending = false;
                return;
            }
            std::mem::take(&mut queue.pending)
        };
        let batches = split(pending, batcher.cluster);
        futures_util::future::join_all(batches.into_iter().map(|batch| send(&scripts, &cx, batch)))
            .await;
    }
}

/// Batches of at most [`MAX_BATCH`] renewals; on a Cluster, each of one hash slot.
fn split(mut pending: Vec<Pending>, cluster: bool) -> Vec<Vec<Pending>> {
    if cluster {
        pending.sort_by_key(|p| hash_slot(p.storage_key.as_bytes()));
    }
    let mut batches: Vec<Vec<Pending>> = Vec::new();
    for renewal in pending {
        let joins_last = batches.last().is_some_and(|batch| {
            batch.len() < MAX_BATCH
                && (!cluster
                    || hash_slot(batch[0].storage_key.as_bytes())
                        == hash_slot(renewal.storage_key.as_bytes()))
        });
        if joins_last {
            batches.last_mut().expect("checked").push(renewal);
        } else {
            batches.push(vec![renewal]);
        }
    }
    batches
}

/// One `refresh_many.lua` call for `batch`; every renewal in it gets its own answer.
async fn send<C>(scripts: &Scripts<C>, cx: &Context, mut batch: Vec<Pending>)
where
    C: ConnectionLike + Clone + Send + Sync,
{
    // A guard released or dropped since it asked no longer waits: its renewal is not sent.
    batch.retain(|renewal| !renewal.answer.is_closed());
    if batch.is_empty() {
        return;
    }
    let mut invocation = REFRESH_MANY.prepare_invoke();
    for renewal in &batch {
        invocation
            .key(&renewal.storage_key)
            .arg(&renewal.token)
            .arg(millis(renewal.ttl));
    }
    // Useless once the shortest TTL in the batch has run out.
    let limit = batch.iter().map(|r| r.ttl).min().unwrap_or(Duration::MAX);
    let outcome: Result<Vec<i64>> = scripts.call(cx, &batch[0].key, limit, &invocation).await;
    match outcome {
        Ok(renewed) if renewed.len() == batch.len() => {
            for (renewal, renewed) in batch.into_iter().zip(renewed) {
                let _ = renewal.answer.send(Ok(renewed == 1));
            }
        }
        Ok(renewed) => {
            let reason = format!(
                "refresh_many.lua answered {} results for {} locks",
                renewed.len(),
                batch.len()
            );
            for renewal in batch {
                let error = Error::backend("redis", &renewal.key, reason.clone());
                let _ = renewal.answer.send(Err(error));
            }
        }
        Err(e) => {
            for renewal in batch {
                let error = match &e {
                    Error::PermissionDenied { detail, .. } => Error::PermissionDenied {
                        backend: "redis",
                        key: Some(renewal.key),
                        detail: detail.clone(),
                    },
                    other => Error::backend("redis", &renewal.key, other.to_string()),
                };
                let _ = renewal.answer.send(Err(error));
            }
        }
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part between
/// the first `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::hash_slot;

    #[test]
    fn hash_slots_match_the_cluster_specification() {
        // The examples of the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(super::crc16(b"123456789"), 0x31C3);
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"foo{}{bar}"), hash_slot(b"foo{}{bar}"));
        assert_ne!(hash_slot(b"foo{}{bar}"), hash_slot(b"bar"));
        assert_eq!(hash_slot(b"dlock:{job}"), hash_slot(b"job"));
    }
}
