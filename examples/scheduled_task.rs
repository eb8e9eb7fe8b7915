//! One instance of a cluster runs a scheduled task: every instance tries, one wins
//! (`try_lock` election), the others skip this round.
//!
//! ```sh
//! cargo run --example scheduled_task
//! ```

use std::time::Duration;

use dlock::{Config, Locker};

async fn instance(name: &'static str, locker: Locker) -> Result<bool, dlock::Error> {
    let Some(guard) = locker.try_lock("scheduled-task:cleanup").await? else {
        println!("{name}: another instance runs the cleanup; skipping");
        return Ok(false);
    };
    println!(
        "{name}: elected, running cleanup (fencing token {})",
        guard.fencing_token()
    );
    guard
        .run(tokio::time::sleep(Duration::from_millis(200)))
        .await?;
    guard.release().await?;
    Ok(true)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Three "instances", each with its own locker over the same (here: in-process) backend.
    let names = ["instance-a", "instance-b", "instance-c"];
    let mut runs = Vec::new();
    for name in names {
        let locker = Locker::builder(Config::default()).build()?;
        runs.push(tokio::spawn(instance(name, locker)));
    }
    let mut winners = 0;
    for run in runs {
        winners += run.await?? as usize;
    }
    assert_eq!(winners, 1, "exactly one instance must run the task");
    println!("{winners} instance ran the cleanup this round");
    Ok(())
}
