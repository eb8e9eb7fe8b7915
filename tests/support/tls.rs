//! Production-like servers for `tests/production.rs`: Redis and etcd reached over TLS with
//! client certificates, made at test time by a CA of the test's own, and credentials that
//! may touch only one prefix. Included by that file with `#[path]` (the rest of the harness
//! and the torture tool do not need rcgen).
//!
//! - [`Certs`]: a CA, a server certificate for `127.0.0.1`/`localhost` and a client
//!   certificate, as PEM in memory and as files for the servers.
//! - [`TlsRedis`]: `redis-server` with `--tls-port` (client certificates required) beside a
//!   loopback plain port kept for the harness's own admin connection.
//! - [`TlsRedisCluster`]: three such masters with `--tls-cluster yes`.
//! - [`SecureEtcd`]: `etcd` serving https only, `--client-cert-auth`, authentication on
//!   (`root` for the harness), and users whose role covers one prefix.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::support::{free_port, require_binary, RedisServer, TempDir};

/// A CA of the test's own and the certificates it signed.
pub struct Certs {
    dir: TempDir,
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl Certs {
    pub fn new() -> Certs {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "dlock test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(ca_params, ca_key);

        // Also a client certificate: a cluster node dials the other nodes' TLS bus with it.
        let server_key = KeyPair::generate().expect("server key");
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server = server.signed_by(&server_key, &issuer).expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
        // Not a user name of either server: with etcd's --client-cert-auth a request without
        // a token would act as the user named by the CN; this one names nobody.
        client
            .distinguished_name
            .push(DnType::CommonName, "dlock-test-client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client.signed_by(&client_key, &issuer).expect("client cert");

        let certs = Certs {
            dir: TempDir::new("certs"),
            ca: ca.pem(),
            server_cert: server.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client.pem(),
            client_key: client_key.serialize_pem(),
        };
        for (name, pem) in [
            ("ca.pem", &certs.ca),
            ("server.pem", &certs.server_cert),
            ("server-key.pem", &certs.server_key),
        ] {
            std::fs::write(certs.dir.path().join(name), pem).expect("write a PEM file");
        }
        certs
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What redis-rs needs for mutual TLS with our CA only (not the system's roots).
    pub fn redis_tls(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: self.client_cert.clone().into_bytes(),
                client_key: self.client_key.clone().into_bytes(),
            }),
            root_cert: Some(self.ca.clone().into_bytes()),
        }
    }

    /// What etcd-client needs for mutual TLS with our CA.
    pub fn etcd_tls(&self) -> etcd_client::TlsOptions {
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca))
            .identity(etcd_client::Identity::from_pem(
                &self.client_cert,
                &self.client_key,
            ))
    }

    /// `redis-server` arguments for a TLS port that requires client certificates.
    fn redis_args(&self, tls_port: u16) -> Vec<String> {
        let path = |name: &str| self.path(name).display().to_string();
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server-key.pem"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "yes".into(),
        ]
    }
}

/// Creates (or replaces) a Redis ACL user with `rules` (what follows `ACL SETUSER <name>`).
pub async fn redis_set_user<C: redis::aio::ConnectionLike>(admin: &mut C, setuser: &str) {
    let words: Vec<&str> = setuser.split_whitespace().collect();
    assert_eq!(
        words[..2],
        ["ACL", "SETUSER"],
        "not an ACL SETUSER line: {setuser}"
    );
    let mut cmd = redis::cmd("ACL");
    for word in &words[1..] {
        cmd.arg(*word);
    }
    let () = cmd
        .query_async(admin)
        .await
        .unwrap_or_else(|e| panic!("{setuser}: {e}"));
}

/// A `redis-server` with a TLS port that requires a client certificate of our CA.
pub struct TlsRedis {
    server: RedisServer,
    tls_port: u16,
}

impl TlsRedis {
    pub async fn start(certs: &Certs) -> TlsRedis {
        require_binary("redis-server", "redis-server");
        let tls_port = free_port();
        let args = certs.redis_args(tls_port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = RedisServer::start_with(&args).await;
        TlsRedis { server, tls_port }
    }

    /// `rediss://user:password@127.0.0.1:<tls port>/`: credentials in the URL, as a
    /// deployment's configuration usually carries them.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}/", self.tls_port)
    }

    /// A client over TLS (our CA, our client certificate) as `user`.
    pub fn client_as(&self, certs: &Certs, user: &str, password: &str) -> redis::Client {
        redis::Client::build_with_tls(self.url_as(user, password), certs.redis_tls())
            .expect("a TLS client")
    }

    /// The harness's own connection, as the default user, on the loopback plain port.
    pub async fn admin(&self) -> redis::aio::ConnectionManager {
        self.server.connection_manager().await
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }
}

/// Three TLS masters with `--tls-cluster yes` (the cluster bus is TLS too), slots spread
/// by `redis-cli --cluster create`.
pub struct TlsRedisCluster {
    nodes: Vec<(RedisServer, u16)>,
}

