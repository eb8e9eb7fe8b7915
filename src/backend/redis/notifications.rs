//! Release notifications: one subscription connection per locker, subscribed to a lock's
//! release channel while at least one task of this locker waits for it. A message wakes one
//! waiter of this backend (see `wake`). Everything here is best effort: while the
//! connection is down, waiters poll at `retry_interval`.
//!
//! Invariants:
//! 1. `wanted` counts the live [`Subscription`]s per channel. It changes only synchronously
//!    (when a subscription is created or dropped), so no cancelled future can leave it wrong.
//! 2. Only the maintainer task talks to the server, one command at a time, always steering
//!    the server's set of channels (`active`) towards `wanted`. So an unsubscribe can never
//!    overtake a later subscribe, and whatever is cancelled where, the subscribed channels
//!    converge to exactly the keys that have waiters.
//! 3. No waiter waits for the server for longer than its own poll interval: a slow or
//!    unreachable notification server costs latency, never a stall.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, timeout};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::super::permission::redis_noperm;
use super::super::{recover, Context, Wakeups};

/// Suffix of a lock's release channel (release.lua appends it to the lock key).
pub(super) const RELEASED: &str = ":released";

/// How long one command on the notification connection may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection back-off bounds while the notification server is unreachable.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

pub(crate) struct Notifications {
    shared: Arc<Shared>,
    /// Set when the maintainer starts; stops it when the backend is dropped (the locker's
    /// close stops it too).
    started: OnceLock<DropGuard>,
}

struct Shared {
    client: redis::Client,
    wakeups: Arc<Wakeups>,
    state: Mutex<State>,
    /// Wakes the maintainer: `wanted` changed.
    changed: Notify,
    /// Bumped by the maintainer after each pass, for waiters watching `active`/`down`.
    settled: watch::Sender<()>,
}

#[derive(Default)]
struct State {
    /// Channel → live subscriptions (invariant 1).
    wanted: HashMap<String, usize>,
    /// Channels the server confirmed on the current connection.
    active: HashSet<String>,
    /// The last connection attempt failed.
    down: bool,
}

/// A waiting task's interest in one release channel; dropping it withdraws the interest.
pub(crate) struct Subscription {
    shared: Arc<Shared>,
    channel: String,
}

impl Notifications {
    pub fn new(client: redis::Client, wakeups: Arc<Wakeups>) -> Self {
        Notifications {
            shared: Arc::new(Shared {
                client,
                wakeups,
                state: Mutex::default(),
                changed: Notify::new(),
                settled: watch::Sender::new(()),
            }),
            started: OnceLock::new(),
        }
    }

