//! Metric names, and their recording through an OpenTelemetry `Meter` (cargo feature
//! `metrics`, injected with `LockerBuilder::meter`, which exists only with that feature).
//!
//! Every instrument carries the attributes `backend` (`redis`, `etcd`, `memory`) and, unless
//! switched off with [`LockerBuilder::key_attribute`](crate::LockerBuilder::key_attribute),
//! `key` (the key without prefix).
//!
//! ```
//! assert_eq!(dlock::metrics::LOCK_ACQUIRED_TOTAL, "dlock_lock_acquired_total");
//! ```

use std::time::Duration;

/// Counter: locks acquired.
///
/// ```
/// assert_eq!(dlock::metrics::LOCK_ACQUIRED_TOTAL, "dlock_lock_acquired_total");
/// ```
pub const LOCK_ACQUIRED_TOTAL: &str = "dlock_lock_acquired_total";
/// Counter: lock calls that ended without a lock (error or timeout; not `try_lock` finding it held).
///
/// ```
/// assert_eq!(dlock::metrics::LOCK_FAILED_TOTAL, "dlock_lock_failed_total");
/// ```
pub const LOCK_FAILED_TOTAL: &str = "dlock_lock_failed_total";
/// Counter: locks released while still held.
///
/// ```
/// assert_eq!(dlock::metrics::LOCK_RELEASED_TOTAL, "dlock_lock_released_total");
/// ```
pub const LOCK_RELEASED_TOTAL: &str = "dlock_lock_released_total";
/// Histogram, seconds: from acquisition to release.
///
/// ```
/// assert_eq!(dlock::metrics::LOCK_HOLD_DURATION_SECONDS, "dlock_lock_hold_duration_seconds");
/// ```
pub const LOCK_HOLD_DURATION_SECONDS: &str = "dlock_lock_hold_duration_seconds";
/// Histogram, seconds: how long a successful `lock` call waited.
///
/// ```
/// assert_eq!(dlock::metrics::LOCK_WAIT_DURATION_SECONDS, "dlock_lock_wait_duration_seconds");
/// ```
pub const LOCK_WAIT_DURATION_SECONDS: &str = "dlock_lock_wait_duration_seconds";
/// Counter: locks whose ownership was lost while held.
///
/// ```
/// assert_eq!(dlock::metrics::OWNERSHIP_LOST_TOTAL, "dlock_ownership_lost_total");
/// ```
pub const OWNERSHIP_LOST_TOTAL: &str = "dlock_ownership_lost_total";

/// The locker's instruments; free when no meter is injected.
#[derive(Clone, Default)]
pub(crate) struct Metrics {
    #[cfg(feature = "metrics")]
    otel: Option<std::sync::Arc<otel::Instruments>>,
}

impl Metrics {
    #[cfg(feature = "metrics")]
    pub fn new(meter: Option<&opentelemetry::metrics::Meter>, key_attribute: bool) -> Self {
        Metrics {
            otel: meter.map(|m| std::sync::Arc::new(otel::Instruments::new(m, key_attribute))),
        }
    }

    pub fn acquired(&self, backend: &'static str, key: &str, waited: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(o) = &self.otel {
            let attrs = o.attributes(backend, key);
            o.acquired.add(1, &attrs);
            o.wait.record(waited.as_secs_f64(), &attrs);
        }
        let _ = (backend, key, waited);
    }

    pub fn failed(&self, backend: &'static str, key: &str) {
        #[cfg(feature = "metrics")]
        if let Some(o) = &self.otel {
            o.failed.add(1, &o.attributes(backend, key));
        }
        let _ = (backend, key);
    }

    pub fn released(&self, backend: &'static str, key: &str, held: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(o) = &self.otel {
            let attrs = o.attributes(backend, key);
            o.released.add(1, &attrs);
            o.hold.record(held.as_secs_f64(), &attrs);
        }
        let _ = (backend, key, held);
    }

    pub fn lost(&self, backend: &'static str, key: &str) {
        #[cfg(feature = "metrics")]
        if let Some(o) = &self.otel {
            o.lost.add(1, &o.attributes(backend, key));
        }
        let _ = (backend, key);
    }
}

#[cfg(feature = "metrics")]
mod otel {
    use opentelemetry::metrics::{Counter, Histogram, Meter};
    use opentelemetry::KeyValue;

    pub(super) struct Instruments {
        pub acquired: Counter<u64>,
        pub failed: Counter<u64>,
        pub released: Counter<u64>,
        pub lost: Counter<u64>,
        pub hold: Histogram<f64>,
        pub wait: Histogram<f64>,
        key_attribute: bool,
    }

    impl Instruments {
        pub fn new(meter: &Meter, key_attribute: bool) -> Self {
            let counter = |name: &'static str, help: &'static str| {
                meter.u64_counter(name).with_description(help).build()
            };
            let seconds = |name: &'static str, help: &'static str| {
                meter
                    .f64_histogram(name)
                    .with_unit("s")
                    .with_description(help)
                    .build()
            };
            Instruments {
                acquired: counter(super::LOCK_ACQUIRED_TOTAL, "Locks acquired"),
                failed: counter(
                    super::LOCK_FAILED_TOTAL,
                    "Lock calls that failed or timed out",
                ),
                released: counter(super::LOCK_RELEASED_TOTAL, "Locks released while held"),
                lost: counter(super::OWNERSHIP_LOST_TOTAL, "Locks lost while held"),
                hold: seconds(
                    super::LOCK_HOLD_DURATION_SECONDS,
                    "Time from acquire to release",
                ),
                wait: seconds(super::LOCK_WAIT_DURATION_SECONDS, "Time a lock call waited"),
                key_attribute,
            }
        }

        pub fn attributes(&self, backend: &'static str, key: &str) -> Vec<KeyValue> {
            let mut attrs = vec![KeyValue::new("backend", backend)];
            if self.key_attribute {
                attrs.push(KeyValue::new("key", key.to_owned()));
            }
            attrs
        }
    }
}
