//! The lock engine: one per locker, it keeps every lock the locker holds, from grant to
//! release. A held lock is a [`Slot`] here, not a task: one driver task per locker sleeps
//! until the earliest instant any slot needs attention, and sends the renewals that fall due
//! together as one batch ([`Backend::renew_many`](crate::backend::Backend::renew_many)).
//! A [`LockGuard`](crate::LockGuard) owns its slot: dropping the guard or calling its
//! `release` ends the slot.
//!
//! # Lifecycle
//!
//! A slot is [`Holding`](Phase::Holding) (the engine keeps the lock, it is scheduled),
//! [`Renewing`](Phase::Renewing) (a renewal batch has it), [`Ending`](Phase::Ending) (its
//! release runs) or [`Ended`](Phase::Ended) (the outcome waits for the guard).
//!
//! ```text
//!  grant ─► Holding ─due─► Renewing ─answer─► Holding ... ─┐
//!              │                │                           │ guard: release / drop
//!              │ loss, close    │ loss, close, guard        ▼
//!              └──────────► Ending ──────► Ended ──guard──► (gone)
//! ```
//!
//! # Invariants
//!
//! 1. **One owner of the held lock.** The backend's held state is in exactly one place: the
//!    slot (`Holding`), one renewal batch (`Renewing`) or one ending (`Ending`). So no
//!    renewal can be sent after the release has started, and no release can overtake a
//!    renewal in flight: a guard that asks for release while its slot is `Renewing` leaves
//!    a claim that the batch honours when the answer is in.
//! 2. **`lost()` keeps its deadline.** A slot is always scheduled at its safety deadline
//!    (`Lease::deadline` of the last confirmation) at the latest, renewing or not. Reached
//!    without a newer confirmation, the deadline fires the guard's `lost` token at once,
//!    whatever holds the lock at that moment; the release follows.
//! 3. **Confirmation is a send time.** A renewal confirms the lock as of when it was sent
//!    (or as of the backend's own confirmation, [`confirmed`](crate::backend::Backend::confirmed)),
//!    never as of its answer.
//! 4. **The guard has the last word.** A slot leaves the engine only when its guard has
//!    released or dropped it. An ending the engine starts itself (a loss, the locker
//!    closing) leaves the outcome in the slot for the guard's `release` to report.
//! 5. **Bounded.** Every call the engine makes is bounded by the lock's expiry: a server that
//!    never answers cannot keep a slot `Renewing` or `Ending` for longer than the TTL.

mod schedule;
mod slots;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};

use tokio::sync::{oneshot, Notify};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::backend::erased::{Acquired, BoxFuture, Kept, SharedBackend};
use crate::backend::{recover, Context, Loss, Renewal, Unsettling};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use schedule::Schedule;
use slots::Slots;

/// A locker's engine. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Engine(Arc<Shared>);

struct Shared {
    backend: SharedBackend,
    cx: Context,
    metrics: Metrics,
    state: Mutex<State>,
    /// Wakes the driver when a slot is due earlier than it sleeps.
    wake: Notify,
}

#[derive(Default)]
struct State {
    slots: Slots<Slot>,
    /// When each `Holding` or `Renewing` slot needs the driver next.
    schedule: Schedule,
    /// Whether a driver task runs; it stops when nothing is scheduled.
    driving: bool,
    /// The instant the driver sleeps until, if it sleeps on a timer.
    sleeping_until: Option<Instant>,
}

struct Slot {
    phase: Phase,
    /// When this slot needs the driver next, if scheduled: its live entry in
    /// [`State::schedule`] (any other entry of the slot there is stale).
    scheduled: Option<Instant>,
    /// Send time of the last command that proved ownership (invariant 3).
    confirmed: Instant,
    /// When the next renewal is due (a retry after an error is due sooner).
    renew_at: Instant,
    /// When the lock was granted, for the held-time metric.
    granted: Instant,
    last_error: Option<String>,
    /// The guard's `lost` token.
    lost: CancellationToken,
    /// The safety deadline passed while a renewal had the lock (invariant 2).
    expired: bool,
    /// What the guard asked while the lock was away (invariant 1).
    claim: Claim,
}

enum Phase {
    Holding(Kept),
    Renewing,
    Ending,
    Ended(Result<()>),
}

