//! A PostgreSQL 15 server of the test's own: `initdb` into a temp dir, `postgres` on a free
//! loopback port with its socket in that dir. PostgreSQL refuses to run as root: as root, the
//! harness runs both as `nobody` (through `setpriv`, which execs: the child is the server
//! itself), on a dir it hands to that user, and fails with a clear message when it cannot.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::{free_port, TempDir};

/// Where Debian's `postgresql` package puts the server binaries: `<version>/bin` below.
const BIN_ROOT: &str = "/usr/lib/postgresql";

/// The user the server runs as when the tests run as root.
pub(super) const UNPRIVILEGED: &str = "nobody";
const UNPRIVILEGED_GROUP: &str = "nogroup";

/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "postgres";

/// The newest installed version's bin dir with both `initdb` and `postgres`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(BIN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            let complete = bin.join("postgres").is_file() && bin.join("initdb").is_file();
            complete.then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL's initdb and postgres not found under {BIN_ROOT}/<version>/bin: \
             install them with `apt-get install -y postgresql` (or run scripts/test.sh, \
             which installs it)"
        ),
    }
}

pub(super) fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run `id -u`");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `program` from the server's bin dir, run as [`UNPRIVILEGED`] when we are root.
fn server_command(program: &str, as_nobody: bool) -> Command {
    unprivileged_command(&bin_dir().join(program), as_nobody)
}

/// `path` run as [`UNPRIVILEGED`] (through `setpriv`, which execs) when `as_nobody`.
pub(super) fn unprivileged_command(path: &std::path::Path, as_nobody: bool) -> Command {
    if as_nobody {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid",
                UNPRIVILEGED,
                "--regid",
                UNPRIVILEGED_GROUP,
                "--clear-groups",
            ])
            .arg(path);
        command
    } else {
        Command::new(path)
    }
}

/// One PostgreSQL server; killed and its data removed when dropped.
pub struct PostgresServer {
    port: u16,
    dir: TempDir,
    as_nobody: bool,
    child: Option<Child>,
}

impl PostgresServer {
    /// `initdb`, then starts the server and waits until it answers a query.
    pub async fn start() -> PostgresServer {
        let as_nobody = running_as_root();
        let dir = TempDir::new("postgres");
        if as_nobody {
            let status = Command::new("chown")
                .args(["-R", UNPRIVILEGED])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "PostgreSQL refuses to run as root, and the test dir could not be handed to \
                 `{UNPRIVILEGED}` (chown failed): run the tests as an ordinary user"
            );
        }
        let init = server_command("initdb", as_nobody)
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run initdb{}: {e}",
                    if as_nobody {
                        format!(" as `{UNPRIVILEGED}` through setpriv (PostgreSQL refuses root)")
                    } else {
                        String::new()
                    }
                )
            });
        assert!(
            init.status.success(),
            "initdb failed{}: {}",
            if as_nobody {
                format!(" (run as `{UNPRIVILEGED}`, since PostgreSQL refuses root)")
            } else {
                String::new()
            },
            String::from_utf8_lossy(&init.stderr)
        );
        let mut server = PostgresServer {
            port: free_port(),
            dir,
            as_nobody,
            child: None,
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .expect("postgres log");
        let child = server_command("postgres", self.as_nobody)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"])
            // Dynamic shared memory as files in the data dir: a killed server leaves none
            // in /dev/shm.
            .args(["-c", "dynamic_shared_memory_type=mmap"])
            // Durability as in production: fsync and synchronous commit stay on, so that a
            // kill -9 and restart test what a user gets.
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
    }

    /// Waits until the server answers. A server started right after a kill may exit at once
    /// while the old one's backends still hold its shared memory: it is started again.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.spawn();
            }
            if let Ok(pool) = self.pool_as(SUPERUSER, 1).await {
                if sqlx::query("SELECT 1").execute(&pool).await.is_ok() {
                    pool.close().await;
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "postgres did not answer within 30 s; log tail:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// A new pool of its own, as the superuser.
    pub async fn pool(&self) -> PgPool {
        self.pool_as(SUPERUSER, 10)
            .await
            .expect("connect to postgres")
    }

    /// A new pool of its own, as `user` (trust authentication: no password).
    pub async fn pool_as(&self, user: &str, max: u32) -> Result<PgPool, sqlx::Error> {
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(user)
            .database("postgres");
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
    }

    /// SIGKILL: no shutdown checkpoint, the next start runs crash recovery. The server's
    /// own children follow their postmaster's death.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port with the same data (crash recovery after [`kill`]).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for PostgresServer {
    /// An immediate shutdown (SIGQUIT), which removes the server's shared memory, then
    /// SIGKILL if it is still there after 5 s.
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            for _ in 0..100 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
        // A killed server leaves its small System V segment (its id is on the pid file's
        // 7th line); a restarted one would reuse it, a dropped one never will.
        let pidfile = self.dir.path().join("data").join("postmaster.pid");
        let shmid = std::fs::read_to_string(pidfile).ok().and_then(|text| {
            let line = text.lines().nth(6)?.to_owned();
            line.split_whitespace().nth(1).map(str::to_owned)
        });
        if let Some(shmid) = shmid {
            let _ = Command::new("ipcrm")
                .args(["-m", &shmid])
                .stderr(Stdio::null())
                .status();
        }
    }
}
