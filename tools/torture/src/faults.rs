//! The fault injectors: network faults on one worker's proxies, pauses (SIGSTOP/SIGCONT),
//! server restarts and operator deletes or lease revokes. Each returns the faults it injected,
//! with their time spans, for the checker.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, Instant};

use crate::checker::Section;
use crate::servers::LockServer;
use crate::{now_ns, random_duration, support, Persistence, PAUSE, PREFIX, TTL};

// ---------------------------------------------------------------------------------------
// Faults.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Delay,
    ShortBlackhole,
    LongBlackhole,
    Reset,
    Pause,
    RedisRestart(Persistence),
    OperatorDel,
    FollowerRestart,
    LeaderRestart,
    QuorumLoss,
    OperatorDeletePrefix,
    LeaseRevoke,
    PostgresRestart,
    OperatorDeleteRows,
}

impl Kind {
    pub(crate) fn label(self) -> String {
        match self {
            Kind::Delay => "delay 5-100 ms, 1 s".into(),
            Kind::ShortBlackhole => "blackhole < TTL/2".into(),
            Kind::LongBlackhole => "blackhole > TTL".into(),
            Kind::Reset => "reset connections".into(),
            Kind::Pause => "pause 1.5xTTL".into(),
            Kind::RedisRestart(p) => format!("redis kill+restart ({})", p.name()),
            Kind::OperatorDel => "operator DEL locks".into(),
            Kind::FollowerRestart => "kill+restart follower".into(),
            Kind::LeaderRestart => "kill+restart leader".into(),
            Kind::QuorumLoss => "kill 2 of 3 (no quorum)".into(),
            Kind::OperatorDeletePrefix => "operator delete prefix".into(),
            Kind::LeaseRevoke => "operator revoke lease".into(),
            Kind::PostgresRestart => "postgres kill -9+recovery".into(),
            Kind::OperatorDeleteRows => "operator DELETE rows".into(),
        }
    }

    /// An operator deleting keys or revoking leases: the server stays up.
    pub(crate) fn is_operator(self) -> bool {
        matches!(
            self,
            Kind::OperatorDel
                | Kind::OperatorDeletePrefix
                | Kind::LeaseRevoke
                | Kind::OperatorDeleteRows
        )
    }

    /// Faults that take locks away on the server, which a holder learns of only at its
    /// next renewal: they excuse an overlap of bounded length (rule 5). Not a PostgreSQL
    /// crash: with fsync and synchronous commit on, crash recovery keeps every committed
    /// acquisition and renewal, so the holders must keep mutual exclusion through it.
    pub(crate) fn takes_locks(self) -> bool {
        self.is_operator() || matches!(self, Kind::RedisRestart(_))
    }
}

/// One injected fault: what, on which worker (`None`: the server), and when.
#[derive(Debug)]
pub(crate) struct Fault {
    pub(crate) kind: Kind,
    proc: Option<usize>,
    pub(crate) from: u128,
    pub(crate) to: u128,
}

impl Fault {
    /// A fault of `kind` on process `proc` (`None`: the server) from `from` to `to`.
    #[cfg(test)]
    pub(crate) fn new(kind: Kind, proc: Option<usize>, from: u128, to: u128) -> Fault {
        Fault {
            kind,
            proc,
            from,
            to,
        }
    }

    pub(crate) fn touches(&self, s: &Section) -> bool {
        self.proc.is_none_or(|p| p == s.proc) && self.from <= s.end && s.asked <= self.to
    }
}

/// Whether to start another fault: not in the last 2 s of the run, so that the workers
/// (which stop at the end) see the aftermath of every fault.
fn time_left(end: Instant) -> bool {
    Instant::now() + Duration::from_secs(2) < end
}

/// Network faults on one worker's proxies at a time. Blackholes are aimed at a worker in
/// the middle of long work (see [`aim`]): a holder cut off for longer than the TTL must
/// stop before the server lets the lock expire, or rule 5 reports an overlap.
pub(crate) async fn network_faults(
    proxies: &[Vec<support::Proxy>],
    busy: &[Arc<AtomicU64>],
    end: Instant,
) -> Vec<Fault> {
    let mut faults = Vec::new();
    loop {
        sleep(random_duration(500..1500)).await;
        if !time_left(end) {
            break;
        }
        let (kind, hold) = match fastrand::u8(0..4) {
            0 => (Kind::Delay, Duration::from_secs(1)),
            1 => (Kind::ShortBlackhole, TTL / 2 - Duration::from_millis(200)),
            2 => (Kind::LongBlackhole, TTL + Duration::from_millis(500)),
            _ => (Kind::Reset, Duration::ZERO),
        };
        let proc = match kind {
            Kind::ShortBlackhole | Kind::LongBlackhole => aim(busy).await,
            _ => fastrand::usize(0..proxies.len()),
        };
        let from = now_ns();
        network_fault(&proxies[proc], kind, hold).await;
        faults.push(Fault {
            kind,
            proc: Some(proc),
            from,
            to: now_ns(),
        });
    }
    faults
}