impl TlsRedisCluster {
    pub async fn start(certs: &Certs) -> TlsRedisCluster {
        require_binary("redis-cli", "redis-tools");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let tls_port = free_port();
            let mut args = certs.redis_args(tls_port);
            args.extend(["--cluster-enabled", "yes", "--tls-cluster", "yes"].map(String::from));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push((RedisServer::start_with(&args).await, tls_port));
        }
        crate::support::form_cluster(nodes.iter().map(|(node, _)| node), 0).await;
        TlsRedisCluster { nodes }
    }

    /// The harness's own connections, one per node, on the plain loopback ports.
    pub async fn admins(&self) -> Vec<redis::aio::ConnectionManager> {
        let mut admins = Vec::new();
        for (node, _) in &self.nodes {
            admins.push(node.connection_manager().await);
        }
        admins
    }

    pub fn urls_as(&self, user: &str, password: &str) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(_, tls_port)| format!("rediss://{user}:{password}@127.0.0.1:{tls_port}/"))
            .collect()
    }

    /// A cluster connection over TLS as `user`.
    pub async fn connection_as(
        &self,
        certs: &Certs,
        user: &str,
        password: &str,
    ) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClientBuilder::new(self.urls_as(user, password))
            .certs(certs.redis_tls())
            .build()
            .expect("a TLS cluster client")
            .get_async_connection()
            .await
            .expect("a TLS cluster connection")
    }

    /// A RESP3 cluster client, for notifications on each lock's shard (`redis_cluster_pubsub`).
    pub fn cluster_pubsub_client_as(
        &self,
        certs: &Certs,
        user: &str,
        password: &str,
    ) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClientBuilder::new(self.urls_as(user, password))
            .certs(certs.redis_tls())
            .use_protocol(redis::ProtocolVersion::RESP3)
            .build()
            .expect("a TLS cluster client")
    }
}

/// The harness's etcd administrator (the only user with the `root` role).
pub const ETCD_ROOT_PASSWORD: &str = "root-secret-Zq8";

/// One etcd member serving clients over https only, requiring client certificates, with
/// authentication enabled.
pub struct SecureEtcd {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    tls: etcd_client::TlsOptions,
}

impl SecureEtcd {
    pub async fn start(certs: &Certs) -> SecureEtcd {
        require_binary("etcd", "etcd-server");
        let (port, peer_port) = (free_port(), free_port());
        let dir = TempDir::new("etcd-tls");
        let endpoint = format!("https://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "n0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("n0={peer}")])
            .arg("--cert-file")
            .arg(certs.path("server.pem"))
            .arg("--key-file")
            .arg(certs.path("server-key.pem"))
            .arg("--trusted-ca-file")
            .arg(certs.path("ca.pem"))
            .arg("--client-cert-auth")
            .args(["--heartbeat-interval", "10", "--election-timeout", "50"])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let server = SecureEtcd {
            port,
            dir,
            child: Some(child),
            tls: certs.etcd_tls(),
        };
        server.enable_auth().await;
        server
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A client over TLS, authenticated as `user` (the way a deployment connects).
    pub async fn try_client_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<etcd_client::Client, etcd_client::Error> {
        let options = etcd_client::ConnectOptions::new()
            .with_tls(self.tls.clone())
            .with_user(user, password)
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
        etcd_client::Client::connect([self.endpoint()], Some(options)).await
    }

    pub async fn client_as(&self, user: &str, password: &str) -> etcd_client::Client {
        self.try_client_as(user, password)
            .await
            .unwrap_or_else(|e| panic!("connect to etcd as {user}: {e}"))
    }

    pub async fn admin(&self) -> etcd_client::Client {
        self.client_as("root", ETCD_ROOT_PASSWORD).await
    }

    /// `root` with its role, then authentication on; waits until etcd answers over TLS.
    async fn enable_auth(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut client = loop {
            let options = etcd_client::ConnectOptions::new()
                .with_tls(self.tls.clone())
                .with_connect_timeout(Duration::from_millis(500));
            let attempt = async {
                let mut client = etcd_client::Client::connect([self.endpoint()], Some(options))
                    .await
                    .ok()?;
                client.put("dlock-test-probe", "ok", None).await.ok()?;
                Some(client)
            };
            if let Ok(Some(client)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
                break client;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd over TLS accepted no write within 20 s; log:\n{}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        client
            .user_add("root", ETCD_ROOT_PASSWORD, None)
            .await
            .expect("user add root");
        client
            .user_grant_role("root", "root")
            .await
            .expect("grant root the root role");
        client.auth_enable().await.expect("auth enable");
    }

    /// A user whose one role grants readwrite on the keys starting with `prefix`, and
    /// nothing else: the README's `etcdctl role/user` lines, through the auth API.
    pub async fn add_prefix_user(&self, user: &str, password: &str, prefix: &str) {
        let mut admin = self.admin().await;
        let role = format!("{user}-role");
        admin.role_add(role.clone()).await.expect("role add");
        let permission = etcd_client::Permission::read_write(prefix).with_prefix();
        admin
            .role_grant_permission(role.clone(), permission)
            .await
            .expect("role grant-permission --prefix=true readwrite");
        admin
            .user_add(user, password, None)
            .await
            .expect("user add");
        admin
            .user_grant_role(user, role)
            .await
            .expect("user grant-role");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SecureEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}
