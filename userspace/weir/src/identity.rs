//! Caller identity, off the data path: the `weir-identity` thread finds the cgroups under the
//! steered directories (cgroup id = the directory's inode number, what the kernel programs
//! record at connect), maps each to a workload ([`naming::workload_name`]), ranks workloads by
//! the requests the workers counted for them, gives the sticky top-N `source` names
//! ([`naming::Naming`]) and publishes the caller table the workers read
//! ([`weir_proxy::caller::CallerTable`], one `ArcSwap` store). It looks at the cgroup tree
//! every [`RESCAN`] and soon after a worker met a cgroup the table does not know.
//! After a takeover it first gives the names the old weir gave ([`Identity::adopt`]), so
//! that the per-caller counters handed over continue under them. Also keeps, for `/callers`,
//! the workloads it knows and ten seconds of per-(service, source) counts to compute rates
//! from. Must not: run on a worker, or make a worker wait: workers
//! only ever load the last published table.

pub mod naming;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use weir_core::accesslog::InlineStr;
use weir_core::config::Protocol;
use weir_core::stats::{Published, SourceSlot};
use weir_proxy::Shared;
use weir_proxy::caller::{Caller, CallerCounts, CallerTable, MAX_CALLERS};

use naming::Naming;

/// The cgroup tree is read again this often (and soon after a worker met an unknown cgroup).
pub const RESCAN: Duration = Duration::from_secs(2);
/// Names are given and rates sampled this often.
const TICK: Duration = Duration::from_secs(1);
/// A worker's miss is answered no sooner than this after the last scan.
const MISS_RESCAN: Duration = Duration::from_millis(100);
/// Longest [`Identity::adopt`] waits for the thread.
const ADOPT_WAIT: Duration = Duration::from_secs(2);
/// The window `/callers` rates are computed over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Cgroup directories read per scan at most (deeper or further ones are not known).
const MAX_CGROUPS: usize = 65_536;
/// A cgroup that is gone stays in the table this long, so the access-log lines of its last
/// requests (named when shipped) still name its workload.
const GONE_GRACE: Duration = Duration::from_secs(60);

/// One cgroup of a workload, for `/callers`.
#[derive(Debug, Clone, Serialize)]
pub struct CgroupView {
    /// cgroup v2 id (what the access log's `source_cgroup_id` says).
    pub id: u64,
    /// Its directory.
    pub path: PathBuf,
}

/// One workload, for `/callers`.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadView {
    /// The workload (the access log's `source_workload`).
    pub workload: String,
    /// The `source` label its requests are counted under (its own name, or `other`).
    pub source: String,
    /// Requests counted for it since weir started (while its cgroups were known).
    pub requests: u64,
    /// Its cgroups now (empty: gone, its name is kept).
    pub cgroups: Vec<CgroupView>,
}

/// (requests, failures) per (service, source slot) at one instant.
type Sample = HashMap<(Arc<str>, SourceSlot), (u64, u64)>;

/// What the identity thread shares with the admin thread (and, one day, discovery).
#[derive(Debug, Default)]
pub struct IdentityShared {
    /// Pod UID → `namespace/owner`, when Kubernetes discovery runs and fills it; pods it does
    /// not name are `pod/<UID>`.
    pub pods: ArcSwap<HashMap<String, String>>,
    /// Every workload known.
    pub workloads: Mutex<Vec<WorkloadView>>,
    window: Mutex<VecDeque<(Instant, Arc<Sample>)>>,
    /// `source` names of a weir taken over, for the thread to give ([`Identity::adopt`]), and
    /// how many such batches it has given and published.
    adopt: Mutex<(Vec<String>, u64)>,
    adopted: parking_lot::Condvar,
}

impl IdentityShared {
    /// Requests and failures per second of each (service, source) over the last
    /// [`RATE_WINDOW`] (since start, while the window fills).
    pub fn rates(&self) -> HashMap<(Arc<str>, SourceSlot), (f64, f64)> {
        let w = self.window.lock();
        let (Some((t0, first)), Some((t1, last))) = (w.front(), w.back()) else { return HashMap::new() };
        let secs = t1.saturating_duration_since(*t0).as_secs_f64();
        if secs <= 0.0 {
            return HashMap::new();
        }
        last.iter()
            .map(|(k, (r, f))| {
                let (r0, f0) = first.get(k).copied().unwrap_or((0, 0));
                (k.clone(), (r.saturating_sub(r0) as f64 / secs, f.saturating_sub(f0) as f64 / secs))
            })
            .collect()
    }
}

/// The running identity thread.
#[derive(Debug)]
pub struct Identity {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Shared with `/callers`.
    pub shared: Arc<IdentityShared>,
}

/// What the identity thread reads.
#[derive(Debug)]
pub struct Inputs {
    /// The steered cgroup directories.
    pub roots: Vec<PathBuf>,
    /// `[metrics] max_sources`.
    pub max_sources: usize,
    /// The data path's shared state (caller table, miss flag, snapshot).
    pub data: Arc<Shared>,
    /// Every worker's per-caller counters.
    pub counts: Vec<Arc<CallerCounts>>,
    /// Every worker's published stats.
    pub stats: Vec<Arc<ArcSwap<Published>>>,
}

