//! A member's positions: per partition, an offset.
//!
//! Every member of a hub holds one (thousands of idle devices), nearly always for a partition or
//! a few: a list grown one entry at a time is 16 bytes an entry, where a hash map's first
//! allocation is about a hundred bytes and a B-tree's node 144, and an empty one holds nothing.

/// Offsets by partition, in a list searched in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Positions(Vec<(i32, i64)>);

impl Positions {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn get(&self, partition: i32) -> Option<i64> {
        self.0
            .iter()
            .find_map(|&(held, offset)| (held == partition).then_some(offset))
    }

    /// Sets `partition`'s offset.
    pub(super) fn set(&mut self, partition: i32, offset: i64) {
        match self.0.iter_mut().find(|(held, _)| *held == partition) {
            Some((_, held)) => *held = offset,
            None => {
                self.0.reserve_exact(1);
                self.0.push((partition, offset));
            }
        }
    }

    /// Raises `partition`'s offset to at least `offset` (sets it when there was none).
    pub(super) fn raise(&mut self, partition: i32, offset: i64) {
        let raised = self.get(partition).map_or(offset, |held| held.max(offset));
        self.set(partition, raised);
    }

    pub(super) fn remove(&mut self, partition: i32) {
        self.retain(|held, _| held != partition);
    }

    /// Keeps the positions `keep` says to keep; none left, the list's memory goes too.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(i32, i64) -> bool) {
        self.0
            .retain(|&(partition, offset)| keep(partition, offset));
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
    }
}

impl FromIterator<(i32, i64)> for Positions {
    fn from_iter<I: IntoIterator<Item = (i32, i64)>>(positions: I) -> Self {
        let mut collected = Self::default();
        for (partition, offset) in positions {
            collected.set(partition, offset);
        }
        collected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_set_raised_and_forgotten() {
        let mut positions: Positions = [(0, 5), (2, 7)].into_iter().collect();
        assert_eq!(positions.get(0), Some(5));
        assert_eq!(positions.get(1), None);
        positions.raise(0, 3);
        assert_eq!(positions.get(0), Some(5), "never lowered by a raise");
        positions.raise(0, 9);
        positions.raise(1, 4);
        assert_eq!(positions.get(0), Some(9));
        assert_eq!(positions.get(1), Some(4));
        positions.set(2, 1);
        assert_eq!(positions.get(2), Some(1), "a set may lower");
        positions.remove(1);
        assert_eq!(positions.get(1), None);
        positions.retain(|partition, _| partition == 2);
        assert_eq!(positions, [(2, 1)].into_iter().collect());
        positions.retain(|_, _| false);
        assert!(positions.is_empty());
        assert_eq!(positions.0.capacity(), 0, "an empty list holds no memory");
    }
}
