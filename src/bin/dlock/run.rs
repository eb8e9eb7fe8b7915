//! `dlock run`: acquire (waiting, bounded, or not at all), run the child while the lock is
//! renewed, forward signals, stop the child when the lock is lost, release at its exit.
//!
//! The lock is the leadership of the election KEY; with `--permits N` (N > 1) it is one of
//! the N permits of the semaphore KEY instead ([`Contest`] and [`Hold`]), and everything
//! else is the same.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use dlock::{Election, Holder, Leadership, LockGuard, Locker, Semaphore};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::exit::{self, Failure};
use crate::redact::say;
use crate::RunArgs;

/// How long to wait quietly before printing who holds the lock.
const QUIET_WAIT: Duration = Duration::from_secs(1);

/// The signals dlock forwards to its child (and that end a wait for the lock).
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> Result<Signals, Failure> {
        let listen = |kind: SignalKind| {
            signal(kind).map_err(|e| {
                Failure::new(exit::UNAVAILABLE, format!("cannot listen for signals: {e}"))
            })
        };
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }

    /// The next signal received (its number).
    async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
        }
    }
}

/// What `dlock run` contends in: the election KEY (the lock, `--permits 1`), or the
/// semaphore KEY of `--permits` N.
enum Contest {
    Lock(Election),
    Permits(Semaphore),
}

/// What `dlock run` holds while CMD runs: the leadership, or one permit.
enum Hold {
    Lock(Leadership),
    Permit(LockGuard),
}

impl Contest {
    fn new(locker: &Locker, args: &RunArgs, value: &str) -> Contest {
        match args.permits {
            1 => Contest::Lock(locker.election(args.key.clone())),
            n => Contest::Permits(locker.semaphore(args.key.clone(), n).publishing(value)),
        }
    }

    /// The lock or a permit, waiting.
    async fn acquire(&self, value: &str) -> dlock::Result<Hold> {
        match self {
            Contest::Lock(election) => election.campaign(value).await.map(Hold::Lock),
            Contest::Permits(semaphore) => semaphore.acquire().await.map(Hold::Permit),
        }
    }

    /// One attempt: `None` when the lock, or every permit, is held.
    async fn try_acquire(&self, value: &str) -> dlock::Result<Option<Hold>> {
        match self {
            Contest::Lock(election) => Ok(election.try_campaign(value).await?.map(Hold::Lock)),
            Contest::Permits(semaphore) => Ok(semaphore.try_acquire().await?.map(Hold::Permit)),
        }
    }

    /// Who holds it now, oldest first (nobody if the server cannot say).
    async fn holders(&self) -> Vec<Holder> {
        let mut holders = match self {
            Contest::Lock(election) => election.leader().await.map(|h| h.into_iter().collect()),
            Contest::Permits(semaphore) => semaphore.holders().await,
        }
        .unwrap_or_default();
        holders.sort_by_key(|h| h.fencing_token);
        holders
    }

    /// `lock "KEY"` or `a permit of "KEY"`, for messages.
    fn what(&self) -> String {
        match self {
            Contest::Lock(election) => format!("lock {:?}", election.name()),
            Contest::Permits(semaphore) => format!("a permit of {:?}", semaphore.name()),
        }
    }

    /// `the lock "KEY"` or `a permit of "KEY"`, for messages.
    fn the_what(&self) -> String {
        match self {
            Contest::Lock(_) => format!("the {}", self.what()),
            Contest::Permits(_) => self.what(),
        }
    }
}

impl Hold {
    fn fencing_token(&self) -> u64 {
        match self {
            Hold::Lock(leadership) => leadership.term(),
            Hold::Permit(permit) => permit.fencing_token(),
        }
    }

    fn lost(&self) -> CancellationToken {
        match self {
            Hold::Lock(leadership) => leadership.lost(),
            Hold::Permit(permit) => permit.lost(),
        }
    }

    async fn release(self) -> dlock::Result<()> {
        match self {
            Hold::Lock(leadership) => leadership.resign().await,
            Hold::Permit(permit) => permit.release().await,
        }
    }