/// Applies a network fault to every proxy of a worker, holds it, heals it.
async fn network_fault(proxies: &[support::Proxy], kind: Kind, hold: Duration) {
    for proxy in proxies {
        match kind {
            Kind::Delay => proxy.delay(random_duration(5..100)),
            Kind::Reset => proxy.reset_all(),
            _ => proxy.blackhole(),
        }
    }
    sleep(hold).await;
    for proxy in proxies {
        proxy.pass();
    }
}

/// Pauses one worker process at a time for [`PAUSE`], aimed at one in the middle of long
/// work (see [`aim`]): its lock expires while it sleeps, and its writes come after.
pub(crate) async fn pauses(pids: &[u32], busy: &[Arc<AtomicU64>], end: Instant) -> Vec<Fault> {
    let mut faults = Vec::new();
    loop {
        sleep(random_duration(1500..3500)).await;
        if !time_left(end) {
            break;
        }
        let proc = aim(busy).await;
        let from = now_ns();
        {
            let _stopped = Stopped::new(pids[proc]);
            sleep(PAUSE).await;
        }
        faults.push(Fault {
            kind: Kind::Pause,
            proc: Some(proc),
            from,
            to: now_ns(),
        });
    }
    faults
}

/// A worker in the middle of long work if one is within a second, else any. A fault at a
/// random moment mostly hits a process that holds nothing or holds briefly; one that lands
/// inside a section is what tests loss detection and fencing. `busy[i]`: until when (ns)
/// worker `i` said it does long work.
async fn aim(busy: &[Arc<AtomicU64>]) -> usize {
    let give_up = Instant::now() + Duration::from_secs(1);
    loop {
        // At least 300 ms of work left, so that the fault lands before the writes.
        let soon = (now_ns() + 300_000_000) as u64;
        let candidates: Vec<usize> = (0..busy.len())
            .filter(|&i| busy[i].load(Ordering::Relaxed) > soon)
            .collect();
        if !candidates.is_empty() {
            return candidates[fastrand::usize(0..candidates.len())];
        }
        if Instant::now() >= give_up {
            return fastrand::usize(0..busy.len());
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// A process stopped with SIGSTOP, resumed with SIGCONT when this is dropped, so that no
/// worker stays stopped even if the coordinator panics.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        assert!(signal(pid, "-STOP"), "kill -STOP {pid} failed");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// `kill -SIG pid` through the `kill` command: no extra dependency for one syscall.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Server-side faults, one at a time: restarts and operators. Restarts alternate with
/// the others, starting with one, so that even a short run has a restart.
pub(crate) async fn server_faults(server: &mut LockServer, end: Instant) -> Vec<Fault> {
    let mut faults = Vec::new();
    for n in 0.. {
        sleep(random_duration(1000..2500)).await;
        if !time_left(end) {
            break;
        }
        let from = now_ns();
        let kind = match server {
            LockServer::Redis {
                server,
                persistence,
            } => redis_fault(server, *persistence, n % 2 == 0).await,
            LockServer::Etcd { cluster, admin } => etcd_fault(cluster, admin, n % 2 == 0).await,
            LockServer::Postgres { server, admin } => {
                postgres_fault(server, admin, n % 2 == 0).await
            }
        };
        if let Some(kind) = kind {
            faults.push(Fault {
                kind,
                proc: None,
                from,
                to: now_ns(),
            });
        }
    }
    faults
}

/// A crash and restart, or an operator deleting the lock keys. `None` if nothing happened
/// (no lock key to delete at that moment).
async fn redis_fault(
    server: &mut support::RedisServer,
    persistence: Persistence,
    restart: bool,
) -> Option<Kind> {
    if restart {
        if persistence == Persistence::Rdb {
            // The realistic case: the data on disk is older than what was handed out since.
            server.bgsave_and_wait().await;
            sleep(random_duration(500..1500)).await;
        }
        server.crash_and_restart(random_duration(100..1000)).await;
        return Some(Kind::RedisRestart(persistence));
    }
    (delete_lock_keys(&server.url()).await > 0).then_some(Kind::OperatorDel)
}

/// `SCAN` for keys under the prefix and `DEL` the locks (not the fencing counters: an
/// operator clearing stuck locks). Returns how many were deleted.
async fn delete_lock_keys(url: &str) -> usize {
    let attempt = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let mut cursor = 0u64;
        let mut locks = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}*"))
                .arg("COUNT")
                .arg(100)
                .query_async(&mut conn)
                .await
                .ok()?;
            locks.extend(keys.into_iter().filter(|k| !k.ends_with(":fence")));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if locks.is_empty() {
            return Some(0);
        }
        redis::cmd("DEL")
            .arg(&locks)
            .query_async::<usize>(&mut conn)
            .await
            .ok()
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Some(deleted)) => deleted,
        _ => 0,
    }
}

