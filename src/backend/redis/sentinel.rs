//! A connection to whichever server the Sentinels name master, following failovers.
//!
//! redis-rs's `SentinelClient` resolves the master once and hands out a plain
//! `MultiplexedConnection`, which keeps talking to the old master (or to nothing) after a
//! failover. This handle asks the sentinels again whenever the current connection fails or
//! answers `READONLY` (it reached a demoted master): the failed command returns its error
//! (dlock's engine retries renewals; lock calls report it), the next one goes to the new
//! master.

use std::sync::{Arc, Mutex};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::backend::recover;

/// A redis-rs async connection to the master of a Sentinel-managed group, for
/// [`LockerBuilder::redis`](crate::LockerBuilder::redis). Cheap to clone; clones share the
/// connection. After a failover, the first command that fails (the old master is gone, or
/// answers `READONLY`) returns its error, and the next one is sent to the master the
/// sentinels name then. Renewals are retried by the locker's engine, so a held lock
/// survives a failover that completes before its safety deadline, if the new master has it
/// (see [`ReplicaAck`](crate::ReplicaAck)).
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use dlock::{Config, Driver, Locker, SentinelConnection};
///
/// let sentinels = vec!["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/", "redis://10.0.0.3:26379/"];
/// let conn = SentinelConnection::connect(sentinels, "mymaster", Default::default()).await?;
/// let locker = Locker::builder(Config::new(Driver::Redis)).redis(conn).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<Shared>,
}

struct Shared {
    client: tokio::sync::Mutex<SentinelClient>,
    config: AsyncConnectionConfig,
    /// The connection to the master as last resolved, and its generation: a failure
    /// replaces only the connection it happened on.
    current: Mutex<(u64, Option<MultiplexedConnection>)>,
}

impl SentinelConnection {
    /// Asks `sentinels` (URLs of Sentinel nodes) for the master named `service` and connects
    /// to it with `config` (its response timeout bounds every command).
    pub async fn connect(
        sentinels: Vec<&str>,
        service: &str,
        config: AsyncConnectionConfig,
    ) -> RedisResult<Self> {
        Self::connect_with(sentinels, service, None, config).await
    }

    /// [`SentinelConnection::connect`], with the master's credentials, TLS or database.
    pub async fn connect_with(
        sentinels: Vec<&str>,
        service: &str,
        node: Option<SentinelNodeConnectionInfo>,
        config: AsyncConnectionConfig,
    ) -> RedisResult<Self> {
        // redis-rs takes a `String` here without its `tls-rustls` feature and `impl
        // AsRef<str>` with it: an owned string builds either way.
        #[allow(clippy::unnecessary_to_owned)]
        let client = SentinelClient::build(
            sentinels,
            service.to_owned(),
            node,
            SentinelServerType::Master,
        )?;
        let conn = SentinelConnection {
            shared: Arc::new(Shared {
                client: tokio::sync::Mutex::new(client),
                config,
                current: Mutex::new((0, None)),
            }),
        };
        conn.connection().await?;
        Ok(conn)
    }

    /// The current connection, or a new one to the master the sentinels name now.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let (generation, Some(conn)) = &*recover(self.shared.current.lock()) {
            return Ok((*generation, conn.clone()));
        }
        let mut client = self.shared.client.lock().await;
        // Another caller may have reconnected while this one waited for the client.
        if let (generation, Some(conn)) = &*recover(self.shared.current.lock()) {
            return Ok((*generation, conn.clone()));
        }
        let conn = client
            .get_async_connection_with_config(&self.shared.config)
            .await?;
        let mut current = recover(self.shared.current.lock());
        current.0 += 1;
        current.1 = Some(conn.clone());
        Ok((current.0, conn))
    }

    /// Forgets the connection of `generation`: it no longer reaches a master.
    fn forget(&self, generation: u64) {
        let mut current = recover(self.shared.current.lock());
        if current.0 == generation {
            current.1 = None;
        }
    }

    /// Forgets the connection of `generation` if `outcome` shows it lost or demoted.
    fn check<T>(&self, generation: u64, outcome: &RedisResult<T>, replies: impl Fn(&T) -> bool) {
        let stale = match outcome {
            Err(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            }
            Ok(value) => replies(value),
        };
        if stale {
            self.forget(generation);
        }
    }
}

/// A server error reply saying the server is a replica now (also from inside a script).
fn is_read_only(value: &Value) -> bool {
    match value {
        Value::ServerError(e) => {
            e.code() == "READONLY" || e.details().is_some_and(|d| d.contains("READONLY"))
        }
        _ => false,
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.connection().await?;
            let outcome = conn.req_packed_command(cmd).await;
            self.check(generation, &outcome, is_read_only);
            outcome
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.connection().await?;
            let outcome = conn.req_packed_commands(pipeline, offset, count).await;
            self.check(generation, &outcome, |values| {
                values.iter().any(is_read_only)
            });
            outcome
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl std::fmt::Debug for SentinelConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConnection").finish_non_exhaustive()
    }
}
