//! PostgreSQL (feature `postgres`): the schema dlock's locks live in, and the call that
//! creates it. Give the pool to [`LockerBuilder::postgres`](crate::LockerBuilder::postgres).
//!
//! Each holder of a lock is a row of `dlock_locks` with its token, fencing token (from the
//! sequence `dlock_fence`), expiry by the server's clock and published value; acquire, renew
//! and release are single statements, each in the simple query protocol. Nothing lives in a
//! session, so pooled connections and PgBouncer in transaction mode are fine; only the
//! release notifications' `LISTEN` must not go through transaction pooling ([`Listen`]).

use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use crate::error::Result;
use crate::LockGuard;

/// Where a PostgreSQL locker listens for release notifications (`LISTEN dlock_released`),
/// given with [`LockerBuilder::postgres_listen`](crate::LockerBuilder::postgres_listen). The
/// locker opens that one connection when a first task waits for a lock; a waiting `lock()`
/// then retries as soon as the lock is released anywhere. Whatever the choice, releases made
/// by the locker itself wake its own waiters at once, and every waiter also polls at the
/// config's `retry_interval`.
///
/// `LISTEN` is session state. Behind PgBouncer in transaction (or statement) pooling mode,
/// a `LISTEN` sent through the pool subscribes a server connection that PgBouncer then lends
/// to other clients: a notification reaches one of them in the middle of its next query,
/// which sqlx fails ("unexpected message: NotificationResponse"), yours included. So with
/// such a pool, give [`Listen::Direct`] (a connection that bypasses PgBouncer) or
/// [`Listen::Off`] (polling only). The guide's [PostgreSQL chapter](crate::guide::postgres)
/// has the whole PgBouncer story.
///
/// ```
/// use dlock::postgres::Listen;
/// use sqlx::postgres::PgConnectOptions;
///
/// // The pool goes through PgBouncer (port 6432); notifications come straight from PostgreSQL.
/// let direct = PgConnectOptions::new().host("db.internal").port(5432).username("app");
/// let listen = Listen::Direct(direct);
/// assert!(format!("{listen:?}").contains("db.internal:5432"));
/// // The default listens on a connection of the locker's pool.
/// assert!(matches!(Listen::default(), Listen::Pool));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
// Built once per locker and kept in it: a boxed `Direct` would only make it harder to write.
#[allow(clippy::large_enum_variant)]
pub enum Listen {
    /// On one connection taken from the locker's pool, for as long as the locker lives.
    /// Right when the pool reaches PostgreSQL itself, or PgBouncer in session mode.
    #[default]
    Pool,
    /// On a connection of its own with these options (a pool of one, reconnecting),
    /// straight to PostgreSQL: for a pool behind PgBouncer in transaction mode.
    Direct(PgConnectOptions),
    /// No `LISTEN` at all: a waiter learns of another process's release at its next poll,
    /// every `retry_interval` (so keep that short), and releases stop announcing themselves.
    Off,
}

/// Names where it listens, never the options' password.
impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Pool => f.write_str("Pool"),
            Listen::Direct(options) => {
                write!(f, "Direct({}:{})", options.get_host(), options.get_port())
            }
            Listen::Off => f.write_str("Off"),
        }
    }
}

/// The SQL that [`migrate`] runs, for teams that run their own migrations: the sequence
/// `dlock_fence`, the table `dlock_locks` and the functions `dlock_acquire` and
/// `dlock_abandon`. Idempotent.
///
/// ```
/// assert!(dlock::postgres::SCHEMA.contains("CREATE TABLE IF NOT EXISTS dlock_locks"));
/// ```
pub const SCHEMA: &str = crate::backend::postgres::SCHEMA;

/// Creates (or brings up to date) dlock's schema: [`SCHEMA`], in one transaction. Safe to
/// call at every start, from many processes at once. Needs the rights to create a table, a
/// sequence and functions; the lockers themselves need much less (see the README's
/// "PostgreSQL" section for the GRANT lines).
///
/// Errors: [`Error::Backend`](crate::Error::Backend), or
/// [`Error::PermissionDenied`](crate::Error::PermissionDenied) for a role without the right.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    crate::backend::postgres::migrate(pool).await
}

/// Lock-checked transactions: a method of [`LockGuard`] kept here, with the rest of what is
/// PostgreSQL's alone.
impl LockGuard {
    /// PostgreSQL only: confirms, inside the caller's own transaction `tx`, that this guard
    /// still holds its lock, and keeps the lock from passing to anyone until `tx` ends. A
    /// write that `tx` commits after this call is known to have committed while the lock was
    /// held: stronger than a fencing token, with no change to the caller's tables.
    ///
    /// It takes a `FOR KEY SHARE` row lock on the guard's lease row, checked live by the
    /// server's clock (`expires > clock_timestamp()`). The guard's own renewals go on (they
    /// update no key column); a rival's attempt must first delete the row once it has
    /// expired, and that delete waits for `tx` to commit or roll back, so the rival's
    /// write comes after. A holder that pauses past its TTL before committing either commits
    /// while the rival still waits, or finds `tx` failed; never after the rival's write.
    /// Keep `tx` short: while it is open, a rival waits even for an expired lock.
    ///
    /// Tested under READ COMMITTED (PostgreSQL's default). Under REPEATABLE READ or
    /// SERIALIZABLE the check may fail with a serialization error; retry the transaction.
    ///
    /// Errors: [`Error::OwnershipLost`](crate::Error::OwnershipLost) when the lock is not
    /// held (expired, released, deleted, taken); [`Error::Backend`](crate::Error::Backend)
    /// for a guard of another backend or a failed query (the transaction is then aborted).
    ///
    /// ```no_run
    /// # async fn decrement(locker: &dlock::Locker, pool: &sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let guard = locker.lock("sku:42").await?;
    /// let mut tx = pool.begin().await?;
    /// guard.fence_transaction(&mut tx).await?;
    /// sqlx::query("UPDATE inventory SET stock = stock - 1 WHERE sku = 42")
    ///     .execute(&mut *tx)
    ///     .await?;
    /// tx.commit().await?; // committed while the lock was held, or not at all
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn fence_transaction(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> crate::Result<()> {
        let (backend, storage_key) = self.location();
        if backend != "postgres" {
            return Err(crate::Error::backend(
                backend,
                self.key(),
                "fence_transaction needs the guard of a PostgreSQL locker",
            ));
        }
        let fence = i64::try_from(self.fencing_token()).unwrap_or(i64::MAX);
        // One simple-protocol statement, like every statement of the backend: no prepared
        // statement outlives the transaction on its server connection (PgBouncer).
        let sql = crate::backend::postgres::fence_transaction_sql(storage_key, fence);
        let held = sqlx::Executor::fetch_optional(&mut **tx, sqlx::raw_sql(&sql))
            .await
            .map_err(|e| {
                crate::backend::permission::refused_right(crate::Error::backend(
                    "postgres",
                    self.key(),
                    e,
                ))
            })?;
        match held {
            Some(_) => Ok(()),
            None => Err(crate::Error::lost(self.key())),
        }
    }
}

#[cfg(test)]
mod tests {
    /// The README prints the schema for teams that run their own migrations: it must be
    /// exactly what `migrate` runs.
    #[test]
    fn the_readme_prints_the_schema_migrate_runs() {
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(super::SCHEMA.trim()),
            "README.md's PostgreSQL section is not src/backend/postgres/schema.sql"
        );
    }
}
