//! Release notifications: one subscription connection per locker, subscribed to a lock's
//! release channel while at least one task of this locker waits for it. A message wakes one
//! waiter of this backend (see `wake`). Everything here is best effort: while the
//! connection is down, waiters poll at `retry_interval`.
//!
//! Two sources, one mechanism ([`Source`]): the maintainer below does not know which it
//! serves, only [`Connection`] does.
//! - One server (`redis_pubsub`): SUBSCRIBE, and a waiter marks the lock `!` so that its
//!   release PUBLISHes. Kept classic even on Redis 7, where SSUBSCRIBE would work too: on
//!   one server sharding saves nothing, it works on every version over RESP2, and a client
//!   pointed at one node of a Cluster (how Cluster users subscribed before) keeps hearing
//!   the broadcast.
//! - A Cluster (`redis_cluster_pubsub`): SSUBSCRIBE through redis-rs's cluster connection
//!   (RESP3 push messages), which sends each channel to the master owning its slot, and
//!   re-subscribes by itself when the slot map changes (`MOVED`, failover) or a node
//!   reconnects. A waiter marks the lock `^`, so that its release SPUBLISHes in that slot:
//!   the message stays on one shard instead of crossing the cluster bus to every node.
//!   Redis before 7 has no sharded pub/sub: the first SSUBSCRIBE of each connection is
//!   refused as an unknown command, and that connection SUBSCRIBEs instead; release.lua
//!   makes the same choice on the server's version, so PUBLISH reaches it.
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
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisError, RedisResult, Value};
use tokio::sync::{mpsc, watch, Notify};
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

/// Where release notifications come from: what the builder was given.
// One per locker, kept in its `Arc<Shared>`: its size does not matter (with redis-rs's TLS
// features a cluster client is twice a node client's size).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Source {
    /// One server (or one node of a Cluster): SUBSCRIBE, and releases PUBLISH.
    Node(redis::Client),
    /// A Cluster, RESP3: SSUBSCRIBE on the shard owning each channel, releases SPUBLISH.
    Cluster(ClusterClient),
}

struct Shared {
    source: Source,
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
    /// The last connection failed, or its subscriptions did.
    down: bool,
}

/// A waiting task's interest in one release channel; dropping it withdraws the interest.
pub(crate) struct Subscription {
    shared: Arc<Shared>,
    channel: String,
}

impl Notifications {
    pub fn new(source: Source, wakeups: Arc<Wakeups>) -> Self {
        Notifications {
            shared: Arc::new(Shared {
                source,
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

impl Subscription {
    /// The waiter's mark on a held lock (obtain.lua's ARGV[3]): it makes the release publish
    /// the way this subscription listens.
    pub fn mark(&self) -> &'static str {
        match self.shared.source {
            Source::Node(_) => "!",
            Source::Cluster(_) => "^",
        }
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
            connected = timeout(COMMAND_TIMEOUT, Connection::open(&shared.source)) => connected,
        };
        let ended = match connected {
            Ok(Ok(connection)) => {
                let ended = serve(&shared, connection, &stop).await;
                shared.state().active.clear();
                ended
            }
            Ok(Err(e)) => Ended::Failed(e.to_string()),
            Err(_) => Ended::Failed(format!("no connection within {COMMAND_TIMEOUT:?}")),
        };
        match ended {
            Ended::Stopped => return,
            Ended::Closed => {
                retry = FIRST_RETRY;
                tracing::debug!(
                    component = "dlock",
                    backend = "redis",
                    "release-notification connection closed; reconnecting while anyone waits"
                );
                continue;
            }
            // Not transient: waiters poll, and the server is asked again with back-off
            // (an operator may grant the right), never in a loop of reconnections.
            Ended::Refused(refusal) => {
                shared.state().down = true;
                if !std::mem::replace(&mut refusal_told, true) {
                    tracing::warn!(component = "dlock", backend = "redis", error = %refusal,
                        "the server refused to subscribe to release channels (grant the \
                         user +subscribe +unsubscribe, on a Cluster +ssubscribe +sunsubscribe, \
                         and &<prefix>*); waiters poll until it allows it");
                }
            }
            // A connection that fails, or a command on it (a Cluster's node may be down while
            // the others answer): back-off too, so that it is never a loop of reconnections.
            Ended::Failed(error) => {
                if !std::mem::replace(&mut shared.state().down, true) {
                    tracing::warn!(component = "dlock", backend = "redis", error = %error,
                        "release notifications unavailable; waiters poll until they return");
                }
            }
        }
        shared.settled.send_replace(());
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep(retry) => {}
        }
        retry = (retry * 2).min(LAST_RETRY);
    }
}

/// Why [`serve`] gave its connection up.
enum Ended {
    /// The locker stops.
    Stopped,
    /// The server closed the connection: reconnect at once.
    Closed,
    /// A command failed or timed out: reconnect after a back-off.
    Failed(String),
    /// The server refused the subscription for want of a right, in its words.
    Refused(String),
}

/// Steers the connection's channels towards `wanted` and wakes waiters on messages, until
/// the connection fails or the locker stops. Each command has its own time bound, and
/// `active` grows as each is confirmed, so that a long list is never retried whole.
async fn serve(shared: &Shared, mut connection: Connection, stop: &CancellationToken) -> Ended {
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
        for batch in add.chunks(connection.channels_per_command()) {
            match timeout(COMMAND_TIMEOUT, connection.subscribe(batch)).await {
                Ok(Ok(())) => {
                    // Up once it serves, not once it connects: a Cluster may connect while
                    // a node cannot subscribe, and that is said once, not at every retry.
                    let mut state = shared.state();
                    state.down = false;
                    state.active.extend(batch.iter().cloned());
                }
                Ok(Err(e)) => return failure(&e),
                Err(_) => return Ended::Failed(format!("no answer within {COMMAND_TIMEOUT:?}")),
            }
            shared.settled.send_replace(());
        }
        for batch in remove.chunks(connection.channels_per_command()) {
            match timeout(COMMAND_TIMEOUT, connection.unsubscribe(batch)).await {
                Ok(Ok(())) => {
                    let mut state = shared.state();
                    for channel in batch {
                        state.active.remove(channel);
                    }
                }
                Ok(Err(e)) => return failure(&e),
                Err(_) => return Ended::Failed(format!("no answer within {COMMAND_TIMEOUT:?}")),
            }
        }
        shared.settled.send_replace(());
        tokio::select! {
            _ = stop.cancelled() => return Ended::Stopped,
            _ = changed => {}
            message = connection.next_release() => match message {
                Some((channel, releaser)) => on_message(shared, &channel, &releaser),
                None => return Ended::Closed,
            },
        }
    }
}

/// A failed subscription command. Refused: a missing right, or a cluster client that does
/// not speak RESP3 (redis-rs delivers cluster pub/sub only as RESP3 pushes); asking again at
/// once would not cure either.
fn failure(e: &RedisError) -> Ended {
    if e.kind() == redis::ErrorKind::InvalidClientConfig {
        return Ended::Refused(format!(
            "{e} (build the ClusterClient with .use_protocol(redis::ProtocolVersion::RESP3))"
        ));
    }
    match redis_noperm(e) {
        Some(refusal) => Ended::Refused(refusal),
        None => Ended::Failed(e.to_string()),
    }
}

/// A release announced by another store handle wakes one of our waiters; our own releases
/// woke one already.
fn on_message(shared: &Shared, channel: &str, releaser: &[u8]) {
    if releaser == shared.wakeups.id().as_bytes() {
        return;
    }
    if let Some(lock_key) = channel.strip_suffix(RELEASED) {
        shared.wakeups.released(lock_key);
    }
}

/// One subscription connection of either [`Source`]: the only place that knows which.
enum Connection {
    Node(PubSubSink, PubSubStream),
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        /// SSUBSCRIBE works here; false once the server called it unknown (Redis < 7).
        sharded: bool,
    },
}

