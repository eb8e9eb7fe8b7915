//! Inventory decrement under a lock with a 30 s TTL (`LockOptions::ttl`, Go `WithTTL`): many
//! concurrent orders, never a lost update, never below zero.
//!
//! ```sh
//! cargo run --example inventory
//! ```

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{Config, LockOptions, Locker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let locker = Locker::builder(Config::default()).build()?;
    let stock = Arc::new(AtomicI64::new(50)); // stands for a row in a database
    let product_id = 1001;

    let mut orders = Vec::new();
    for _ in 0..80 {
        let (locker, stock) = (locker.clone(), stock.clone());
        orders.push(tokio::spawn(async move {
            let key = format!("inventory:{product_id}");
            let guard = locker
                .lock_with(&key, LockOptions::new().ttl(Duration::from_secs(30)))
                .await?;
            // Read, check, write back: safe only because the lock is held.
            let left = stock.load(Ordering::SeqCst);
            tokio::task::yield_now().await;
            let sold = left > 0;
            if sold {
                stock.store(left - 1, Ordering::SeqCst);
            }
            guard.release().await?;
            Ok::<bool, dlock::Error>(sold)
        }));
    }
    let mut sold = 0;
    for order in orders {
        sold += order.await?? as i64;
    }
    let left = stock.load(Ordering::SeqCst);
    println!("sold {sold}, left {left}");
    assert_eq!(
        (sold, left),
        (50, 0),
        "the lock must prevent lost updates and overselling"
    );
    Ok(())
}
