//! The coordinator and what it runs: the lock server (Redis, a 3-member etcd cluster or
//! PostgreSQL), the
//! fenced resource, the worker processes and their proxies; then the faults and the checker.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::checker::{check, read_resource_log, Section};
use crate::faults::{network_faults, pauses, server_faults};
use crate::{now_ns, support, Args, Persistence};

// ---------------------------------------------------------------------------------------
// Coordinator: servers, proxies, workers, faults, then the checker.

pub(crate) async fn coordinator(args: Args) -> i32 {
    let t0 = now_ns();
    let resource = support::RedisServer::start().await;
    let mut server = LockServer::start(&args).await;
    // One proxy per worker and server address, so that a fault cuts one worker off while
    // the others go on.
    let mut proxies = Vec::new();
    for _ in 0..args.procs {
        let mut mine = Vec::new();
        for target in server.addrs() {
            mine.push(support::Proxy::start(target).await);
        }
        proxies.push(mine);
    }
    let mut workers: Vec<WorkerProcess> = proxies
        .iter()
        .enumerate()
        .map(|(id, mine)| WorkerProcess::spawn(&args, id, mine, resource.addr()))
        .collect();
    for w in &mut workers {
        w.wait_ready().await;
    }

    let faults = if args.faults {
        let end = Instant::now() + Duration::from_secs(args.secs);
        let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
        let busy: Vec<Arc<AtomicU64>> = workers.iter().map(|w| w.busy.clone()).collect();
        let (mut network, mut paused, mut on_server) = tokio::join!(
            network_faults(&proxies, &busy, end),
            pauses(&pids, &busy, end),
            server_faults(&mut server, end),
        );
        network.append(&mut paused);
        network.append(&mut on_server);
        network
    } else {
        Vec::new()
    };

    let sections = tokio::task::spawn_blocking(move || {
        workers
            .into_iter()
            .flat_map(WorkerProcess::finish)
            .collect::<Vec<_>>()
    })
    .await
    .expect("collect sections");
    let writes = read_resource_log(&resource, args.keys).await;
    let report = check(&sections, &writes, &faults, args.permits, t0);
    report.print(&args, &sections, &writes, &faults)
}

/// The lock server the workers contend on.
pub(crate) enum LockServer {
    Redis {
        server: support::RedisServer,
        persistence: Persistence,
    },
    Etcd {
        cluster: support::EtcdCluster,
        /// The operator's own client, straight to the members (no proxy). Boxed: it is
        /// large, and the Redis variant small.
        admin: Box<etcd_client::Client>,
    },
    Postgres {
        server: support::PostgresServer,
        /// The operator's own pool, straight to the server (no proxy).
        admin: sqlx::PgPool,
    },
}

impl LockServer {
    async fn start(args: &Args) -> LockServer {
        match args.backend.as_str() {
            "redis" => LockServer::Redis {
                server: support::RedisServer::start_with(args.persistence.server_args()).await,
                persistence: args.persistence,
            },
            "etcd" => {
                let cluster = support::EtcdCluster::start(3).await;
                let admin = Box::new(cluster.client().await);
                LockServer::Etcd { cluster, admin }
            }
            "postgres" => {
                let server = support::PostgresServer::start().await;
                let admin = server.pool().await;
                dlock::postgres::migrate(&admin).await.expect("migrate");
                LockServer::Postgres { server, admin }
            }
            other => panic!("--backend redis|etcd|postgres, not {other}"),
        }
    }

    /// Where the proxies forward to: the server, or every member.
    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            LockServer::Redis { server, .. } => vec![server.addr()],
            LockServer::Postgres { server, .. } => {
                vec![SocketAddr::from(([127, 0, 0, 1], server.port()))]
            }
            LockServer::Etcd { cluster, .. } => cluster
                .endpoints()
                .iter()
                .map(|e| {
                    e.trim_start_matches("http://")
                        .parse()
                        .expect("member addr")
                })
                .collect(),
        }
    }
}

/// A worker process, and the thread that reads its records.
struct WorkerProcess {
    child: Child,
    pid: u32,
    /// Until when (wall-clock ns) the worker said one of its sections does long work.
    busy: Arc<AtomicU64>,
    ready: Option<tokio::sync::oneshot::Receiver<()>>,
    lines: std::thread::JoinHandle<Vec<String>>,
}

impl WorkerProcess {
    fn spawn(args: &Args, id: usize, proxies: &[support::Proxy], resource: SocketAddr) -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let endpoints: Vec<String> = proxies.iter().map(|p| p.addr().to_string()).collect();
        let mut child = Command::new(exe)
            .args(["--backend", &args.backend])
            .args(["--tasks", &args.tasks.to_string()])
            .args(["--keys", &args.keys.to_string()])
            .args(["--secs", &args.secs.to_string()])
            .args(["--permits", &args.permits.to_string()])
            .args(["--resource", &resource.to_string()])
            .args(["--worker", &endpoints.join(","), &id.to_string()])
            .args(args.election.then_some("--election"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        let pid = child.id();
        let stdout = child.stdout.take().expect("worker stdout");
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let busy = Arc::new(AtomicU64::new(0));
        let busy_until = busy.clone();
        // Read as the worker writes, so that a full pipe never blocks it.
        let lines = std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("worker output is utf-8");
                if let Some(until) = line.strip_prefix("busy ") {
                    let until = until.parse().expect("busy UNTIL");
                    busy_until.fetch_max(until, Ordering::Relaxed);
                } else if line == "ready" {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                } else {
                    lines.push(line);
                }
            }
            lines
        });
        WorkerProcess {
            child,
            pid,
            busy,
            ready: Some(ready),
            lines,
        }
    }

    /// Faults start only once every worker is connected: a worker cannot start against a
    /// server that is down.
    async fn wait_ready(&mut self) {
        let ready = self.ready.take().expect("wait_ready once");
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("a worker did not connect within 30 s")
            .expect("a worker exited before it was ready");
    }

    /// Blocks until the worker exits; its section records.
    fn finish(mut self) -> Vec<Section> {
        let status = self.child.wait().expect("wait for worker");
        assert!(status.success(), "a worker failed: {status:?}");
        let lines = self.lines.join().expect("reader thread");
        lines.iter().map(|l| Section::parse(l)).collect()
    }
}
