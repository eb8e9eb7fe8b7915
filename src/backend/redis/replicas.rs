//! Replica acknowledgement: a script that writes the lock, then `WAIT <replicas> <ms>`, in one
//! pipeline on one connection.
//!
//! `WAIT` counts the replicas that have every write this *connection* made before it, so it
//! must follow the script on the same connection. A pipeline gives that on every connection
//! kind: on a single node it is one connection; on a Cluster, redis-rs routes a pipeline by
//! its first keyed command (the script's lock key), whereas a lone `WAIT` would be sent to
//! every primary. A blocked `WAIT` also holds up the other commands multiplexed on that
//! connection, for at most its timeout (only while replicas lag or are down).
//!
//! `WAITAOF` (Redis >= 7.2: the write is also in the replicas' AOF) is not used: it is
//! not available on the Redis 7.0 this crate is tested with.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, Script};

use super::{millis, Scripts};
use crate::backend::Context;
use crate::config::ReplicaAck;
use crate::error::{Error, Result};

/// Where `LockerBuilder::build` leaves the config's `replica_ack` for the Redis backend,
/// whenever `.redis(..)` was called; empty: acknowledgement is off.
pub(crate) type AckSlot = Arc<OnceLock<ReplicaAck>>;

/// `EVALSHA <script> <number of keys> <keys...>`; the caller adds the script's ARGV.
pub(super) fn evalsha(script: &Script, keys: &[String]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

/// How long `WAIT` may block: the configured timeout, cut to three quarters of what the call
/// is useful for, so that its answer still arrives in time. Never 0 (`WAIT n 0` blocks forever).
pub(super) fn wait_timeout(cx: &Context, ack: &ReplicaAck, limit: Duration) -> Duration {
    let bound = cx.bound(limit);
    ack.timeout
        .min(bound - bound / 4)
        .max(Duration::from_millis(1))
}

/// The error of a write that too few replicas acknowledged in time.
pub(super) fn too_few(
    key: &str,
    what: &str,
    acked: i64,
    ack: &ReplicaAck,
    waited: Duration,
) -> Error {
    Error::backend(
        "redis",
        key,
        format!(
            "only {acked} of {} replicas acknowledged the {what} within {waited:?}",
            ack.replicas
        ),
    )
}

impl<C: ConnectionLike + Clone + Send + Sync> Scripts<C> {
    /// Runs `script` (as `evalsha`, with its arguments) and `WAIT` for `wait` (its timeout
    /// already cut by [`wait_timeout`]) in one pipeline, bounded like [`Scripts::call`]: the
    /// script's answer and how many replicas acknowledged.
    pub(super) async fn call_acknowledged<T: FromRedisValue>(
        &self,
        cx: &Context,
        key: &str,
        limit: Duration,
        script: &Script,
        evalsha: Cmd,
        wait: ReplicaAck,
    ) -> Result<(T, i64)> {
        let mut pipe = redis::pipe();
        pipe.add_command(evalsha)
            .cmd("WAIT")
            .arg(wait.replicas)
            .arg(millis(wait.timeout));
        let mut conn = self.conn.clone();
        let call = async {
            match pipe.query_async(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.load_async(&mut conn).await?;
                    pipe.query_async(&mut conn).await
                }
                outcome => outcome,
            }
        };
        cx.call("redis", key, limit, call).await
    }
}
