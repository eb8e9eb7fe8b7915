//! Real servers for the tests: each test starts its own `redis-server` / `etcd` on free
//! loopback ports and kills it when done. A missing binary fails loudly with the command
//! that installs it; nothing is ever skipped.
#![allow(dead_code, unused_imports)]

mod etcd_server;
/// Needs the `testing` feature (the torture tool includes this harness without it).
#[cfg(feature = "testing")]
pub mod fixtures;
#[cfg(feature = "postgres")]
mod pgbouncer;
#[cfg(feature = "postgres")]
mod postgres_server;
mod proxy;
mod redis_server;
mod sentinel;

pub use etcd_server::{client_at, EtcdCluster, EtcdServer};
#[cfg(feature = "postgres")]
pub use pgbouncer::PgBouncer;
#[cfg(feature = "postgres")]
pub use postgres_server::PostgresServer;
pub use proxy::Proxy;
pub use redis_server::{
    connection_manager_at, connection_manager_for, form_cluster, script_calls, RedisCluster,
    RedisServer,
};
pub use sentinel::{ReplicatedRedis, SentinelGroup, SERVICE as SENTINEL_SERVICE};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A port nobody listens on right now (bind to port 0, read it, let it go), and never
/// handed out before in this process: the tests of one binary run side by side, and the port
/// is free again until the server meant for it binds it, so the system could offer it to
/// another test's server first (`harness::a_redis_fixture_never_takes_another_servers_port_for_its_own`).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// Panics with the install command when `binary` is not on PATH.
pub fn require_binary(binary: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{binary} not found on PATH: install it with `apt-get install -y {package}` \
         (or run scripts/test.sh, which installs it)"
    );
}

/// A directory removed on drop; under /dev/shm when available so etcd's fsyncs are cheap.
pub struct TempDir(Option<PathBuf>);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!(
            "dlock-test-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(Some(path))
    }

    pub fn empty() -> TempDir {
        TempDir(None)
    }

    pub fn path(&self) -> &Path {
        self.0.as_deref().expect("temp dir already taken")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// A waiter for tests: `locker.lock_with(key)` waiting at most `wait`, on a task of its own.
#[allow(dead_code)] // each test binary uses part of the harness
pub fn spawn_waiter(
    locker: &dlock::Locker,
    key: &str,
    wait: std::time::Duration,
) -> tokio::task::JoinHandle<dlock::Result<dlock::LockGuard>> {
    let (locker, key) = (locker.clone(), key.to_owned());
    tokio::spawn(async move {
        let options = dlock::LockOptions::new().wait_timeout(wait);
        locker.lock_with(&key, options).await
    })
}

/// One whole lock + release of `key`, panicking on any error: a step of a test's scenario.
#[allow(dead_code)] // each test binary uses part of the harness
pub async fn lock_and_release(locker: &dlock::Locker, key: &str) {
    let guard = locker.lock(key).await.expect("lock");
    guard.release().await.expect("release");
}
