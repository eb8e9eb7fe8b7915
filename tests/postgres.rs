//! The PostgreSQL backend on a real server (`tests/support/postgres_server.rs`): the whole
//! conformance suite, as the superuser and as a role with the README's GRANT lines only; a
//! kill -9 and restart with crash recovery; a missing right reported as such.

mod support;

use std::time::Duration;

use dlock::testing::{conformance, Fixture};
use dlock::{Config, Driver, Error};

use support::fixtures::{Postgres, PostgresLeastPrivilege};

conformance!(postgres_backend, Postgres);
conformance!(postgres_least_privilege, PostgresLeastPrivilege);

fn config(prefix: &str) -> Config {
    dlock::testing::config(Driver::Postgres, prefix, Duration::from_secs(10))
}

/// `kill -9` of the server and a restart with crash recovery, three times: every fencing
/// token drawn after a restart is above every one drawn before it (the sequence never goes
/// back for a value a committed acquisition used).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_across_kill_9_and_crash_recovery() {
    let mut fx = Postgres::start().await;
    let mut highest = 0;
    for round in 0..3 {
        let locker = fx.locker(config("crash:")).await;
        for i in 0..5 {
            let guard = locker.lock(&format!("k{i}")).await.expect("lock");
            let token = guard.fencing_token();
            assert!(
                token > highest,
                "round {round}: token {token} is not above {highest}, drawn before"
            );
            highest = token;
            guard.release().await.expect("release");
        }
        // One lock still held at the kill: its row is committed and survives recovery.
        let held = locker.lock("held").await.expect("lock");
        highest = highest.max(held.fencing_token());
        fx.server.restart().await;
        drop(held);
        // The dropped guard's release may or may not reach the restarted server.
        let _ = locker.close().await;
    }
    let locker = fx.locker(config("crash:")).await;
    let guard = locker
        .lock("after")
        .await
        .expect("lock after the last restart");
    assert!(guard.fencing_token() > highest);
    guard.release().await.expect("release");
}

/// A role without the right on the fencing sequence is told so: `PermissionDenied`, with
/// PostgreSQL's own words, not an opaque backend error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_right_is_reported_as_permission_denied() {
    let fx = PostgresLeastPrivilege::start().await;
    sqlx::raw_sql("REVOKE USAGE ON SEQUENCE dlock_fence FROM dlock_app")
        .execute(&fx.0.admin)
        .await
        .expect("revoke");
    let locker = fx.locker(config("acl:")).await;
    match locker.try_lock("k").await {
        Err(Error::PermissionDenied {
            backend, detail, ..
        }) => {
            assert_eq!(backend, "postgres");
            assert!(detail.contains("dlock_fence"), "{detail}");
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}
