//! A `redis-server` of the test's own, on a free loopback port, with no persistence.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require_binary, TempDir};

/// A running `redis-server`; killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra arguments (`--cluster-enabled yes`, ...).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        require_binary("redis-server", "redis-server");
        let mut dir = TempDir::new("redis");
        for _ in 0..5 {
            match Self::try_start_on(free_port(), dir, extra).await {
                Ok(server) => return server,
                Err(unused) => dir = unused,
            }
        }
        panic!(
            "redis-server did not start on any of 5 free ports; see the log in {}",
            dir.path().display()
        );
    }

    /// Starts a server on `port` in `dir`; gives `dir` back if it did not come up there.
    pub async fn try_start_on(
        port: u16,
        dir: TempDir,
        extra: &[&str],
    ) -> Result<RedisServer, TempDir> {
        let mut server = RedisServer {
            port,
            dir,
            child: None,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        if server.spawn().await {
            Ok(server)
        } else {
            Err(server.take_dir())
        }
    }

    fn take_dir(mut self) -> TempDir {
        self.kill();
        std::mem::replace(&mut self.dir, TempDir::empty())
    }

    async fn spawn(&mut self) -> bool {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if self.answers_as_own().await {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: the port was taken meanwhile
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Whether the server answering on this fixture's port is the process it started:
    /// `free_port` frees the port before redis-server binds it, so another test's server
    /// may hold it, and answer PING, while ours exits.
    async fn answers_as_own(&self) -> bool {
        let Some(pid) = self.child.as_ref().map(std::process::Child::id) else {
            return false;
        };
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(Ok(mut conn)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            return false;
        };
        let info: redis::RedisResult<String> = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await;
        info.is_ok_and(|info| {
            info.lines()
                .any(|line| line.trim() == format!("process_id:{pid}"))
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A client for `url` (the server's own, or a proxy's).
    pub async fn connection_manager(&self) -> redis::aio::ConnectionManager {
        connection_manager_at(&self.url()).await
    }

    /// SIGKILL: the server disappears without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port with empty data (no persistence), as a replica of the
    /// server on `master_port`: how an orchestrator brings a failed master back once another
    /// was promoted (Sentinel would convert it too, but only after about 10 s).
    pub async fn restart_as_replica_of(&mut self, master_port: u16) {
        if let Some(at) = self.extra.iter().position(|a| a == "--replicaof") {
            self.extra.drain(at..(at + 3).min(self.extra.len()));
        }
        let port = master_port.to_string();
        self.extra
            .extend(["--replicaof".to_owned(), "127.0.0.1".to_owned(), port]);
        self.restart().await;
    }

    /// Starts again on the same port with empty data (no persistence).
    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn().await,
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Script calls (EVALSHA and EVAL) the server behind `conn` has run so far (`INFO
/// commandstats`).
pub async fn script_calls(conn: &mut redis::aio::ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A reconnecting connection to `url`, with short timeouts so that fault tests stay fast.
pub async fn connection_manager_at(url: &str) -> redis::aio::ConnectionManager {
    connection_manager_for(redis::Client::open(url).expect("redis url")).await
}

/// [`connection_manager_at`] for a client built otherwise (TLS, a user).
pub async fn connection_manager_for(client: redis::Client) -> redis::aio::ConnectionManager {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1);
    redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// A Redis Cluster of `masters` nodes on loopback, no replicas; killed when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(masters: usize) -> RedisCluster {
        Self::start_with_replicas(masters, 0).await
    }

    /// `masters` masters with `replicas` replicas each (`redis-cli --cluster create
    /// --cluster-replicas`); a failed master is replaced within about a second
    /// (`cluster-node-timeout 1000`).
    pub async fn start_with_replicas(masters: usize, replicas: usize) -> RedisCluster {
        require_binary("redis-cli", "redis-tools");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--repl-diskless-sync-delay",
                    "0",
                ])
                .await,
            );
        }
        form_cluster(nodes.iter(), replicas).await;
        RedisCluster { nodes }
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Waits until every master has `count` replicas online (a cluster just created syncs
    /// its replicas in the background).
    pub async fn wait_for_replicas(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            let mut conn = node.connection_manager().await;
            loop {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !info.contains("role:master") || info.matches("state=online").count() >= count {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a cluster master has not got {count} replicas online: {info}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `CLUSTER NODES` as seen by the first node that answers.
    async fn cluster_nodes(&self) -> String {
        for node in &self.nodes {
            let Ok(client) = redis::Client::open(node.url()) else {
                continue;
            };
            let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_millis(500),
                client.get_multiplexed_async_connection(),
            )
            .await
            else {
                continue;
            };
            if let Ok(text) = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn)
                .await
            {
                return text;
            }
        }
        panic!("no cluster node answers CLUSTER NODES");
    }

    fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"))
    }

    /// The index of the node that serves `key` (the full Redis key) as master now.
    pub async fn master_index_of(&self, key: &str) -> usize {
        let mut conn = self.nodes[0].connection_manager().await;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("CLUSTER KEYSLOT");
        for line in self.cluster_nodes().await.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let mut ends = range.splitn(2, '-').filter_map(|n| n.parse::<u16>().ok());
                match (ends.next(), ends.next()) {
                    (Some(a), Some(b)) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if owns {
                return self.index_of_port(node_port(fields[1]));
            }
        }
        panic!("no master owns slot {slot}");
    }

    /// The index of a replica of the master at `master`. Asked until the node that answers
    /// `CLUSTER NODES` knows of one: a replica's role reaches the other nodes by gossip, some
    /// time after it reaches its master (it was missing in 1 run in 8 beside a busy core).
    pub async fn replica_index_of(&self, master: usize) -> usize {
        let port = self.nodes[master].port;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let nodes = self.cluster_nodes().await;
            let id = nodes
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.len() > 3 && node_port(f[1]) == port)
                .map(|f| f[0].to_owned())
                .expect("the master in CLUSTER NODES");
            let replica = nodes
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[3] == id)
                .map(|f| self.index_of_port(node_port(f[1])));
            if let Some(replica) = replica {
                return replica;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no node knew of a replica of master {master} within 10 s:\n{nodes}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cuts replication into the replica at `replica`: it drops its link to the master and
    /// cannot make a new one (its `masterauth` is one the master refuses), while it stays up
    /// on the cluster bus and can still be promoted. Returns once the master has noticed,
    /// so that every later write of the master is missing on that replica.
    pub async fn cut_replication_into(&self, replica: usize, master: usize) {
        let mut conn = self.nodes[replica].connection_manager().await;
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("masterauth")
            .arg("not-the-masters-password")
            .query_async(&mut conn)
            .await
            .expect("CONFIG SET masterauth");
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("master")
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL TYPE master");
        let mut conn = self.nodes[master].connection_manager().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .expect("INFO");
            if info.contains("connected_slaves:0") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the master still counts its cut replica: {info}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (at most `bound`) until the node at `index` is a master serving slots and its
    /// cluster state is ok: a failover has completed.
    pub async fn wait_until_serving_master(&self, index: usize, bound: Duration) {
        let mut conn = self.nodes[index].connection_manager().await;
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            let role: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if info.contains("cluster_state:ok") && role.contains("role:master") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {index} was not promoted within {bound:?}: {role}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn cluster_connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("cluster connection")
    }

    pub fn kill(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// The port of a `CLUSTER NODES` address field, `ip:port@cport[,hostname]`.
fn node_port(field: &str) -> u16 {
    field
        .split('@')
        .next()
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unreadable CLUSTER NODES address {field}"))
}

// Appended for the torture checker (tools/torture): crashes of a server that persists.
// The functions above are unchanged; these only add to them.
impl RedisServer {
    /// Takes an RDB snapshot now (`BGSAVE`) and waits until it is on disk, in the server's
    /// own dir. A later [`crash_and_restart`](Self::crash_and_restart) reloads it, so the
    /// server comes back with the data of this moment, older than anything written since.
    pub async fn bgsave_and_wait(&self) {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect for BGSAVE");
        let _: String = redis::cmd("BGSAVE")
            .query_async(&mut conn)
            .await
            .expect("BGSAVE");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query_async(&mut conn)
                .await
                .expect("INFO persistence");
            if info.contains("rdb_bgsave_in_progress:0") {
                assert!(
                    info.contains("rdb_last_bgsave_status:ok"),
                    "BGSAVE failed: {info}"
                );
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "BGSAVE did not finish within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A crash and a restart: SIGKILL (no shutdown save), `down` without a server, then a
    /// start on the same port, with the same arguments and the same dir. What the server
    /// had persisted there is reloaded: an RDB written by `BGSAVE` or a save point, or the
    /// AOF of a server started with `--appendonly yes`. Without persistence it comes back
    /// empty. Returns once it answers PING.
    pub async fn crash_and_restart(&mut self, down: Duration) {
        self.kill();
        tokio::time::sleep(down).await;
        self.restart().await;
    }
}

/// `redis-cli --cluster create` over `nodes` with `replicas` per master, then waits until
/// every node reports `cluster_state:ok`: what a plain and a TLS cluster share.
#[allow(dead_code)] // each test binary uses part of the harness
pub async fn form_cluster<'a>(
    nodes: impl Iterator<Item = &'a RedisServer> + Clone,
    replicas: usize,
) {
    let addrs: Vec<String> = nodes
        .clone()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let output = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        output.status.success(),
        "redis-cli --cluster create failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    'wait: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster_state never became ok"
        );
        for node in nodes.clone() {
            let mut conn = node.connection_manager().await;
            let info: redis::RedisResult<String> = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await;
            if !info.is_ok_and(|info| info.contains("cluster_state:ok")) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'wait;
            }
        }
        return;
    }
}