impl Identity {
    /// Starts the thread. `drop_caps`: it gives up every capability first (reading the cgroup
    /// tree needs none).
    pub fn start(inputs: Inputs, drop_caps: bool) -> std::io::Result<Identity> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(IdentityShared::default());
        let thread = {
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::Builder::new().name("weir-identity".into()).spawn(move || {
                if drop_caps && let Err(e) = crate::privileges::drop_thread_caps(&Default::default()) {
                    tracing::warn!("identity: cannot drop capabilities: {e}");
                }
                let mut state = State::new(inputs, shared);
                state.run(&stop);
            })?
        };
        Ok(Identity { stop, thread: Some(thread), shared })
    }

    /// Has the thread give `names` (a weir taken over gave them, in that order) before any
    /// other, as far as `max_sources` goes: each caller's series continues under its name.
    /// Returns once the thread has published them (at most [`ADOPT_WAIT`]), so that the
    /// old weir's counters, merged by name, find their names in the caller table.
    pub fn adopt(&self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let deadline = Instant::now() + ADOPT_WAIT;
        let mut a = self.shared.adopt.lock();
        a.0.extend(names);
        let want = a.1 + 1;
        while a.1 < want && !self.shared.adopted.wait_until(&mut a, deadline).timed_out() {}
        if a.1 < want {
            tracing::warn!("the identity thread did not take the old weir's caller names within {ADOPT_WAIT:?}");
        }
    }

    /// Stops the thread (within one poll interval).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A workload the thread knows.
#[derive(Debug)]
struct Known {
    index: u32,
    requests: u64,
}

struct State {
    inputs: Inputs,
    shared: Arc<IdentityShared>,
    naming: Naming,
    /// cgroup id → (directory, workload).
    cgroups: HashMap<u64, (PathBuf, String)>,
    /// Cgroups no longer found, kept in the table until [`GONE_GRACE`] after they went.
    gone: HashMap<u64, (Instant, PathBuf, String)>,
    workloads: HashMap<String, Known>,
    free: Vec<u32>,
    next_index: u32,
    /// Per counter slot, the workers' total at the last tick.
    last_totals: Vec<u64>,
    generation: u64,
}