    /// `the lock "KEY"` or `the permit of "KEY"`, for messages.
    fn what(&self, key: &str) -> String {
        match self {
            Hold::Lock(_) => format!("the lock {key:?}"),
            Hold::Permit(_) => format!("the permit of {key:?}"),
        }
    }
}

pub async fn run(locker: &Locker, args: RunArgs, quiet: bool) -> Result<u8, Failure> {
    let mut signals = Signals::install()?;
    let value = args.value.clone().unwrap_or_else(host_and_pid);
    let contest = Contest::new(locker, &args, &value);
    let hold = tokio::select! {
        // A signal while waiting ends the wait; dropping the attempt leaves no lock.
        number = signals.next() => {
            if !quiet {
                say(&format!("got signal {number} while waiting for {}; nothing was run", contest.the_what()));
            }
            return Ok(128 + number as u8);
        }
        acquired = acquire(&contest, &args, &value, quiet) => acquired?,
    };
    let Some(hold) = hold else {
        return Ok(exit::BUSY);
    };
    supervise(hold, &args, signals).await
}

/// The lock or a permit, or `None` when `--no-wait` found it (every permit) held.
async fn acquire(
    contest: &Contest,
    args: &RunArgs,
    value: &str,
    quiet: bool,
) -> Result<Option<Hold>, Failure> {
    let key = &args.key;
    let failed = |e| Failure::from_lock_error(key, e);
    if args.no_wait {
        let hold = contest.try_acquire(value).await.map_err(failed)?;
        if hold.is_none() && !quiet {
            let holders = describe_holders(contest).await;
            let what = match contest {
                Contest::Lock(_) => format!("{key:?} is held"),
                Contest::Permits(s) => format!("all {} permits of {key:?} are held", s.permits()),
            };
            say(&format!("{what}{holders}; not waiting (--no-wait)"));
        }
        return Ok(hold);
    }
    let waiting = contest.acquire(value);
    let bounded = async {
        match args.wait {
            Some(wait) => match tokio::time::timeout(wait, waiting).await {
                Ok(outcome) => outcome.map_err(failed),
                Err(_) => Err(Failure::new(
                    exit::WAIT_EXPIRED,
                    format!(
                        "gave up waiting for {} after {}{} (--wait); nothing was run",
                        contest.the_what(),
                        humantime::format_duration(wait),
                        describe_holders(contest).await
                    ),
                )),
            },
            None => waiting.await.map_err(failed),
        }
    };
    let hold = if quiet {
        bounded.await?
    } else {
        with_progress(contest, bounded).await?
    };
    Ok(Some(hold))
}

/// Runs `waiting`, printing who holds the lock (or the permits) once the wait passes a
/// second, and again whenever the holders change.
async fn with_progress<T>(contest: &Contest, waiting: impl Future<Output = T>) -> T {
    tokio::pin!(waiting);
    let mut shown: Option<Vec<u64>> = None;
    let mut next_look = Instant::now() + QUIET_WAIT;
    loop {
        tokio::select! {
            outcome = &mut waiting => return outcome,
            _ = tokio::time::sleep_until(next_look) => {
                next_look = Instant::now() + QUIET_WAIT;
                let holders = contest.holders().await;
                let tokens: Vec<u64> = holders.iter().map(|h| h.fencing_token).collect();
                if !holders.is_empty() && shown.as_ref() != Some(&tokens) {
                    shown = Some(tokens);
                    say(&format!("waiting for {}{}…", contest.what(), held_by(&holders)));
                }
            }
        }
    }
}

/// ` (held by VALUE, token N)` (` (token N)` without a value), or for several holders
/// ` (held by VALUE, token N; by VALUE, token M)`.
fn held_by(holders: &[Holder]) -> String {
    match holders {
        [] => String::new(),
        [Holder {
            value: None,
            fencing_token,
            ..
        }] => format!(" (token {fencing_token})"),
        _ => {
            let all: Vec<String> = holders
                .iter()
                .map(|holder| {
                    let value = holder.value.as_deref().unwrap_or("an unnamed holder");
                    format!("by {value}, token {}", holder.fencing_token)
                })
                .collect();
            format!(" (held {})", all.join("; "))
        }
    }
}

