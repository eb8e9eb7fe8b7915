//! The spec's metrics, recorded through an OpenTelemetry meter and read back from the SDK's
//! in-memory exporter: the counts must be exact.
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::time::Duration;

use dlock::{metrics, Config, LockOptions, Locker, MemoryStore};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

type Attributes = Vec<(String, String)>;

struct Recorder {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

impl Recorder {
    fn new() -> Recorder {
        let exporter = InMemoryMetricExporter::default();
        let reader = PeriodicReader::builder(exporter.clone()).build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        Recorder { provider, exporter }
    }

    fn locker(&self, store: &MemoryStore, key_attribute: bool) -> Locker {
        let config = Config {
            default_ttl: Duration::from_secs(1),
            ..Config::default()
        };
        Locker::builder(config)
            .memory(store.clone())
            .meter(self.provider.meter("dlock-test"))
            .key_attribute(key_attribute)
            .build()
            .expect("build")
    }

    /// metric name → (total count or sum, attribute sets seen).
    fn read(&self) -> HashMap<String, (u64, Vec<Attributes>)> {
        self.provider.force_flush().expect("flush");
        let exports = self.exporter.get_finished_metrics().expect("metrics");
        let last: &ResourceMetrics = exports.last().expect("one export");
        let mut out = HashMap::new();
        for scope in last.scope_metrics() {
            for metric in scope.metrics() {
                let mut total = 0;
                let mut attrs = Vec::new();
                let mut seen = |a: Attributes| attrs.push(a);
                match metric.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        for p in sum.data_points() {
                            total += p.value();
                            seen(pairs(p.attributes()));
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            total += p.count();
                            seen(pairs(p.attributes()));
                        }
                    }
                    other => panic!("{}: unexpected data {other:?}", metric.name()),
                }
                out.insert(metric.name().to_owned(), (total, attrs));
            }
        }
        out
    }
}

fn pairs<'a>(attrs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Attributes {
    let mut v: Vec<_> = attrs
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_for_a_known_sequence() {
    let recorder = Recorder::new();
    let store = MemoryStore::new();
    let locker = recorder.locker(&store, true);

    for _ in 0..3 {
        let guard = locker.lock("job").await.expect("lock");
        guard.release().await.expect("release");
    }
    let held = locker.lock("job").await.expect("lock");
    let timeout = LockOptions::new().wait_timeout(Duration::from_millis(50));
    assert!(
        locker.lock_with("job", timeout).await.is_err(),
        "a held lock must time out"
    );
    assert!(locker.try_lock("job").await.expect("try_lock").is_none());
    store.remove("dlock:job");
    tokio::time::timeout(Duration::from_secs(2), held.lost().cancelled())
        .await
        .expect("loss noticed");
    assert!(held.release().await.is_err());

    let m = recorder.read();
    let count = |name: &str| m.get(name).map_or(0, |(n, _)| *n);
    assert_eq!(
        count(metrics::LOCK_ACQUIRED_TOTAL),
        4,
        "acquired: 3 cycles + the lost one"
    );
    assert_eq!(
        count(metrics::LOCK_RELEASED_TOTAL),
        3,
        "released: only locks still held"
    );
    assert_eq!(
        count(metrics::LOCK_FAILED_TOTAL),
        1,
        "failed: the timeout, not try_lock's None"
    );
    assert_eq!(
        count(metrics::OWNERSHIP_LOST_TOTAL),
        1,
        "lost: the deleted key"
    );
    assert_eq!(
        count(metrics::LOCK_HOLD_DURATION_SECONDS),
        3,
        "one hold sample per release"
    );
    assert_eq!(
        count(metrics::LOCK_WAIT_DURATION_SECONDS),
        4,
        "one wait sample per acquisition"
    );
    let expected = vec![
        ("backend".to_owned(), "memory".to_owned()),
        ("key".to_owned(), "job".to_owned()),
    ];
    for (name, (_, attrs)) in &m {
        for set in attrs {
            assert_eq!(set, &expected, "{name}: attributes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_attribute_can_be_switched_off() {
    let recorder = Recorder::new();
    let locker = recorder.locker(&MemoryStore::new(), false);
    for i in 0..5 {
        let guard = locker.lock(&format!("order:{i}")).await.expect("lock");
        guard.release().await.expect("release");
    }
    let m = recorder.read();
    let (acquired, attrs) = &m[metrics::LOCK_ACQUIRED_TOTAL];
    assert_eq!(*acquired, 5);
    assert_eq!(
        attrs,
        &vec![vec![("backend".to_owned(), "memory".to_owned())]],
        "five keys must fold into one series without the key attribute"
    );
}
