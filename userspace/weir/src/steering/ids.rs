//! Service ids for the kernel's service map: stable per service name while the service exists,
//! so a publication rewrites only the entries of services that changed (a service added in
//! the middle of the list no longer shifts every id after it). Ids of removed services are
//! reused, lowest first, so ids stay below the largest table's size. A weir that took another
//! over starts from the ids the old weir gave ([`ServiceIds::seed`]), so a service keeps its id
//! across a takeover too. Must not: know the map.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

/// Names to ids, and the ids free for reuse.
#[derive(Debug, Default)]
pub(crate) struct ServiceIds {
    by_name: HashMap<Arc<str>, u32>,
    free: BinaryHeap<Reverse<u32>>,
    next: u32,
}

impl ServiceIds {
    /// Starts from the ids of a running table (a weir taken over): each name keeps the id it
    /// is paired with, unless an earlier pair took that id or gave the name one; the ids below
    /// the largest kept one that no name keeps are free. Call before any [`ServiceIds::assign`].
    pub(crate) fn seed<'a>(&mut self, kept: impl Iterator<Item = (&'a str, u32)>) {
        debug_assert!(self.by_name.is_empty(), "seeded after ids were assigned");
        let mut used = HashSet::new();
        for (name, id) in kept {
            if !self.by_name.contains_key(name) && used.insert(id) {
                self.by_name.insert(Arc::from(name), id);
            }
        }
        self.next = used.iter().max().map_or(0, |&m| m + 1);
        self.free = (0..self.next).filter(|id| !used.contains(id)).map(Reverse).collect();
    }

    /// Assigns ids to exactly `names` (in order): a name that had one keeps it, a new one gets
    /// a free or a fresh one, the ids of names not listed are freed.
    pub(crate) fn assign<'a>(&mut self, names: impl Iterator<Item = &'a str> + Clone) -> Vec<u32> {
        let live: HashSet<&str> = names.clone().collect();
        let gone: Vec<Arc<str>> = self.by_name.keys().filter(|n| !live.contains(&***n)).cloned().collect();
        for name in gone {
            if let Some(id) = self.by_name.remove(&name) {
                self.free.push(Reverse(id));
            }
        }
        names
            .map(|name| match self.by_name.get(name) {
                Some(&id) => id,
                None => {
                    let id = match self.free.pop() {
                        Some(Reverse(id)) => id,
                        None => {
                            self.next += 1;
                            self.next - 1
                        }
                    };
                    self.by_name.insert(Arc::from(name), id);
                    id
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_with_their_service_and_freed_ones_are_reused() {
        let mut ids = ServiceIds::default();
        assert_eq!(ids.assign(["a", "b", "c"].into_iter()), [0, 1, 2]);
        // Inserted in the middle: the others keep theirs.
        assert_eq!(ids.assign(["a", "new", "b", "c"].into_iter()), [0, 3, 1, 2]);
        // Removed: its id is reused by the next new service, lowest first.
        assert_eq!(ids.assign(["c", "new"].into_iter()), [2, 3]);
        assert_eq!(ids.assign(["x", "c", "y", "new", "z"].into_iter()), [0, 2, 1, 3, 4]);
    }

    #[test]
    fn a_seeded_table_keeps_the_running_ids_and_frees_the_gaps() {
        let mut ids = ServiceIds::default();
        // The old weir's table: "a" 4, "b" 1 (and 0, 2, 3 free there); "c" claims 1 again.
        ids.seed([("a", 4), ("b", 1), ("c", 1), ("a", 2)].into_iter());
        // "a" and "b" keep theirs; new names take the free ids lowest first, then fresh ones.
        assert_eq!(ids.assign(["b", "c", "a", "d", "e", "f"].into_iter()), [1, 0, 4, 2, 3, 5]);
        // A name seeded but gone at the first assignment frees its id.
        let mut ids = ServiceIds::default();
        ids.seed([("gone", 0), ("kept", 1)].into_iter());
        assert_eq!(ids.assign(["kept", "new"].into_iter()), [1, 0]);
    }
}