/// A guard's request that waits for the lock to come back from a renewal or an ending.
enum Claim {
    None,
    /// `release().await`: the outcome goes there.
    Release(oneshot::Sender<Result<()>>),
    /// Dropped: the lock's key counts as unsettled in the locker until the release ends.
    Dropped(#[allow(dead_code, reason = "held for its drop")] Unsettling),
}

/// The guard's handle on its slot.
pub(crate) struct SlotId(u64);

impl Engine {
    pub(crate) fn new(backend: SharedBackend, cx: Context, metrics: Metrics) -> Engine {
        Engine(Arc::new(Shared {
            backend,
            cx,
            metrics,
            state: Mutex::default(),
            wake: Notify::new(),
        }))
    }

    /// Takes over a granted lock: renewed from now on until the guard releases it.
    /// Returns the slot and the guard's `lost` token.
    pub(crate) fn hold(&self, acquired: Acquired) -> (SlotId, CancellationToken) {
        let shared = &self.0;
        let lost = match shared.backend.loss_signal(&acquired.held) {
            Some(signal) => signal.child_token(),
            None => CancellationToken::new(),
        };
        let Acquired {
            lease,
            confirmed_at,
            held,
        } = acquired;
        let period = schedule::renewal_period(lease.ttl);
        let slot = Slot {
            renew_at: schedule::on_grid(confirmed_at + period, period),
            phase: Phase::Holding(Kept { lease, held }),
            scheduled: None,
            confirmed: confirmed_at,
            granted: confirmed_at,
            last_error: None,
            lost: lost.clone(),
            expired: false,
            claim: Claim::None,
        };
        let mut state = shared.lock();
        let id = state.slots.insert(slot);
        shared.reschedule(&mut state, id);
        (SlotId(id), lost)
    }

    /// Releases the guard's lock and reports the outcome. Cancel-safe: dropped, the
    /// release still runs to its end in the background.
    pub(crate) async fn release(&self, slot: SlotId) -> Result<()> {
        let shared = &self.0;
        let next = {
            let mut state = shared.lock();
            match state.stage(slot.0) {
                Stage::Holding => Next::End(shared.remove_holding(&mut state, slot.0)),
                Stage::Away => {
                    let (sender, receiver) = oneshot::channel();
                    state.slots.get_mut(&slot.0).expect("just seen").claim = Claim::Release(sender);
                    Next::Wait(receiver)
                }
                Stage::Ended => Next::Done(state.take_outcome(slot.0)),
            }
        };
        match next {
            Next::End((ending, kept)) => {
                let ending = shared.end(ending, kept, None);
                Background::new(shared.cx.clone(), Box::pin(ending)).await
            }
            // By invariant 1 the lock comes back from the renewal or ending that has it,
            // and that one ends it.
            Next::Wait(receiver) => receiver.await.unwrap_or(Ok(())),
            Next::Done(outcome) => outcome,
        }
    }

    /// The guard was dropped: releases in the background, never blocking. Until that
    /// release ends, the locker counts the key as unsettled: its next attempt on the key
    /// waits for it.
    pub(crate) fn drop_slot(&self, slot: SlotId, key: &str) {
        let shared = &self.0;
        let settling = shared.cx.settling();
        let mut state = shared.lock();
        let (ending, kept) = match state.stage(slot.0) {
            Stage::Holding => shared.remove_holding(&mut state, slot.0),
            Stage::Away => {
                state.slots.get_mut(&slot.0).expect("just seen").claim =
                    Claim::Dropped(settling.hold(key));
                return;
            }
            Stage::Ended => {
                let _ = state.take_outcome(slot.0);
                return;
            }
        };
        drop(state);
        let unsettled = settling.hold(key);
        let ending = shared.end(ending, kept, None);
        shared.cx.spawn(async move {
            let _ = ending.await;
            drop(unsettled);
        });
    }
}

/// What a guard's `release` does once it has looked at its slot.
enum Next {
    End((Ending, Kept)),
    Wait(oneshot::Receiver<Result<()>>),
    Done(Result<()>),
}

/// Where a slot's lock is, as its guard sees it.
enum Stage {
    Holding,
    /// With a renewal or an ending.
    Away,
    Ended,
}

impl State {
    fn stage(&self, id: u64) -> Stage {
        match self.slots.get(&id).map(|slot| &slot.phase) {
            Some(Phase::Holding(_)) => Stage::Holding,
            Some(Phase::Renewing | Phase::Ending) => Stage::Away,
            // A guard's slot stays until the guard is done with it (invariant 4).
            Some(Phase::Ended(_)) | None => Stage::Ended,
        }
    }

