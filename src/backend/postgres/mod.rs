//! The PostgreSQL backend: locks are rows of `dlock_locks` (leases with an expiry by the
//! server's clock), never session state, so a pooled connection or PgBouncer in transaction
//! mode strands nothing (tested: `postgres_through_pgbouncer` in `tests/postgres.rs`).
//! `schema.sql` beside this file is the whole schema.
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
//! # Statements: simple protocol by default
//!
//! Every statement is written once, with parameters `$1`..`$n` ([`Statement`]), and sent
//! by default in PostgreSQL's simple query protocol (`sqlx::raw_sql`) with its values
//! written in: one message, one answer, no prepared statement. Behind PgBouncer in
//! transaction pooling mode (1.18: no prepared statements there), each Sync may run on
//! another server connection, and sqlx's extended protocol needs two: Parse+Describe,
//! then Bind+Execute. Its named,
//! cached statements (`sqlx_s_1`, ...) then meet another client's or none ("already
//! exists", "does not exist"), and even its unnamed ones (`persistent(false)`) can be bound
//! to another client's statement: "bind message supplies 2 parameters, but prepared
//! statement \"\" requires 3", and with the same count (renew and abandon both take key,
//! token, TTL) the wrong statement would run. No pool option of the user's avoids that.
//! The simple protocol costs one round trip, as a cached statement does, but the server
//! parses and plans each statement again: `LockerBuilder::postgres_prepared_statements`
//! binds the values to sqlx's cached prepared statements instead, for pools that keep
//! them (PostgreSQL itself, PgBouncer in session mode or 1.21+ with
//! `max_prepared_statements`).
//!
//! Values go into the SQL text as constants: a text as an escape string `E'...'` (its `\`
//! and `'` doubled: read the same under any `standard_conforming_strings`), a `bytea` as
//! `decode('<hex>', 'hex')`, numbers formatted by Rust. Plain constants, so the planner
//! uses the primary key for `key = E'...'` (a `convert_from(decode(..))` of the key,
//! tried first, is not a constant to it: it scanned the index by token, and a pgbench of
//! acquire + renew + release ran at half the rate). Rows come back in text format, which
//! sqlx decodes for the types read here.
//!
//! # Wake-ups
//!
//! A waiter's attempts mark the holder rows (`waited`); a release that deletes a marked row
//! sends `pg_notify('dlock_released', key)`. One connection per locker `LISTEN`s, opened
//! only when a first task waits: one of the pool's, or one of its own
//! ([`Listen`](crate::postgres::Listen)); with `Listen::Off` nothing listens and rows are
//! not marked. Once it listens, each waiting key retries once: a release made while the
//! connection was opening notified nobody. Polling stays the safety net.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Row};
use tokio::time::Instant;

use super::{retry_until_acquired, Backend, Context, Grant, Lease, Renewal, Request, Wakeups};
use crate::config::Driver;
use crate::error::{Error, Result};
use crate::postgres::Listen;
use crate::Holder;

/// The builder's PostgreSQL settings, whether given before or after `.postgres(..)`: read
/// when first needed, after `build()`.
#[derive(Default)]
pub(crate) struct Settings {
    /// Where the locker listens; read when a first task waits.
    pub(crate) listen: Listen,
    /// `LockerBuilder::postgres_prepared_statements`; read at the first statement.
    pub(crate) prepared: bool,
}

pub(crate) type SettingsSlot = Arc<Mutex<Settings>>;

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
/// ago. The fencing token names the acquisition (the sequence never repeats one). Always
/// sent in the simple protocol (see [`fence_transaction_sql`]).
const FENCE_TRANSACTION: &str = "SELECT 1 FROM dlock_locks \
     WHERE key = $1 AND fence = $2 AND permits > 0 AND expires > clock_timestamp() \
     FOR KEY SHARE";

/// [`FENCE_TRANSACTION`] with its values written in: one message in the caller's
/// transaction, nothing prepared, whatever the pool's way to PostgreSQL.
pub(crate) fn fence_transaction_sql(storage_key: &str, fence: i64) -> String {
    Statement::new(
        FENCE_TRANSACTION,
        vec![Value::Text(storage_key), Value::Int(fence)],
    )
    .inline()
}