impl Connection {
    /// Channels one command may name. On a Cluster one: redis-rs routes a command by its
    /// first channel, and channels of different slots in one SSUBSCRIBE are refused
    /// (CROSSSLOT).
    fn channels_per_command(&self) -> usize {
        match self {
            Connection::Node(..) => usize::MAX,
            Connection::Cluster { .. } => 1,
        }
    }

    async fn open(source: &Source) -> RedisResult<Connection> {
        Ok(match source {
            Source::Node(client) => {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Connection::Node(sink, stream)
            }
            Source::Cluster(client) => {
                // Our own connection, with our own push channel: the messages are ours alone.
                let (tx, pushes) = mpsc::unbounded_channel();
                let config = ClusterConfig::new().set_push_sender(tx);
                let conn = client.get_async_connection_with_config(config).await?;
                Connection::Cluster {
                    conn,
                    pushes,
                    sharded: true,
                }
            }
        })
    }

    async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Connection::Node(sink, _) => sink.subscribe(channels).await,
            // One channel per command (`channels_per_command`).
            Connection::Cluster { conn, sharded, .. } => {
                for channel in channels {
                    if *sharded {
                        match conn.ssubscribe(channel).await {
                            // Decided once per connection, by the server itself.
                            Err(e) if unknown_command(&e) => *sharded = false,
                            done => {
                                done?;
                                continue;
                            }
                        }
                    }
                    conn.subscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Connection::Node(sink, _) => sink.unsubscribe(channels).await,
            Connection::Cluster { conn, sharded, .. } => {
                for channel in channels {
                    if *sharded {
                        conn.sunsubscribe(channel).await?;
                    } else {
                        conn.unsubscribe(channel).await?;
                    }
                }
                Ok(())
            }
        }
    }

    /// The next release message: its channel and the releasing handle's id. `None` when
    /// the connection is gone.
    async fn next_release(&mut self) -> Option<(String, Vec<u8>)> {
        match self {
            Connection::Node(_, stream) => {
                let message = stream.next().await?;
                let channel = message.get_channel_name().to_owned();
                Some((channel, message.get_payload_bytes().to_vec()))
            }
            // Other pushes (confirmations, a node's disconnection, after which redis-rs
            // reconnects and re-subscribes) are not releases.
            Connection::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
                    continue;
                }
                if let [Value::BulkString(channel), Value::BulkString(releaser), ..] =
                    push.data.as_slice()
                {
                    let channel = String::from_utf8_lossy(channel).into_owned();
                    return Some((channel, releaser.clone()));
                }
            },
        }
    }
}

/// The server does not know the command (SSUBSCRIBE before Redis 7).
fn unknown_command(e: &RedisError) -> bool {
    e.to_string()
        .to_ascii_lowercase()
        .contains("unknown command")
}
