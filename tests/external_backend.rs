//! A backend written outside the crate, as a third party would (features `unstable-backend`
//! and `testing`), runs the crate's own conformance suite with one macro line: the path for
//! new backends is proven, not promised.
//!
//! The backend is a `Mutex<HashMap>` shared by every locker of one fixture, with its own
//! expiry, tokens, fencing counter and an outage switch. It is deliberately not
//! `dlock::MemoryStore`. It keeps semaphores too, with the same calls: a storage key admits
//! up to `Request::permits` rows, and the suite's semaphore behaviours run on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dlock::backend::{Backend, Context, Grant, Lease, Renewal, Request, Wakeups};
use dlock::testing::{conformance, Fixture};
use dlock::{Config, Driver, Error, Holder, Locker};
use tokio::time::Instant;

/// One holder in the table: of a lock, or of one of a semaphore's permits.
struct Row {
    token: String,
    expiry: Instant,
    fence: u64,
    value: Option<String>,
    /// How many may hold the storage key at once (1: a lock); the same for all its rows.
    permits: u32,
}

/// The "server": storage key -> its holders, a fencing counter, and whether it is down.
#[derive(Default)]
struct Table {
    locks: Mutex<HashMap<String, Vec<Row>>>,
    last_fence: Mutex<u64>,
    down: AtomicBool,
    wakeups: Arc<Wakeups>,
}

type Rows = HashMap<String, Vec<Row>>;

impl Table {
    /// The table, or the error a real server outage would give.
    fn reach(&self, key: &str) -> dlock::Result<MutexGuard<'_, Rows>> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Backend {
                backend: "table",
                key: Some(key.to_owned()),
                source: "the table is down".into(),
            });
        }
        Ok(self.locks.lock().unwrap())
    }
}

/// The live holders of `storage_key`, expired ones dropped first.
fn live<'a>(locks: &'a mut Rows, storage_key: &str) -> &'a mut Vec<Row> {
    let rows = locks.entry(storage_key.to_owned()).or_default();
    let now = Instant::now();
    rows.retain(|row| row.expiry > now);
    rows
}

/// One locker's handle on the shared table.
struct TableBackend(Arc<Table>);

impl Backend for TableBackend {
    type Held = String;

    fn name(&self) -> &'static str {
        "table"
    }

    /// Semaphores come with the same four calls: a storage key admits `permits` rows.
    fn max_permits(&self) -> u32 {
        dlock::MAX_PERMITS
    }

    fn wakeups(&self) -> Option<&Arc<Wakeups>> {
        Some(&self.0.wakeups)
    }

    async fn try_acquire(
        &self,
        _: &Context,
        request: &Request<'_>,
    ) -> dlock::Result<Option<Grant<String>>> {
        let mut locks = self.0.reach(request.key)?;
        let rows = live(&mut locks, request.storage_key);
        if let Some(held) = rows.first().map(|row| row.permits) {
            if held != request.permits {
                return Err(Error::PermitsMismatch {
                    key: request.key.to_owned(),
                    asked: request.permits,
                    held,
                });
            }
        }
        if rows.len() >= request.permits as usize {
            return Ok(None);
        }
        let mut fence = self.0.last_fence.lock().unwrap();
        *fence += 1;
        let now = Instant::now();
        rows.push(Row {
            token: request.token.to_owned(),
            expiry: now + request.ttl,
            fence: *fence,
            value: request.value.map(str::to_owned),
            permits: request.permits,
        });
        Ok(Some(Grant {
            fencing_token: *fence,
            confirmed_at: now,
            held: request.token.to_owned(),
        }))
    }

    async fn renew(
        &self,
        _: &Context,
        lease: &Lease,
        token: &mut String,
    ) -> dlock::Result<Renewal> {
        let mut locks = self.0.reach(&lease.key)?;
        let rows = live(&mut locks, &lease.storage_key);
        match rows.iter_mut().find(|row| row.token == *token) {
            Some(row) => {
                row.expiry = Instant::now() + lease.ttl;
                Ok(Renewal::Renewed)
            }
            None => Ok(Renewal::Lost("the row was deleted or taken")),
        }
    }

    async fn holder(
        &self,
        cx: &Context,
        key: &str,
        storage_key: &str,
    ) -> dlock::Result<Option<Holder>> {
        Ok(self.holders(cx, key, storage_key, 1).await?.pop())
    }

    async fn holders(
        &self,
        _: &Context,
        key: &str,
        storage_key: &str,
        permits: u32,
    ) -> dlock::Result<Vec<Holder>> {
        let mut locks = self.0.reach(key)?;
        let rows = live(&mut locks, storage_key);
        if let Some(held) = rows
            .first()
            .map(|row| row.permits)
            .filter(|&n| n != permits)
        {
            return Err(Error::PermitsMismatch {
                key: key.to_owned(),
                asked: permits,
                held,
            });
        }
        let now = Instant::now();
        Ok(rows
            .iter()
            .map(|row| Holder::new(row.fence, row.expiry - now, row.value.clone()))
            .collect())
    }

    async fn release(
        &self,
        _: &Context,
        lease: &Lease,
        token: String,
        _: Duration,
    ) -> dlock::Result<bool> {
        let mut locks = self.0.reach(&lease.key)?;
        let rows = live(&mut locks, &lease.storage_key);
        let before = rows.len();
        rows.retain(|row| row.token != token);
        let released = rows.len() < before;
        if rows.is_empty() {
            locks.remove(&lease.storage_key);
        }
        drop(locks);
        if released {
            self.0.wakeups.released(&lease.storage_key);
        }
        Ok(released)
    }
}

