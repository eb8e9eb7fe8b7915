//! The PostgreSQL backend: locks are rows of `dlock_locks` (leases with an expiry by the
//! server's clock), never session state, so a pooled connection or PgBouncer in transaction
//! mode strands nothing. `schema.sql` beside this file is the whole schema.
//!
//! # One row per holder
//!
//! A holder is the row `(key, token)` with its fencing token (`nextval('dlock_fence')`), its
//! expiry (`now() + ttl`), its published value and the semaphore's N (`permits`, 1 for a
//! lock). Renewal, release and the batched renewal are single statements keyed by
//! `(key, token)`, so they act on this acquisition only (token-checked); each is checked by
//! PostgreSQL's row-level re-check of the `WHERE` on the row's latest version.
//!
//! So every acquisition leaves a dead row and a dead index entry under its key once
//! released. `dlock_acquire` reads a key's rows with plain index scans only (it runs with
//! `enable_bitmapscan = off`): they mark those entries dead as they pass, where a bitmap
//! scan would read every past acquisition of the key again until a vacuum (issue 22).
//!
//! # Why N + 1 can never hold
//!
//! An attempt is one statement, `SELECT dlock_acquire(..)`, a PL/pgSQL function. Its first
//! step takes the transaction-scoped advisory lock `(1684823915, hashtext(key))`: attempts
//! on one key (and the undo of an interrupted one) run one at a time, each to its commit.
//! Under READ COMMITTED a single SQL statement reads the snapshot taken when *it* started,
//! which could predate a rival's commit that it waited for; that is why the attempt is not
//! one SQL statement with the lock inside it. In a volatile PL/pgSQL function each statement
//! takes a new snapshot, and the advisory lock is released only after the previous holder of
//! it has committed (and is visible): so the count of live rows that follows sees every
//! holder that any earlier attempt on the key inserted. Only then, with fewer than N live
//! rows, does it insert. Two keys that share a hash only wait for each other.
//!
//! # Expiry and clocks
//!
//! Every expiry is `now()` + ttl, where `now()` is the start of the statement's transaction:
//! after the client sent the command (contract point 8). Liveness is `expires > now()`.
//! Expired rows of a key are deleted by the next attempt on it, and a fiftieth of the
//! attempts also delete up to 100 expired rows of any key, so nothing piles up.
//!
//! # Interrupted attempts and resends
//!
//! sqlx never resends a statement. An attempt whose outcome is unknown (dropped, timed out)
//! is undone in the background by `dlock_abandon`, which takes the same advisory lock:
//! it deletes the attempt's row, or, if the attempt has not run yet, leaves a bar (a row
//! with `permits = 0`, holding nothing, gone with the TTL) so that the late attempt takes
//! nothing; the undo deletes the bar once it has expired (no later attempt on a key taken
//! once would). An attempt that finds its own token's row answers its fencing token again
//! (a resent attempt is the same acquisition). A resent release would answer `false`: the
//! protocol has no tombstone for releases, and sqlx does not resend.
//!
//! # Wake-ups
//!
//! A waiter's attempts mark the holder rows (`waited`); a release that deletes a marked row
//! sends `pg_notify('dlock_released', key)`. One connection per locker `LISTEN`s, opened
//! only when a first task waits; polling stays the safety net.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::Row;
use tokio::time::Instant;

use super::{retry_until_acquired, Backend, Context, Grant, Lease, Renewal, Request, Wakeups};
use crate::config::Driver;
use crate::error::{Error, Result};
use crate::Holder;

/// The schema: the table, its sequence and the two functions (`schema.sql`).
pub(crate) const SCHEMA: &str = include_str!("schema.sql");

/// The channel releases of waited-for locks are announced on; the payload is the key.
const CHANNEL: &str = "dlock_released";

const NAME: &str = "postgres";

const ACQUIRE: &str = "SELECT dlock_acquire($1, $2, $3, $4, $5, $6)";

const ABANDON: &str = "SELECT dlock_abandon($1, $2, $3)";

/// Deletes the bar `dlock_abandon` left for `(key, token)` once it has expired.
const UNBAR: &str = "DELETE FROM dlock_locks \
     WHERE key = $1 AND token = $2 AND permits = 0 AND expires <= now()";

