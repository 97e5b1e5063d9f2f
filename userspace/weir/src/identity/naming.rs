//! The pure half of caller identity: which workload a cgroup path is, and which workloads get
//! a `source` label value of their own. No I/O, no clock: the identity thread feeds it the
//! paths it found and the traffic it counted.
//!
//! Naming rule (sticky top N): at most `max_sources` workloads ever get a name; every other
//! steered caller is `other`. While every workload seen so far fits in the free names, each
//! gets its name as soon as it is seen (there is nothing to rank). Once they do not, the free
//! names go, once a second, to the unnamed workloads with the most requests in that second. A
//! name once given is kept for the life of the process (and given first by a weir that takes
//! it over: [`Naming::adopt`]), even when its workload goes away, so
//! no exported series ever goes down or changes hands: `other` only ever grows, and a caller
//! named later starts its own series at 0 (its earlier requests stay in `other`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use weir_core::stats::{SOURCE_OTHER, SourceSlot};

/// Longest `source` label value; longer workload names are cut (at a character boundary).
pub const MAX_LABEL_BYTES: usize = 128;

/// The workload a cgroup directory belongs to. `path` is the cgroup's directory, `root` the
/// steered directory it was found under, `pods` maps pod UIDs to `namespace/owner` when
/// discovery knows them.
///
/// In order: a Kubernetes pod (a `pod<UID>` component, as the cgroupfs driver names it, or
/// `…-pod<UID with _>.slice` from the systemd driver): `namespace/owner` from `pods`, else
/// `pod/<UID>`; a systemd unit (the innermost component ending in `.service` or `.scope`);
/// else the path relative to the steered root (the root's own name for the root itself).
pub fn workload_name(path: &Path, root: &Path, pods: &HashMap<String, String>) -> String {
    let components: Vec<&str> = path.iter().filter_map(|c| c.to_str()).collect();
    for c in components.iter().rev() {
        if let Some(uid) = pod_uid(c) {
            return pods.get(&uid).cloned().unwrap_or_else(|| format!("pod/{uid}"));
        }
    }
    if let Some(unit) = components.iter().rev().find(|c| c.ends_with(".service") || c.ends_with(".scope")) {
        return (*unit).to_string();
    }
    match path.strip_prefix(root) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_string_lossy().into_owned(),
        _ => root.file_name().map_or_else(|| "/".to_string(), |n| n.to_string_lossy().into_owned()),
    }
}

/// The pod UID a cgroup path component names, if any (`pod<uuid>` or `…-pod<uuid_>.slice`).
fn pod_uid(component: &str) -> Option<String> {
    let candidate = match component.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1.replace('_', "-"),
        None => component.strip_prefix("pod")?.to_string(),
    };
    is_uuid(&candidate).then_some(candidate)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Cuts a workload name to [`MAX_LABEL_BYTES`] at a character boundary.
pub fn label_of(workload: &str) -> Arc<str> {
    let mut end = workload.len().min(MAX_LABEL_BYTES);
    while !workload.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(&workload[..end])
}

/// Which workloads have a name: the sticky top-N state.
#[derive(Debug)]
pub struct Naming {
    max: usize,
    /// Label values by slot: `direct`, `other`, then the named workloads in naming order.
    labels: Vec<Arc<str>>,
    by_workload: HashMap<String, SourceSlot>,
}

impl Naming {
    /// No names yet; at most `max_sources` will be given.
    pub fn new(max_sources: usize) -> Naming {
        Naming { max: max_sources, labels: vec![Arc::from("direct"), Arc::from("other")], by_workload: HashMap::new() }
    }

    /// The slot `workload` is counted under.
    pub fn slot(&self, workload: &str) -> SourceSlot {
        self.by_workload.get(workload).copied().unwrap_or(SOURCE_OTHER)
    }

    /// Label values by slot.
    pub fn labels(&self) -> &[Arc<str>] {
        &self.labels
    }

    /// Names given so far.
    pub fn named(&self) -> usize {
        self.labels.len() - 2
    }

    fn give(&mut self, workload: &str) {
        self.by_workload.insert(workload.to_string(), self.labels.len() as SourceSlot);
        self.labels.push(label_of(workload));
    }

