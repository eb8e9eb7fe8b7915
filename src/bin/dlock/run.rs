//! `dlock run`: acquire (waiting, bounded, or not at all), run the child while the lock is
//! renewed, forward signals, stop the child when the lock is lost, release at its exit.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use dlock::{Election, Leadership, Locker};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{sleep, Instant};

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

pub async fn run(locker: &Locker, args: RunArgs, quiet: bool) -> Result<u8, Failure> {
    let mut signals = Signals::install()?;
    let election = locker.election(args.key.clone());
    let value = args.value.clone().unwrap_or_else(host_and_pid);
    let leadership = tokio::select! {
        // A signal while waiting ends the wait; dropping the campaign leaves no lock.
        number = signals.next() => {
            if !quiet {
                say(&format!("got signal {number} while waiting for the lock {:?}; nothing was run", args.key));
            }
            return Ok(128 + number as u8);
        }
        acquired = acquire(&election, &args, &value, quiet) => acquired?,
    };
    let Some(leadership) = leadership else {
        return Ok(exit::BUSY);
    };
    supervise(leadership, &args, signals).await
}

/// The lock, or `None` when `--no-wait` found it held.
async fn acquire(
    election: &Election,
    args: &RunArgs,
    value: &str,
    quiet: bool,
) -> Result<Option<Leadership>, Failure> {
    let key = &args.key;
    let failed = |e| Failure::from_lock_error(key, e);
    if args.no_wait {
        let leadership = election.try_campaign(value).await.map_err(failed)?;
        if leadership.is_none() && !quiet {
            let holder = describe_holder(election).await;
            say(&format!("{key:?} is held{holder}; not waiting (--no-wait)"));
        }
        return Ok(leadership);
    }
    let campaign = election.campaign(value);
    let bounded = async {
        match args.wait {
            Some(wait) => match tokio::time::timeout(wait, campaign).await {
                Ok(outcome) => outcome.map_err(failed),
                Err(_) => Err(Failure::new(
                    exit::WAIT_EXPIRED,
                    format!(
                        "gave up waiting for the lock {key:?} after {}{} (--wait); nothing was run",
                        humantime::format_duration(wait),
                        describe_holder(election).await
                    ),
                )),
            },
            None => campaign.await.map_err(failed),
        }
    };
    let leadership = if quiet {
        bounded.await?
    } else {
        with_progress(election, bounded).await?
    };
    Ok(Some(leadership))
}

/// Runs `waiting`, printing who holds the lock once the wait passes a second, and again
/// whenever the holder changes.
async fn with_progress<T>(election: &Election, waiting: impl Future<Output = T>) -> T {
    tokio::pin!(waiting);
    let mut shown: Option<u64> = None;
    let mut next_look = Instant::now() + QUIET_WAIT;
    loop {
        tokio::select! {
            outcome = &mut waiting => return outcome,
            _ = tokio::time::sleep_until(next_look) => {
                next_look = Instant::now() + QUIET_WAIT;
                if let Ok(Some(holder)) = election.leader().await {
                    if shown != Some(holder.fencing_token) {
                        shown = Some(holder.fencing_token);
                        say(&format!("waiting for lock {:?}{}…", election.name(), held_by(&holder)));
                    }
                }
            }
        }
    }
}

fn held_by(holder: &dlock::Holder) -> String {
    match &holder.value {
        Some(value) => format!(" (held by {value}, token {})", holder.fencing_token),
        None => format!(" (token {})", holder.fencing_token),
    }
}

async fn describe_holder(election: &Election) -> String {
    match election.leader().await {
        Ok(Some(holder)) => format!(" by someone else{}", held_by(&holder)),
        _ => String::new(),
    }
}

/// Runs the child under `leadership` until it exits, and releases.
async fn supervise(
    leadership: Leadership,
    args: &RunArgs,
    mut signals: Signals,
) -> Result<u8, Failure> {
    let key = &args.key;
    let mut child = match spawn(args, leadership.term()) {
        Ok(child) => child,
        Err(failure) => {
            let _ = leadership.resign().await;
            return Err(failure);
        }
    };
    let pid = child.id().expect("a child that was just spawned has a pid");
    let lost = leadership.lost();
    loop {
        tokio::select! {
            biased;
            _ = lost.cancelled() => break,
            status = child.wait() => {
                let status = status.map_err(|e| Failure::new(exit::UNAVAILABLE, format!("waiting for the command: {e}")))?;
                return finish(leadership, key, status).await;
            }
            number = signals.next() => send(pid, number),
        }
    }
    // Lost: stop the child before the server can let the next holder in.
    say(&format!(
        "lost the lock {key:?} (token {}): it could not be renewed or was taken; sending SIGTERM to the command (pid {pid})",
        leadership.term()
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
    drop(leadership);
    Ok(exit::LOST)
}

async fn finish(leadership: Leadership, key: &str, status: ExitStatus) -> Result<u8, Failure> {
    let code = exit_code(status);
    match leadership.resign().await {
        Ok(()) => Ok(code),
        Err(dlock::Error::OwnershipLost { .. }) => Err(Failure::new(
            exit::LOST,
            format!(
                "the lock {key:?} was lost before the command ended ({}); another holder may have run meanwhile",
                describe(status)
            ),
        )),
        Err(e) => {
            // The key expires after its TTL; the command's outcome is what the caller wants.
            say(&format!("releasing the lock {key:?} failed: {e}; it expires after its TTL"));
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
