//! When a held lock needs the engine: renewals every TTL/3, moved onto a grid shared by the
//! whole process so that locks of one TTL fall due together and leave in one batch; and the
//! [`Schedule`] of those instants, in buckets.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::Instant;

/// How often a lock is renewed: three chances before its TTL runs out.
pub(super) fn renewal_period(ttl: Duration) -> Duration {
    ttl / 3
}

/// How soon a failed renewal is retried.
pub(super) fn retry_after(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(5))
}

/// The renewal time `due` moved back onto a grid of 1/32 of the renewal period (at most
/// 100 ms) shared by the whole process: locks with the same TTL then renew together, in one
/// timer tick and one batch to the server. Renewing up to a grid step early is always safe.
pub(super) fn on_grid(due: Instant, period: Duration) -> Instant {
    static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);
    let step = (period / 32).min(Duration::from_millis(100));
    let origin = *ORIGIN;
    if step.is_zero() || due <= origin {
        return due;
    }
    let step = step.as_nanos() as u64; // at most 100 ms
    let since = u64::try_from((due - origin).as_nanos()).unwrap_or(u64::MAX);
    origin + Duration::from_nanos(since - since % step)
}

/// Slots by the instant they need the driver, one bucket per instant: renewals fall on the
/// grid ([`on_grid`]) and the locks of one batch share their deadline, so thousands of
/// slots share a few buckets, and scheduling one is a push.
///
/// Entries are never removed but by [`Schedule::pop_due`]: the engine keeps each slot's
/// current instant in the slot, and an entry for another instant is stale and skipped.
#[derive(Default)]
pub(super) struct Schedule {
    buckets: BTreeMap<Instant, Vec<u64>>,
}

impl Schedule {
    pub fn insert(&mut self, at: Instant, id: u64) {
        self.buckets.entry(at).or_default().push(id);
    }

    /// The earliest instant with entries (some may be stale).
    pub fn first(&self) -> Option<Instant> {
        self.buckets.first_key_value().map(|(&at, _)| at)
    }

    /// Takes every entry due by `now` (every entry when `all`), earliest first.
    pub fn pop_due(&mut self, now: Instant, all: bool) -> Vec<(Instant, Vec<u64>)> {
        let mut due = Vec::new();
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() > now && !all {
                break;
            }
            due.push(entry.remove_entry());
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::on_grid;

    #[test]
    fn renewals_move_earlier_by_less_than_a_grid_step_and_line_up() {
        let period = Duration::from_millis(3333);
        let step = period / 32;
        let now = Instant::now();
        for offset_ms in [0, 1, 50, 103, 104, 2000, 3333] {
            let due = now + period + Duration::from_millis(offset_ms);
            let renew_at = on_grid(due, period);
            assert!(renew_at <= due, "a renewal moved later than it was due");
            assert!(
                due - renew_at < step,
                "a renewal moved earlier by a step or more"
            );
        }
        let (a, b) = (now + period, now + period + step / 4);
        assert!(
            on_grid(a, period) == on_grid(b, period)
                || on_grid(b, period) - on_grid(a, period) == step,
            "renewals due close together did not share a grid point"
        );
    }
}