/// Member restarts (`restart`: the leader, a follower, or rarely two members so that quorum
/// is lost), or else an operator deleting the prefix or revoking a lease.
async fn etcd_fault(
    cluster: &mut support::EtcdCluster,
    admin: &mut etcd_client::Client,
    restart: bool,
) -> Option<Kind> {
    if restart {
        let leader = cluster.leader_index().await;
        let kind = match fastrand::u8(0..5) {
            0..=1 => Kind::LeaderRestart,
            2..=3 => Kind::FollowerRestart,
            _ => Kind::QuorumLoss,
        };
        let members = match kind {
            Kind::LeaderRestart => vec![leader],
            Kind::FollowerRestart => vec![(leader + fastrand::usize(1..3)) % 3],
            _ => vec![(leader + 1) % 3, (leader + 2) % 3],
        };
        let down = match kind {
            Kind::QuorumLoss => random_duration(300..1500), // less than the TTL
            _ => random_duration(500..2500),
        };
        restart_members(cluster, &members, down).await;
        return Some(kind);
    }
    if fastrand::bool() {
        operator_delete_prefix(admin)
            .await
            .then_some(Kind::OperatorDeletePrefix)
    } else {
        operator_revoke_lease(admin)
            .await
            .then_some(Kind::LeaseRevoke)
    }
}

/// SIGKILL the members, stay down, start them again on their data.
async fn restart_members(cluster: &mut support::EtcdCluster, members: &[usize], down: Duration) {
    for &m in members {
        cluster.kill_member(m);
    }
    sleep(down).await;
    for &m in members {
        cluster.restart_member(m);
    }
}

async fn operator_delete_prefix(admin: &mut etcd_client::Client) -> bool {
    let delete = admin.delete(
        PREFIX,
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    );
    matches!(
        tokio::time::timeout(Duration::from_secs(2), delete).await,
        Ok(Ok(reply)) if reply.deleted() > 0
    )
}

/// Lists the leases (one per acquisition, waiters' included) and revokes one at random.
async fn operator_revoke_lease(admin: &mut etcd_client::Client) -> bool {
    let attempt = async {
        let leases = admin.leases().await.ok()?;
        let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
        if ids.is_empty() {
            return None;
        }
        admin
            .lease_revoke(ids[fastrand::usize(0..ids.len())])
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
}

/// A `kill -9` of the server, down for 0.1-1 s, and a restart that runs crash recovery on
/// the same data dir; or an operator deleting the holder rows of the lock keys (the
/// sequence left alone). `None` if nothing happened (no holder row at that moment).
async fn postgres_fault(
    server: &mut support::PostgresServer,
    admin: &sqlx::PgPool,
    restart: bool,
) -> Option<Kind> {
    if restart {
        server.kill();
        sleep(random_duration(100..1000)).await;
        server.restart().await;
        return Some(Kind::PostgresRestart);
    }
    let delete = sqlx::query("DELETE FROM dlock_locks WHERE key LIKE $1 AND permits > 0")
        .bind(format!("{PREFIX}%"))
        .execute(admin);
    match tokio::time::timeout(Duration::from_secs(2), delete).await {
        Ok(Ok(done)) if done.rows_affected() > 0 => Some(Kind::OperatorDeleteRows),
        _ => None,
    }
}
