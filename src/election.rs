//! Leader election over locks: the election `name` is the lock on the key `name`, its leader
//! is that lock's holder, and a term is the holder's fencing token.
//!
//! Nothing here adds a way to be leader that a lock does not give: a [`Leadership`] is a
//! [`LockGuard`] that published a value, so what the guard guarantees holds for the leader
//! (its `lost()` fires before the server can let anyone else in, when renewal cannot be
//! proven; see the crate's "Guarantees" section). The election adds what users of etcd's
//! `Election` and Curator's `LeaderLatch`/`LeaderSelector` rely on: reading and watching who
//! leads, and a loop that runs work while leader and campaigns again afterwards.
//!
//! There is deliberately no `is_leader()`: an answer that can be stale the moment it is
//! returned is what let old leaders keep acting in the field (Curator 727/1137/1211, etcd
//! 10811/11007). The leader instead has [`Leadership::lost`] and [`Leadership::run`].

use std::convert::Infallible;
use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Error, Holder, LockGuard, LockOptions, Locker, Result, Run};

/// An election: candidates campaign to lead `name`; anyone can read and watch who leads.
///
/// Built with [`Locker::election`] (or [`Election::new`]). Cheap to clone. The election is
/// the lock on the key `name` (under the locker's prefix), so a plain `locker.lock(name)`
/// and a `dlock run name` compete with its candidates; pick names that are not lock keys.
///
/// ```
/// use dlock::{Config, Locker};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// let locker = Locker::builder(Config::default()).build()?;
/// let election = locker.election("scheduler");
///
/// let leadership = election.campaign("node-a:8080").await?;   // waits to lead
/// let leader = election.leader().await?.expect("someone leads");
/// assert_eq!(leader.fencing_token, leadership.term());
/// assert_eq!(leader.value.as_deref(), Some("node-a:8080"));
///
/// // A second candidate cannot lead while the first does.
/// assert!(election.try_campaign("node-b:8080").await?.is_none());
/// leadership.resign().await?;
/// assert!(election.leader().await?.is_none());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Election {
    locker: Locker,
    name: String,
    options: LockOptions,
}

impl Locker {
    /// The election `name` on this locker's backend: see [`Election`].
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// assert_eq!(locker.election("scheduler").name(), "scheduler");
    /// ```
    pub fn election(&self, name: impl Into<String>) -> Election {
        Election::new(self, name)
    }
}

impl Election {
    /// The election `name` on `locker`'s backend; the same as [`Locker::election`].
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// let election = dlock::Election::new(&locker, "scheduler");
    /// assert_eq!(election.name(), "scheduler");
    /// ```
    pub fn new(locker: &Locker, name: impl Into<String>) -> Election {
        Election {
            locker: locker.clone(),
            name: name.into(),
            options: LockOptions::new(),
        }
    }

    /// Lock options for campaigns: the leadership's TTL (how long a crashed leader blocks
    /// the election; default the config's `default_ttl`) and a `wait_timeout` after which
    /// [`Election::campaign`] returns [`Error::Timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// let election = locker
    ///     .election("scheduler")
    ///     .options(dlock::LockOptions::new().ttl(Duration::from_secs(5)));
    /// # let _ = election;
    /// ```
    pub fn options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// The election's name: the key of its lock.
    ///
    /// ```
    /// let locker = dlock::Locker::builder(dlock::Config::default()).build().unwrap();
    /// assert_eq!(locker.election("a").name(), "a");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until this candidate leads, then returns its [`Leadership`]; `value` (at most
    /// 4 KiB: an address, a host name...) is published for [`Election::leader`] readers for
    /// the whole term.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe like [`Locker::lock`]: dropping the future never leaves this candidate
    /// leading.
    ///
    /// # Errors
    ///
    /// Those of [`Locker::lock_with`], and [`Error::InvalidConfig`] (field `value`) for a
    /// value over 4 KiB.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let leadership = locker.election("scheduler").campaign("node-a").await?;
    /// assert_eq!(leadership.value(), "node-a");
    /// # Ok(()) }
    /// ```
    pub async fn campaign(&self, value: &str) -> Result<Leadership> {
        let guard = self
            .locker
            .lock_publishing(&self.name, self.options, value)
            .await?;
        Ok(Leadership::new(guard, value))
    }