/// A value of a [`Statement`].
enum Value<'a> {
    Text(&'a str),
    Bytes(Option<&'a [u8]>),
    Int(i64),
    /// A PostgreSQL `integer` (bound as such: `dlock_acquire` takes one).
    Int4(i32),
    Bool(bool),
    Texts(Vec<&'a str>),
    Ints(Vec<i64>),
}

impl Value<'_> {
    /// The value as an SQL constant.
    fn write(&self, sql: &mut String) {
        match self {
            Value::Text(v) => text(v, sql),
            Value::Bytes(None) => sql.push_str("NULL"),
            Value::Bytes(Some(v)) => bytea(v, sql),
            Value::Int(v) => sql.push_str(&v.to_string()),
            Value::Int4(v) => sql.push_str(&v.to_string()),
            Value::Bool(v) => sql.push_str(if *v { "true" } else { "false" }),
            Value::Texts(vs) => array(vs, sql, |v, sql| text(v, sql)),
            Value::Ints(vs) => array(vs, sql, |v, sql| sql.push_str(&v.to_string())),
        }
    }
}

/// One statement: SQL with parameters `$1`..`$n`, and their values. Sent in the simple
/// query protocol with the values written in as constants ([`Statement::inline`]), or, when
/// the user asked for prepared statements, as sqlx's cached prepared statement with the
/// values bound ([`Statement::bind`]).
struct Statement<'a> {
    sql: &'static str,
    values: Vec<Value<'a>>,
}

impl<'a> Statement<'a> {
    fn new(sql: &'static str, values: Vec<Value<'a>>) -> Self {
        Statement { sql, values }
    }

    /// The SQL with each `$n` replaced by its value. dlock's SQL has no `$` elsewhere.
    fn inline(&self) -> String {
        let mut sql = String::with_capacity(self.sql.len() + 64);
        let mut rest = self.sql;
        while let Some(at) = rest.find('$') {
            sql.push_str(&rest[..at]);
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            let n: usize = rest[at + 1..at + 1 + digits]
                .parse()
                .expect("dlock's SQL: `$` starts a parameter");
            self.values[n - 1].write(&mut sql);
            rest = &rest[at + 1 + digits..];
        }
        sql.push_str(rest);
        sql
    }

    fn bind(&self) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut query = sqlx::query(self.sql);
        for value in &self.values {
            query = match value {
                Value::Text(v) => query.bind(*v),
                Value::Bytes(v) => query.bind(*v),
                Value::Int(v) => query.bind(*v),
                Value::Int4(v) => query.bind(*v),
                Value::Bool(v) => query.bind(*v),
                Value::Texts(v) => query.bind(v),
                Value::Ints(v) => query.bind(v),
            };
        }
        query
    }
}

/// The pool, and how statements go through it: in the simple protocol (the default), or
/// as prepared statements ([`LockerBuilder::postgres_prepared_statements`]).
///
/// [`LockerBuilder::postgres_prepared_statements`]: crate::LockerBuilder::postgres_prepared_statements
#[derive(Clone)]
struct Db {
    pool: PgPool,
    prepared: bool,
}

impl Db {
    async fn fetch_one(&self, statement: Statement<'_>) -> std::result::Result<PgRow, sqlx::Error> {
        if self.prepared {
            statement.bind().fetch_one(&self.pool).await
        } else {
            let sql = statement.inline();
            (&self.pool).fetch_one(sqlx::raw_sql(&sql)).await
        }
    }

    async fn fetch_optional(
        &self,
        statement: Statement<'_>,
    ) -> std::result::Result<Option<PgRow>, sqlx::Error> {
        if self.prepared {
            statement.bind().fetch_optional(&self.pool).await
        } else {
            // Through the executor: sqlx 0.8's `RawSql::fetch_optional` is `fetch_one` (an
            // error for no row).
            let sql = statement.inline();
            (&self.pool).fetch_optional(sqlx::raw_sql(&sql)).await
        }
    }

    async fn fetch_all(
        &self,
        statement: Statement<'_>,
    ) -> std::result::Result<Vec<PgRow>, sqlx::Error> {
        if self.prepared {
            statement.bind().fetch_all(&self.pool).await
        } else {
            let sql = statement.inline();
            (&self.pool).fetch_all(sqlx::raw_sql(&sql)).await
        }
    }

