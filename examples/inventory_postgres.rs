//! Inventory decrement on PostgreSQL with lock-checked transactions: the stock row lives in
//! the same database as the locks, and each decrement commits only while its order holds the
//! lock (`LockGuard::fence_transaction`): an order whose lock expired (a long pause, a lost
//! connection) has its transaction refused, never committed after the next holder's.
//!
//! Needs a PostgreSQL server where it may create dlock's schema and a table
//! `inventory_example`:
//!
//! ```sh
//! DATABASE_URL=postgres://user@localhost/db cargo run --features postgres --example inventory_postgres
//! ```
//!
//! Not run by `scripts/test.sh`'s loop over the examples (which has no server); compiled by
//! `cargo test --all-features`, and its [`run`] is run against the tests' own server by
//! `tests/postgres.rs` (`the_inventory_example_sells_exactly_the_stock`).
//! `examples/inventory.rs` is the same program on the in-process store.

use std::time::Duration;

use dlock::{Config, Driver, LockOptions, Locker};
use sqlx::PgPool;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "inventory_postgres: set DATABASE_URL to a PostgreSQL database where this example \
             may create dlock's schema and the table inventory_example, e.g. \
             DATABASE_URL=postgres://user@localhost/db"
        );
        std::process::exit(2);
    };
    let pool = PgPool::connect(&url).await?;
    let (sold, left) = run(&pool).await?;
    println!("sold {sold}, left {left}");
    Ok(())
}

/// 80 orders for the 50 units of one product, over two lockers (two processes, in a real
/// deployment): returns (sold, left), which must be (50, 0).
pub async fn run(pool: &PgPool) -> Result<(i64, i64), BoxError> {
    dlock::postgres::migrate(pool).await?; // idempotent: fine at every start
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS inventory_example (
             sku bigint PRIMARY KEY, stock bigint NOT NULL CHECK (stock >= 0));
         INSERT INTO inventory_example VALUES (1001, 50)
             ON CONFLICT (sku) DO UPDATE SET stock = 50;",
    )
    .execute(pool)
    .await?;
    let lockers = [locker(pool)?, locker(pool)?];

    let mut orders = Vec::new();
    for order in 0..80 {
        let (locker, pool) = (lockers[order % 2].clone(), pool.clone());
        orders.push(tokio::spawn(
            async move { sell(&locker, &pool, 1001).await },
        ));
    }
    let mut sold = 0;
    for order in orders {
        sold += order.await?? as i64;
    }
    let left: i64 = sqlx::query_scalar("SELECT stock FROM inventory_example WHERE sku = 1001")
        .fetch_one(pool)
        .await?;
    for locker in lockers {
        locker.close().await?;
    }
    assert_eq!(
        (sold, left),
        (50, 0),
        "the lock must prevent lost updates and overselling"
    );
    Ok((sold, left))
}

fn locker(pool: &PgPool) -> dlock::Result<Locker> {
    Locker::builder(Config::new(Driver::Postgres))
        .postgres(pool.clone())
        .build()
}

/// One order: under the product's lock, read the stock and take one unit, in a transaction
/// that commits only while the lock is held. Returns whether a unit was sold.
async fn sell(locker: &Locker, pool: &PgPool, sku: i64) -> Result<bool, BoxError> {
    let options = LockOptions::new().ttl(Duration::from_secs(30));
    let guard = locker
        .lock_with(&format!("inventory:{sku}"), options)
        .await?;
    let mut tx = pool.begin().await?;
    // Holds the lock until the transaction ends, or fails with OwnershipLost (and the
    // transaction is rolled back when `tx` drops).
    guard.fence_transaction(&mut tx).await?;
    // Read, check, write: safe because no one else can hold the lock before `tx` ends.
    let stock: i64 = sqlx::query_scalar("SELECT stock FROM inventory_example WHERE sku = $1")
        .bind(sku)
        .fetch_one(&mut *tx)
        .await?;
    let sold = stock > 0;
    if sold {
        sqlx::query("UPDATE inventory_example SET stock = $2 WHERE sku = $1")
            .bind(sku)
            .bind(stock - 1)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    guard.release().await?;
    Ok(sold)
}
