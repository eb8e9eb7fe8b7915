//! The 10-line tour: lock, work, release. In-process by default; set `REDIS_URL`
//! (e.g. `redis://127.0.0.1:6379/`) to run the same code against Redis.
//!
//! ```sh
//! cargo run --example quickstart
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example quickstart
//! ```

use std::time::Duration;

use dlock::{Config, Driver, LockOptions, Locker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("dlock=debug")
        .init();

    let locker = match std::env::var("REDIS_URL") {
        Ok(url) => {
            let conn = redis::aio::ConnectionManager::new(redis::Client::open(url)?).await?;
            Locker::builder(Config::new(Driver::Redis))
                .redis(conn)
                .build()?
        }
        Err(_) => Locker::builder(Config::new(Driver::Memory)).build()?,
    };

    let guard = locker.lock("resource-key").await?;
    println!(
        "holding {:?} with fencing token {}",
        guard.key(),
        guard.fencing_token()
    );

    // A second attempt while it is held: try_lock answers at once, lock_with waits and times out.
    assert!(locker.try_lock("resource-key").await?.is_none());
    let patient = LockOptions::new().wait_timeout(Duration::from_millis(200));
    let err = locker.lock_with("resource-key", patient).await.unwrap_err();
    println!("second holder: {err}");

    guard.release().await?;
    println!("released; the next lock gets a larger fencing token:");
    let next = locker.lock("resource-key").await?;
    println!("  fencing token {}", next.fencing_token());
    drop(next); // dropping a guard releases it too

    locker.close().await?;
    Ok(())
}
