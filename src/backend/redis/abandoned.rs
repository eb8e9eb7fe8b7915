//! This backend's abandoned attempts: the tokens of attempts it undid, by lock key, until
//! their TTL ends. An undo can reach another server than its attempt did (a Sentinel or
//! Cluster client that named a new master in between): the attempt's key is then left on
//! the first server, owned by no guard. The next attempt on that key names these tokens, and
//! `obtain.lua` takes a lock held by one of them over instead of reporting it held.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::backend::recover;

/// Past this many keys, adding prunes every expired entry: the map stays bounded by the
/// undos of the last TTL.
const PRUNE_ABOVE: usize = 256;

#[derive(Default)]
pub(super) struct Abandoned {
    tokens: Mutex<HashMap<String, Vec<(String, Instant)>>>,
}

impl Abandoned {
    /// Remembers `token`, an attempt on `lock_key` being undone, until `expiry`.
    pub fn add(&self, lock_key: &str, token: &str, expiry: Instant) {
        let mut tokens = recover(self.tokens.lock());
        if tokens.len() >= PRUNE_ABOVE {
            let now = Instant::now();
            tokens.retain(|_, held| {
                held.retain(|(_, until)| *until > now);
                !held.is_empty()
            });
        }
        let held = tokens.entry(lock_key.to_owned()).or_default();
        held.push((token.to_owned(), expiry));
    }

    /// The tokens abandoned on `lock_key` whose TTL has not ended (usually none).
    pub fn on(&self, lock_key: &str) -> Vec<String> {
        let mut tokens = recover(self.tokens.lock());
        let Some(held) = tokens.get_mut(lock_key) else {
            return Vec::new();
        };
        let now = Instant::now();
        held.retain(|(_, until)| *until > now);
        let live = held.iter().map(|(token, _)| token.clone()).collect();
        if held.is_empty() {
            tokens.remove(lock_key);
        }
        live
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        recover(self.tokens.lock()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Abandoned, PRUNE_ABOVE};

    #[test]
    fn tokens_are_named_until_their_ttl_ends_and_the_map_stays_bounded() {
        let abandoned = Abandoned::default();
        let now = Instant::now();
        abandoned.add("k", "t1", now + Duration::from_secs(60));
        abandoned.add("k", "t0", now - Duration::from_millis(1));
        assert_eq!(abandoned.on("k"), ["t1"]);
        assert!(abandoned.on("other").is_empty());
        for i in 0..PRUNE_ABOVE * 4 {
            abandoned.add(&format!("gone{i}"), "t", now - Duration::from_millis(1));
        }
        assert!(
            abandoned.keys() <= PRUNE_ABOVE + 1,
            "expired entries piled up: {} keys",
            abandoned.keys()
        );
    }
}
