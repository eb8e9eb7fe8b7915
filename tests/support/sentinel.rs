//! Replicated Redis for the tests: a master with replicas, and a Sentinel group (three
//! sentinels, quorum 2) that fails it over. Every process is real and local, on free
//! loopback ports, killed on drop.
//!
//! Each replica reaches its master through a [`Proxy`], so that a test can cut replication
//! (`cut_replication`) and let the master take writes that no replica will ever see.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::{sleep, Instant};

use super::{free_port, require_binary, Proxy, RedisServer, TempDir};

/// The name the sentinels monitor the master under.
pub const SERVICE: &str = "dlock";

/// A master and its replicas, each replica linked through a proxy of its own.
pub struct ReplicatedRedis {
    master: RedisServer,
    replicas: Vec<RedisServer>,
    links: Vec<Proxy>,
}

impl ReplicatedRedis {
    /// A master and `replicas` replicas, returned once every replica is in sync.
    pub async fn start(replicas: usize) -> ReplicatedRedis {
        // No 5 s delay before a replica's first sync.
        let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]).await;
        let mut group = ReplicatedRedis {
            master,
            replicas: Vec::new(),
            links: Vec::new(),
        };
        for _ in 0..replicas {
            let link = Proxy::start(group.master.addr()).await;
            let port = link.port().to_string();
            let replica = RedisServer::start_with(&[
                "--replicaof",
                "127.0.0.1",
                &port,
                "--repl-diskless-sync-delay",
                "0",
            ])
            .await;
            group.links.push(link);
            group.replicas.push(replica);
        }
        group.wait_for_replicas(&group.master.url(), replicas).await;
        group
    }

    pub fn master(&self) -> &RedisServer {
        &self.master
    }

    pub fn replicas(&self) -> &[RedisServer] {
        &self.replicas
    }

    /// Blackholes every replication link: the master keeps answering clients, its replicas
    /// stop receiving its writes (and nobody notices for `repl-timeout`, 60 s).
    pub fn cut_replication(&self) {
        for link in &self.links {
            link.blackhole();
        }
    }

    /// SIGKILL of the master.
    pub fn kill_master(&mut self) {
        self.master.kill();
    }

    /// Waits until the server at `url` is a master with `count` replicas online.
    pub async fn wait_for_replicas(&self, url: &str, count: usize) {
        let mut conn = super::connection_manager_at(url).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            let online = info.matches("state=online").count();
            if info.contains("role:master") && online >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{url} has not got {count} replicas online within 20 s: {info}"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One `redis-server --sentinel` process.
struct SentinelProcess {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl SentinelProcess {
    async fn start(master_port: u16) -> SentinelProcess {
        for _ in 0..5 {
            let dir = TempDir::new("sentinel");
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            // Short timeouts: a dead master is noticed in 0.5 s and failed over at once.
            let text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\nlogfile {log}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {SERVICE} 500\n\
                 sentinel failover-timeout {SERVICE} 2000\n\
                 sentinel parallel-syncs {SERVICE} 2\n",
                dir = dir.path().display(),
                log = dir.path().join("sentinel.log").display(),
            );
            std::fs::write(&conf, text).expect("write sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server --sentinel");
            let mut sentinel = SentinelProcess {
                port,
                dir,
                child: Some(child),
            };
            if sentinel.answers().await {
                return sentinel;
            }
            sentinel.kill();
        }
        panic!("redis-server --sentinel did not start on any of 5 free ports");
    }

    async fn answers(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(Ok(mut conn)) = tokio::time::timeout(
                    Duration::from_millis(500),
                    client.get_multiplexed_async_connection(),
                )
                .await
                {
                    let pong: redis::RedisResult<String> =
                        redis::cmd("PING").query_async(&mut conn).await;
                    if pong.is_ok() {
                        return true;
                    }
                }
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: the port was taken meanwhile
            }
            sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master, its replicas and three sentinels (quorum 2) watching it.
pub struct SentinelGroup {
    pub redis: ReplicatedRedis,
    sentinels: Vec<SentinelProcess>,
}

impl SentinelGroup {
    /// A master with `replicas` replicas, all in sync, and three sentinels that know all of
    /// them (and each other).
    pub async fn start(replicas: usize) -> SentinelGroup {
        require_binary("redis-server", "redis-server");
        let redis = ReplicatedRedis::start(replicas).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(SentinelProcess::start(redis.master().port()).await);
        }
        let group = SentinelGroup { redis, sentinels };
        group.wait_until_sentinels_know(replicas).await;
        group
    }

    /// The sentinels' addresses, as `redis::sentinel` takes them.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(SentinelProcess::url).collect()
    }

    /// Waits until every sentinel sees the master's replicas and the two other sentinels:
    /// before that, a failover cannot be agreed on.
    async fn wait_until_sentinels_know(&self, replicas: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for sentinel in &self.sentinels {
            let mut conn = super::connection_manager_at(&sentinel.url()).await;
            loop {
                let master: Vec<String> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(SERVICE)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let field = |name: &str| {
                    master
                        .iter()
                        .position(|f| f == name)
                        .and_then(|i| master.get(i + 1))
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0)
                };
                if field("num-slaves") >= replicas && field("num-other-sentinels") >= 2 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {} does not know the group within 30 s: {master:?}",
                    sentinel.url()
                );
                sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The master's address as the sentinels report it.
    pub async fn master_port(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            let Ok(client) = redis::Client::open(sentinel.url()) else {
                continue;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            let addr: redis::RedisResult<Option<(String, String)>> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(SERVICE)
                .query_async(&mut conn)
                .await;
            if let Ok(Some((_, port))) = addr {
                return port.parse().ok();
            }
        }
        None
    }

    /// SIGKILL of the master, then waits (at most 30 s) until the sentinels have promoted
    /// a replica and it answers as a master. Returns the new master's port.
    pub async fn kill_master_and_wait_for_promotion(&mut self) -> u16 {
        let old = self.redis.master().port();
        self.redis.kill_master();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(port) = self.master_port().await.filter(|&p| p != old) {
                let url = format!("redis://127.0.0.1:{port}/");
                let mut conn = super::connection_manager_at(&url).await;
                let role: redis::RedisResult<redis::Value> =
                    redis::cmd("ROLE").query_async(&mut conn).await;
                if matches!(&role, Ok(redis::Value::Array(items))
                    if matches!(items.first(), Some(redis::Value::BulkString(b)) if b == b"master"))
                {
                    return port;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not promote a replica within 30 s"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the killed master again (empty: no persistence); the sentinels turn it into a
    /// replica of the new master.
    pub async fn restart_old_master(&mut self) {
        self.redis.master.restart().await;
    }

    /// Starts the killed master again (empty) as a replica of the master on `new_master`,
    /// as an orchestrator would: the new master has its full set of replicas again within
    /// a resync, instead of after the ~10 s the sentinels take to convert a returning master.
    pub async fn restart_old_master_as_replica_of(&mut self, new_master: u16) {
        self.redis.master.restart_as_replica_of(new_master).await;
    }
}
