//! Leader election: three candidates (think: three replicas of a service) take turns
//! leading; each term's work runs only while its candidate leads and fences its writes with
//! the term; an observer prints every change of leader. In-process by default; set
//! `REDIS_URL` (e.g. `redis://127.0.0.1:6379/`) to elect over Redis instead.
//!
//! ```sh
//! cargo run --example leader
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example leader
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::{Config, Driver, LockOptions, Locker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        retry_interval: Duration::from_millis(20), // the observer's poll interval
        ..Config::new(Driver::Memory)
    };
    let locker = |config: Config| async move {
        Ok::<_, Box<dyn std::error::Error>>(match std::env::var("REDIS_URL") {
            Ok(url) => {
                let client = redis::Client::open(url)?;
                let conn = redis::aio::ConnectionManager::new(client.clone()).await?;
                let config = Config {
                    driver: Driver::Redis,
                    ..config
                };
                Locker::builder(config)
                    .redis(conn)
                    .redis_pubsub(client)
                    .build()?
            }
            Err(_) => Locker::builder(config).build()?,
        })
    };

    // Whoever watches: polls every retry_interval, sees each new term and each vacancy.
    let observer = locker(config.clone()).await?;
    let mut leaders = observer.election("report-scheduler").observe().await?;
    let watching = tokio::spawn(async move {
        while leaders.changed().await.is_ok() {
            match &*leaders.borrow_and_update() {
                Some(leader) => println!(
                    "observer: {} leads, term {}",
                    leader.value.as_deref().unwrap_or("?"),
                    leader.fencing_token
                ),
                None => println!("observer: no leader"),
            }
        }
    });

    // The fenced resource: refuses a write whose term is older than the newest it has seen.
    let newest_term = Arc::new(AtomicU64::new(0));
    let mut candidates = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        let locker = locker(config.clone()).await?;
        let newest_term = newest_term.clone();
        candidates.push(tokio::spawn(async move {
            let election = locker
                .election("report-scheduler")
                .options(LockOptions::new().ttl(Duration::from_secs(2)));
            // Each term: one round of work, then step down and campaign again.
            let leading = election.run_while_leader(name, |term| {
                let newest_term = newest_term.clone();
                async move {
                    let previous = newest_term.fetch_max(term.number(), Ordering::SeqCst);
                    assert!(
                        previous < term.number(),
                        "a stale term reached the resource"
                    );
                    println!("{name}: leading in term {}", term.number());
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            });
            // Run for a while; dropping the future stops the work and resigns.
            let _ = tokio::time::timeout(Duration::from_millis(1200), leading).await;
            locker.close().await
        }));
    }
    for candidate in candidates {
        candidate.await??;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    observer.close().await?; // stops the poller: the observer's loop ends
    watching.await?;
    Ok(())
}
