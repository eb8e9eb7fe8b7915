//! Renewals in batches: the engine hands over every renewal that falls due in the same tick
//! ([`Backend::renew_many`](crate::backend::Backend::renew_many)), and they leave as few
//! `refresh_many.lua` calls as they can (`permit_refresh_many.lua` for semaphore permits):
//! at most [`MAX_BATCH`] locks each, and on a Cluster one call per hash slot, since a
//! script's keys must share one. The calls go out at once, on the backend's multiplexed
//! connection.
//!
//! Each lock is token-checked like a single renewal: a batch sent just before a release
//! reaches the server before it (the engine sends no release while a renewal is away), and
//! one that found its lock gone or taken extends nothing.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::Script;

use super::{millis, permits, Scripts};
use crate::backend::{Context, Lease, Renewal};
use crate::error::{Error, Result};

static REFRESH_MANY: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("refresh_many.lua")));

/// Locks per script call: long enough to amortise the call, short enough not to hold the
/// server (a single-threaded Redis runs nothing else during a script) for long.
pub(super) const MAX_BATCH: usize = 100;

/// Renews `locks` (lease, token), one answer per lock in order. `cluster`: split by slot.
pub(super) async fn renew_many<C>(
    scripts: &Scripts<C>,
    cx: &Context,
    locks: &[(&Lease, &mut String)],
    cluster: bool,
) -> Vec<Result<Renewal>>
where
    C: ConnectionLike + Clone + Send + Sync,
{
    let batches = split(locks, cluster);
    let sent = batches.iter().map(|batch| send(scripts, cx, locks, batch));
    let answers = futures_util::future::join_all(sent).await;
    let mut renewed: Vec<Option<Result<Renewal>>> = (0..locks.len()).map(|_| None).collect();
    for (batch, answer) in batches.iter().zip(answers) {
        for (&i, outcome) in batch.iter().zip(answer) {
            renewed[i] = Some(outcome);
        }
    }
    renewed
        .into_iter()
        .zip(locks)
        .map(|(outcome, (lease, _))| {
            outcome.unwrap_or_else(|| Err(Error::backend("redis", &lease.key, "not sent")))
        })
        .collect()
}

/// Batches of at most [`MAX_BATCH`] indices into `locks`, each of locks or of permits; on a
/// Cluster, each of one slot.
fn split(locks: &[(&Lease, &mut String)], cluster: bool) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..locks.len()).collect();
    let slot = |i: usize| {
        let lease = locks[i].0;
        let slot = if cluster {
            hash_slot(lease.storage_key.as_bytes())
        } else {
            0
        };
        (lease.permits > 1, slot)
    };
    if cluster || locks.iter().any(|(lease, _)| lease.permits > 1) {
        order.sort_by_key(|&i| slot(i));
    }
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match batches.last_mut() {
            Some(batch) if batch.len() < MAX_BATCH && slot(batch[0]) == slot(i) => batch.push(i),
            _ => batches.push(vec![i]),
        }
    }
    batches
}

/// One `refresh_many.lua` call for the locks at `batch`: one answer for each.
async fn send<C>(
    scripts: &Scripts<C>,
    cx: &Context,
    locks: &[(&Lease, &mut String)],
    batch: &[usize],
) -> Vec<Result<Renewal>>
where
    C: ConnectionLike + Clone + Send + Sync,
{
    let script = if locks[batch[0]].0.permits > 1 {
        &*permits::REFRESH_MANY
    } else {
        &*REFRESH_MANY
    };
    let mut invocation = script.prepare_invoke();
    for &i in batch {
        let (lease, token) = &locks[i];
        // The hot path of holding many locks: a lock's key is passed as it is, a
        // semaphore's two keys are made only for permits.
        if lease.permits > 1 {
            for key in permits::keys(&lease.storage_key, lease.permits) {
                invocation.key(key);
            }
        } else {
            invocation.key(&lease.storage_key);
        }
        invocation.arg(&**token).arg(millis(lease.ttl));
    }
    let first = locks[batch[0]].0;
    // Useless once the shortest TTL in the batch has run out.
    let limit = batch
        .iter()
        .map(|&i| locks[i].0.ttl)
        .min()
        .unwrap_or(Duration::MAX);
    let outcome: Result<Vec<i64>> = scripts.call(cx, &first.key, limit, &invocation).await;
    let error = match outcome {
        Ok(renewed) if renewed.len() == batch.len() => {
            return renewed
                .into_iter()
                .map(|renewed| Ok(Renewal::still_ours(renewed == 1)))
                .collect();
        }
        Ok(renewed) => Error::backend(
            "redis",
            &first.key,
            format!(
                "refresh_many.lua answered {} results for {} locks",
                renewed.len(),
                batch.len()
            ),
        ),
        Err(e) => e,
    };
    // Every lock of the batch gets the error, under its own key.
    batch
        .iter()
        .map(|&i| {
            let key = &locks[i].0.key;
            Err(match &error {
                Error::PermissionDenied { detail, .. } => Error::PermissionDenied {
                    backend: "redis",
                    key: Some(key.clone()),
                    detail: detail.clone(),
                },
                other => Error::backend("redis", key, other.to_string()),
            })
        })
        .collect()
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
