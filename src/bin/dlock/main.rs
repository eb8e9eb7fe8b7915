//! `dlock`: runs a program under a distributed lock (Redis; etcd or PostgreSQL with the
//! `etcd` or `postgres` feature),
//! like `flock(1)` across machines, `etcdctl lock NAME CMD` or `consul lock PREFIX CMD`.
//!
//! `dlock run KEY -- CMD ARGS...` waits for the lock, runs the command while the lock is
//! renewed, and releases it when the command exits; if the lock is lost meanwhile, the
//! command gets SIGTERM (SIGKILL after `--grace`). `dlock status KEY` shows who holds a key.
//! The lock is taken as a leadership of the election `KEY` (`dlock::Election`), so the
//! command's `host:pid` (or `--value`) is published for `dlock status` and
//! `Election::leader` readers; it excludes plain `Locker::lock(KEY)` holders too.
//!
//! `dlock run --permits N KEY -- CMD` holds one of the N permits of the semaphore `KEY`
//! (`Locker::semaphore(KEY, N)`, publishing the same value) instead, with everything else
//! the same; `--permits 1`, the default, is the lock above. `dlock status --permits N KEY`
//! lists the semaphore's holders.
//!
//! `dlock man [DIR]` and `dlock completions SHELL` generate the manual pages and the shell
//! completions from this file's declaration (see `generate`).
//!
//! Exit statuses: see [`exit`] (also printed by `dlock --help` and in the guide).

mod connect;
mod exit;
mod generate;
mod redact;
mod run;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::exit::Failure;

#[derive(Parser, Debug)]
#[command(
    name = "dlock",
    version,
    about = "Run a program under a distributed lock (Redis, etcd or PostgreSQL)",
    after_help = exit::HELP,
)]
struct Cli {
    /// Redis URL: redis://[user:password@]host[:port][/db] (rediss:// for TLS).
    /// Default: $DLOCK_REDIS_URL.
    #[arg(long, global = true, value_name = "URL", conflicts_with = "etcd")]
    redis: Option<String>,

    /// etcd endpoints, comma-separated: http://[user:password@]host:port,...
    /// Default: $DLOCK_ETCD_ENDPOINTS. Needs a dlock built with the `etcd` feature.
    #[arg(long, global = true, value_name = "URLS")]
    etcd: Option<String>,

    /// PostgreSQL URL: postgres://[user[:password]@]host[:port]/database[?sslmode=...].
    /// Default: $DLOCK_POSTGRES_URL. Needs a dlock built with the `postgres` feature, and
    /// dlock's schema in that database (dlock::postgres::migrate, or the README's SQL):
    /// the command does not create it.
    #[arg(long, global = true, value_name = "URL", conflicts_with_all = ["redis", "etcd"])]
    postgres: Option<String>,

    /// A config file (YAML or JSON, the library's format: driver, prefix, default_ttl,
    /// retry_interval). The server URL still comes from --redis/--etcd/--postgres or the
    /// environment.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The key prefix [default: "dlock:", or the config file's].
    #[arg(long, global = true, value_name = "PREFIX")]
    prefix: Option<String>,

    /// No progress line while waiting, no message when --no-wait finds the lock held.
    /// Errors are still reported.
    #[arg(long, short, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Wait for the lock on KEY, run CMD while holding it, release it when CMD exits.
    ///
    /// CMD gets DLOCK_KEY and DLOCK_FENCING_TOKEN in its environment. SIGINT, SIGTERM and
    /// SIGHUP sent to dlock are forwarded to it. dlock exits with CMD's status (128+N if a
    /// signal N killed it). With --permits N, KEY is a semaphore: up to N runs at once.
    Run(RunArgs),
    /// Show who holds KEY: the fencing token, the remaining TTL, the published value.
    /// Exits 0 when held, 1 when free.
    ///
    /// With --permits N (N > 1), KEY is a semaphore of N permits: every holder is listed,
    /// one per line. A key held with another number of permits (a semaphore, or a lock) is
    /// reported as held, with the --permits that lists its holders.
    Status(StatusArgs),
    /// Print the completion script for SHELL on stdout. Needs no server.
    ///
    /// bash: dlock completions bash > ~/.local/share/bash-completion/completions/dlock;
    /// zsh: dlock completions zsh > ~/.zfunc/_dlock (with ~/.zfunc on fpath);
    /// fish: dlock completions fish > ~/.config/fish/completions/dlock.fish.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page dlock(1) on stdout, or write one page per command into DIR.
    /// Needs no server.
    ///
    /// dlock man | man -l -   reads it at once;
    /// dlock man /usr/local/share/man/man1   installs dlock.1, dlock-run.1, dlock-status.1...
    Man {
        /// Write dlock.1 and a page per subcommand into this directory instead.
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Give up after waiting this long (exit 124): 30s, 5m, 1h30m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    wait: Option<Duration>,

    /// Do not wait: exit 75 at once if someone holds the lock (for cron).
    #[arg(long, conflicts_with = "wait")]
    no_wait: bool,

    /// The lock's TTL: how long a crashed dlock blocks the key, and how long a network
    /// blip may last before the lock counts as lost. Renewed every TTL/3
    /// [default: 10s, or the config file's default_ttl; etcd: whole seconds].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    ttl: Option<Duration>,

    /// After a lost lock, how long CMD has between SIGTERM and SIGKILL. SIGTERM is sent
    /// before the server can expire the lock; a CMD that keeps running through the grace
    /// may overlap with the next holder (fence its writes with DLOCK_FENCING_TOKEN).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    grace: Duration,

    /// The value published with the lock, shown by `dlock status` [default: host:pid].
    #[arg(long, value_name = "TEXT")]
    value: Option<String>,

    /// Hold one of N permits of the semaphore KEY: up to N commands run at once (1 to
    /// 10000; 1 is the lock). Every run of KEY must name the same N while KEY is held (exit
    /// 78 otherwise); CMD's DLOCK_FENCING_TOKEN is its permit's.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = permits_parser(), allow_negative_numbers = true)]
    permits: u32,

    /// The lock's key (without the prefix).
    key: String,

    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// KEY is a semaphore of N permits: list every holder (1, the default: a lock).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = permits_parser(), allow_negative_numbers = true)]
    permits: u32,

    /// The lock's key (without the prefix).
    key: String,
}

/// 1 to `dlock::MAX_PERMITS`: anything else is a usage error (exit 64) before any server is
/// reached.
fn permits_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(dlock::MAX_PERMITS))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write it as 30s, 500ms, 5m, 1h)"))
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; mistakes exit EX_USAGE.
            let status = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(status.into());
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let status = runtime.block_on(async move {
        match dispatch(cli).await {
            Ok(status) => status,
            Err(failure) => {
                redact::say(&failure.message);
                failure.status
            }
        }
    });
    drop(runtime);
    std::process::exit(status.into());
}

