//! Semaphores on Redis: the N > 1 case of a request, kept in two keys of the lock's slot.
//!
//! `<prefix>{<key>}` is the semaphore's hash (its number of permits, the last fencing token,
//! each holder's fencing token, waiters' marks) and `<prefix>{<key>}:held` the sorted set
//! of its holders' tokens scored by expiry on the server's clock, so that expired holders
//! leave in one range removal and a count is one `ZCOUNT`. Both live as long as the
//! longest holder and go a tombstone's time after the last release: nothing stays for a
//! permit after its release or expiry.
//!
//! `<prefix>{<key>}:wait` is the line of waiting acquisitions (one per process and
//! semaphore: only the head of a process's waiting tasks tries the server, `wake.rs`), by
//! arrival: a permit goes to the first in line, and a newcomer takes one only when the
//! holders and the waiters together leave one. A waiter keeps its place while it tries
//! again within [`patience`]; one that stops (cancelled, crashed) loses it after that. A lock keeps its name as a string (obtain.lua), so
//! a lock and a semaphore meeting on one name see each other's type and refuse with
//! `PermitsMismatch`.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::error::Error;
use crate::Holder;

pub(super) static OBTAIN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("permit_obtain.lua")));
pub(super) static REFRESH_MANY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("permit_refresh_many.lua")));
pub(super) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("permit_release.lua")));
pub(super) static HOLDERS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("permit_holders.lua")));
pub(super) static CLEAR: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("permit_clear.lua")));

/// The keys of the semaphore or lock at `storage_key`: the lock's key alone, or the
/// semaphore's hash and its holders.
pub(super) fn keys(storage_key: &str, permits: u32) -> Vec<String> {
    if permits > 1 {
        vec![storage_key.to_owned(), format!("{storage_key}:held")]
    } else {
        vec![storage_key.to_owned()]
    }
}

/// The keys an attempt on a semaphore reads and writes: [`keys`], then its line of waiters.
pub(super) fn attempt_keys(storage_key: &str) -> Vec<String> {
    let mut keys = keys(storage_key, 2);
    keys.push(format!("{storage_key}:wait"));
    keys
}

/// How long a waiting attempt keeps its place in the semaphore's line without trying again:
/// three of its polls, and no longer than its TTL.
pub(super) fn patience(retry_interval: std::time::Duration, ttl: std::time::Duration) -> u64 {
    super::millis((3 * retry_interval).min(ttl)).max(1)
}

/// Whether a call failed because its key holds another type: a lock's script met a
/// semaphore's hash.
pub(super) fn wrong_type(e: &Error) -> bool {
    let Error::Backend { source, .. } = e else {
        return false;
    };
    source
        .downcast_ref::<redis::RedisError>()
        .is_some_and(|e| e.code() == Some("WRONGTYPE"))
}

/// permit_holders.lua's answer: the semaphore's number of permits (0: nobody holds it, 1:
/// a lock holds the name) and its holders.
pub(super) fn parse_holders(reply: &[String]) -> (u32, Vec<Holder>) {
    let permits = reply.first().and_then(|n| n.parse().ok()).unwrap_or(0);
    let holders = reply[1.min(reply.len())..]
        .chunks_exact(2)
        .filter_map(|pair| {
            let remaining = Duration::from_millis(pair[1].parse().unwrap_or(0));
            super::parse_holder(&format!(":{}", pair[0]), remaining)
        })
        .collect();
    (permits, holders)
}

#[cfg(test)]
mod tests {
    #[test]
    fn holders_read_back_with_their_values() {
        let reply = [
            "5",
            "1795616126328485",
            "900",
            "1795616126328486#6869",
            "20",
        ];
        let reply: Vec<String> = reply.map(str::to_owned).into();
        let (permits, holders) = super::parse_holders(&reply);
        assert_eq!(permits, 5);
        let tokens: Vec<u64> = holders.iter().map(|h| h.fencing_token).collect();
        assert_eq!(tokens, [1795616126328485, 1795616126328486]);
        assert_eq!(holders[1].value.as_deref(), Some("hi"));
        assert_eq!(super::parse_holders(&["0".to_owned()]), (0, Vec::new()));
    }
}