    async fn execute(
        &self,
        statement: Statement<'_>,
    ) -> std::result::Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
        if self.prepared {
            statement.bind().execute(&self.pool).await
        } else {
            let sql = statement.inline();
            (&self.pool).execute(sqlx::raw_sql(&sql)).await
        }
    }
}

/// A text value as SQL: an escape string constant, `E'...'`, with every `\` and `'`
/// doubled, which reads the same whatever `standard_conforming_strings` says; sqlx sets
/// `client_encoding` to UTF-8, in which no character's bytes contain either. A plain
/// constant, so the planner uses it as one (the primary key's index). A NUL, which the
/// protocol cannot carry in SQL text, goes as hex to `convert_from`, which refuses it as
/// PostgreSQL refuses it in any text value.
fn text(value: &str, sql: &mut String) {
    if value.contains('\0') {
        sql.push_str("convert_from(");
        bytea(value.as_bytes(), sql);
        sql.push_str(", 'UTF8')");
        return;
    }
    sql.push_str("E'");
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            sql.push(c);
        }
        sql.push(c);
    }
    sql.push('\'');
}

/// A `bytea` value as SQL: `decode('<hex>', 'hex')`.
fn bytea(value: &[u8], sql: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    sql.push_str("decode('");
    for byte in value {
        sql.push(DIGITS[usize::from(byte >> 4)] as char);
        sql.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    sql.push_str("', 'hex')");
}

/// `ARRAY[..]`; the statement casts it (`$1::text[]`), so an empty one is typed too.
fn array<T>(values: &[T], sql: &mut String, write: impl Fn(&T, &mut String)) {
    sql.push_str("ARRAY[");
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        write(value, sql);
    }
    sql.push(']');
}

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
    settings: SettingsSlot,
    /// The pool and the way statements go, fixed at the first statement.
    db: OnceLock<Db>,
    wakeups: Arc<Wakeups>,
    /// Set once the listening task is started (by the first waiter).
    listening: OnceLock<()>,
}

impl PostgresBackend {
    pub(crate) fn new(pool: PgPool, settings: SettingsSlot) -> Self {
        PostgresBackend {
            pool,
            settings,
            db: OnceLock::new(),
            wakeups: Wakeups::new(),
            listening: OnceLock::new(),
        }
    }

