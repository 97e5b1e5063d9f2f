//! Who called: the caller table that the weir binary's identity thread builds off the data
//! path and publishes (cgroup id → the caller's workload, its counter slot and its `source`
//! label slot), and what a worker makes of it per request ([`Source`]). Must not: build,
//! allocate, lock or block on the request path: a lookup is one `ArcSwap` load and one hash
//! probe, counting a caller is one relaxed store to this worker's own counter.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use weir_core::accesslog::{InlineStr, SOURCE_BYTES};
use weir_core::stats::{SOURCE_DIRECT, SOURCE_OTHER, SourceSlot};

/// Callers whose traffic is counted per worker for ranking (the counter slots).
pub const MAX_CALLERS: usize = 4096;

/// One known caller cgroup.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// Its workload's counter slot (< [`MAX_CALLERS`]), shared by the workload's cgroups.
    pub index: u32,
    /// The `source` label slot its requests are counted under (a name of its own, or
    /// [`SOURCE_OTHER`]).
    pub source: SourceSlot,
    /// The workload's name (for the access log and spans; first [`SOURCE_BYTES`]).
    pub workload: InlineStr<SOURCE_BYTES>,
}

/// What the workers read: published whole by the identity thread, never changed after.
#[derive(Debug)]
pub struct CallerTable {
    /// Increases with every publication.
    pub generation: u64,
    /// Every caller cgroup under the steered roots that the identity thread has seen.
    pub by_cgroup: HashMap<u64, Caller>,
    /// The `source` label value of each slot: `direct`, `other`, then the named callers in the
    /// order they were named. A slot, once named, keeps its name for the life of the process.
    pub sources: Vec<Arc<str>>,
}

impl Default for CallerTable {
    fn default() -> Self {
        CallerTable { generation: 0, by_cgroup: HashMap::new(), sources: vec![Arc::from("direct"), Arc::from("other")] }
    }
}

impl CallerTable {
    /// The label value of `slot` (`other` for a slot this table does not know).
    pub fn source_name(&self, slot: SourceSlot) -> &str {
        self.sources.get(usize::from(slot)).map_or("other", |s| s)
    }
}

/// The caller table as it crosses threads: published by the identity thread, read by workers.
#[derive(Debug, Default)]
pub struct Callers {
    /// The current table.
    pub table: ArcSwap<CallerTable>,
    /// Set by a worker that met a steered cgroup the table does not know: the identity thread
    /// looks at the cgroup tree again.
    pub miss: AtomicBool,
}

/// Requests per caller counter slot, written by one worker only (relaxed load + store, no
/// read-modify-write), read by the identity thread to rank callers by traffic.
#[derive(Debug)]
pub struct CallerCounts(Box<[AtomicU64]>);

impl Default for CallerCounts {
    fn default() -> Self {
        CallerCounts((0..MAX_CALLERS).map(|_| AtomicU64::new(0)).collect())
    }
}

impl CallerCounts {
    /// Counts one request of caller `index` (the owning worker only).
    pub fn count(&self, index: u32) {
        if let Some(c) = self.0.get(index as usize) {
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Requests of caller `index` so far.
    pub fn get(&self, index: usize) -> u64 {
        self.0.get(index).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Who is behind one request, as the stats, the access log and a span report it.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// The `source` label slot.
    pub slot: SourceSlot,
    /// The caller's cgroup id; `None` when weir did not steer the connection.
    pub cgroup_id: Option<u64>,
    /// The workload's name; empty for a steered cgroup not resolved yet.
    pub workload: InlineStr<SOURCE_BYTES>,
}

impl Source {
    /// The caller of a connection with cgroup `cgroup` (`None`: not steered), from `callers`'
    /// current table; counts the request in `counts` and flags an unknown cgroup.
    pub fn of(callers: &Callers, cgroup: Option<u64>, counts: &CallerCounts) -> Source {
        let Some(id) = cgroup else {
            return Source { slot: SOURCE_DIRECT, cgroup_id: None, workload: InlineStr::new(b"direct") };
        };
        let table = callers.table.load();
        match table.by_cgroup.get(&id) {
            Some(c) => {
                counts.count(c.index);
                Source { slot: c.source, cgroup_id: Some(id), workload: c.workload }
            }
            None => {
                if !callers.miss.load(Ordering::Relaxed) {
                    callers.miss.store(true, Ordering::Relaxed);
                }
                Source { slot: SOURCE_OTHER, cgroup_id: Some(id), workload: InlineStr::default() }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_known_and_unknown_callers() {
        let callers = Callers::default();
        let counts = CallerCounts::default();
        let direct = Source::of(&callers, None, &counts);
        assert_eq!((direct.slot, direct.cgroup_id), (SOURCE_DIRECT, None));
        let unknown = Source::of(&callers, Some(77), &counts);
        assert_eq!((unknown.slot, unknown.workload.as_bytes()), (SOURCE_OTHER, &b""[..]));
        assert!(callers.miss.load(Ordering::Relaxed), "an unknown cgroup asks for a rescan");
        let mut table = CallerTable { generation: 1, ..CallerTable::default() };
        table.sources.push(Arc::from("shop/web"));
        table.by_cgroup.insert(77, Caller { index: 3, source: 2, workload: InlineStr::new(b"shop/web") });
        callers.table.store(Arc::new(table));
        let known = Source::of(&callers, Some(77), &counts);
        assert_eq!((known.slot, known.workload.as_bytes()), (2, &b"shop/web"[..]));
        assert_eq!((counts.get(3), counts.get(4)), (1, 0));
        assert_eq!(callers.table.load().source_name(2), "shop/web");
    }
}