    /// Tries once to lead: `Ok(None)` when someone else leads now.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe like [`Locker::try_lock`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let election = locker.election("cron-leader");
    /// let first = election.try_campaign("a").await?;
    /// assert!(first.is_some());
    /// assert!(election.try_campaign("b").await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn try_campaign(&self, value: &str) -> Result<Option<Leadership>> {
        let guard = self
            .locker
            .try_lock_publishing(&self.name, self.options, value)
            .await?;
        Ok(guard.map(|guard| Leadership::new(guard, value)))
    }

    /// Who leads now, as the server sees it: `None` when no one does. The holder's
    /// `fencing_token` is its term, `value` what it published, `expires_in` what remains of
    /// its TTL.
    ///
    /// A leader that has just lost its lease (its `lost()` fired) is still shown until the
    /// server expires its key; no one else can lead before that.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let election = locker.election("scheduler");
    /// assert!(election.leader().await?.is_none());
    /// let _leadership = election.campaign("node-a").await?;
    /// assert_eq!(election.leader().await?.unwrap().value.as_deref(), Some("node-a"));
    /// # Ok(()) }
    /// ```
    pub async fn leader(&self) -> Result<Option<Holder>> {
        self.locker.holder(&self.name).await
    }

    /// Watches who leads: a receiver whose value is the current leader (as
    /// [`Election::leader`] returns it), marked changed whenever the term or the published
    /// value changes, including to and from `None`.
    ///
    /// **It polls**: a task reads the leader every `retry_interval` of the locker's config.
    /// A change that lasts less than the interval (a leader that resigns and is replaced
    /// between two polls) can be missed; terms strictly increase, so a skipped term shows as
    /// a jump in `fencing_token`, never as a term going back. The value held is refreshed at
    /// every poll (`expires_in`) without marking it changed.
    ///
    /// A failed read is logged and retried at the next poll, keeping the last value seen.
    /// The task stops when every receiver is dropped or the locker is closed (receivers then
    /// see the channel closed).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the polling task starts only when the first read has succeeded.
    ///
    /// # Errors
    ///
    /// Those of [`Election::leader`], for the first read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let election = locker.election("scheduler");
    /// let mut leaders = election.observe().await?;
    /// assert!(leaders.borrow().is_none());
    ///
    /// let leadership = election.campaign("node-a").await?;
    /// leaders.changed().await.expect("the poller runs");
    /// let term = leaders.borrow_and_update().as_ref().map(|leader| leader.fencing_token);
    /// assert_eq!(term, Some(leadership.term()));
    /// # Ok(()) }
    /// ```
    pub async fn observe(&self) -> Result<watch::Receiver<Option<Holder>>> {
        let first = self.leader().await?;
        let (seen, receiver) = watch::channel(first);
        let (locker, name) = (self.locker.clone(), self.name.clone());
        tokio::spawn(poll_leader(locker, name, seen));
        Ok(receiver)
    }

    /// Runs `work` each time this candidate leads, forever: campaigns (publishing `value`),
    /// runs `work(term)` while leader, and campaigns again when the work finishes (it
    /// resigns first) or leadership is lost.
    ///
    /// The work is dropped at its next await point as soon as `lost()` fires (as with
    /// [`LockGuard::run`]), so no step of it runs after leadership is lost. After a loss or a
    /// failed campaign it backs off before campaigning again, from the config's
    /// `retry_interval` doubling up to the leadership's TTL (jittered); after work that
    /// finished it waits one `retry_interval`, letting other candidates in.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the work at once and resigns in the background (the
    /// guard's drop), like dropping a [`Leadership`].
    ///
    /// # Errors
    ///
    /// Returns only on an error retrying cannot fix: [`Error::Closed`], [`Error::InvalidKey`],
    /// [`Error::InvalidTtl`], [`Error::InvalidConfig`], [`Error::PermissionDenied`]. Backend
    /// errors and timeouts are logged and retried.
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let election = locker.election("compactor");
    /// let leading = election.run_while_leader("node-a", |term| async move {
    ///     // Only the leader runs this; pass the term to the store as a fencing token.
    ///     println!("leading in term {}", term.number());
    ///     tokio::time::sleep(Duration::from_millis(20)).await;
    /// });
    /// // It runs until dropped (here after 100 ms) or until an error it cannot retry.
    /// let _ = tokio::time::timeout(Duration::from_millis(100), leading).await;
    /// # Ok(()) }
    /// ```
    pub async fn run_while_leader<F, Fut>(&self, value: &str, mut work: F) -> Result<Infallible>
    where
        F: FnMut(Term) -> Fut,
        Fut: Future<Output = ()>,
    {
        let config = self.locker.config();
        let first = config.retry_interval;
        let longest = self
            .options
            .get_ttl()
            .unwrap_or(config.default_ttl)
            .max(first);
        let mut backoff = first;
        loop {
            match self.campaign(value).await {
                Ok(leadership) => {
                    let term = leadership.term_handle();
                    match leadership.run(work(term)).await {
                        Ok(()) => {
                            if let Err(e) = leadership.resign().await {
                                tracing::warn!(component = "dlock", election = %self.name,
                                    error = %e, "resigning after the work finished failed");
                            }
                            backoff = first;
                        }
                        Err(_) => {
                            tracing::warn!(component = "dlock", election = %self.name,
                                term = leadership.term(), "leadership lost; the work was stopped");
                            drop(leadership);
                            backoff = (backoff * 2).min(longest);
                        }
                    }
                }
                Err(e) if is_permanent(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(component = "dlock", election = %self.name, error = %e,
                        "campaign failed; retrying");
                    backoff = (backoff * 2).min(longest);
                }
            }
            tokio::time::sleep(backoff.mul_f64(0.8 + 0.4 * fastrand::f64())).await;
        }
    }
}

