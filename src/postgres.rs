//! PostgreSQL (feature `postgres`): the schema dlock's locks live in, and the call that
//! creates it. Give the pool to [`LockerBuilder::postgres`](crate::LockerBuilder::postgres).
//!
//! Each holder of a lock is a row of `dlock_locks` with its token, fencing token (from the
//! sequence `dlock_fence`), expiry by the server's clock and published value; acquire, renew
//! and release are single statements. Nothing lives in a session, so pooled connections and
//! PgBouncer in transaction mode are fine.

use sqlx::PgPool;

use crate::error::Result;
use crate::LockGuard;

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
        let held = sqlx::query(crate::backend::postgres::FENCE_TRANSACTION)
            .bind(storage_key)
            .bind(fence)
            .fetch_optional(&mut **tx)
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
