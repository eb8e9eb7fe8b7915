//! PostgreSQL (feature `postgres`): the schema dlock's locks live in, and the call that
//! creates it. Give the pool to [`LockerBuilder::postgres`](crate::LockerBuilder::postgres).
//!
//! Each holder of a lock is a row of `dlock_locks` with its token, fencing token (from the
//! sequence `dlock_fence`), expiry by the server's clock and published value; acquire, renew
//! and release are single statements. Nothing lives in a session, so pooled connections and
//! PgBouncer in transaction mode are fine.

use sqlx::PgPool;

use crate::error::Result;

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
