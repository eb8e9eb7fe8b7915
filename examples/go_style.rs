//! The Go component's API, line by line: `Lock`, `TryLock`, `Unlock` by key.
//!
//! ```sh
//! cargo run --example go_style
//! ```

use std::time::Duration;

use dlock::{Config, Driver, Error, LockOptions, Locker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Go: locker, _ := dlock.New(&dlock.Config{Driver: ..., Prefix: "myapp:lock:", ...}, opts...)
    let config = Config {
        driver: Driver::Memory,
        prefix: "myapp:lock:".into(),
        default_ttl: Duration::from_secs(10),
        retry_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let locker = Locker::builder(config).build()?.compat();

    // Go: if err := locker.Lock(ctx, "resource-key"); err != nil { return }
    //     defer locker.Unlock(ctx, "resource-key")
    locker.lock("resource-key").await?;
    println!("critical section for resource-key");

    // Go returns ErrLockAlreadyHeld instead of deadlocking on a second Lock of the same key.
    match locker.lock("resource-key").await {
        Err(Error::LockAlreadyHeld { key }) => println!("second Lock({key}): already held locally"),
        other => panic!("unexpected: {other:?}"),
    }
    locker.unlock("resource-key").await?;

    // Go: acquired, _ := locker.TryLock(ctx, "scheduled-task:cleanup")
    if locker.try_lock("scheduled-task:cleanup").await? {
        println!("this instance runs the cleanup");
        locker.unlock("scheduled-task:cleanup").await?;
    }

    // Go: locker.Lock(ctx, key, dlock.WithTTL(30*time.Second))
    let ttl = LockOptions::new().ttl(Duration::from_secs(30));
    locker.lock_with("inventory:1001", ttl).await?;
    locker.unlock("inventory:1001").await?;

    // Go: if xerrors.Is(err, dlock.ErrLockNotHeld) { ... }
    if let Err(Error::LockNotHeld { key }) = locker.unlock("inventory:1001").await {
        println!("Unlock({key}) of a key not held: ErrLockNotHeld");
    }
    Ok(())
}
