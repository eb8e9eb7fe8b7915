//! Waiting without a herd: the tasks of one store waiting for one key form a line, only its
//! head tries the server, and a release meets one contender per store. Seen through a
//! backend that counts every attempt the locker makes (no server: the count is exact).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::backend::{Backend, Context, Grant, Lease, Renewal, Request, Wakeups};
use dlock::{Config, Driver, Locker};
use tokio::time::Instant;

/// A lock table in memory that counts attempts and wakes waiters on release.
#[derive(Default)]
struct Counting {
    locks: Mutex<HashMap<String, String>>,
    attempts: AtomicU64,
    fence: AtomicU64,
    wakeups: Arc<Wakeups>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Counting>);

impl Backend for Shared {
    type Held = String;

    fn name(&self) -> &'static str {
        "counting"
    }

    fn wakeups(&self) -> Option<&Arc<Wakeups>> {
        Some(&self.0.wakeups)
    }

    async fn try_acquire(
        &self,
        _: &Context,
        request: &Request<'_>,
    ) -> dlock::Result<Option<Grant<String>>> {
        self.0.attempts.fetch_add(1, Ordering::SeqCst);
        let mut locks = self.0.locks.lock().unwrap();
        if locks.contains_key(request.storage_key) {
            return Ok(None);
        }
        locks.insert(request.storage_key.to_owned(), request.token.to_owned());
        Ok(Some(Grant {
            fencing_token: self.0.fence.fetch_add(1, Ordering::SeqCst) + 1,
            confirmed_at: Instant::now(),
            held: request.token.to_owned(),
        }))
    }

    async fn renew(
        &self,
        _: &Context,
        lease: &Lease,
        token: &mut String,
    ) -> dlock::Result<Renewal> {
        let locks = self.0.locks.lock().unwrap();
        let ours = locks.get(&lease.storage_key) == Some(token);
        Ok(if ours {
            Renewal::Renewed
        } else {
            Renewal::Lost("taken")
        })
    }

    async fn release(
        &self,
        _: &Context,
        lease: &Lease,
        token: String,
        _: Duration,
    ) -> dlock::Result<bool> {
        let mut locks = self.0.locks.lock().unwrap();
        let ours = locks.get(&lease.storage_key) == Some(&token);
        if ours {
            locks.remove(&lease.storage_key);
            drop(locks);
            self.0.wakeups.released(&lease.storage_key);
        }
        Ok(ours)
    }
}

/// 16 tasks of one locker lock and release one key 50 times each: every release wakes the
/// head of the line alone, and the task that released joins the back of the line instead of
/// racing it. About one attempt per acquisition; a herd makes two or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_meets_one_contender_per_store() {
    let backend = Shared::default();
    let config = Config {
        default_ttl: Duration::from_secs(10),
        ..Config::new(Driver::Custom)
    };
    let locker = Locker::builder(config)
        .backend(backend.clone())
        .build()
        .expect("build");
    let (tasks, rounds) = (16, 50);
    let mut running = Vec::new();
    for _ in 0..tasks {
        let locker = locker.clone();
        running.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let guard = locker.lock("hot").await.expect("lock");
                tokio::task::yield_now().await;
                guard.release().await.expect("release");
            }
        }));
    }
    for task in running {
        task.await.expect("task");
    }
    let acquisitions = (tasks * rounds) as f64;
    let per_acquisition = backend.0.attempts.load(Ordering::SeqCst) as f64 / acquisitions;
    assert!(
        per_acquisition <= 1.5,
        "{per_acquisition:.2} attempts per acquisition: releases wake a herd"
    );
    println!("{per_acquisition:.2} attempts per acquisition");
}
