//! Leader election (`dlock::Election`) on every backend (PostgreSQL with the `postgres`
//! feature), on real servers: what users of etcd's `Election` and Curator's leader recipes
//! rely on, and the failure they reported (two leaders after a session loss: Curator
//! 727/1137/1211, etcd 10811/11007).
//!
//! No timed assertions: instants are recorded and compared for order; bounds are generous
//! safety nets against a hang.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dlock::testing::Fixture;
use dlock::{Config, Locker};
#[cfg(feature = "postgres")]
use support::fixtures::Postgres;
use support::fixtures::{Etcd, Memory, Proxied, Redis};
use tokio::time::{sleep, timeout, Instant};

/// Whole seconds: etcd's leases count in seconds.
const TTL: Duration = Duration::from_secs(2);
/// The TTL of the cut-off tests (whole seconds, for etcd).
const CUT_TTL: Duration = Duration::from_secs(5);
/// The longest any step may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

fn config<F: Fixture>(prefix: &str) -> Config {
    // retry_interval 20 ms: the observers' poll interval.
    dlock::testing::config(F::DRIVER, prefix, TTL)
}

async fn lockers<F: Fixture>(fx: &F, prefix: &str) -> [Locker; 2] {
    [
        fx.locker(config::<F>(prefix)).await,
        fx.locker(config::<F>(prefix)).await,
    ]
}

/// Successive leaders, alternating between two lockers (two processes): each term is
/// greater than the last, `leader()` shows the term and value of the one leading, and no
/// one once it resigned.
async fn terms_strictly_increase_across_successive_leaders<F: Fixture>() {
    let fx = F::start().await;
    let lockers = lockers(&fx, "terms:").await;
    let mut terms = Vec::new();
    for round in 0..12 {
        let election = lockers[round % 2].election("e");
        let value = format!("node-{round}");
        let leadership = timeout(HANG, election.campaign(&value))
            .await
            .expect("campaign hung")
            .expect("campaign");
        let leader = election.leader().await.expect("leader()");
        let leader = leader.expect("leader() shows no one while a candidate leads");
        assert_eq!(
            leader.fencing_token,
            leadership.term(),
            "leader() shows another term"
        );
        assert_eq!(
            leader.value.as_deref(),
            Some(value.as_str()),
            "leader() shows another value"
        );
        terms.push(leadership.term());
        leadership.resign().await.expect("resign");
        assert!(
            election.leader().await.expect("leader()").is_none(),
            "leader() still shows a leader after it resigned"
        );
    }
    assert!(
        terms.windows(2).all(|w| w[0] < w[1]),
        "terms did not strictly increase: {terms:?}"
    );
}

/// Candidates over two lockers, campaigning (waiting) and try-campaigning in a loop, each
/// checking under its leadership that it is the only leader: an atomic counter of current
/// leaders must never exceed 1.
async fn two_campaigns_never_both_lead<F: Fixture>() {
    let fx = F::start().await;
    let lockers = lockers(&fx, "only:").await;
    let leading = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let terms = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for candidate in 0..4 {
        let election = lockers[candidate % 2].election("e");
        let (leading, most, terms) = (leading.clone(), most.clone(), terms.clone());
        tasks.push(tokio::spawn(async move {
            let mut rounds = 0;
            while rounds < 12 {
                let value = format!("candidate-{candidate}");
                let leadership = if candidate < 2 {
                    election.campaign(&value).await.expect("campaign")
                } else {
                    match election.try_campaign(&value).await.expect("try_campaign") {
                        Some(leadership) => leadership,
                        None => {
                            sleep(Duration::from_millis(3)).await;
                            continue;
                        }
                    }
                };
                let term = leadership.term();
                let work = async {
                    let now = leading.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    sleep(Duration::from_millis(2)).await;
                    tokio::task::yield_now().await;
                    leading.fetch_sub(1, Ordering::SeqCst);
                };
                leadership
                    .run(work)
                    .await
                    .expect("leadership lost mid-round");
                terms.lock().unwrap().push(term);
                leadership.resign().await.expect("resign");
                rounds += 1;
            }
        }));
    }
    for task in tasks {
        timeout(HANG * 2, task)
            .await
            .expect("candidates hung")
            .expect("candidate panicked");
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "two candidates led at once");
    let mut terms = terms.lock().unwrap().clone();
    let count = terms.len();
    terms.sort_unstable();
    terms.dedup();
    assert_eq!(terms.len(), count, "two leaderships shared a term");
}