async fn describe_holders(contest: &Contest) -> String {
    match contest.holders().await {
        holders if holders.is_empty() => String::new(),
        holders => format!(" by someone else{}", held_by(&holders)),
    }
}

/// Runs the child under `hold` until it exits, and releases.
async fn supervise(hold: Hold, args: &RunArgs, mut signals: Signals) -> Result<u8, Failure> {
    let key = &args.key;
    let mut child = match spawn(args, hold.fencing_token()) {
        Ok(child) => child,
        Err(failure) => {
            let _ = hold.release().await;
            return Err(failure);
        }
    };
    let pid = child.id().expect("a child that was just spawned has a pid");
    let lost = hold.lost();
    loop {
        tokio::select! {
            biased;
            _ = lost.cancelled() => break,
            status = child.wait() => {
                let status = status.map_err(|e| Failure::new(exit::UNAVAILABLE, format!("waiting for the command: {e}")))?;
                return finish(hold, key, status).await;
            }
            number = signals.next() => send(pid, number),
        }
    }
    // Lost: stop the child before the server can let the next holder in.
    say(&format!(
        "lost {} (token {}): it could not be renewed or was taken; sending SIGTERM to the command (pid {pid})",
        hold.what(key),
        hold.fencing_token()
    ));
    send(pid, libc::SIGTERM);
    let grace = sleep(args.grace);
    tokio::pin!(grace);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = &mut grace => {
                say(&format!("the command did not exit within --grace {}; sending SIGKILL", humantime::format_duration(args.grace)));
                let _ = child.start_kill();
                break child.wait().await;
            }
            number = signals.next() => send(pid, number),
        }
    };
    if let Ok(status) = status {
        say(&format!("the command ended: {}", describe(status)));
    }
    drop(hold);
    Ok(exit::LOST)
}

async fn finish(hold: Hold, key: &str, status: ExitStatus) -> Result<u8, Failure> {
    let code = exit_code(status);
    let what = hold.what(key);
    match hold.release().await {
        Ok(()) => Ok(code),
        Err(dlock::Error::OwnershipLost { .. }) => Err(Failure::new(
            exit::LOST,
            format!(
                "{what} was lost before the command ended ({}); another holder may have run meanwhile",
                describe(status)
            ),
        )),
        Err(e) => {
            // The key expires after its TTL; the command's outcome is what the caller wants.
            say(&format!("releasing {what} failed: {e}; it expires after its TTL"));
            Ok(code)
        }
    }
}

fn spawn(args: &RunArgs, fencing_token: u64) -> Result<Child, Failure> {
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut command = Command::new(program);
    command
        .args(rest)
        .env("DLOCK_KEY", &args.key)
        .env("DLOCK_FENCING_TOKEN", fencing_token.to_string())
        // If dlock itself dies, the child must not outlive it unsupervised.
        .kill_on_drop(true);
    command.spawn().map_err(|e| {
        let shown = program.to_string_lossy();
        match e.kind() {
            std::io::ErrorKind::NotFound => {
                Failure::new(exit::NOT_FOUND, format!("command not found: {shown}"))
            }
            _ => Failure::new(exit::CANNOT_RUN, format!("cannot run {shown}: {e}")),
        }
    })
}

/// Sends `signal` to the child.
fn send(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers; the pid is our own child's, not yet reaped
    // (it is reaped only by `Child::wait`, after which no signal is sent).
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The shell's convention: the exit code, or 128+N for a death by signal N.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => exit::CANNOT_RUN,
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown status".to_owned(),
    }
}

fn host_and_pid() -> String {
    let mut name = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates within
    // it or truncates, and we stop at the first NUL either way.
    let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let host = if ok && end > 0 {
        String::from_utf8_lossy(&name[..end]).into_owned()
    } else {
        "localhost".to_owned()
    };
    format!("{host}:{}", std::process::id())
}
