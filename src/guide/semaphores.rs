//! # Semaphores
//!
//! A semaphore admits at most N holders of one name at once, across every process that uses
//! that name on the same server: 5 crawlers against one API quota, 3 workers re-indexing. It
//! is the lock's own mechanism with N holders instead of one, so a permit is a
//! [`LockGuard`](crate::LockGuard) with everything a guard promises: renewed while it lives,
//! `lost()` by the same deadline, released on drop, a token-checked release, and a fencing
//! token that strictly increases across the semaphore's acquisitions. A permit whose holder
//! crashes is free again within its TTL; nothing is kept for it after its release or expiry.
//!
//! ```rust
//! use std::time::Duration;
//! use dlock::{Config, LockOptions, Locker};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! let locker = Locker::builder(Config::default()).build()?;
//! let crawlers = locker.semaphore("crawler", 2).publishing("host-a");  // at most 2 at once
//!
//! let a = crawlers.acquire().await?;                         // waits (cancel-safe)
//! let wait = LockOptions::new().wait_timeout(Duration::from_millis(50));
//! let b = crawlers.acquire_with(wait).await?;                // TTL, wait timeout
//! assert!(crawlers.try_acquire().await?.is_none());          // both taken: never waits
//!
//! let holders = crawlers.holders().await?;                   // token, TTL left, value
//! assert_eq!(holders.len(), 2);
//! assert!(holders.iter().all(|h| h.value.as_deref() == Some("host-a")));
//!
//! a.run(async { /* crawl, fenced by */ a.fencing_token() }).await?;
//! a.release().await?;                                         // or drop it
//! let c = crawlers.acquire().await?;
//! assert!(c.fencing_token() > b.fencing_token());            // strictly increasing
//! # Ok(()) }
//! ```
//!
//! From a shell: `dlock --redis URL run --permits 5 crawler -- ./crawl.sh` (see [the
//! command](super::command)).
//!
//! ## Everyone names the same N
//!
//! Every holder of a name names the same number of permits. While the name is held, a call
//! naming another fails with [`Error::PermitsMismatch`](crate::Error::PermitsMismatch)
//! `{ asked, held }` and takes nothing; once nobody holds it, the next holder's number
//! stands. A lock is 1 permit, so a lock and a semaphore never share a name either: `lock()`
//! on a name held as a semaphore, or the reverse, is the same error. A bad N (0, more than
//! [`MAX_PERMITS`](crate::MAX_PERMITS), more than a backend of your own keeps) is
//! [`Error::InvalidPermits`](crate::Error::InvalidPermits), before anything is sent.
//!
//! ```rust
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
//! let held = locker.semaphore("reindex", 3).acquire().await?;
//! let other = locker.semaphore("reindex", 2).try_acquire().await;
//! assert!(matches!(other, Err(dlock::Error::PermitsMismatch { asked: 2, held: 3, .. })));
//! assert!(matches!(locker.try_lock("reindex").await, Err(dlock::Error::PermitsMismatch { asked: 1, .. })));
//! drop(held);
//! # Ok(()) }
//! ```
//!
//! ## Waiting, per backend
//!
//! A release wakes a waiter that can now proceed; polling every `retry_interval` is only the
//! safety net. Within a process, the tasks waiting for one name take turns in arrival order
//! (only the first of them tries the server).
//!
//! - **etcd** serves waiters in the order they queued, across processes: each acquisition is
//!   a key in the name's queue, and a key holds a permit when fewer than N keys were created
//!   before it; a waiter watches the queue's deletions, no polling. A lock key waiting on a
//!   name refuses semaphores of that name (`PermitsMismatch`) until it is gone.
//! - **Redis** keeps a line of the processes waiting for a semaphore, by arrival. A permit
//!   is free for an attempt only when the holders and the waiters ahead of it leave one, so
//!   **a newcomer never takes the permit a waiter is due**, however much nearer the server
//!   it is, and the waiters are served in arrival order. A waiter keeps its place while it
//!   tries again within three `retry_interval`s (it does on every release it hears of, and
//!   at every poll); one that stops (cancelled, crashed) loses it after that, and until then
//!   the permit it was due waits for it.
//!
//! ## On the server
//!
//! - **Redis**: `<prefix>{name}` is a hash (N, the last fencing token, each holder's token),
//!   `<prefix>{name}:held` the holders by expiry on the server's clock, `<prefix>{name}:wait`
//!   the line; all in one Cluster slot, and gone within the call timeout after the last
//!   release. A release leaves a tombstone of the permit for the call timeout (5 s by
//!   default), so that a resent release still answers that it released: a semaphore
//!   released 1,000 times a second keeps about 5,000 of them. The least-privilege ACL line
//!   of [production connections](super::production) includes the commands the semaphore
//!   scripts call.
//! - **etcd**: a semaphore's keys are `<prefix><name>/~<N>~<lease>.<n>`, attached to the
//!   locker's session lease like a lock's.
//! - **In-process**: up to N entries per name.
//!
//! ## What proves it
//!
//! | guarantee | test |
//! |---|---|
//! | never more than N holders, every backend (and an outside one) | `conformance::*::semaphore_admits_at_most_n_holders` |
//! | never more than N whose `lost()` has not fired, with renewals cut by the proxy | `faults::{redis,etcd}_semaphore_holders_stay_at_most_n_with_renewals_cut` |
//! | a crashed holder's permits are free within the TTL | `conformance::*::semaphore_permits_die_with_their_holder` |
//! | strictly increasing fencing tokens; `holders()` | `conformance::*::semaphore_tokens_increase_and_holders_are_listed` |
//! | disagreeing N and lock/semaphore names refused | `conformance::*::semaphore_callers_that_disagree_on_n_are_refused` |
//! | cancelled acquires keep no permit | `conformance::*::semaphore_cancelled_acquires_leave_no_permit` |
//! | a release wakes a waiter of another process, no polling | `redis_semaphore::a_release_wakes_a_permit_waiter_of_another_locker`, `etcd_semaphore::a_release_wakes_a_waiter_without_polling` |
//! | a newcomer never takes a waiter's permit (Redis) | `redis_semaphore::a_newcomer_never_takes_the_permit_a_waiter_is_due` |
//! | FIFO (etcd) | `etcd_semaphore::waiters_are_granted_in_request_order` |
//! | a lock and a semaphore never hold one name together (etcd) | `etcd_semaphore::locks_and_semaphores_never_hold_one_name_together` |
//! | 100,000 cycles leave the server as found (in-process, Redis; on etcd and PostgreSQL 25,000 in CI, 100,000 run once: 281 s and 135 s) | `soak::{memory_store,redis,etcd,postgres}_semaphores_do_not_grow` |
//! | more than N unexcused overlapping sections through a fenced resource | the torture checker's `--permits 3` runs in `scripts/test.sh` (Redis and etcd) |
//!
//! The limits are the lock's: a pause longer than the TTL can let a paused holder believe
//! it still holds its permit; fence the resource. With N holders, fencing tokens of
//! concurrent holders are not ordered with their work: a resource that must refuse stale
//! holders keeps the N highest tokens it has accepted and refuses a token below the lowest
//! of them (what the torture checker's resource does).
