//! The key → guard registry behind the Go-style API: one per locker, so that
//! [`Locker::close`](crate::Locker::close) releases what [`Compat`](crate::Compat) holds.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::backend::recover;
use crate::error::{display_key, Error, Result};
use crate::guard::LockGuard;

#[derive(Default)]
pub(crate) struct Registry {
    slots: Mutex<HashMap<String, Slot>>,
}

enum Slot {
    /// A `lock` call is under way; a second one must not wait behind it.
    Acquiring,
    Held(LockGuard),
}

impl Registry {
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        recover(self.slots.lock())
    }

    /// Reserves `key` for a `lock` call: [`Error::LockAlreadyHeld`] if it is held or being
    /// acquired. The reservation goes away with its value unless a guard fills it.
    pub fn reserve<'a>(&'a self, key: &'a str) -> Result<Reservation<'a>> {
        let mut slots = self.slots();
        if slots.contains_key(key) {
            return Err(Error::LockAlreadyHeld {
                key: display_key(key),
            });
        }
        slots.insert(key.to_owned(), Slot::Acquiring);
        Ok(Reservation {
            registry: self,
            key,
            filled: false,
        })
    }

    /// Takes the guard held under `key` out: [`Error::LockNotHeld`] if there is none (a
    /// `lock` call still under way keeps its reservation).
    pub fn take(&self, key: &str) -> Result<LockGuard> {
        let mut slots = self.slots();
        match slots.remove(key) {
            Some(Slot::Held(guard)) => return Ok(guard),
            Some(Slot::Acquiring) => {
                slots.insert(key.to_owned(), Slot::Acquiring);
            }
            None => {}
        }
        Err(Error::LockNotHeld {
            key: display_key(key),
        })
    }

    pub fn is_held(&self, key: &str) -> bool {
        matches!(self.slots().get(key), Some(Slot::Held(_)))
    }

    /// Drops every held guard (each drop hands its release to the engine).
    pub fn clear(&self) {
        let slots = std::mem::take(&mut *self.slots());
        drop(slots);
    }
}

/// A reserved registry slot; removed again unless a guard was stored in it.
pub(crate) struct Reservation<'a> {
    registry: &'a Registry,
    key: &'a str,
    filled: bool,
}

impl Reservation<'_> {
    pub fn fill(mut self, guard: LockGuard) {
        self.registry
            .slots()
            .insert(self.key.to_owned(), Slot::Held(guard));
        self.filled = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.filled {
            let mut slots = self.registry.slots();
            if matches!(slots.get(self.key), Some(Slot::Acquiring)) {
                slots.remove(self.key);
            }
        }
    }
}