impl State {
    fn new(inputs: Inputs, shared: Arc<IdentityShared>) -> State {
        let naming = Naming::new(inputs.max_sources);
        State {
            inputs,
            shared,
            naming,
            cgroups: HashMap::new(),
            gone: HashMap::new(),
            workloads: HashMap::new(),
            free: Vec::new(),
            next_index: 0,
            last_totals: vec![0; MAX_CALLERS],
            generation: 0,
        }
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut last_scan: Option<Instant> = None;
        let mut last_tick = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let miss = self.inputs.data.callers.miss.load(Ordering::Relaxed);
            let due = last_scan.is_none_or(|t| {
                let since = now.saturating_duration_since(t);
                since >= RESCAN || (miss && since >= MISS_RESCAN)
            });
            let mut changed = false;
            if due {
                self.inputs.data.callers.miss.store(false, Ordering::Relaxed);
                changed |= self.scan();
                last_scan = Some(now);
            }
            let adopt = std::mem::take(&mut self.shared.adopt.lock().0);
            let adopting = !adopt.is_empty();
            if adopting && self.naming.adopt(&adopt) {
                self.publish();
            }
            if adopting {
                self.shared.adopt.lock().1 += 1;
                self.shared.adopted.notify_all();
            }
            if now.saturating_duration_since(last_tick) >= TICK {
                last_tick = now;
                changed |= self.tick(now);
            }
            if changed {
                self.publish();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the cgroup tree; returns whether the set of cgroups changed.
    fn scan(&mut self) -> bool {
        let pods = self.shared.pods.load_full();
        let mut found: HashMap<u64, (PathBuf, String)> = HashMap::new();
        for root in &self.inputs.roots {
            for (id, dir) in cgroup_dirs(root, MAX_CGROUPS.saturating_sub(found.len())) {
                let workload = naming::workload_name(&dir, root, &pods);
                found.entry(id).or_insert((dir, workload));
            }
        }
        let now = Instant::now();
        let expired = self.gone.len();
        self.gone.retain(|id, (at, _, _)| !found.contains_key(id) && now.saturating_duration_since(*at) < GONE_GRACE);
        let expired = expired != self.gone.len();
        if !expired
            && found.len() == self.cgroups.len()
            && found.iter().all(|(id, (_, w))| self.cgroups.get(id).is_some_and(|(_, old)| old == w))
        {
            return false;
        }
        for (id, (dir, w)) in std::mem::replace(&mut self.cgroups, found) {
            if !self.cgroups.contains_key(&id) {
                self.gone.entry(id).or_insert((now, dir, w));
            }
        }
        // Counter slots for new workloads; slots of unnamed workloads that are gone go back.
        let present: std::collections::HashSet<&str> = self
            .cgroups
            .values()
            .map(|(_, w)| w.as_str())
            .chain(self.gone.values().map(|(_, _, w)| w.as_str()))
            .collect();
        let gone: Vec<String> = self
            .workloads
            .keys()
            .filter(|w| !present.contains(w.as_str()) && self.naming.slot(w) == weir_core::stats::SOURCE_OTHER)
            .cloned()
            .collect();
        for w in gone {
            if let Some(k) = self.workloads.remove(&w) {
                self.free.push(k.index);
            }
        }
        for w in present {
            if !self.workloads.contains_key(w) {
                let index = match self.free.pop() {
                    Some(i) => i,
                    None if (self.next_index as usize) < MAX_CALLERS => {
                        self.next_index += 1;
                        self.next_index - 1
                    }
                    None => u32::MAX, // untracked: counted as `other`, never ranked
                };
                self.workloads.insert(w.to_string(), Known { index, requests: 0 });
            }
        }
        let known: Vec<&str> = self.cgroups.values().map(|(_, w)| w.as_str()).collect();
        self.naming.on_seen(known.iter().copied());
        true
    }

    /// Counts the last interval's requests per workload, gives free names to the busiest, and
    /// samples per-(service, source) counts for the rates. Returns whether a name was given.
    fn tick(&mut self, now: Instant) -> bool {
        let mut deltas: HashMap<u32, u64> = HashMap::new();
        for (i, last) in self.last_totals.iter_mut().enumerate().take(self.next_index as usize) {
            let total: u64 = self.inputs.counts.iter().map(|c| c.get(i)).sum();
            if total > *last {
                deltas.insert(i as u32, total - *last);
            }
            *last = total;
        }
        let mut traffic: Vec<(&str, u64)> = Vec::new();
        for (w, k) in self.workloads.iter_mut() {
            if let Some(&d) = deltas.get(&k.index) {
                k.requests += d;
                traffic.push((w.as_str(), d));
            }
        }
        let named = self.naming.on_traffic(&traffic);
        self.sample(now);
        self.views();
        named
    }

    fn sample(&self, now: Instant) {
        let snapshot = self.inputs.data.snapshot.load();
        let tcp = |name: &str| {
            snapshot.service_index(name).is_some_and(|i| snapshot.config.services[i].protocol == Protocol::Tcp)
        };
        let mut sample: Sample = HashMap::new();
        for shard in &self.inputs.stats {
            let shard = shard.load();
            for (name, s) in &shard.services {
                let no_status_fails = !tcp(name);
                for (slot, st) in s.sources() {
                    let e = sample.entry((name.clone(), slot)).or_default();
                    e.0 += st.requests();
                    e.1 += st.failures(no_status_fails);
                }
            }
        }
        let mut w = self.shared.window.lock();
        w.push_back((now, Arc::new(sample)));
        while w.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW) {
            w.pop_front();
        }
    }

    fn views(&self) {
        let mut by_workload: HashMap<&str, Vec<CgroupView>> = HashMap::new();
        for (id, (dir, w)) in &self.cgroups {
            by_workload.entry(w.as_str()).or_default().push(CgroupView { id: *id, path: dir.clone() });
        }
        let labels = self.naming.labels();
        let mut views: Vec<WorkloadView> = self
            .workloads
            .iter()
            .map(|(w, k)| {
                let mut cgroups = by_workload.remove(w.as_str()).unwrap_or_default();
                cgroups.sort_by_key(|c| c.id);
                WorkloadView {
                    workload: w.clone(),
                    source: labels[usize::from(self.naming.slot(w))].to_string(),
                    requests: k.requests,
                    cgroups,
                }
            })
            .collect();
        views.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.workload.cmp(&b.workload)));
        *self.shared.workloads.lock() = views;
    }

    fn publish(&mut self) {
        self.generation += 1;
        let by_cgroup = self
            .cgroups
            .iter()
            .map(|(id, (_, w))| (id, w))
            .chain(self.gone.iter().map(|(id, (_, _, w))| (id, w)))
            .map(|(id, w)| {
                let index = self.workloads.get(w).map_or(u32::MAX, |k| k.index);
                (*id, Caller { index, source: self.naming.slot(w), workload: InlineStr::new(w.as_bytes()) })
            })
            .collect();
        let table = CallerTable { generation: self.generation, by_cgroup, sources: self.naming.labels().to_vec() };
        self.inputs.data.callers.table.store(Arc::new(table));
        self.views();
    }
}

/// Every cgroup directory under `root` (itself included), with its cgroup id (the directory's
/// inode number), at most `max`.
fn cgroup_dirs(root: &Path, max: usize) -> Vec<(u64, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if out.len() >= max {
            break;
        }
        let Ok(meta) = std::fs::metadata(&dir) else { continue };
        out.push((meta.ino(), dir.clone()));
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}