/// Past a bar's TTL, how much longer its undo waits before deleting it: the bar's expiry
/// is by the server's clock, from the start of the abandon's transaction.
const UNBAR_MARGIN: Duration = Duration::from_millis(100);

const RENEW: &str = "UPDATE dlock_locks SET expires = now() + $3 * interval '1 millisecond' \
     WHERE key = $1 AND token = $2 AND permits > 0 AND expires > now()";

const RENEW_MANY: &str = "UPDATE dlock_locks AS l \
     SET expires = now() + r.ttl_ms * interval '1 millisecond' \
     FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(key, token, ttl_ms) \
     WHERE l.key = r.key AND l.token = r.token AND l.permits > 0 AND l.expires > now() \
     RETURNING l.key, l.token";

/// Deletes the row whatever its expiry (nothing is left behind), answers whether it was
/// still live, and notifies the key's waiters if any marked it.
const RELEASE: &str = "WITH d AS (DELETE FROM dlock_locks \
         WHERE key = $1 AND token = $2 AND permits > 0 \
         RETURNING expires > now() AS live, waited) \
     SELECT d.live, (SELECT count(*) FROM pg_notify('dlock_released', $1) WHERE d.waited) \
     FROM d";

const HOLDERS: &str = "SELECT fence, value, permits, \
         GREATEST(0, extract(epoch FROM expires - now()) * 1000)::bigint \
     FROM dlock_locks WHERE key = $1 AND permits > 0 AND expires > now()";

/// `LockGuard::fence_transaction`: the guard's live row, locked until the caller's
/// transaction ends. `clock_timestamp()`, not `now()`: the transaction may have begun long
/// ago. The fencing token names the acquisition (the sequence never repeats one).
pub(crate) const FENCE_TRANSACTION: &str = "SELECT 1 FROM dlock_locks \
     WHERE key = $1 AND fence = $2 AND permits > 0 AND expires > clock_timestamp() \
     FOR KEY SHARE";

/// Runs the schema, in one transaction under an advisory lock so that concurrent calls do
/// not race on `CREATE ... IF NOT EXISTS`.
pub(crate) async fn migrate(pool: &PgPool) -> Result<()> {
    let script = format!("BEGIN; SELECT pg_advisory_xact_lock(1684823915, 0);\n{SCHEMA}\nCOMMIT;");
    sqlx::raw_sql(&script)
        .execute(pool)
        .await
        .map(drop)
        .map_err(|e| super::permission::refused_right(Error::backend(NAME, "", e)))
}

/// The PostgreSQL backend over an injected pool.
pub(crate) struct PostgresBackend {
    pool: PgPool,
    wakeups: Arc<Wakeups>,
    /// Set once the listening task is started (by the first waiter).
    listening: OnceLock<()>,
}

impl PostgresBackend {
    pub(crate) fn new(pool: PgPool) -> Self {
        PostgresBackend {
            pool,
            wakeups: Wakeups::new(),
            listening: OnceLock::new(),
        }
    }

    /// One attempt; `announce`: mark the holders so that their release notifies.
    async fn attempt(
        &self,
        cx: &Context,
        request: &Request<'_>,
        announce: bool,
    ) -> Result<Option<Grant<String>>> {
        let sent = Instant::now();
        // Until the answer is read, the attempt may or may not have run.
        let undo = cx.undo_on_drop(request, || {
            let (pool, cx) = (self.pool.clone(), cx.clone());
            let (key, storage_key) = (request.key.to_owned(), request.storage_key.to_owned());
            let (token, ttl) = (request.token.to_owned(), request.ttl);
            async move {
                let abandon = || {
                    let query = sqlx::query_scalar::<_, bool>(ABANDON)
                        .bind(&storage_key)
                        .bind(&token)
                        .bind(millis(ttl));
                    cx.call(NAME, &key, ttl, query.fetch_one(&pool))
                };
                let barred = cx.until_confirmed(NAME, &key, sent + ttl, abandon).await;
                if barred == Some(false) {
                    unbar_when_expired(pool, cx, key, storage_key, token, ttl);
                }
            }
        });
        let query = sqlx::query_scalar::<_, i64>(ACQUIRE)
            .bind(request.storage_key)
            .bind(request.token)
            .bind(millis(request.ttl))
            .bind(i32::try_from(request.permits).unwrap_or(i32::MAX))
            .bind(request.value.map(str::as_bytes))
            .bind(announce);
        let fence = cx
            .call(
                NAME,
                request.key,
                request.useful_for(),
                query.fetch_one(&self.pool),
            )
            .await?;
        undo.disarm();
        if fence < 0 {
            let held = u32::try_from(-fence).unwrap_or(u32::MAX);
            return Err(Error::permits_mismatch(request.key, request.permits, held));
        }
        Ok((fence > 0).then(|| Grant {
            fencing_token: fence as u64,
            confirmed_at: sent,
            held: request.token.to_owned(),
        }))
    }