    /// Removes an `Ended` slot, with the outcome of its ending.
    fn take_outcome(&mut self, id: u64) -> Result<()> {
        match self.slots.remove(&id).map(|slot| slot.phase) {
            Some(Phase::Ended(outcome)) => outcome,
            _ => Ok(()),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        recover(self.state.lock())
    }

    /// Puts a `Holding` slot `id` in the schedule at the next instant it needs the driver:
    /// its renewal or its safety deadline, whichever comes first (invariant 2).
    fn reschedule(self: &Arc<Self>, state: &mut State, id: u64) {
        let Some(slot) = state.slots.get(&id) else {
            return;
        };
        let Phase::Holding(kept) = &slot.phase else {
            return;
        };
        let at = slot.renew_at.min(kept.lease.deadline(slot.confirmed));
        self.schedule(state, id, at);
    }

    /// Puts slot `id` in the schedule at `at`, in place of its earlier entry, and makes
    /// sure the driver runs and wakes by then.
    fn schedule(self: &Arc<Self>, state: &mut State, id: u64, at: Instant) {
        let Some(slot) = state.slots.get_mut(&id) else {
            return;
        };
        if slot.scheduled.replace(at) == Some(at) {
            return;
        }
        state.schedule.insert(at, id);
        if !std::mem::replace(&mut state.driving, true) {
            self.cx.spawn(drive(self.clone()));
        } else if state.sleeping_until.is_some_and(|until| at < until) {
            self.wake.notify_one();
        }
    }

    /// Removes a `Holding` slot from the engine, with its lock: its guard ends it.
    fn remove_holding(&self, state: &mut State, id: u64) -> (Ending, Kept) {
        let slot = state.slots.remove(&id).expect("a holding slot");
        let ending = slot.ending();
        let Phase::Holding(kept) = slot.phase else {
            unreachable!("checked by the caller, under the same lock")
        };
        (ending, kept)
    }

    /// Takes the lock of slot `id` for an ending the engine starts (a loss, closing),
    /// leaving the slot `Ending`. Spawns the ending, which settles the slot when done.
    fn start_ending(self: &Arc<Self>, state: &mut State, id: u64, kept: Kept, loss: Option<Loss>) {
        let slot = state.slots.get_mut(&id).expect("a slot being ended");
        slot.scheduled = None;
        slot.phase = Phase::Ending;
        let ending = self.end(slot.ending(), kept, loss);
        let shared = self.clone();
        self.cx.spawn(async move {
            let outcome = ending.await;
            shared.settle(id, outcome);
        });
    }

    /// An ending the engine started is over: the guard gets the outcome (invariant 4).
    fn settle(&self, id: u64, outcome: Result<()>) {
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(&id) else {
            return;
        };
        match std::mem::replace(&mut slot.claim, Claim::None) {
            Claim::Release(sender) => {
                state.slots.remove(&id);
                let _ = sender.send(outcome);
            }
            Claim::Dropped(_) => {
                state.slots.remove(&id);
            }
            Claim::None => slot.phase = Phase::Ended(outcome),
        }
    }

    /// Takes the due slots: `Holding` slots due for renewal leave in one batch; slots at
    /// their safety deadline are lost; when the locker closes, every slot ends. Returns the
    /// batch, and when to look again (`None`: nothing is scheduled, the driver stops).
    fn take_due(self: &Arc<Self>, now: Instant) -> (Vec<(u64, Kept)>, Option<Instant>) {
        let mut state = self.lock();
        let closing = self.cx.closing().is_cancelled();
        let mut batch = Vec::new();
        let mut still_renewing = Vec::new();
        for (at, ids) in state.schedule.pop_due(now, closing) {
            for id in ids {
                self.take_one(
                    &mut state,
                    now,
                    closing,
                    at,
                    id,
                    &mut batch,
                    &mut still_renewing,
                );
            }
        }
        for (at, id) in still_renewing {
            state.schedule.insert(at, id);
        }
        let next = state.schedule.first();
        // Closing: what is left renewing ends with its answer, which nothing but the
        // answer's own bound (invariant 5) needs to wait for.
        state.driving = next.is_some() && !closing;
        state.sleeping_until = next;
        (batch, next.filter(|_| !closing))
    }

    /// One entry of a due bucket: see [`Shared::take_due`].
    #[allow(clippy::too_many_arguments, reason = "one loop body of take_due")]
    fn take_one(
        self: &Arc<Self>,
        state: &mut State,
        now: Instant,
        closing: bool,
        at: Instant,
        id: u64,
        batch: &mut Vec<(u64, Kept)>,
        still_renewing: &mut Vec<(Instant, u64)>,
    ) {
        let Some(slot) = state.slots.get_mut(&id) else {
            return; // released since
        };
        if slot.scheduled != Some(at) {
            return; // a stale entry: the slot was rescheduled
        }
        slot.scheduled = None;
        let kept = match std::mem::replace(&mut slot.phase, Phase::Renewing) {
            Phase::Holding(kept) => kept,
            Phase::Renewing if at > now => {
                // Closing: its renewal ends it when answered; its deadline still holds.
                slot.scheduled = Some(at);
                still_renewing.push((at, id));
                return;
            }
            Phase::Renewing => {
                // Its deadline, with the renewal still unanswered (invariant 2).
                slot.expired = true;
                slot.lost.cancel();
                return;
            }
            other => {
                slot.phase = other;
                return;
            }
        };
        if let Some(later) = self.backend.confirmed(&kept.held) {
            slot.confirmed = slot.confirmed.max(later);
        }
        let deadline = kept.lease.deadline(slot.confirmed);
        if closing {
            self.start_ending(state, id, kept, None);
        } else if now >= deadline {
            let loss = slot.unconfirmed();
            self.start_ending(state, id, kept, Some(loss));
        } else if now >= slot.renew_at {
            // Away in a batch, but still due at its deadline (invariant 2).
            slot.scheduled = Some(deadline);
            state.schedule.insert(deadline, id);
            batch.push((id, kept));
        } else {
            slot.phase = Phase::Holding(kept);
            self.reschedule(state, id);
        }
    }

    /// Sends one batch of renewals and files each answer.
    async fn renew(self: Arc<Self>, batch: Vec<(u64, Kept)>) {
        let sent = Instant::now();
        let (ids, mut locks): (Vec<u64>, Vec<Kept>) = batch.into_iter().unzip();
        // Bounded by the latest expiry in the batch (invariant 5); each slot's own
        // deadline is kept by the driver meanwhile.
        let expiry = locks
            .iter()
            .map(|kept| sent + kept.lease.ttl)
            .max()
            .unwrap_or(sent);
        let answers = timeout_at(expiry, self.backend.renew_many(&self.cx, &mut locks))
            .await
            .unwrap_or_default();
        let mut answers = answers.into_iter();
        let mut state = self.lock();
        let closing = self.cx.closing().is_cancelled();
        for (id, kept) in ids.into_iter().zip(locks) {
            let answer = answers.next().unwrap_or_else(|| {
                Err(Error::backend(
                    self.backend.name(),
                    &kept.lease.key,
                    "the renewal got no answer",
                ))
            });
            let slot = state.slots.get_mut(&id).expect("renewing slots stay");
            if let Ok(Renewal::Renewed) = answer {
                let confirmed = self.backend.confirmed(&kept.held).unwrap_or(sent);
                slot.confirmed = slot.confirmed.max(confirmed);
            }
            let loss = match answer {
                _ if slot.expired => Some(slot.unconfirmed()),
                Ok(Renewal::Lost(reason)) => Some(Loss::NotHeld(reason)),
                Ok(Renewal::Renewed) => {
                    let period = schedule::renewal_period(kept.lease.ttl);
                    // From the send time: a backend's own confirmation (`confirmed`) may be older.
                    slot.renew_at = schedule::on_grid(sent + period, period);
                    slot.last_error = None;
                    None
                }
                Err(e) => {
                    tracing::warn!(component = "dlock", backend = self.backend.name(),
                        key = %kept.lease.key, fencing_token = kept.lease.fencing_token,
                        error = %e,
                        "renewal failed; retrying until the lock can no longer be proven held");
                    slot.last_error = Some(e.to_string());
                    slot.renew_at = sent + schedule::retry_after(kept.lease.ttl);
                    (Instant::now() >= kept.lease.deadline(slot.confirmed))
                        .then(|| slot.unconfirmed())
                }
            };
            if loss.is_some() || closing || !matches!(slot.claim, Claim::None) {
                self.start_ending(&mut state, id, kept, loss);
            } else {
                slot.phase = Phase::Holding(kept);
                self.reschedule(&mut state, id);
            }
        }
    }

    /// Releases a lock whose renewal stopped: after a `loss`, or on request (`None`).
    /// Its outcome is what the guard's `release` reports.
    fn end(
        &self,
        slot: Ending,
        kept: Kept,
        loss: Option<Loss>,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let backend = self.backend.clone();
        let (cx, metrics) = (self.cx.clone(), self.metrics.clone());
        end(backend, cx, metrics, slot, kept, loss)
    }
}

impl Slot {
    fn unconfirmed(&self) -> Loss {
        Loss::Unconfirmed {
            last_error: self.last_error.clone(),
        }
    }