/// An observer polling every 20 ms sees every change when changes are 500 ms apart: each
/// new leader (term and value) and each vacancy, in order, nothing else.
async fn observers_see_every_change<F: Fixture>() {
    const GAP: Duration = Duration::from_millis(500);
    let fx = F::start().await;
    let lockers = lockers(&fx, "watch:").await;
    let observer = fx.locker(config::<F>("watch:")).await;
    let mut leaders = observer.election("e").observe().await.expect("observe");
    assert!(leaders.borrow().is_none(), "a leader before any campaign");
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while leaders.changed().await.is_ok() {
            let now = leaders.borrow_and_update().clone();
            seen.push(now.map(|h| (h.fencing_token, h.value.unwrap_or_default())));
        }
        seen
    });
    let mut expected = Vec::new();
    for round in 0..4 {
        let value = format!("node-{round}");
        let election = lockers[round % 2].election("e");
        let leadership = election.campaign(&value).await.expect("campaign");
        expected.push(Some((leadership.term(), value)));
        sleep(GAP).await;
        leadership.resign().await.expect("resign");
        expected.push(None);
        sleep(GAP).await;
    }
    // Closing the locker stops the poller, which closes the channel and ends `seen`.
    observer.close().await.expect("close");
    let seen = timeout(HANG, seen)
        .await
        .expect("the poller did not stop when its locker closed")
        .expect("observer task");
    assert_eq!(seen, expected, "the observer missed or invented a change");
}

