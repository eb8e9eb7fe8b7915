//! The `dlock` command end to end: the built binary, real child processes, a real
//! `redis-server` / `etcd` / PostgreSQL (started by `tests/support`; PostgreSQL with the
//! `postgres` feature), and the fault proxy.
//!
//! Order is checked with what the children write (lines appended to one file), never with
//! timing assertions; the bounds below only stop a hung test.

mod support;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use support::{EtcdServer, Proxy, RedisServer, TempDir};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout};

const DLOCK: &str = env!("CARGO_BIN_EXE_dlock");
const HANG: Duration = Duration::from_secs(60);

/// `dlock <server flags> <args>`, output captured.
fn dlock(server: &[&str], args: &[&str]) -> Command {
    let mut command = Command::new(DLOCK);
    command
        .args(server)
        .args(args)
        .env_remove("DLOCK_REDIS_URL")
        .env_remove("DLOCK_ETCD_ENDPOINTS")
        .env_remove("DLOCK_POSTGRES_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

async fn finish(child: Child) -> Ran {
    let output = timeout(HANG, child.wait_with_output())
        .await
        .expect("dlock hung")
        .expect("dlock output");
    Ran {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn run(server: &[&str], args: &[&str]) -> Ran {
    finish(dlock(server, args).spawn().expect("spawn dlock")).await
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the children's log has a line starting with `prefix`.
async fn wait_for_line(path: &Path, prefix: &str) {
    timeout(HANG, async {
        while !lines(path).iter().any(|l| l.starts_with(prefix)) {
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no line {prefix:?} in {path:?}: {:?}", lines(path)));
}

/// A shell child that logs `<name> start <token>`, sleeps, logs `<name> end`.
fn logged(log: &Path, name: &str, seconds: f32) -> String {
    let log = log.display();
    format!(
        "echo \"{name} start $DLOCK_FENCING_TOKEN $DLOCK_KEY\" >> {log}; sleep {seconds}; echo \"{name} end\" >> {log}"
    )
}

fn log_in(dir: &TempDir) -> PathBuf {
    dir.path().join("log")
}

/// Two `dlock run` on one key: the second waits (saying so on stderr), then runs after the
/// first child ended, with a greater fencing token; both children see their key.
async fn second_run_waits_for_the_first_then_runs(server: &[&str]) {
    let dir = TempDir::new("cli-wait");
    let log = log_in(&dir);
    let first = dlock(
        server,
        &["run", "job", "--", "sh", "-c", &logged(&log, "A", 3.0)],
    )
    .spawn()
    .expect("spawn");
    wait_for_line(&log, "A start").await;
    let second = dlock(
        server,
        &["run", "job", "--", "sh", "-c", &logged(&log, "B", 0.0)],
    )
    .spawn()
    .expect("spawn");
    let (first, second) = (finish(first).await, finish(second).await);
    assert!(first.status.success(), "first dlock: {}", first.stderr);
    assert!(second.status.success(), "second dlock: {}", second.stderr);
    let log = lines(&log);
    let order: Vec<&str> = log.iter().map(|l| &l[..l.find(' ').unwrap() + 2]).collect();
    assert_eq!(
        order,
        ["A s", "A e", "B s", "B e"],
        "the runs overlapped: {log:?}"
    );
    let token = |line: &str| -> u64 { line.split(' ').nth(2).unwrap().parse().expect("a token") };
    assert!(
        token(&log[2]) > token(&log[0]),
        "fencing tokens did not increase: {log:?}"
    );
    assert!(log[0].ends_with(" job"), "DLOCK_KEY not passed: {log:?}");
    assert!(
        second.stderr.contains("waiting for lock \"job\" (held by "),
        "no progress line while waiting: {:?}",
        second.stderr
    );
}

/// `--no-wait` exits 75 at once while the key is held, running nothing; `status` shows the
/// holder (value, token) and exits 0, then 1 once the key is free; SIGTERM sent to dlock
/// reaches the child, and the child's own exit status is dlock's.
async fn no_wait_status_and_forwarded_sigterm(server: &[&str]) {
    let dir = TempDir::new("cli-nowait");
    let log = log_in(&dir);
    let child = format!(
        "trap 'echo TERM >> {log}; exit 7' TERM; echo started >> {log}; while :; do sleep 0.05; done",
        log = log.display()
    );
    let holder = dlock(
        server,
        &[
            "run",
            "--value",
            "cron@host-1",
            "job",
            "--",
            "sh",
            "-c",
            &child,
        ],
    )
    .spawn()
    .expect("spawn");
    wait_for_line(&log, "started").await;

    let busy = run(
        server,
        &[
            "run",
            "--no-wait",
            "job",
            "--",
            "sh",
            "-c",
            "echo ran >> /dev/null; exit 3",
        ],
    )
    .await;
    assert_eq!(
        busy.status.code(),
        Some(75),
        "--no-wait on a held key: {}",
        busy.stderr
    );
    assert!(
        busy.stderr.contains("cron@host-1"),
        "--no-wait does not say who holds it: {}",
        busy.stderr
    );
    let quiet = run(
        server,
        &["--quiet", "run", "--no-wait", "job", "--", "true"],
    )
    .await;
    assert_eq!(quiet.status.code(), Some(75));
    assert_eq!(quiet.stderr, "", "--quiet still printed");

    let status = run(server, &["status", "job"]).await;
    assert_eq!(
        status.status.code(),
        Some(0),
        "status of a held key: {}",
        status.stderr
    );
    assert!(status.stdout.contains("job: held"), "{}", status.stdout);
    assert!(
        status.stdout.contains("value: cron@host-1"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("fencing token: "),
        "{}",
        status.stdout
    );

    let waited = run(server, &["run", "--wait", "300ms", "job", "--", "true"]).await;
    assert_eq!(
        waited.status.code(),
        Some(124),
        "--wait expired: {}",
        waited.stderr
    );

    let pid = holder.id().expect("pid").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(kill.expect("kill").success());
    let holder = finish(holder).await;
    assert_eq!(
        holder.status.code(),
        Some(7),
        "the child's status was not passed through: {}",
        holder.stderr
    );
    assert_eq!(
        lines(&log),
        ["started", "TERM"],
        "SIGTERM was not forwarded"
    );

    let free = run(server, &["status", "job"]).await;
    assert_eq!(
        free.status.code(),
        Some(1),
        "status of a free key: {}",
        free.stderr
    );
    assert!(free.stdout.contains("job: free"), "{}", free.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_second_run_waits_for_the_first_then_runs() {
    let redis = RedisServer::start().await;
    second_run_waits_for_the_first_then_runs(&["--redis", &redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_no_wait_status_and_forwarded_sigterm() {
    let redis = RedisServer::start().await;
    no_wait_status_and_forwarded_sigterm(&["--redis", &redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_second_run_waits_for_the_first_then_runs() {
    let etcd = EtcdServer::start().await;
    second_run_waits_for_the_first_then_runs(&["--etcd", &etcd.endpoint()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_no_wait_status_and_forwarded_sigterm() {
    let etcd = EtcdServer::start().await;
    no_wait_status_and_forwarded_sigterm(&["--etcd", &etcd.endpoint()]).await;
}

/// The server blackholed while the child runs: the child gets SIGTERM (it logs it) before
/// a rival `dlock run`, waiting directly on the server, can run its own child; the cut-off
/// dlock exits 70 and says why. TTL 5 s: SIGTERM goes at 90 % of it, so the child has
/// TTL/10 to log it before the rival could possibly run.
async fn blackholed_server_stops_the_child_before_anyone_else_runs(
    direct: &[&str],
    via: impl Fn(&Proxy) -> Vec<String>,
    target: std::net::SocketAddr,
) {
    let dir = TempDir::new("cli-lost");
    let log = log_in(&dir);
    let proxy = Proxy::start(target).await;
    let via = via(&proxy);
    let via: Vec<&str> = via.iter().map(String::as_str).collect();
    let child = format!(
        "trap 'echo TERM >> {log}; exit 0' TERM; echo started >> {log}; while :; do sleep 0.05; done",
        log = log.display()
    );
    let cut = dlock(
        &via,
        &["run", "--ttl", "5s", "job", "--", "sh", "-c", &child],
    )
    .spawn()
    .expect("spawn");
    wait_for_line(&log, "started").await;
    let rival_child = format!("echo rival >> {}", log.display());
    let rival = dlock(
        direct,
        &["run", "--ttl", "5s", "job", "--", "sh", "-c", &rival_child],
    )
    .spawn()
    .expect("spawn");
    sleep(Duration::from_millis(300)).await;
    proxy.blackhole();
    let (cut, rival) = (finish(cut).await, finish(rival).await);
    assert_eq!(
        cut.status.code(),
        Some(70),
        "the cut-off dlock: {}",
        cut.stderr
    );
    assert!(
        cut.stderr.contains("lost the lock"),
        "no reason given: {}",
        cut.stderr
    );
    assert!(rival.status.success(), "the rival: {}", rival.stderr);
    assert_eq!(
        lines(&log),
        ["started", "TERM", "rival"],
        "the child was not stopped before the rival ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_blackholed_server_stops_the_child_before_anyone_else_runs() {
    let redis = RedisServer::start().await;
    blackholed_server_stops_the_child_before_anyone_else_runs(
        &["--redis", &redis.url()],
        |proxy| vec!["--redis".into(), format!("redis://{}/", proxy.addr())],
        redis.addr(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_blackholed_server_stops_the_child_before_anyone_else_runs() {
    let etcd = EtcdServer::start().await;
    blackholed_server_stops_the_child_before_anyone_else_runs(
        &["--etcd", &etcd.endpoint()],
        |proxy| vec!["--etcd".into(), format!("http://{}", proxy.addr())],
        etcd.client_addr(),
    )
    .await;
}

/// The child's status passes through, and death by signal N is 128+N; a missing command
/// is 127 (and releases the lock: the next run goes through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_status_passes_through() {
    let redis = RedisServer::start().await;
    let server = ["--redis", &redis.url()];
    let ran = run(&server, &["run", "k", "--", "sh", "-c", "exit 42"]).await;
    assert_eq!(ran.status.code(), Some(42), "{}", ran.stderr);
    let ran = run(&server, &["run", "k", "--", "sh", "-c", "kill -KILL $$"]).await;
    assert_eq!(ran.status.code(), Some(128 + 9), "{}", ran.stderr);
    let ran = run(&server, &["run", "k", "--", "/nonexistent/command"]).await;
    assert_eq!(ran.status.code(), Some(127), "{}", ran.stderr);
    assert!(ran.stderr.contains("command not found"), "{}", ran.stderr);
    let ran = run(&server, &["run", "--no-wait", "k", "--", "true"]).await;
    assert_eq!(
        ran.status.code(),
        Some(0),
        "the lock was left held: {}",
        ran.stderr
    );
}

/// Bad URL → 78, unreachable server → 69, both saying so, neither showing the password;
/// no server at all → 64; a config file's bad field → 78 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_unreachable_servers_are_reported_without_passwords() {
    let ran = run(
        &["--redis", "notaurl://alice:s3cr3t-pw@host"],
        &["run", "k", "--", "true"],
    )
    .await;
    assert_eq!(ran.status.code(), Some(78), "{}", ran.stderr);
    assert!(ran.stderr.contains("invalid Redis URL"), "{}", ran.stderr);
    assert!(
        !ran.stderr.contains("s3cr3t-pw"),
        "password printed: {}",
        ran.stderr
    );

    let port = support::free_port();
    let url = format!("redis://alice:s3cr3t-pw@127.0.0.1:{port}/");
    let ran = run(&["--redis", &url], &["run", "k", "--", "true"]).await;
    assert_eq!(ran.status.code(), Some(69), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("cannot reach redis://***@127.0.0.1"),
        "{}",
        ran.stderr
    );
    assert!(
        !ran.stderr.contains("s3cr3t-pw"),
        "password printed: {}",
        ran.stderr
    );

    let url = format!("http://bob:s3cr3t-pw@127.0.0.1:{port}");
    let ran = run(&["--etcd", &url], &["status", "k"]).await;
    assert_eq!(ran.status.code(), Some(69), "{}", ran.stderr);
    assert!(
        !ran.stderr.contains("s3cr3t-pw"),
        "password printed: {}",
        ran.stderr
    );

    let ran = run(&[], &["run", "k", "--", "true"]).await;
    assert_eq!(ran.status.code(), Some(64), "{}", ran.stderr);
    assert!(ran.stderr.contains("--redis URL"), "{}", ran.stderr);

    let dir = TempDir::new("cli-config");
    let file = dir.path().join("dlock.yaml");
    std::fs::write(&file, "driver: redis\ndefault_ttl: soon\n").unwrap();
    let file = file.display().to_string();
    let ran = run(
        &["--redis", "redis://127.0.0.1:1/", "--config", &file],
        &["status", "k"],
    )
    .await;
    assert_eq!(ran.status.code(), Some(78), "{}", ran.stderr);
    assert!(ran.stderr.contains("default_ttl"), "{}", ran.stderr);

    let ran = run(&[], &["run", "k"]).await;
    assert_eq!(
        ran.status.code(),
        Some(64),
        "a missing command: {}",
        ran.stderr
    );
    let help = run(&[], &["--help"]).await;
    assert!(help.status.success());
    assert!(
        help.stdout.contains("Exit status:"),
        "--help has no exit-status table"
    );
}

// ---------------------------------------------------------------------------------------
// `--permits N`: one of N permits of the semaphore KEY.

/// A shell child that logs `<name> start <ns> <token>`, waits until two children have
/// started (so that two permits are surely held at once before anyone ends), sleeps, and
/// logs `<name> end <ns>`.
fn logged_pair(log: &Path, name: &str, seconds: f32) -> String {
    let log = log.display();
    format!(
        "echo \"{name} start $(date +%s%N) $DLOCK_FENCING_TOKEN\" >> {log}; \
         until [ \"$(grep -c ' start ' {log})\" -ge 2 ]; do sleep 0.02; done; \
         sleep {seconds}; echo \"{name} end $(date +%s%N)\" >> {log}"
    )
}

/// A shell child that logs `<name> start <token>` and runs until the file `stop` exists.
fn held_until_stop(dir: &TempDir, name: &str) -> String {
    let (log, stop) = (log_in(dir), dir.path().join("stop"));
    format!(
        "echo \"{name} start $DLOCK_FENCING_TOKEN\" >> {}; while [ ! -e {} ]; do sleep 0.02; done",
        log.display(),
        stop.display()
    )
}

/// Three `dlock run --permits 2` at once: two run together, never three; the third starts
/// only after one of the first two ended, with a greater fencing token; the one that waits
/// says so.
async fn three_runs_share_two_permits(server: &[&str]) {
    let dir = TempDir::new("cli-permits");
    let log = log_in(&dir);
    let children: Vec<Child> = ["A", "B", "C"]
        .iter()
        .map(|name| {
            let script = logged_pair(&log, name, 1.5);
            let args = ["run", "--permits", "2", "pool", "--", "sh", "-c", &script];
            dlock(server, &args).spawn().expect("spawn")
        })
        .collect();
    let mut stderr = String::new();
    for child in children {
        let ran = finish(child).await;
        assert!(
            ran.status.success(),
            "dlock run --permits 2: {}",
            ran.stderr
        );
        stderr += &ran.stderr;
    }
    let log = lines(&log);
    assert_eq!(log.len(), 6, "three starts and three ends: {log:?}");
    // In the order the children wrote them: never more than 2 started and not ended.
    let (mut running, mut most) = (0, 0);
    for line in &log {
        running += if line.contains(" start ") { 1 } else { -1 };
        most = most.max(running);
    }
    assert_eq!(most, 2, "not exactly 2 at once: {log:?}");
    let field = |line: &str, i: usize| -> u128 {
        line.split(' ').nth(i).unwrap().parse().expect("a number")
    };
    let starts: Vec<usize> = (0..log.len())
        .filter(|&i| log[i].contains(" start "))
        .collect();
    let third = &log[starts[2]];
    assert!(
        log[..starts[2]].iter().any(|l| l.contains(" end ")),
        "the third did not wait for an end: {log:?}"
    );
    // By the children's clocks too: the third started after the first end.
    let first_end = log
        .iter()
        .filter(|l| l.contains(" end "))
        .map(|l| field(l, 2))
        .min()
        .unwrap();
    assert!(
        field(third, 2) >= first_end,
        "the third started before the first end ({first_end}): {log:?}"
    );
    let token = |line: &str| -> u64 { line.split(' ').nth(3).unwrap().parse().expect("a token") };
    assert!(
        token(third) > token(&log[starts[0]]).max(token(&log[starts[1]])),
        "the third permit's token is not the greatest: {log:?}"
    );
    assert!(
        stderr.contains("waiting for a permit of \"pool\" (held by "),
        "no progress line while waiting: {stderr:?}"
    );
}

/// `--permits` out of range or not a number: a usage error (64) naming the flag, for `run`
/// and `status`, before any server is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_permits_are_usage_errors() {
    let server = ["--redis", "redis://127.0.0.1:1/"];
    for permits in ["0", "10001", "-1", "two", ""] {
        for args in [
            vec!["run", "--permits", permits, "k", "--", "true"],
            vec!["status", "--permits", permits, "k"],
        ] {
            let ran = run(&server, &args).await;
            assert_eq!(ran.status.code(), Some(64), "{args:?}: {}", ran.stderr);
            // clap's own words for a bad value of a known flag, naming it.
            assert!(
                ran.stderr.contains("for '--permits <N>'"),
                "{args:?}: {}",
                ran.stderr
            );
            assert!(!ran.stderr.contains("panicked"), "{args:?}: {}", ran.stderr);
        }
    }
}

/// While `run --permits 2` holds a permit of KEY, `run --permits 3` and a plain `run` (a
/// lock: 1 permit) of KEY exit 78 at once, running nothing and saying which number holds it.
async fn other_permits_while_held_are_refused(server: &[&str]) {
    let dir = TempDir::new("cli-mismatch");
    let log = log_in(&dir);
    let script = held_until_stop(&dir, "A");
    let holder = dlock(
        server,
        &["run", "--permits", "2", "pool", "--", "sh", "-c", &script],
    )
    .spawn()
    .expect("spawn");
    wait_for_line(&log, "A start").await;
    let ran_file = dir.path().join("ran");
    let touch = format!("touch {}", ran_file.display());
    for args in [
        vec!["run", "--permits", "3", "pool", "--", "sh", "-c", &touch],
        vec![
            "run",
            "--permits",
            "3",
            "--no-wait",
            "pool",
            "--",
            "sh",
            "-c",
            &touch,
        ],
        vec!["run", "pool", "--", "sh", "-c", &touch],
    ] {
        let ran = run(server, &args).await;
        assert_eq!(ran.status.code(), Some(78), "{args:?}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("is held with 2 permit(s)")
                && ran.stderr.contains("a semaphore of --permits 2"),
            "{args:?}: {}",
            ran.stderr
        );
    }
    assert!(!ran_file.exists(), "a refused run ran its command");
    std::fs::write(dir.path().join("stop"), "").unwrap();
    let holder = finish(holder).await;
    assert!(holder.status.success(), "the holder: {}", holder.stderr);
    // Free again: the next holder's number stands.
    let ran = run(
        server,
        &["run", "--permits", "3", "pool", "--", "sh", "-c", &touch],
    )
    .await;
    assert!(ran.status.success(), "{}", ran.stderr);
    assert!(ran_file.exists());
}

/// While two `run --permits 2` hold both permits, `status --permits 2` lists both holders
/// (token, TTL left, value) and exits 0, `run --no-wait` exits 75, a plain `status` says
/// the key is a semaphore; once both ended, the key is free (exit 1).
async fn status_lists_every_permit_holder(server: &[&str]) {
    let dir = TempDir::new("cli-holders");
    let log = log_in(&dir);
    let mut holders = Vec::new();
    for name in ["A", "B"] {
        let script = held_until_stop(&dir, name);
        let value = format!("run-{name}");
        let args = [
            "run",
            "--permits",
            "2",
            "--value",
            &value,
            "pool",
            "--",
            "sh",
            "-c",
            &script,
        ];
        holders.push(dlock(server, &args).spawn().expect("spawn"));
        wait_for_line(&log, &format!("{name} start")).await;
    }
    let tokens: Vec<String> = lines(&log)
        .iter()
        .map(|l| l.split(' ').nth(2).unwrap().to_owned())
        .collect();

    let status = run(server, &["status", "--permits", "2", "pool"]).await;
    assert_eq!(status.status.code(), Some(0), "{}", status.stderr);
    let shown: Vec<&str> = status.stdout.lines().collect();
    assert_eq!(shown.len(), 3, "a title and one line per holder: {shown:?}");
    assert_eq!(shown[0], "pool: held (2 of 2 permits)");
    for (line, (name, token)) in shown[1..].iter().zip(["A", "B"].iter().zip(&tokens)) {
        assert!(
            line.starts_with(&format!("fencing token: {token}, expires in: "))
                && line.ends_with(&format!(", value: run-{name}")),
            "holder {name} (token {token}) not listed as such: {shown:?}"
        );
    }

    let busy = run(
        server,
        &["run", "--permits", "2", "--no-wait", "pool", "--", "true"],
    )
    .await;
    assert_eq!(busy.status.code(), Some(75), "{}", busy.stderr);
    assert!(
        busy.stderr.contains("all 2 permits of \"pool\" are held")
            && busy.stderr.contains("run-A")
            && busy.stderr.contains("run-B"),
        "{}",
        busy.stderr
    );
    let plain = run(server, &["status", "pool"]).await;
    assert_eq!(plain.status.code(), Some(0), "{}", plain.stderr);
    assert!(
        plain.stdout.contains(
            "pool: held as a semaphore of 2 permits, not a lock (`dlock status --permits 2 pool`"
        ),
        "{}",
        plain.stdout
    );

    std::fs::write(dir.path().join("stop"), "").unwrap();
    for holder in holders {
        let holder = finish(holder).await;
        assert!(holder.status.success(), "a holder: {}", holder.stderr);
    }
    let free = run(server, &["status", "--permits", "2", "pool"]).await;
    assert_eq!(free.status.code(), Some(1), "{}", free.stderr);
    assert_eq!(free.stdout, "pool: free\n");
}

/// A permit lost while its child runs (the server blackholed for that dlock alone) stops
/// the child before a waiting rival gets the permit: D holds one of 2 permits directly, C
/// the other through the proxy, the rival waits; C's child gets SIGTERM, C exits 70, then
/// the rival runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_permit_stops_the_child_before_the_rival_runs() {
    let redis = RedisServer::start().await;
    let direct = ["--redis", &redis.url()];
    let dir = TempDir::new("cli-lost-permit");
    let log = log_in(&dir);
    let proxy = Proxy::start(redis.addr()).await;
    let via_url = format!("redis://{}/", proxy.addr());
    let via = ["--redis", &via_url];
    let other = held_until_stop(&dir, "D");
    let other = dlock(
        &direct,
        &["run", "--permits", "2", "job", "--", "sh", "-c", &other],
    )
    .spawn()
    .expect("spawn");
    wait_for_line(&log, "D start").await;
    let child = format!(
        "trap 'echo TERM >> {log}; exit 0' TERM; echo started >> {log}; while :; do sleep 0.05; done",
        log = log.display()
    );
    let cut = dlock(
        &via,
        &[
            "run",
            "--permits",
            "2",
            "--ttl",
            "5s",
            "job",
            "--",
            "sh",
            "-c",
            &child,
        ],
    )
    .spawn()
    .expect("spawn");
    wait_for_line(&log, "started").await;
    let rival_child = format!("echo rival >> {}", log.display());
    let rival = dlock(
        &direct,
        &[
            "run",
            "--permits",
            "2",
            "--ttl",
            "5s",
            "job",
            "--",
            "sh",
            "-c",
            &rival_child,
        ],
    )
    .spawn()
    .expect("spawn");
    sleep(Duration::from_millis(300)).await;
    proxy.blackhole();
    let (cut, rival) = (finish(cut).await, finish(rival).await);
    assert_eq!(
        cut.status.code(),
        Some(70),
        "the cut-off dlock: {}",
        cut.stderr
    );
    assert!(
        cut.stderr.contains("lost the permit of \"job\""),
        "no reason given: {}",
        cut.stderr
    );
    assert!(rival.status.success(), "the rival: {}", rival.stderr);
    std::fs::write(dir.path().join("stop"), "").unwrap();
    let other = finish(other).await;
    assert!(other.status.success(), "the other holder: {}", other.stderr);
    let log = lines(&log);
    assert_eq!(
        log.iter()
            .map(|l| l.split(' ').next().unwrap())
            .collect::<Vec<_>>(),
        ["D", "started", "TERM", "rival"],
        "the child was not stopped before the rival ran: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_three_runs_share_two_permits() {
    let redis = RedisServer::start().await;
    three_runs_share_two_permits(&["--redis", &redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_three_runs_share_two_permits() {
    let etcd = EtcdServer::start().await;
    three_runs_share_two_permits(&["--etcd", &etcd.endpoint()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_other_permits_while_held_are_refused() {
    let redis = RedisServer::start().await;
    other_permits_while_held_are_refused(&["--redis", &redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_other_permits_while_held_are_refused() {
    let etcd = EtcdServer::start().await;
    other_permits_while_held_are_refused(&["--etcd", &etcd.endpoint()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_status_lists_every_permit_holder() {
    let redis = RedisServer::start().await;
    status_lists_every_permit_holder(&["--redis", &redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_status_lists_every_permit_holder() {
    let etcd = EtcdServer::start().await;
    status_lists_every_permit_holder(&["--etcd", &etcd.endpoint()]).await;
}

// ---------------------------------------------------------------------------------------
// `--postgres URL` (feature `postgres`): the schema is created by the test, as the command
// never creates it.

#[cfg(feature = "postgres")]
async fn postgres_with_schema() -> support::PostgresServer {
    let server = support::PostgresServer::start().await;
    let pool = server.pool().await;
    dlock::postgres::migrate(&pool).await.expect("migrate");
    pool.close().await;
    server
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_second_run_waits_for_the_first_then_runs() {
    let server = postgres_with_schema().await;
    second_run_waits_for_the_first_then_runs(&["--postgres", &server.url()]).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_no_wait_status_and_forwarded_sigterm() {
    let server = postgres_with_schema().await;
    no_wait_status_and_forwarded_sigterm(&["--postgres", &server.url()]).await;
}

/// A database without dlock's schema: exit 78 naming what is missing and how to create it,
/// nothing run, and nothing created; a bad URL is 78 and an unreachable server 69, neither
/// printing the password; `--postgres` with `--redis` is a usage error.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_schema_bad_urls_and_unreachable_servers() {
    let server = support::PostgresServer::start().await;
    let ran = run(&["--postgres", &server.url()], &["run", "k", "--", "true"]).await;
    assert_eq!(ran.status.code(), Some(78), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("no dlock schema") && ran.stderr.contains("migrate"),
        "{}",
        ran.stderr
    );
    let pool = server.pool().await;
    let created: bool = sqlx::query_scalar("SELECT to_regclass('dlock_locks') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!created, "the command created the schema");

    let ran = run(
        &["--postgres", "postgres://al:s3cr3t-pw@h:notaport/db"],
        &["status", "k"],
    )
    .await;
    assert_eq!(ran.status.code(), Some(78), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("invalid PostgreSQL URL"),
        "{}",
        ran.stderr
    );
    assert!(
        !ran.stderr.contains("s3cr3t-pw"),
        "password printed: {}",
        ran.stderr
    );

    let port = support::free_port();
    let url = format!("postgres://al:s3cr3t-pw@127.0.0.1:{port}/db");
    let ran = run(&["--postgres", &url], &["status", "k"]).await;
    assert_eq!(ran.status.code(), Some(69), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("cannot reach postgres://"),
        "{}",
        ran.stderr
    );
    assert!(
        !ran.stderr.contains("s3cr3t-pw"),
        "password printed: {}",
        ran.stderr
    );

    let ran = run(
        &["--postgres", &url, "--redis", "redis://127.0.0.1:1/"],
        &["status", "k"],
    )
    .await;
    assert_eq!(ran.status.code(), Some(64), "{}", ran.stderr);
}