    /// Registers interest in `channel`, then waits at most `patience` for the server to
    /// confirm it. Cancel-safe: the interest is registered before the first await and
    /// withdrawn by the returned guard's drop (invariant 1).
    pub async fn subscribe(
        &self,
        cx: &Context,
        channel: String,
        patience: Duration,
    ) -> Subscription {
        *self
            .shared
            .state()
            .wanted
            .entry(channel.clone())
            .or_insert(0) += 1;
        let subscription = Subscription {
            shared: self.shared.clone(),
            channel,
        };
        self.started.get_or_init(|| {
            let stop = cx.closing().child_token();
            cx.spawn(maintain(self.shared.clone(), stop.clone()));
            stop.drop_guard()
        });
        self.shared.changed.notify_one();
        let mut settled = self.shared.settled.subscribe();
        let confirmed = async {
            loop {
                settled.borrow_and_update();
                {
                    let state = self.shared.state();
                    if state.down || state.active.contains(&subscription.channel) {
                        return;
                    }
                }
                if settled.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = timeout(patience, confirmed).await;
        subscription
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        recover(self.state.lock())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        if let Some(count) = state.wanted.get_mut(&self.channel) {
            *count -= 1;
            if *count == 0 {
                state.wanted.remove(&self.channel);
            }
        }
        drop(state);
        self.shared.changed.notify_one();
    }
}

/// The maintainer: (re)connects while someone waits, and serves the connection.
async fn maintain(shared: Arc<Shared>, stop: CancellationToken) {
    let mut retry = FIRST_RETRY;
    // A refused SUBSCRIBE (an ACL without the right) is said once, not at every retry.
    let mut refusal_told = false;
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if shared.state().wanted.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changed => continue,
            }
        }
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = timeout(COMMAND_TIMEOUT, shared.client.get_async_pubsub()) => connected,
        };
        match connected {
            Ok(Ok(pubsub)) => {
                shared.state().down = false;
                let (sink, stream) = pubsub.split();
                let refused = serve(&shared, sink, stream, &stop).await;
                shared.state().active.clear();
                let Some(refusal) = refused else {
                    retry = FIRST_RETRY;
                    tracing::debug!(
                        component = "dlock",
                        backend = "redis",
                        "release-notification connection closed; reconnecting while anyone waits"
                    );
                    continue;
                };
                // Not transient: waiters poll, and the server is asked again with back-off
                // (an operator may grant the right), never in a loop of reconnections.
                shared.state().down = true;
                shared.settled.send_replace(());
                if !std::mem::replace(&mut refusal_told, true) {
                    tracing::warn!(component = "dlock", backend = "redis", error = %refusal,
                        "the server refused to subscribe to release channels (grant the \
                         user +subscribe, +unsubscribe and &<prefix>*); waiters poll until it allows it");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep(retry) => {}
                }
                retry = (retry * 2).min(LAST_RETRY);
            }
            failed => {
                let first_failure = !std::mem::replace(&mut shared.state().down, true);
                shared.settled.send_replace(());
                if first_failure {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no connection within {COMMAND_TIMEOUT:?}"),
                    };
                    tracing::warn!(component = "dlock", backend = "redis", error = %error,
                        "release notifications unavailable; waiters poll until they return");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep(retry) => {}
                }
                retry = (retry * 2).min(LAST_RETRY);
            }
        }
    }
}

/// Steers the connection's channels towards `wanted` and wakes waiters on messages; returns
/// when the connection fails or the locker stops, with the server's words when it refused
/// the subscription for want of a right.
async fn serve(
    shared: &Shared,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    stop: &CancellationToken,
) -> Option<String> {
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (add, remove): (Vec<String>, Vec<String>) = {
            let state = shared.state();
            let add = state.wanted.keys().filter(|c| !state.active.contains(*c));
            let remove = state
                .active
                .iter()
                .filter(|c| !state.wanted.contains_key(*c));
            (add.cloned().collect(), remove.cloned().collect())
        };
        if !add.is_empty() {
            match timeout(COMMAND_TIMEOUT, sink.subscribe(&add)).await {
                Ok(Ok(())) => shared.state().active.extend(add),
                Ok(Err(e)) => return redis_noperm(&e),
                Err(_) => return None,
            }
        }
        if !remove.is_empty() {
            match timeout(COMMAND_TIMEOUT, sink.unsubscribe(&remove)).await {
                Ok(Ok(())) => {
                    let mut state = shared.state();
                    for channel in &remove {
                        state.active.remove(channel);
                    }
                }
                Ok(Err(e)) => return redis_noperm(&e),
                Err(_) => return None,
            }
        }
        shared.settled.send_replace(());
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = changed => {}
            message = stream.next() => match message {
                Some(message) => on_message(shared, &message),
                None => return None,
            },
        }
    }
}

/// A release announced by another store handle wakes one of our waiters; our own releases
/// woke one already.
fn on_message(shared: &Shared, message: &redis::Msg) {
    if message.get_payload_bytes() == shared.wakeups.id().as_bytes() {
        return;
    }
    if let Some(lock_key) = message.get_channel_name().strip_suffix(RELEASED) {
        shared.wakeups.released(lock_key);
    }
}