/// What the suite needs: lockers on one table, and the table's own view.
struct TableFixture {
    table: Arc<Table>,
    counters: Mutex<HashMap<String, u64>>,
}

impl Fixture for TableFixture {
    const DRIVER: Driver = Driver::Custom;

    async fn start() -> Self {
        TableFixture {
            table: Arc::default(),
            counters: Mutex::default(),
        }
    }

    async fn locker(&self, config: Config) -> Locker {
        Locker::builder(config)
            .backend(TableBackend(self.table.clone()))
            .build()
            .expect("build")
    }

    async fn exists(&self, prefix: &str, key: &str) -> bool {
        let locks = self.table.locks.lock().unwrap();
        let now = Instant::now();
        locks
            .get(&format!("{prefix}{key}"))
            .is_some_and(|rows| rows.iter().any(|row| row.expiry > now))
    }

    async fn delete(&self, prefix: &str, key: &str) {
        self.table
            .locks
            .lock()
            .unwrap()
            .remove(&format!("{prefix}{key}"));
    }

    async fn stop_server(&mut self) {
        self.table.down.store(true, Ordering::SeqCst);
    }

    async fn read_counter(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    async fn write_counter(&self, name: &str, value: u64) {
        self.counters.lock().unwrap().insert(name.to_owned(), value);
    }
}

conformance!(table_backend, TableFixture);

/// A config naming a built-in driver is refused for a custom backend, as for a wrong
/// built-in connector; `Driver::Custom` without a backend names the missing call.
#[test]
fn the_config_driver_must_match_the_backend() {
    let table = Arc::new(Table::default());
    let wrong = Locker::builder(Config::new(Driver::Memory))
        .backend(TableBackend(table))
        .build();
    match wrong {
        Err(Error::ConnectorMissing { driver, reason }) => {
            assert_eq!(driver, Driver::Memory);
            assert!(reason.contains("table"), "{reason}");
        }
        other => panic!("a memory config with a custom backend: {other:?}"),
    }
    match Locker::builder(Config::new(Driver::Custom)).build() {
        Err(Error::ConnectorMissing { reason, .. }) => {
            assert!(reason.contains(".backend(..)"), "{reason}")
        }
        other => panic!("a custom config without a backend: {other:?}"),
    }
}
