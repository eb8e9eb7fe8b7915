//! `etcd` processes of the test's own on free loopback ports: one member, or a cluster of
//! three for failover tests. Data dirs live under /dev/shm when possible (cheap fsync).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require_binary, TempDir};

/// One etcd member's ports and process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Member {
    fn new(index: usize) -> Member {
        Member {
            name: format!("n{index}"),
            client_port: free_port(),
            peer_port: free_port(),
            dir: TempDir::new("etcd"),
            child: None,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn spawn(&mut self, initial_cluster: &str, state: &str) {
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--heartbeat-interval", "10", "--election-timeout", "50"])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A single-member etcd; killed and its data removed when dropped.
pub struct EtcdServer {
    member: Member,
}

impl EtcdServer {
    /// Starts etcd and waits until a write succeeds (an open port is not enough).
    pub async fn start() -> EtcdServer {
        require_binary("etcd", "etcd-server");
        let mut member = Member::new(0);
        let cluster = format!("n0={}", member.peer_url());
        member.spawn(&cluster, "new");
        let server = EtcdServer { member };
        wait_writable(&[server.endpoint()], || server.member.log_tail()).await;
        server
    }

    pub fn endpoint(&self) -> String {
        self.member.endpoint()
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.member.client_port))
    }

    pub async fn client(&self) -> etcd_client::Client {
        client_at(&[self.endpoint()]).await
    }

    pub fn kill(&mut self) {
        self.member.kill();
    }

    /// The etcd process's id, while it runs (for measuring its CPU).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.member.child.as_ref().map(Child::id)
    }

    /// Starts again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.member.kill();
        let cluster = format!("n0={}", self.member.peer_url());
        self.member.spawn(&cluster, "existing");
        wait_writable(&[self.endpoint()], || self.member.log_tail()).await;
    }
}

/// Three members on loopback.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
}

impl EtcdCluster {
    pub async fn start(size: usize) -> EtcdCluster {
        require_binary("etcd", "etcd-server");
        let mut members: Vec<Member> = (0..size).map(Member::new).collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.spawn(&initial_cluster, "new");
        }
        let cluster = EtcdCluster {
            members,
            initial_cluster,
        };
        wait_writable(&cluster.endpoints(), || cluster.members[0].log_tail()).await;
        cluster
    }

    /// Each member's client address, in member order.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.members
            .iter()
            .map(|m| SocketAddr::from(([127, 0, 0, 1], m.client_port)))
            .collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// A client that knows every member (and fails over between them).
    pub async fn client(&self) -> etcd_client::Client {
        client_at(&self.endpoints()).await
    }

    /// The member that is leader now, asked of each running member.
    pub async fn leader_index(&self) -> usize {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let Ok(Ok(mut client)) = tokio::time::timeout(
                    Duration::from_millis(500),
                    etcd_client::Client::connect([m.endpoint()], None),
                )
                .await
                else {
                    continue;
                };
                if let Ok(Ok(status)) =
                    tokio::time::timeout(Duration::from_millis(500), client.status()).await
                {
                    let header = status.header().expect("status header");
                    if status.leader() == header.member_id() {
                        return i;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no etcd leader within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill_member(&mut self, index: usize) {
        self.members[index].kill();
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].child.is_some()
    }

    /// Waits until member `index` answers and knows a leader: it has rejoined the cluster.
    pub async fn wait_member_ready(&self, index: usize) {
        let endpoint = self.members[index].endpoint();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = async {
                let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
                    .await
                    .ok()?;
                client.status().await.ok()
            };
            if let Ok(Some(status)) = tokio::time::timeout(Duration::from_millis(500), status).await
            {
                if status.leader() != 0 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "member {index} did not rejoin within 20 s; log tail:\n{}",
                self.members[index].log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn restart_member(&mut self, index: usize) {
        let cluster = self.initial_cluster.clone();
        let member = &mut self.members[index];
        member.kill();
        member.spawn(&cluster, "existing");
    }
}

/// A client to `endpoints` with short timeouts, so that fault tests stay fast.
pub async fn client_at(endpoints: &[String]) -> etcd_client::Client {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
    etcd_client::Client::connect(endpoints, Some(options))
        .await
        .unwrap_or_else(|e| panic!("connect to etcd at {endpoints:?}: {e}"))
}

async fn wait_writable(endpoints: &[String], log: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = async {
            let mut client = etcd_client::Client::connect(endpoints, None).await.ok()?;
            client.put("dlock-test-probe", "ok", None).await.ok()
        };
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "etcd at {endpoints:?} accepted no write within 20 s; log tail:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
