//! A long task stopped by `lost()`: the lock is deleted behind the holder's back (as an
//! operator or a failover would), renewal notices, and `guard.run(..)` stops the work at its
//! next await point instead of letting it continue on a lock it no longer owns. The fencing
//! token then keeps a late write from landing.
//!
//! ```sh
//! cargo run --example ownership_loss
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{Config, Error, Locker, MemoryStore};

/// A resource that refuses writes with a fencing token older than one it has seen.
#[derive(Default)]
struct FencedStore {
    highest_token: AtomicU64,
}

impl FencedStore {
    fn write(&self, token: u64, what: &str) -> Result<(), String> {
        let seen = self.highest_token.fetch_max(token, Ordering::SeqCst);
        if token < seen {
            return Err(format!("refused {what:?}: token {token} < {seen}"));
        }
        println!("  stored {what:?} with token {token}");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = MemoryStore::new();
    let config = Config {
        default_ttl: Duration::from_secs(1),
        ..Config::default()
    };
    let locker = Locker::builder(config.clone())
        .memory(store.clone())
        .build()?;
    let resource = Arc::new(FencedStore::default());

    let guard = locker.lock("report").await?;
    let token = guard.fencing_token();
    println!("holder A has the lock, fencing token {token}");

    // Someone deletes the lock 300 ms into a task that needs 5 s.
    let admin = store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        admin.remove("dlock:report");
    });

    let resource_a = resource.clone();
    let outcome = guard
        .run(async move {
            for step in 0.. {
                resource_a.write(token, &format!("A step {step}")).ok();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
    match outcome {
        Err(Error::OwnershipLost { key }) => println!("A stopped: ownership of {key:?} lost"),
        other => panic!("expected OwnershipLost, got {other:?}"),
    }

    // B takes the lock; a late write from A (say, buffered before it stopped) is refused.
    let other = Locker::builder(config).memory(store).build()?;
    let b = other.lock("report").await?;
    resource.write(b.fencing_token(), "B's write")?;
    if let Err(refused) = resource.write(token, "A's late write") {
        println!("  {refused}");
    } else {
        panic!("a stale token was accepted");
    }

    assert!(matches!(
        guard.release().await,
        Err(Error::OwnershipLost { .. })
    ));
    b.release().await?;
    Ok(())
}