/// `run_while_leader` runs the work as leader, campaigns again after the work finished
/// (new term), drops the work at once when leadership is lost (the key deleted behind its
/// back) and campaigns again (newer term).
async fn run_while_leader_campaigns_again_after_finishing_and_after_loss<F: Fixture>() {
    let fx = F::start().await;
    let locker = fx.locker(config::<F>("rwl:")).await;
    let election = locker.election("e");
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let helper = {
        let election = election.clone();
        tokio::spawn(async move {
            let mut call = 0;
            election
                .run_while_leader("me", move |term| {
                    call += 1;
                    let (events, call) = (events.clone(), call);
                    async move {
                        events.send(("started", call, term.number())).unwrap();
                        if call == 2 {
                            // Reports its own drop: the helper must drop it on loss.
                            struct Dropped(
                                tokio::sync::mpsc::UnboundedSender<(&'static str, i32, u64)>,
                                u64,
                            );
                            impl Drop for Dropped {
                                fn drop(&mut self) {
                                    let _ = self.0.send(("dropped", 2, self.1));
                                }
                            }
                            let _dropped = Dropped(events.clone(), term.number());
                            std::future::pending::<()>().await;
                        } else if call > 3 {
                            std::future::pending::<()>().await;
                        }
                    }
                })
                .await
        })
    };
    let (what, call, first) = next(&mut received).await;
    assert_eq!((what, call), ("started", 1), "the first work did not start");
    let (what, call, second) = next(&mut received).await;
    assert_eq!(
        (what, call),
        ("started", 2),
        "no new campaign after the work finished"
    );
    assert!(second > first, "the new term {second} is not after {first}");
    fx.delete("rwl:", "e").await; // leadership lost behind the leader's back
    let (what, call, _) = next(&mut received).await;
    assert_eq!(
        (what, call),
        ("dropped", 2),
        "the work was not dropped when leadership was lost"
    );
    let (what, call, third) = next(&mut received).await;
    assert_eq!(
        (what, call),
        ("started", 3),
        "no new campaign after the loss"
    );
    assert!(
        third > second,
        "the term after the loss {third} is not after {second}"
    );
    helper.abort();
}

async fn next<T>(received: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    timeout(HANG, received.recv())
        .await
        .expect("run_while_leader stalled")
        .expect("events")
}

/// A leader cut off from the server (its connections blackholed by the proxy) stops — its
/// `lost()` fires — before a rival that was waiting all along is elected; the rival's term
/// is the greater.
async fn cut_off_leader_stops_before_another_is_elected<F: Proxied>() {
    let fx = F::start().await;
    let proxy = support::Proxy::start(fx.addr()).await;
    // A longer TTL: lost() fires at 90 % of it, so the order has TTL/10 of slack against a
    // loaded machine's scheduling.
    let config = Config {
        default_ttl: CUT_TTL,
        ..config::<F>("cut:")
    };
    let cut = fx.locker_via(&proxy, config.clone()).await;
    let rival = fx.locker(config).await;
    let leadership = cut
        .election("e")
        .campaign("cut-off")
        .await
        .expect("campaign");
    let lost = leadership.lost();
    let lost_at = tokio::spawn(async move {
        lost.cancelled().await;
        Instant::now()
    });
    let elected = tokio::spawn(async move {
        let leadership = rival
            .election("e")
            .campaign("rival")
            .await
            .expect("rival campaign");
        (Instant::now(), leadership)
    });
    sleep(CUT_TTL / 10).await; // the rival waits
    assert!(
        !elected.is_finished(),
        "the rival was elected while the leader led"
    );
    proxy.blackhole();
    let lost_at = timeout(HANG, lost_at)
        .await
        .expect("the cut-off leader's lost() never fired")
        .unwrap();
    let (elected_at, successor) = timeout(HANG, elected)
        .await
        .expect("the rival was never elected")
        .unwrap();
    assert!(
        lost_at < elected_at,
        "two leaders: the rival was elected {:?} before the cut-off leader's lost() fired",
        lost_at - elected_at
    );
    assert!(
        successor.term() > leadership.term(),
        "the successor's term is not greater"
    );
    successor.resign().await.expect("resign");
}

/// The in-process store has no connection to cut: it goes offline as a whole. The leader's
/// `lost()` fires; the store comes back at once, and a rival retrying all along is elected
/// only after that (the old leader's entry lives until its TTL ends).
async fn offline_leader_stops_before_another_is_elected_on_memory() {
    let store = dlock::MemoryStore::new();
    let locker = || {
        Locker::builder(config::<Memory>("cut:"))
            .memory(store.clone())
            .build()
            .expect("build")
    };
    let (leader, rival) = (locker(), locker());
    let leadership = leader
        .election("e")
        .campaign("leader")
        .await
        .expect("campaign");
    let lost = leadership.lost();
    let rival = rival.election("e");
    let elected = tokio::spawn(async move {
        loop {
            if let Ok(leadership) = rival.campaign("rival").await {
                return (Instant::now(), leadership);
            }
            sleep(Duration::from_millis(20)).await;
        }
    });
    store.set_offline(true);
    timeout(HANG, lost.cancelled())
        .await
        .expect("lost() never fired while the store was offline");
    let lost_at = Instant::now();
    store.set_offline(false);
    let (elected_at, successor) = timeout(HANG, elected)
        .await
        .expect("rival never elected")
        .unwrap();
    assert!(
        lost_at < elected_at,
        "the rival was elected before the leader's lost() fired"
    );
    assert!(
        successor.term() > leadership.term(),
        "the successor's term is not greater"
    );
}

macro_rules! on_backend {
    ($module:ident, $fixture:ty, [$($test:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<$fixture>().await
                }
            )*
        }
    };
}

on_backend!(
    memory_backend,
    super::Memory,
    [
        terms_strictly_increase_across_successive_leaders,
        two_campaigns_never_both_lead,
        observers_see_every_change,
        run_while_leader_campaigns_again_after_finishing_and_after_loss,
    ]
);
on_backend!(
    redis_backend,
    super::Redis,
    [
        terms_strictly_increase_across_successive_leaders,
        two_campaigns_never_both_lead,
        observers_see_every_change,
        run_while_leader_campaigns_again_after_finishing_and_after_loss,
        cut_off_leader_stops_before_another_is_elected,
    ]
);
on_backend!(
    etcd_backend,
    super::Etcd,
    [
        terms_strictly_increase_across_successive_leaders,
        two_campaigns_never_both_lead,
        observers_see_every_change,
        run_while_leader_campaigns_again_after_finishing_and_after_loss,
        cut_off_leader_stops_before_another_is_elected,
    ]
);
#[cfg(feature = "postgres")]
on_backend!(
    postgres_backend,
    super::Postgres,
    [
        terms_strictly_increase_across_successive_leaders,
        two_campaigns_never_both_lead,
        observers_see_every_change,
        run_while_leader_campaigns_again_after_finishing_and_after_loss,
        cut_off_leader_stops_before_another_is_elected,
    ]
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_offline_leader_stops_before_another_is_elected() {
    offline_leader_stops_before_another_is_elected_on_memory().await
}