/// Errors that only an operator or the caller can fix: campaigning again cannot help.
fn is_permanent(e: &Error) -> bool {
    matches!(
        e,
        Error::Closed
            | Error::InvalidKey { .. }
            | Error::InvalidTtl { .. }
            | Error::InvalidConfig { .. }
            | Error::PermissionDenied { .. }
            | Error::ConnectorMissing { .. }
    )
}

/// The observer's poller: reads the leader every `retry_interval` until no one listens or
/// the locker is closed.
async fn poll_leader(locker: Locker, name: String, seen: watch::Sender<Option<Holder>>) {
    let mut tick = tokio::time::interval(locker.config().retry_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the first read was made by observe()
    loop {
        if locker.is_closed() {
            return;
        }
        let read = tokio::select! {
            _ = seen.closed() => return,
            read = async {
                tick.tick().await;
                locker.holder(&name).await
            } => read,
        };
        match read {
            Ok(now) => {
                seen.send_if_modified(|last| {
                    let changed = term_and_value(last) != term_and_value(&now);
                    *last = now; // fresh `expires_in` either way
                    changed
                });
            }
            Err(Error::Closed) => return,
            Err(e) => tracing::warn!(component = "dlock", election = %name, error = %e,
                "reading the leader failed; keeping the last one seen"),
        }
    }
}

fn term_and_value(holder: &Option<Holder>) -> Option<(u64, Option<&str>)> {
    holder
        .as_ref()
        .map(|h| (h.fencing_token, h.value.as_deref()))
}

/// This candidate's term as leader. Dropping it resigns (in the background, like dropping a
/// [`LockGuard`]); [`Leadership::resign`] resigns and reports the outcome.
///
/// The term is the lock's fencing token: it strictly increases from leader to leader, so a
/// store that refuses writes with a term older than one it has seen cannot be written by a
/// deposed leader. `lost()` fires when leadership is lost (renewal could not be proven in
/// time, the key was deleted or taken), before anyone else can be elected when the cause is
/// an unreachable server; it also fires once resigned.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
/// let leadership = locker.election("scheduler").campaign("node-a").await?;
/// let lost = leadership.lost();
/// tokio::select! {
///     _ = lost.cancelled() => { /* deposed: stop acting as leader */ }
///     _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => { /* led a while */ }
/// }
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "dropping the leadership resigns at once"]
pub struct Leadership {
    guard: LockGuard,
    value: String,
}

impl Leadership {
    fn new(guard: LockGuard, value: &str) -> Leadership {
        Leadership {
            guard,
            value: value.to_owned(),
        }
    }

