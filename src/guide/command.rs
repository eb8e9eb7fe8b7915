//! # The `dlock` command
//!
//! `flock(1)` across machines: run any program under a distributed lock, over Redis (or etcd,
//! when built with `--features cli,etcd`; or PostgreSQL, with `--features cli,postgres`).
//!
//! ```sh
//! cargo install dlock-rs --features cli            # or cli,etcd (needs protoc), cli,postgres
//!
//! dlock --redis redis://:secret@redis:6379/ run nightly-report -- /usr/local/bin/report --full
//! dlock --etcd http://etcd-1:2379,http://etcd-2:2379 run --wait 10m migrate -- ./migrate.sh
//! dlock --postgres postgres://jobs@db/app run vacuum-report -- ./report.sh
//! DLOCK_REDIS_URL=redis://redis:6379/ dlock status nightly-report   # held/free, token, TTL left, value
//!
//! # cron: every 5 minutes on every host, at most one report runs; the others exit 75 at once.
//! */5 * * * * dlock --quiet --redis redis://redis:6379/ run --no-wait nightly-report -- /usr/local/bin/report
//! ```
//!
//! `dlock run KEY -- CMD ARGS...` waits for the lock (`--wait DURATION` to give up, `--no-wait`
//! to not wait), prints `waiting for lock KEY (held by HOST:PID, token N)…` on stderr after a
//! second (`--quiet` turns it off), runs CMD with `DLOCK_KEY` and `DLOCK_FENCING_TOKEN` in its
//! environment while the lock is renewed (`--ttl`, default 10 s), forwards SIGINT, SIGTERM and
//! SIGHUP to it, and releases the lock when CMD exits. It publishes `host:pid` (or `--value`)
//! with the lock, shown by `dlock status` and `Election::leader`: the lock is a leadership of
//! the election KEY, and excludes plain `locker.lock(KEY)` holders with the same prefix
//! (`--prefix`, default `dlock:`) as well. The server comes from `--redis URL`, `--etcd URLS`
//! (comma-separated), `--postgres URL`, or `DLOCK_REDIS_URL` / `DLOCK_ETCD_ENDPOINTS` /
//! `DLOCK_POSTGRES_URL`; `--config dlock.yaml` (the
//! Config format) sets the prefix, TTL and retry interval. No message ever shows a password
//! from a URL: `user:password@` is replaced by `***@`.
//!
//! On PostgreSQL the command needs dlock's schema in the database and never creates it (the
//! role that runs jobs should not own it, and re-creating the functions at every run would
//! rewrite the catalog): create it once with `dlock::postgres::migrate` or the README's SQL
//! (see [the PostgreSQL chapter](super::postgres)); without it, dlock exits 78 saying so.
//!
//! If the lock is lost while CMD runs (the server unreachable for most of a TTL, the key
//! deleted), CMD gets SIGTERM — before the server can give the lock to anyone else — then
//! SIGKILL after `--grace` (default 5 s), and dlock exits 70 saying why. A CMD that ignores
//! SIGTERM can overlap with the next holder for up to the grace: keep the grace short, or have
//! CMD fence its writes with `DLOCK_FENCING_TOKEN`. A terminal's Ctrl-C reaches CMD directly and
//! through dlock (it is in dlock's process group), so CMD may see SIGINT twice.
//!
//! | exit status | meaning |
//! |---|---|
//! | CMD's status | `dlock run`: the command's own status; 128+N if signal N killed it |
//! | 0 / 1 | `dlock status`: the key is held (by a lock or any permit) / free |
//! | 64 | bad command line (no server given, missing CMD, `--permits` 0, over 10000, or more than the backend keeps) |
//! | 69 | the server is unreachable or failed; nothing was run |
//! | 70 | the lock (permit) was lost while CMD ran: CMD got SIGTERM (SIGKILL after `--grace`) |
//! | 73 | `dlock man DIR`: a page could not be written |
//! | 75 | `--no-wait` and someone else holds the lock (every permit); nothing was run |
//! | 78 | bad configuration: URL, config file, key, TTL or value; or KEY is held with another `--permits` than this run's (a lock is 1); nothing was run |
//! | 124 | `--wait` expired before the lock was acquired; nothing was run |
//! | 126 / 127 | CMD could not be started / was not found |
//! | 128+N | dlock got signal N while waiting for the lock; nothing was run |
//!
//! Tested end to end with the built binary, real child processes and real servers
//! (`tests/cli.rs`): two runs on one key on Redis and etcd (the second waits, then runs; order
//! from the children's own log lines), `--no-wait`, `--wait`, `status`, SIGTERM forwarding and
//! status pass-through, the server blackholed through the fault proxy (the child gets SIGTERM
//! before a waiting rival runs; exit 70), bad and unreachable URLs without the password;
//! three `run --permits 2` (never three children at once), `status --permits 2` listing both
//! holders, a bad `--permits` (64) and another `--permits` while held (78).
//!
//! ## Up to N at once: `--permits N`
//!
//! `dlock run --permits N KEY -- CMD` (as `consul lock -n N`) holds one of the N permits of
//! the semaphore KEY (`locker.semaphore(KEY, N)`) while CMD runs: up to N commands run at
//! once across every machine, the next one waits for a permit. Everything else is `run`'s:
//! `--wait`, `--no-wait` (exit 75 when all N are held), renewal, SIGTERM when the permit is
//! lost (exit 70), `DLOCK_KEY` and `DLOCK_FENCING_TOKEN` (the permit's token: strictly
//! increasing across the semaphore's acquisitions, but N holders hold at once, so a token
//! below another holder's is no sign of a lost permit). `dlock status --permits N KEY` lists
//! every holder, oldest permit first:
//!
//! ```sh
//! # At most 2 backups hit the NAS at once, from any number of hosts.
//! dlock --redis redis://redis:6379/ run --permits 2 --wait 1h nas-backup -- /usr/local/bin/backup
//!
//! dlock --redis redis://redis:6379/ status --permits 2 nas-backup
//! # nas-backup: held (2 of 2 permits)
//! # fencing token: 1764949800123456, expires in: 9s 412ms, value: db-1:4242
//! # fencing token: 1764949803654321, expires in: 6s 87ms, value: db-2:977
//! ```
//!
//! Every `run` and `status` of one key names the same N while the key is held: `--permits 3`
//! on a key held with `--permits 2`, or a plain `run` (a lock is `--permits 1`) on a key held
//! as a semaphore, exits 78 at once with `"nas-backup" is held with 2 permit(s)`, running
//! nothing; a plain `status` of it says `held as a semaphore of 2 permits` and exits 0. Once
//! nobody holds the key, the next holder's N stands. `--permits 1`, the default, is the lock
//! of the sections above. A backend that keeps fewer permits than asked refuses them: exit 64.
//!
//!
//! ## Man pages and shell completions
//!
//! Both are generated from the command's own argument declaration, so they say what
//! `dlock --help` says, and neither needs a server:
//!
//! ```sh
//! # The manual: read it at once, or install a page per command (dlock.1, dlock-run.1, ...).
//! dlock man | man -l -
//! sudo dlock man /usr/local/share/man/man1 && man dlock-run
//!
//! # Completions, for the shell you use:
//! dlock completions bash > ~/.local/share/bash-completion/completions/dlock
//! dlock completions zsh  > ~/.zfunc/_dlock          # with ~/.zfunc on $fpath, before compinit
//! dlock completions fish > ~/.config/fish/completions/dlock.fish
//! dlock completions elvish     # and powershell: printed on stdout
//! ```
//!
//! From a checkout, without installing: `cargo run --features cli --bin dlock -- man` (or
//! `-- completions bash`). The binary's unit tests (`cargo test --features cli --bin dlock`)
//! check that the pages and the completions of every shell name every subcommand.
//!
//! ## From Rust
//!
//! The command is a thin layer over the library: `dlock run KEY` is
//! `locker.election(KEY).campaign(value)` then `leadership.run(child)`, and `dlock status KEY`
//! is `locker.holder(KEY)`; with `--permits N`, `locker.semaphore(KEY, N).publishing(value)`
//! then `acquire()`, and `semaphore.holders()`. A program that wants the same from Rust:
//!
//! ```rust
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
//! let locker = dlock::Locker::builder(dlock::Config::default()).build()?;
//! let leadership = locker.election("nightly-report").campaign("host-a:4242").await?;
//! let status = leadership.run(async { /* run the job, fenced by */ leadership.term() }).await;
//! leadership.resign().await?;
//!
//! // `dlock status nightly-report`:
//! match locker.holder("nightly-report").await? {
//!     Some(holder) => println!("held, token {}, value {:?}", holder.fencing_token, holder.value),
//!     None => println!("free"),
//! }
//! # let _ = status; Ok(()) }
//! ```