    /// Names the newly `seen` workloads at once when every unnamed workload `known` fits in the
    /// free names. Returns whether a name was given.
    pub fn on_seen<'a>(&mut self, known: impl Iterator<Item = &'a str> + Clone) -> bool {
        let unnamed: Vec<&str> = known.filter(|w| !self.by_workload.contains_key(*w)).collect();
        if unnamed.is_empty() || self.named() + unnamed.len() > self.max {
            return false;
        }
        let mut sorted = unnamed;
        sorted.sort_unstable();
        sorted.dedup();
        for w in sorted {
            self.give(w);
        }
        true
    }

    /// Gives the names a weir taken over gave (`names`, in its order), as far as the free
    /// names go, so that their series continue here. Returns whether a name was given.
    pub fn adopt(&mut self, names: &[String]) -> bool {
        let mut given = false;
        for w in names {
            if self.named() >= self.max {
                break;
            }
            if w != "direct" && w != "other" && !self.by_workload.contains_key(w.as_str()) {
                self.give(w);
                given = true;
            }
        }
        given
    }

    /// Gives the free names to the unnamed workloads with the most requests in the last
    /// interval (`traffic`: workload → requests; ties by name). Returns whether a name was given.
    pub fn on_traffic(&mut self, traffic: &[(&str, u64)]) -> bool {
        let free = self.max.saturating_sub(self.named());
        if free == 0 {
            return false;
        }
        let mut candidates: Vec<(&str, u64)> =
            traffic.iter().copied().filter(|(w, n)| *n > 0 && !self.by_workload.contains_key(*w)).collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        candidates.dedup_by(|a, b| a.0 == b.0);
        let given = candidates.len().min(free);
        for (w, _) in candidates.into_iter().take(given) {
            self.give(w);
        }
        given > 0
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const UID: &str = "1b4e2c5a-9f7d-4c2e-8a1b-3c5d7e9f1a2b";

    fn name(path: &str, root: &str) -> String {
        workload_name(&PathBuf::from(path), &PathBuf::from(root), &HashMap::new())
    }

    #[test]
    fn pods_units_and_plain_cgroups() {
        let root = "/sys/fs/cgroup/kubepods.slice";
        let systemd = format!(
            "{root}/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-abc.scope",
            UID.replace('-', "_")
        );
        assert_eq!(name(&systemd, root), format!("pod/{UID}"));
        let cgroupfs = format!("/sys/fs/cgroup/kubepods/besteffort/pod{UID}/0123abcd");
        assert_eq!(name(&cgroupfs, "/sys/fs/cgroup/kubepods"), format!("pod/{UID}"));
        let pods = HashMap::from([(UID.to_string(), "shop/web".to_string())]);
        assert_eq!(workload_name(Path::new(&cgroupfs), Path::new("/sys/fs/cgroup/kubepods"), &pods), "shop/web");
        assert_eq!(name("/sys/fs/cgroup/system.slice/myapp.service", "/sys/fs/cgroup/system.slice"), "myapp.service");
        assert_eq!(
            name("/sys/fs/cgroup/system.slice/myapp.service/worker", "/sys/fs/cgroup/system.slice"),
            "myapp.service"
        );
        assert_eq!(name("/sys/fs/cgroup/apps/batch/job-7", "/sys/fs/cgroup/apps"), "batch/job-7");
        assert_eq!(name("/sys/fs/cgroup/apps", "/sys/fs/cgroup/apps"), "apps");
        // Not a UUID: not a pod.
        assert_eq!(name("/sys/fs/cgroup/apps/podman-thing", "/sys/fs/cgroup/apps"), "podman-thing");
    }

    #[test]
    fn labels_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let l = label_of(&long);
        assert!(l.len() <= MAX_LABEL_BYTES && long.starts_with(&*l));
    }

    #[test]
    fn everyone_is_named_while_everyone_fits() {
        let mut n = Naming::new(3);
        assert!(n.on_seen(["b", "a"].into_iter()));
        assert_eq!((n.slot("a"), n.slot("b")), (2, 3));
        // Two more would not fit in the one free name: wait for traffic.
        assert!(!n.on_seen(["a", "b", "c", "d"].into_iter()));
        assert_eq!(n.slot("c"), SOURCE_OTHER);
    }

    #[test]
    fn the_busiest_get_the_free_names_and_keep_them() {
        let mut n = Naming::new(2);
        assert!(n.on_traffic(&[("quiet", 1), ("busy", 50), ("idle", 0), ("mid", 10)]));
        assert_eq!((n.slot("busy"), n.slot("mid"), n.slot("quiet")), (2, 3, SOURCE_OTHER));
        // Full: a busier newcomer stays `other`; names are never taken back.
        assert!(!n.on_traffic(&[("huge", 1_000_000), ("busy", 0)]));
        assert_eq!((n.slot("huge"), n.slot("busy")), (SOURCE_OTHER, 2));
        assert_eq!(n.labels().len(), 4, "direct, other and two names");
    }

    #[test]
    fn a_weir_taking_over_adopts_the_names_as_far_as_they_fit() {
        let mut n = Naming::new(3);
        assert!(n.on_seen(["mine"].into_iter()));
        let old: Vec<String> = ["shop/web", "mine", "other", "a.service", "b.service"].map(String::from).to_vec();
        assert!(n.adopt(&old));
        assert_eq!((n.slot("mine"), n.slot("shop/web"), n.slot("a.service")), (2, 3, 4));
        assert_eq!(n.slot("b.service"), SOURCE_OTHER, "beyond max_sources");
        assert!(!n.adopt(&old), "nothing left to give");
    }
}
