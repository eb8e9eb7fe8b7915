//! The engine's slots, by index: a slab (a vector with a free list), so that finding a slot
//! is an index, not a hash. An index is reused only once its slot is removed, which only its
//! guard does (invariant 4): a guard's index always names its own slot.

/// Slots of type `T` by index.
pub(super) struct Slots<T> {
    entries: Vec<Option<T>>,
    free: Vec<u64>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slots<T> {
    /// Stores `value` and returns its index.
    pub fn insert(&mut self, value: T) -> u64 {
        match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(value);
                id
            }
            None => {
                self.entries.push(Some(value));
                (self.entries.len() - 1) as u64
            }
        }
    }

    pub fn get(&self, id: &u64) -> Option<&T> {
        self.entries.get(*id as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: &u64) -> Option<&mut T> {
        self.entries.get_mut(*id as usize)?.as_mut()
    }

    pub fn remove(&mut self, id: &u64) -> Option<T> {
        let value = self.entries.get_mut(*id as usize)?.take()?;
        self.free.push(*id);
        if self.free.len() == self.entries.len() {
            // Empty: give the memory back.
            self.entries = Vec::new();
            self.free = Vec::new();
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn indices_are_reused_only_after_removal_and_memory_returns_when_empty() {
        let mut slots = Slots::default();
        let a = slots.insert("a");
        let b = slots.insert("b");
        assert_ne!(a, b);
        assert_eq!(slots.remove(&a), Some("a"));
        assert_eq!(slots.get(&a), None, "a removed slot is still there");
        assert_eq!(slots.remove(&a), None, "a slot was removed twice");
        let c = slots.insert("c");
        assert_eq!(c, a, "a freed index was not reused");
        assert_eq!(slots.get(&b), Some(&"b"));
        slots.remove(&b);
        slots.remove(&c);
        assert_eq!(slots.entries.capacity(), 0, "an empty slab kept its memory");
    }
}
