//! A backend written outside the crate, as a third party would (features `unstable-backend`
//! and `testing`), runs the crate's own conformance suite with one macro line: the path for
//! new backends is proven, not promised.
//!
//! The backend is a `Mutex<HashMap>` shared by every locker of one fixture, with its own
//! expiry, tokens, fencing counter and an outage switch. It is deliberately not
//! `dlock::MemoryStore`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dlock::backend::{Backend, Context, Grant, Lease, Renewal, Request, Wakeups};
use dlock::testing::{conformance, Fixture};
use dlock::{Config, Driver, Error, Holder, Locker};
use tokio::time::Instant;

/// One held lock of the table.
struct Row {
    token: String,
    expiry: Instant,
    fence: u64,
    value: Option<String>,
}

/// The "server": storage key -> row, a fencing counter, and whether it is down.
#[derive(Default)]
struct Table {
    locks: Mutex<HashMap<String, Row>>,
    last_fence: Mutex<u64>,
    down: AtomicBool,
    wakeups: Arc<Wakeups>,
}

impl Table {
    /// The table, or the error a real server outage would give.
    fn reach(&self, key: &str) -> dlock::Result<MutexGuard<'_, HashMap<String, Row>>> {
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

/// One locker's handle on the shared table.
struct TableBackend(Arc<Table>);

fn is_live(row: Option<&Row>, token: &str) -> bool {
    row.is_some_and(|row| row.token == token && row.expiry > Instant::now())
}

impl Backend for TableBackend {
    type Held = String;

    fn name(&self) -> &'static str {
        "table"
    }

    fn wakeups(&self) -> Option<&Arc<Wakeups>> {
        Some(&self.0.wakeups)
    }

    async fn try_acquire(
        &self,
        _: &Context,
        request: &Request<'_>,
    ) -> dlock::Result<Option<Grant<String>>> {
        let now = Instant::now();
        let mut locks = self.0.reach(request.key)?;
        if locks
            .get(request.storage_key)
            .is_some_and(|row| row.expiry > now)
        {
            return Ok(None);
        }
        let mut fence = self.0.last_fence.lock().unwrap();
        *fence += 1;
        let row = Row {
            token: request.token.to_owned(),
            expiry: now + request.ttl,
            fence: *fence,
            value: request.value.map(str::to_owned),
        };
        locks.insert(request.storage_key.to_owned(), row);
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
        match locks.get_mut(&lease.storage_key) {
            Some(row) if is_live(Some(row), token) => {
                row.expiry = Instant::now() + lease.ttl;
                Ok(Renewal::Renewed)
            }
            _ => Ok(Renewal::Lost("the row was deleted or taken")),
        }
    }

    async fn holder(
        &self,
        _: &Context,
        key: &str,
        storage_key: &str,
    ) -> dlock::Result<Option<Holder>> {
        let now = Instant::now();
        let locks = self.0.reach(key)?;
        Ok(locks
            .get(storage_key)
            .filter(|row| row.expiry > now)
            .map(|row| Holder::new(row.fence, row.expiry - now, row.value.clone())))
    }

    async fn release(
        &self,
        _: &Context,
        lease: &Lease,
        token: String,
        _: Duration,
    ) -> dlock::Result<bool> {
        let mut locks = self.0.reach(&lease.key)?;
        if !is_live(locks.get(&lease.storage_key), &token) {
            return Ok(false);
        }
        locks.remove(&lease.storage_key);
        drop(locks);
        self.0.wakeups.released(&lease.storage_key);
        Ok(true)
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
        locks
            .get(&format!("{prefix}{key}"))
            .is_some_and(|row| row.expiry > Instant::now())
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