    /// Starts the locker's one listening connection, the first time a task waits.
    fn listen(&self, cx: &Context) {
        if self.listening.set(()).is_err() {
            return;
        }
        let (pool, wakeups, closing) = (
            self.pool.clone(),
            self.wakeups.clone(),
            cx.closing().clone(),
        );
        cx.spawn(async move {
            let listening = async {
                let mut pause = Duration::from_millis(100);
                loop {
                    let mut listener = match PgListener::connect_with(&pool).await {
                        Ok(listener) => listener,
                        Err(e) => {
                            tracing::debug!(component = "dlock", backend = NAME, error = %e,
                                "cannot open the release-notification connection; polling");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    };
                    if let Err(e) = listener.listen(CHANNEL).await {
                        tracing::debug!(component = "dlock", backend = NAME, error = %e,
                            "LISTEN failed; polling");
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    pause = Duration::from_millis(100);
                    // `recv` reconnects (and listens again) after a lost connection.
                    loop {
                        match listener.recv().await {
                            Ok(notification) => wakeups.released(notification.payload()),
                            Err(e) => {
                                tracing::debug!(component = "dlock", backend = NAME,
                                    error = %e, "release notifications interrupted");
                                tokio::time::sleep(pause).await;
                                break;
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = closing.cancelled() => {}
                _ = listening => {}
            }
        });
    }
}

impl Backend for PostgresBackend {
    /// The acquisition's token.
    type Held = String;

    fn name(&self) -> &'static str {
        NAME
    }

    fn driver(&self) -> Driver {
        Driver::Postgres
    }

    fn max_permits(&self) -> u32 {
        crate::MAX_PERMITS
    }

    fn wakeups(&self) -> Option<&Arc<Wakeups>> {
        Some(&self.wakeups)
    }

    async fn try_acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
    ) -> Result<Option<Grant<String>>> {
        self.attempt(cx, request, false).await
    }

    async fn acquire(
        &self,
        cx: &Context,
        request: &Request<'_>,
        retry_interval: Duration,
    ) -> Result<Option<Grant<String>>> {
        // Uncontended fast path: no listening connection for a lock that is free.
        if !self.wakeups.has_waiters(request.storage_key) {
            if let Some(grant) = self.attempt(cx, request, false).await? {
                return Ok(Some(grant));
            }
        }
        self.listen(cx);
        retry_until_acquired(Some(&self.wakeups), request, retry_interval, || {
            self.attempt(cx, request, true)
        })
        .await
    }

    async fn renew(&self, cx: &Context, lease: &Lease, token: &mut String) -> Result<Renewal> {
        let query = sqlx::query(RENEW)
            .bind(&lease.storage_key)
            .bind(&*token)
            .bind(millis(lease.ttl));
        let done = cx
            .call(NAME, &lease.key, lease.ttl, query.execute(&self.pool))
            .await?;
        Ok(Renewal::still_ours(done.rows_affected() == 1))
    }

    /// One statement for the whole batch, over arrays (`unnest`).
    async fn renew_many(
        &self,
        cx: &Context,
        locks: Vec<(&Lease, &mut String)>,
    ) -> Vec<Result<Renewal>> {
        let keys: Vec<&str> = locks.iter().map(|(l, _)| l.storage_key.as_str()).collect();
        let tokens: Vec<&str> = locks.iter().map(|(_, t)| t.as_str()).collect();
        let ttls: Vec<i64> = locks.iter().map(|(l, _)| millis(l.ttl)).collect();
        let limit = locks.iter().map(|(l, _)| l.ttl).min().unwrap_or_default();
        let query = sqlx::query(RENEW_MANY)
            .bind(&keys)
            .bind(&tokens)
            .bind(&ttls);
        let first_key = keys.first().copied().unwrap_or_default();
        match cx
            .call(NAME, first_key, limit, query.fetch_all(&self.pool))
            .await
        {
            Ok(rows) => {
                let renewed: std::collections::HashSet<(String, String)> = rows
                    .iter()
                    .filter_map(|row| Some((row.try_get(0).ok()?, row.try_get(1).ok()?)))
                    .collect();
                locks
                    .iter()
                    .map(|(lease, token)| {
                        let pair = (lease.storage_key.clone(), (*token).clone());
                        Ok(Renewal::still_ours(renewed.contains(&pair)))
                    })
                    .collect()
            }
            Err(e) => {
                let reason = e.to_string();
                locks
                    .iter()
                    .map(|(lease, _)| Err(Error::backend(NAME, &lease.key, reason.clone())))
                    .collect()
            }
        }
    }

    async fn holder(&self, cx: &Context, key: &str, storage_key: &str) -> Result<Option<Holder>> {
        let mut holders = self.holders(cx, key, storage_key, 1).await?;
        Ok(holders.pop())
    }

    async fn holders(
        &self,
        cx: &Context,
        key: &str,
        storage_key: &str,
        permits: u32,
    ) -> Result<Vec<Holder>> {
        let query = sqlx::query(HOLDERS).bind(storage_key);
        let rows = cx
            .call(NAME, key, Duration::MAX, query.fetch_all(&self.pool))
            .await?;
        let mut holders = Vec::with_capacity(rows.len());
        for row in rows {
            let read = |e: sqlx::Error| Error::backend(NAME, key, e);
            let fence: i64 = row.try_get(0).map_err(read)?;
            let value: Option<Vec<u8>> = row.try_get(1).map_err(read)?;
            let held: i32 = row.try_get(2).map_err(read)?;
            let expires_in: i64 = row.try_get(3).map_err(read)?;
            let held = u32::try_from(held).unwrap_or(0);
            if held != permits {
                return Err(Error::permits_mismatch(key, permits, held));
            }
            let value = value.map(|v| String::from_utf8_lossy(&v).into_owned());
            let expires_in = Duration::from_millis(expires_in.max(0) as u64);
            holders.push(Holder::new(fence as u64, expires_in, value));
        }
        Ok(holders)
    }

    async fn release(
        &self,
        cx: &Context,
        lease: &Lease,
        token: String,
        limit: Duration,
    ) -> Result<bool> {
        let query = sqlx::query(RELEASE).bind(&lease.storage_key).bind(&token);
        let row = cx
            .call(NAME, &lease.key, limit, query.fetch_optional(&self.pool))
            .await?;
        let released = match row {
            Some(row) => row
                .try_get::<bool, _>(0)
                .map_err(|e| Error::backend(NAME, &lease.key, e))?,
            None => false,
        };
        if released {
            self.wakeups.released(&lease.storage_key);
        }
        Ok(released)
    }
}

/// Deletes a bar once it has expired, in the background (on a task of its own: the next
/// attempts on the key need not wait for it). Nothing else would: expired rows are otherwise
/// deleted by later attempts, and a key taken once (or a locker gone quiet) has none. Given
/// up when the locker closes; a later attempt's sweep deletes the bar then.
fn unbar_when_expired(
    pool: PgPool,
    cx: Context,
    key: String,
    storage_key: String,
    token: String,
    ttl: Duration,
) {
    let closing = cx.closing().clone();
    cx.clone().spawn(async move {
        let unbar = async {
            tokio::time::sleep(ttl + UNBAR_MARGIN).await;
            let query = sqlx::query(UNBAR).bind(&storage_key).bind(&token);
            if let Err(e) = cx.call(NAME, &key, ttl, query.execute(&pool)).await {
                tracing::debug!(component = "dlock", backend = NAME, key = %key, error = %e,
                    "an expired bar could not be deleted; a later attempt's sweep will");
            }
        };
        tokio::select! {
            _ = closing.cancelled() => {}
            _ = unbar => {}
        }
    });
}

fn millis(d: Duration) -> i64 {
    d.as_millis().try_into().unwrap_or(i64::MAX)
}