    fn db(&self) -> &Db {
        self.db.get_or_init(|| Db {
            pool: self.pool.clone(),
            prepared: crate::backend::recover(self.settings.lock()).prepared,
        })
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
            let (db, cx) = (self.db().clone(), cx.clone());
            let (key, storage_key) = (request.key.to_owned(), request.storage_key.to_owned());
            let (token, ttl) = (request.token.to_owned(), request.ttl);
            async move {
                let abandon = || async {
                    let statement = Statement::new(
                        ABANDON,
                        vec![
                            Value::Text(&storage_key),
                            Value::Text(&token),
                            Value::Int(millis(ttl)),
                        ],
                    );
                    let row = cx.call(NAME, &key, ttl, db.fetch_one(statement)).await?;
                    row.try_get::<bool, _>(0)
                        .map_err(|e| Error::backend(NAME, &key, e))
                };
                let barred = cx.until_confirmed(NAME, &key, sent + ttl, abandon).await;
                if barred == Some(false) {
                    unbar_when_expired(db, cx, key, storage_key, token, ttl);
                }
            }
        });
        let statement = Statement::new(
            ACQUIRE,
            vec![
                Value::Text(request.storage_key),
                Value::Text(request.token),
                Value::Int(millis(request.ttl)),
                Value::Int4(i32::try_from(request.permits).unwrap_or(i32::MAX)),
                Value::Bytes(request.value.map(str::as_bytes)),
                Value::Bool(announce),
            ],
        );
        let row = cx
            .call(
                NAME,
                request.key,
                request.useful_for(),
                self.db().fetch_one(statement),
            )
            .await?;
        undo.disarm();
        let fence: i64 = row
            .try_get(0)
            .map_err(|e| Error::backend(NAME, request.key, e))?;
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

    /// Starts the locker's one listening connection, the first time a task waits. Answers
    /// whether releases are listened for (`false` with [`Listen::Off`]).
    fn listen(&self, cx: &Context) -> bool {
        if matches!(
            crate::backend::recover(self.settings.lock()).listen,
            Listen::Off
        ) {
            return false;
        }
        if self.listening.set(()).is_err() {
            return true;
        }
        let listen = crate::backend::recover(self.settings.lock()).listen.clone();
        let pool = match listen {
            Listen::Pool | Listen::Off => self.pool.clone(),
            // A pool of one: `PgListener` reconnects through it after a lost connection.
            Listen::Direct(options) => PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_lazy_with(options),
        };
        let (wakeups, closing) = (self.wakeups.clone(), cx.closing().clone());
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
                    // A waiter's attempt may have marked a row before this LISTEN, and its
                    // release notified nobody: each waiting key retries once now.
                    wakeups.released_everywhere();
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
        true
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
        // Holders are marked (their release notifies) only when someone listens.
        let announce = self.listen(cx);
        retry_until_acquired(Some(&self.wakeups), request, retry_interval, None, || {
            self.attempt(cx, request, announce)
        })
        .await
    }

    async fn renew(&self, cx: &Context, lease: &Lease, token: &mut String) -> Result<Renewal> {
        let statement = Statement::new(
            RENEW,
            vec![
                Value::Text(&lease.storage_key),
                Value::Text(token),
                Value::Int(millis(lease.ttl)),
            ],
        );
        let done = cx
            .call(NAME, &lease.key, lease.ttl, self.db().execute(statement))
            .await?;
        Ok(Renewal::still_ours(done.rows_affected() == 1))
    }

    /// One statement for the whole batch, over arrays (`unnest`).
    async fn renew_many(
        &self,
        cx: &Context,
        locks: Vec<(&Lease, &mut String)>,
    ) -> Vec<Result<Renewal>> {
        if locks.is_empty() {
            return Vec::new();
        }
        let limit = locks.iter().map(|(l, _)| l.ttl).min().unwrap_or_default();
        let keys = locks.iter().map(|(l, _)| l.storage_key.as_str()).collect();
        let tokens = locks.iter().map(|(_, t)| t.as_str()).collect();
        let ttls = locks.iter().map(|(l, _)| millis(l.ttl)).collect();
        let statement = Statement::new(
            RENEW_MANY,
            vec![Value::Texts(keys), Value::Texts(tokens), Value::Ints(ttls)],
        );
        let first_key = locks[0].0.storage_key.as_str();
        match cx
            .call(NAME, first_key, limit, self.db().fetch_all(statement))
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
        let statement = Statement::new(HOLDERS, vec![Value::Text(storage_key)]);
        let rows = cx
            .call(NAME, key, Duration::MAX, self.db().fetch_all(statement))
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
        let statement = Statement::new(
            RELEASE,
            vec![Value::Text(&lease.storage_key), Value::Text(&token)],
        );
        let row = cx
            .call(NAME, &lease.key, limit, self.db().fetch_optional(statement))
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
    db: Db,
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
            let statement =
                Statement::new(UNBAR, vec![Value::Text(&storage_key), Value::Text(&token)]);
            if let Err(e) = cx.call(NAME, &key, ttl, db.execute(statement)).await {
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

#[cfg(test)]
mod tests {
    use super::{Statement, Value};

    #[test]
    fn values_become_constants_with_quotes_and_backslashes_doubled_only() {
        let sql = "$1 | $2 | $3 | $4 | $5 | $6 | $7 | $8 | $9 | $10 | $1";
        let values = vec![
            Value::Text("k"),
            Value::Text(r"o'brien\x41"),
            Value::Text("$$ ключ"),
            // No NUL in SQL text: hex, which the server refuses as any text with a NUL.
            Value::Text("a\0"),
            Value::Bytes(Some(b"\x00'\\")),
            Value::Bytes(None),
            Value::Int(-5),
            Value::Bool(true),
            Value::Texts(vec!["a", "b'"]),
            Value::Ints(vec![]),
        ];
        let expected = [
            r"E'k'",
            r"E'o''brien\\x41'",
            r"E'$$ ключ'",
            r"convert_from(decode('6100', 'hex'), 'UTF8')",
            r"decode('00275c', 'hex')",
            r"NULL",
            r"-5",
            r"true",
            r"ARRAY[E'a', E'b''']",
            r"ARRAY[]",
            r"E'k'",
        ];
        assert_eq!(Statement::new(sql, values).inline(), expected.join(" | "));
    }
}
