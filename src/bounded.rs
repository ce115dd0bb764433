//! A small map of things kept in memory by id, at most a set number of them.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// At most `capacity` entries by id (0 keeps none). When it is full, a new entry takes the place
/// of any one: what is kept here can always be made again, so a dropped entry costs only that.
pub struct Bounded<V> {
    entries: Mutex<HashMap<String, V>>,
    capacity: usize,
}

impl<V: Clone> Bounded<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// What is kept under `id`, if it passes `usable`.
    pub fn get(&self, id: &str, usable: impl FnOnce(&V) -> bool) -> Option<V> {
        self.entries().get(id).filter(|v| usable(v)).cloned()
    }

    /// Keeps `value` under `id`, unless what is kept there already `stays` (say, it is newer).
    pub fn put(&self, id: &str, value: V, stays: impl FnOnce(&V) -> bool) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries();
        match entries.get(id) {
            Some(kept) if stays(kept) => return,
            Some(_) => {}
            None if entries.len() >= self.capacity => {
                if let Some(victim) = entries.keys().next().cloned() {
                    entries.remove(&victim);
                }
            }
            None => {}
        }
        entries.insert(id.to_owned(), value);
    }

    pub fn remove(&self, id: &str) {
        self.entries().remove(id);
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, V>> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::Bounded;

    #[test]
    fn keeps_at_most_its_capacity_and_what_stays() {
        let kept = Bounded::new(2);
        kept.put("a", 1, |_| false);
        kept.put("b", 2, |_| false);
        kept.put("c", 3, |_| false);
        let present = ["a", "b", "c"]
            .iter()
            .filter(|id| kept.get(id, |_| true).is_some())
            .count();
        assert_eq!(present, 2, "one made room");
        assert_eq!(kept.get("c", |_| true), Some(3));
        kept.put("c", 1, |current| *current > 1);
        assert_eq!(kept.get("c", |_| true), Some(3), "the newer one stays");
        assert_eq!(kept.get("c", |v| *v == 1), None);
        kept.remove("c");
        assert_eq!(kept.get("c", |_| true), None);

        let none = Bounded::new(0);
        none.put("a", 1, |_| false);
        assert_eq!(none.get("a", |_| true), None);
    }
}
