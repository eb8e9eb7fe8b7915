//! Exit statuses of `dlock`, one place: the constants, their `--help` table, and the failure
//! type that carries one with its message. The numbers follow sysexits(3) where one fits,
//! `timeout(1)` for an expired wait, and the shell for a command that cannot be run.

use dlock::Error;

/// `dlock status`: the key is held.
pub const HELD: u8 = 0;
/// `dlock status`: the key is free.
pub const FREE: u8 = 1;
/// Bad command line (EX_USAGE), `--permits` out of range or more than the backend keeps.
pub const USAGE: u8 = 64;
/// The server could not be reached, or failed (EX_UNAVAILABLE). Nothing was run.
pub const UNAVAILABLE: u8 = 69;
/// The lock was lost while the command ran; it was sent SIGTERM (then SIGKILL).
pub const LOST: u8 = 70;
/// `--no-wait` and someone else holds the lock (EX_TEMPFAIL). Nothing was run.
pub const BUSY: u8 = 75;
/// `dlock man DIR`: a page could not be written (EX_CANTCREAT).
pub const CANT_CREATE: u8 = 73;
/// Bad configuration: URL, config file, key, TTL, value (EX_CONFIG); or `--permits`
/// other than the number the key's holders named (a lock is 1).
pub const CONFIG: u8 = 78;
/// `--wait` expired before the lock was acquired (as `timeout(1)`). Nothing was run.
pub const WAIT_EXPIRED: u8 = 124;
/// The command was found but could not be started.
pub const CANNOT_RUN: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;

/// The table `dlock --help` ends with; the guide's `dlock` chapter has the same.
pub const HELP: &str = "\
Exit status:
  CMD's status  dlock run: the command's own status (128+N if signal N killed it)
  0 / 1         dlock status: the key is held (by a lock or any permit) / free
  64            bad command line (--permits 0, over 10000, or more than the backend keeps)
  69            the server is unreachable or failed; nothing was run
  70            the lock (permit) was lost while CMD ran: CMD got SIGTERM (SIGKILL after
                --grace)
  73            dlock man DIR: a page could not be written
  75            --no-wait and the lock (every permit) is held by others; nothing was run
  78            bad configuration: URL, config file, key, TTL or value; or KEY is held
                with another --permits than this run's (a lock is 1); nothing was run
  124           --wait expired before the lock was acquired; nothing was run
  126 / 127     CMD could not be started / was not found
  128+N         dlock got signal N while waiting for the lock; nothing was run

Passwords in URLs are never printed. Environment: DLOCK_REDIS_URL, DLOCK_ETCD_ENDPOINTS,
DLOCK_POSTGRES_URL.";

/// A reason to exit: the status and what to say on stderr (redacted when printed).
#[derive(Debug)]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

impl Failure {
    pub fn new(status: u8, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// A library error for `key`, mapped to its exit status.
    pub fn from_lock_error(key: &str, e: Error) -> Failure {
        let status = match &e {
            Error::InvalidConfig { .. }
            | Error::InvalidKey { .. }
            | Error::InvalidTtl { .. }
            | Error::ConnectorMissing { .. }
            | Error::PermitsMismatch { .. } => CONFIG,
            Error::InvalidPermits { .. } => USAGE,
            _ => UNAVAILABLE,
        };
        let hint = match &e {
            Error::Backend { .. } => " (is the server up and reachable?)".to_owned(),
            Error::PermissionDenied { .. } => {
                " (the server's ACL/role lacks a right dlock needs)".to_owned()
            }
            Error::PermitsMismatch { held, .. } => {
                let now = match held {
                    1 => "a lock (--permits 1, the default)".to_owned(),
                    n => format!("a semaphore of --permits {n}"),
                };
                format!(" (it is {now} while held: every holder of a key names the same number)")
            }
            _ => String::new(),
        };
        Failure::new(status, format!("cannot lock {key:?}: {e}{hint}"))
    }
}
