//! # Elections
//!
//! An election is the lock named after it: its leader is the holder, a term is the holder's
//! fencing token, and the leader publishes a value (an address, a host name) for everyone to
//! read. So a leader cut off from the server steps down (its `lost()` fires) before anyone
//! else can be elected, the same guarantee as a guard's — not a second mechanism that could
//! disagree with the lock, which is how Curator's and etcd's users got two leaders after a
//! session loss. There is no `is_leader()`: act under `run`/`lost()`, fence with `term()`.
//!
//! ## Campaigning and leading
//!
//! Everything below runs on the in-process store; on Redis or etcd only the connection changes.
//!
//! ```rust
//! use dlock::{Config, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! let locker = Locker::builder(Config::default()).build()?;
//! let election = locker.election("scheduler");                  // or Election::new(&locker, name)
//!
//! let leadership = election.campaign("10.0.0.7:8080").await?;   // waits to lead (cancel-safe)
//! let term = leadership.term();                                 // = fencing token, strictly increasing
//!
//! // Another candidate (here through the same locker) does not get in meanwhile.
//! assert!(election.try_campaign("10.0.0.8:8080").await?.is_none());  // never waits
//!
//! // Everyone can read who leads, and what it published.
//! let leader = election.leader().await?.expect("someone leads");
//! assert_eq!(leader.fencing_token, term);
//! assert_eq!(leader.value.as_deref(), Some("10.0.0.7:8080"));
//!
//! // Act as leader under run(): the work is dropped if leadership is lost midway.
//! let written = leadership.run(async { /* write to the store, fenced by */ term }).await?;
//! assert_eq!(written, term);
//! leadership.resign().await?;                                    // or drop it
//!
//! let next = election.campaign("10.0.0.8:8080").await?;
//! assert!(next.term() > term);                                  // a later term is larger
//! # Ok(()) }
//! ```
//!
//! ## Watching the leader
//!
//! [`observe`](crate::Election::observe) returns a `tokio::sync::watch::Receiver<Option<Holder>>`
//! fed by polling [`leader`](crate::Election::leader) every `retry_interval`:
//!
//! ```rust
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
//! let election = locker.election("scheduler");
//! let mut leaders = election.observe().await?;
//! assert!(leaders.borrow().is_none());                          // nobody leads yet
//!
//! let leadership = election.campaign("node-a").await?;
//! leaders.changed().await.expect("the poller runs");
//! let seen = leaders.borrow_and_update().clone().expect("a leader");
//! assert_eq!((seen.fencing_token, seen.value.as_deref()), (leadership.term(), Some("node-a")));
//! # Ok(()) }
//! ```
//!
//! It **polls**: a leader that comes and goes between two polls can be missed, but terms strictly
//! increase, so a skipped term shows as a jump.
//!
//! ## Leading again and again
//!
//! [`run_while_leader`](crate::Election::run_while_leader) campaigns, runs the work while this
//! candidate leads (dropping it at once on a loss), then campaigns again, backing off after a
//! loss. It returns only on a permanent error (a bad config, a closed locker), so run it as a
//! task of its own, or bound it:
//!
//! ```rust
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
//! let election = locker.election("compactor");
//! let leading = election.run_while_leader("node-a", |term| async move {
//!     // Only the leader runs this; hand term.number() to the store as a fencing token,
//!     // and watch term.lost() in loops that are not one future.
//!     assert!(!term.is_lost());
//!     tokio::time::sleep(Duration::from_millis(20)).await;
//! });
//! // Here it is dropped after 100 ms; a service would spawn it for its whole life.
//! let _ = tokio::time::timeout(Duration::from_millis(100), leading).await;
//! # Ok(()) }
//! ```
//!
//! ## What is proven
//!
//! Tested on the in-process store, Redis and etcd (`tests/election.rs`): a leader
//! blackholed by the fault proxy fires `lost()` before a waiting rival is elected
//! (`*_backend::cut_off_leader_stops_before_another_is_elected`; the in-process store going
//! offline: `memory_backend_offline_leader_stops_before_another_is_elected`); four candidates
//! over two lockers never lead together (`*::two_campaigns_never_both_lead`); terms strictly
//! increase (`*::terms_strictly_increase_across_successive_leaders`); an observer sees every
//! change spaced well beyond its poll interval (`*::observers_see_every_change`);
//! `run_while_leader` campaigns again after finishing and after a loss
//! (`*::run_while_leader_campaigns_again_after_finishing_and_after_loss`).
//! Not provided: etcd's `Proclaim` (changing the published value within a term).
