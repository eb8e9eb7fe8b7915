//! The harness itself: servers come up on free ports, answer, and go away.

mod support;

use std::time::Duration;

#[tokio::test]
async fn etcd_member_accepts_writes_and_restarts_with_its_data() {
    let mut server = support::EtcdServer::start().await;
    let mut client = server.client().await;
    client.put("k", "v", None).await.expect("put");
    server.restart().await;
    let mut client = server.client().await;
    let got = client.get("k", None).await.expect("get after restart");
    assert_eq!(got.kvs()[0].value(), b"v", "data kept across restart");
}

#[tokio::test]
async fn etcd_cluster_survives_its_leader() {
    let mut cluster = support::EtcdCluster::start(3).await;
    let leader = cluster.leader_index().await;
    cluster.kill_member(leader);
    let new_leader = cluster.leader_index().await;
    assert_ne!(leader, new_leader, "a killed member cannot stay leader");
    let mut client = cluster.client().await;
    // The client may first try the dead member; a retry reaches a live one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client.put("k", "v", None).await {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no write after leader loss: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `free_port` frees the port it found before redis-server binds it, so another test's
/// server can take it first: the fixture must then not mistake that server for its own (it
/// did: `bad_input::odd_keys_on_redis` once talked to a Redis Cluster node of
/// `odd_keys_on_redis_cluster`, which answered "ClusterDown: Hash slot not served").
#[tokio::test]
async fn a_redis_fixture_never_takes_another_servers_port_for_its_own() {
    let other = support::RedisServer::start().await;
    let dir = support::TempDir::new("redis");
    let started = support::RedisServer::try_start_on(other.port(), dir, &[]).await;
    assert!(
        started.is_err(),
        "the fixture took the server already on port {} for its own",
        other.port()
    );
}

#[tokio::test]
async fn redis_restart_loses_everything() {
    use redis::AsyncCommands;
    let mut server = support::RedisServer::start().await;
    let mut conn = server.connection_manager().await;
    let _: () = conn.set("k", "v").await.expect("SET");
    server.restart().await;
    let mut conn = server.connection_manager().await;
    let got: Option<String> = conn.get("k").await.expect("GET");
    assert_eq!(got, None, "a restart without persistence must start empty");
}

#[tokio::test]
async fn proxy_passes_blackholes_and_resets() {
    let server = support::RedisServer::start().await;
    let proxy = support::Proxy::start(server.addr()).await;
    let url = format!("redis://{}/", proxy.addr());
    let client = redis::Client::open(url).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect via proxy");
    let ping = |mut c: redis::aio::MultiplexedConnection| async move {
        tokio::time::timeout(Duration::from_millis(500), async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
    };
    assert!(
        matches!(ping(conn.clone()).await, Ok(Ok(_))),
        "PING through a passing proxy"
    );
    assert_eq!(proxy.connection_count(), 1);

    proxy.blackhole();
    let blocked = ping(conn.clone()).await;
    assert!(
        !matches!(blocked, Ok(Ok(_))),
        "PING must not pass a blackhole: {blocked:?}"
    );
    proxy.pass();
    // The held request is delivered after the partition heals, as TCP would.
    assert!(
        matches!(ping(conn.clone()).await, Ok(Ok(_))),
        "PING after the blackhole healed"
    );

    proxy.delay(Duration::from_millis(100));
    let started = tokio::time::Instant::now();
    assert!(
        matches!(ping(conn.clone()).await, Ok(Ok(_))),
        "PING through a delaying proxy"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "both directions are delayed"
    );
    proxy.pass();

    proxy.reset_all();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        proxy.connection_count(),
        0,
        "reset_all closes every connection"
    );
    let reply = ping(conn.clone()).await;
    assert!(
        !matches!(reply, Ok(Ok(_))),
        "a reset connection cannot answer: {reply:?}"
    );
    conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("reconnect via proxy");
    assert!(
        matches!(ping(conn).await, Ok(Ok(_))),
        "a new connection works after the reset"
    );
}
