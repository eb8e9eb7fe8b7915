//! A PgBouncer of the test's own in front of a [`PostgresServer`]: `pool_mode = transaction`
//! (a server connection is lent to a client for one transaction only), on a free loopback
//! port, with its config, log and pid file in a temp dir. PgBouncer refuses to run as root
//! too: as root, the harness runs it as `nobody` (through `setpriv`), like the server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::postgres_server::{running_as_root, unprivileged_command, UNPRIVILEGED};
use super::{free_port, PostgresServer, TempDir};

/// Server connections per (database, user) pair: few, so that the clients' transactions
/// share them, as behind a production PgBouncer.
pub const POOL_SIZE: u32 = 4;

/// Where Debian's `pgbouncer` package puts the binary (`/usr/sbin`, not on an ordinary
/// user's PATH), when it is not on PATH.
const DEBIAN_PATH: &str = "/usr/sbin/pgbouncer";

fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("pgbouncer"))
            .find(|path| path.is_file())
    });
    match on_path {
        Some(path) => path,
        None if std::path::Path::new(DEBIAN_PATH).is_file() => PathBuf::from(DEBIAN_PATH),
        None => panic!(
            "pgbouncer not found on PATH nor at {DEBIAN_PATH}: install it with \
             `apt-get install -y pgbouncer` (or run scripts/test.sh, which installs it)"
        ),
    }
}

/// One PgBouncer process; killed when dropped.
pub struct PgBouncer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl PgBouncer {
    /// Starts PgBouncer in transaction pooling mode in front of `server`'s database
    /// `postgres`, for the roles `users` (trust authentication, as the server's), and waits
    /// until a query passes through it.
    pub async fn start(server: &PostgresServer, users: &[&str]) -> PgBouncer {
        let binary = binary();
        let as_nobody = running_as_root();
        let dir = TempDir::new("pgbouncer");
        let port = free_port();
        let userlist: String = users
            .iter()
            .map(|user| format!("\"{user}\" \"\"\n"))
            .collect();
        std::fs::write(dir.path().join("userlist.txt"), userlist).expect("userlist.txt");
        let config = format!(
            "[databases]\n\
             postgres = host=127.0.0.1 port={server_port} dbname=postgres\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = {POOL_SIZE}\n\
             max_client_conn = 1000\n\
             ; sqlx sends it at startup; PgBouncer 1.18 refuses unknown startup parameters.\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            server_port = server.port(),
            dir = dir.path().display(),
        );
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(&ini, config).expect("pgbouncer.ini");
        if as_nobody {
            let status = Command::new("chown")
                .args(["-R", UNPRIVILEGED])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "PgBouncer refuses to run as root, and its dir could not be handed to \
                 `{UNPRIVILEGED}` (chown failed): run the tests as an ordinary user"
            );
        }
        let child = unprivileged_command(&binary, as_nobody)
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut bouncer = PgBouncer {
            port,
            dir,
            child: Some(child),
        };
        bouncer.wait_ready(users[0]).await;
        bouncer
    }

    async fn wait_ready(&mut self, user: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "pgbouncer exited at start ({status}); log tail:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(pool) = self.pool_as(user, 1).await {
                if sqlx::raw_sql("SELECT 1").execute(&pool).await.is_ok() {
                    pool.close().await;
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pgbouncer did not pass a query within 30 s; log tail:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What a user's pool connects with through PgBouncer: sqlx's defaults otherwise.
    pub fn connect_options(&self, user: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(user)
            .database("postgres")
    }

    /// A new pool of its own through PgBouncer, as `user`, with sqlx's default options.
    pub async fn pool_as(&self, user: &str, max: u32) -> Result<PgPool, sqlx::Error> {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(self.connect_options(user))
            .await
    }

    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