async fn dispatch(cli: Cli) -> Result<u8, Failure> {
    // Only the lock commands reach a server; the generated documents need none.
    let flags = connect::Flags {
        redis: cli.redis,
        etcd: cli.etcd,
        postgres: cli.postgres,
    };
    let server = || connect::Server::from_flags(flags, cli.config, cli.prefix);
    match cli.command {
        Command::Run(args) => {
            let locker = server()?.locker(args.ttl).await?;
            let status = run::run(&locker, args, cli.quiet).await;
            let _ = locker.close().await;
            status
        }
        Command::Status(StatusArgs { key, permits }) => {
            let locker = server()?.locker(None).await?;
            let holders = if permits == 1 {
                locker.holder(&key).await.map(|h| h.into_iter().collect())
            } else {
                locker.semaphore(&key, permits).holders().await
            };
            let _ = locker.close().await;
            match holders {
                Ok(holders) => Ok(print_status(&key, permits, holders)),
                Err(dlock::Error::PermitsMismatch { held, .. }) => {
                    Ok(print_mismatch(&key, permits, held))
                }
                Err(e) => Err(Failure::from_lock_error(&key, e)),
            }
        }
        Command::Completions { shell } => {
            generate::completions(shell, Cli::command(), &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { dir } => man(dir.as_deref()),
    }
}

fn man(dir: Option<&std::path::Path>) -> Result<u8, Failure> {
    let Some(dir) = dir else {
        let mut out = std::io::stdout();
        return match generate::man_page(Cli::command(), &mut out) {
            Ok(()) => Ok(0),
            // `dlock man | head`: the reader had enough.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
            Err(e) => Err(Failure::new(
                exit::CANT_CREATE,
                format!("writing the man page: {e}"),
            )),
        };
    };
    let written = generate::man_pages(Cli::command(), dir).map_err(|e| {
        Failure::new(
            exit::CANT_CREATE,
            format!("writing the man pages into {}: {e}", dir.display()),
        )
    })?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(0)
}

/// Prints who holds `key`, a lock (`permits` 1) or a semaphore; returns the exit status.
fn print_status(key: &str, permits: u32, mut holders: Vec<dlock::Holder>) -> u8 {
    if holders.is_empty() {
        println!("{key}: free");
        return exit::FREE;
    }
    let expires = |holder: &dlock::Holder| {
        humantime::format_duration(round_to_ms(holder.expires_in)).to_string()
    };
    if permits == 1 {
        let holder = &holders[0];
        println!("{key}: held");
        println!("fencing token: {}", holder.fencing_token);
        println!("expires in: {}", expires(holder));
        if let Some(value) = &holder.value {
            println!("value: {}", redact::redact(value));
        }
        return exit::HELD;
    }
    // One line per holder, oldest permit first.
    holders.sort_by_key(|h| h.fencing_token);
    println!("{key}: held ({} of {permits} permits)", holders.len());
    for holder in &holders {
        let mut line = format!(
            "fencing token: {}, expires in: {}",
            holder.fencing_token,
            expires(holder)
        );
        if let Some(value) = &holder.value {
            line += &format!(", value: {}", redact::redact(value));
        }
        println!("{line}");
    }
    exit::HELD
}

/// `key` is held with `held` permits, not the `asked` of `--permits`: held all the same,
/// and the command that lists its holders.
fn print_mismatch(key: &str, asked: u32, held: u32) -> u8 {
    let (what, listing) = match held {
        1 => ("a lock".to_owned(), format!("dlock status {key}")),
        n => (
            format!("a semaphore of {n} permits"),
            format!("dlock status --permits {n} {key}"),
        ),
    };
    let asked = match asked {
        1 => "a lock".to_owned(),
        n => format!("a semaphore of {n} permits"),
    };
    println!("{key}: held as {what}, not {asked} (`{listing}` shows its holders)");
    exit::HELD
}

fn round_to_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}