    fn ending(&self) -> Ending {
        Ending {
            confirmed: self.confirmed,
            granted: self.granted,
            lost: self.lost.clone(),
        }
    }
}

/// What an ending needs of its slot.
struct Ending {
    confirmed: Instant,
    granted: Instant,
    lost: CancellationToken,
}

/// One per engine while it has slots scheduled: sleeps until the earliest (or a wake-up),
/// and sends each round's due renewals as one batch.
async fn drive(shared: Arc<Shared>) {
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let (batch, next) = shared.take_due(Instant::now());
        if !batch.is_empty() {
            shared.cx.spawn(shared.clone().renew(batch));
        }
        let Some(next) = next else {
            return; // `take_due` marked the driver stopped, under the state's lock
        };
        tokio::select! {
            _ = woken => {}
            _ = sleep_until(next) => {}
            _ = shared.cx.closing().cancelled() => {}
        }
    }
}

/// The ending of a lock: fires `lost` and reports a loss, or releases on request.
///
/// `lost` fires no later than the safety deadline measured from the last confirmation,
/// whatever the release is doing: a release that hangs must not let the holder believe it
/// still holds a lock that a rival may already have taken (invariant 2, kept by bounding
/// the release by that deadline).
async fn end(
    backend: SharedBackend,
    cx: Context,
    metrics: Metrics,
    slot: Ending,
    kept: Kept,
    loss: Option<Loss>,
) -> Result<()> {
    let name = backend.name();
    let Kept { lease, held } = kept;
    // Past this instant the server has forgotten the key: no release call is worth more.
    let expiry = slot.confirmed + lease.ttl;
    if let Some(loss) = loss {
        slot.lost.cancel();
        metrics.lost(name, &lease.key);
        tracing::warn!(component = "dlock", backend = name, key = %lease.key,
            fencing_token = lease.fencing_token, reason = %loss, "ownership lost");
        // If renewal merely went unconfirmed, the key may still be ours: free it for the next
        // holder now rather than at expiry. A token-checked release cannot harm another holder.
        let _ = backend.release(&cx, &lease, held, expiry).await;
        return Err(Error::lost(&lease.key));
    }
    // Given up at the safety deadline, so that `lost` fires by then: past it, a rival may
    // hold the lock, and the key expires a tenth of the TTL later anyway. (One bound, no
    // timer of its own beside the call's.)
    let deadline = lease.deadline(slot.confirmed);
    let outcome = backend.release(&cx, &lease, held, deadline).await;
    slot.lost.cancel();
    match outcome {
        Ok(true) => {
            metrics.released(name, &lease.key, Instant::now() - slot.granted);
            tracing::debug!(component = "dlock", backend = name, key = %lease.key,
                fencing_token = lease.fencing_token, "lock released");
            Ok(())
        }
        Ok(false) => {
            metrics.lost(name, &lease.key);
            tracing::warn!(component = "dlock", backend = name, key = %lease.key,
                fencing_token = lease.fencing_token,
                "ownership lost before release: the key was deleted or taken");
            Err(Error::lost(&lease.key))
        }
        Err(e) => {
            tracing::error!(component = "dlock", backend = name, key = %lease.key,
                fencing_token = lease.fencing_token, error = %e,
                "release failed; the key will expire after its TTL");
            Err(e)
        }
    }
}

/// Runs an ending in the caller's task; if the caller stops waiting, the rest runs in the
/// background (`release()` is cancel-safe).
struct Background {
    cx: Context,
    ending: Option<BoxFuture<'static, Result<()>>>,
}

impl Background {
    fn new(cx: Context, ending: BoxFuture<'static, Result<()>>) -> Background {
        Background {
            cx,
            ending: Some(ending),
        }
    }
}

impl Future for Background {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Result<()>> {
        let Some(ending) = self.ending.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let outcome = std::task::ready!(ending.as_mut().poll(task));
        self.ending = None;
        Poll::Ready(outcome)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(ending) = self.ending.take() {
            self.cx.spawn(async move {
                let _ = ending.await;
            });
        }
    }
}