    /// The term: the lock's fencing token, strictly increasing from leader to leader.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let election = locker.election("scheduler");
    /// let first = election.campaign("a").await?;
    /// let term = first.term();
    /// first.resign().await?;
    /// assert!(election.campaign("b").await?.term() > term);
    /// # Ok(()) }
    /// ```
    pub fn term(&self) -> u64 {
        self.guard.fencing_token()
    }

    /// The value published with this leadership.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// assert_eq!(locker.election("e").campaign("node-a").await?.value(), "node-a");
    /// # Ok(()) }
    /// ```
    pub fn value(&self) -> &str {
        &self.value
    }

    /// A token cancelled when leadership is lost, and once resigned. A child token:
    /// cancelling it yourself does not resign.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let leadership = locker.election("e").campaign("a").await?;
    /// assert!(!leadership.lost().is_cancelled());
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> CancellationToken {
        self.guard.lost()
    }

    /// Whether leadership has been lost. `false` is no promise for the next instant: act
    /// under [`Leadership::run`] or `lost()`, and fence writes with [`Leadership::term`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let leadership = locker.election("e").campaign("a").await?;
    /// assert!(!leadership.is_lost());
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// Runs `work` while leader: `Ok(output)` if it finishes first, [`Error::OwnershipLost`]
    /// as soon as leadership is lost, dropping `work` at its next await point (see
    /// [`LockGuard::run`]). Leadership is kept either way; resign afterwards.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let leadership = locker.election("e").campaign("a").await?;
    /// assert_eq!(leadership.run(async { 7 }).await?, 7);
    /// # Ok(()) }
    /// ```
    pub fn run<F: Future>(&self, work: F) -> Run<F> {
        self.guard.run(work)
    }

    /// What [`Election::run_while_leader`] hands its work: the term and its `lost()` token.
    fn term_handle(&self) -> Term {
        Term {
            number: self.term(),
            lost: self.lost(),
        }
    }

    /// Steps down: releases the lock so that another candidate can be elected, and reports
    /// the outcome (`Err(Error::OwnershipLost)` if leadership had been lost meanwhile).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe like [`LockGuard::release`]: once called, the resignation happens even
    /// if the future is dropped.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let election = locker.election("e");
    /// election.campaign("a").await?.resign().await?;
    /// assert!(election.leader().await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn resign(self) -> Result<()> {
        self.guard.release().await
    }
}

/// The term [`Election::run_while_leader`] hands to its work: a cheap copy of what the work
/// needs from its [`Leadership`] (the term, and the loss token).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
/// let election = locker.election("e");
/// let leading = election.run_while_leader("a", |term: dlock::Term| async move {
///     assert!(!term.is_lost());
///     let _fencing_token = term.number();
/// });
/// let _ = tokio::time::timeout(std::time::Duration::from_millis(50), leading).await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Term {
    number: u64,
    lost: CancellationToken,
}

impl Term {
    /// The term number: the leadership's fencing token.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let election = locker.election("e");
    /// let leading = election.run_while_leader("a", |term| async move {
    ///     assert!(term.number() > 0);
    /// });
    /// let _ = tokio::time::timeout(std::time::Duration::from_millis(50), leading).await;
    /// # Ok(()) }
    /// ```
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Cancelled when this term's leadership is lost (or resigned). The work is dropped at
    /// that moment anyway; use it to hand the signal to tasks the work spawned.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let election = locker.election("e");
    /// let leading = election.run_while_leader("a", |term| async move {
    ///     let lost = term.lost();
    ///     tokio::spawn(async move { lost.cancelled().await; /* stop the helper */ });
    /// });
    /// let _ = tokio::time::timeout(std::time::Duration::from_millis(50), leading).await;
    /// # Ok(()) }
    /// ```
    pub fn lost(&self) -> CancellationToken {
        self.lost.child_token()
    }

    /// Whether this term's leadership has been lost (or resigned).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
    /// # let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
    /// let election = locker.election("e");
    /// let leading = election.run_while_leader("a", |term| async move {
    ///     assert!(!term.is_lost());
    /// });
    /// let _ = tokio::time::timeout(std::time::Duration::from_millis(50), leading).await;
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }
}
