//! weir's memory budget: what the process holds whatever the traffic (the access-log rings,
//! the span rings when tracing is on, each worker's pools and runtime, the process itself) against the memory limit of its own
//! cgroup (v2 `memory.max`, or v1 `memory.limit_in_bytes` where the memory controller is
//! mounted as v1; the smallest limit on the way up to the hierarchy's root). When
//! `[access_log] ring_records` is unset the rings are sized from the limit; a config whose
//! fixed memory plus the headroom does not fit is refused before anything starts, with the
//! numbers and what to change. docs/OPERATING.md ("Memory") gives the same formula.
//! Must not: guess: a limit that cannot be read counts as no limit.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use weir_core::accesslog::LogRecord;
use weir_core::config::{Config, DEFAULT_RING_RECORDS, LogSink};

const MIB: u64 = 1024 * 1024;
/// Bytes of one access-log ring slot.
pub const RECORD_BYTES: u64 = std::mem::size_of::<LogRecord>() as u64;
/// Bytes of one span ring slot (tracing on: [`crate::otlp::RING_SPANS`] per worker).
pub const SPAN_BYTES: u64 = std::mem::size_of::<weir_proxy::trace::SpanRecord>() as u64;
/// Per worker, besides its ring: the I/O buffer pool (256 buffers of 16 KiB once the worker has
/// served that many exchanges at once), the response-head pool (256 heads), the io_uring rings
/// and their provided-buffer ring for multishot receive (128 buffers of 8 KiB), the stats shard
/// and the thread's stack.
pub const WORKER_BYTES: u64 = 6 * MIB;
/// The process itself: the binary's pages, the admin, log-shipper and config-watcher threads,
/// the shipper's batch buffers and the allocator's spare.
pub const PROCESS_BYTES: u64 = 16 * MIB;
/// The headroom kept free beyond the fixed memory is a quarter of the limit, and at least this:
/// it holds connections (about 5 KiB each when idle, the kernel's socket included) and the
/// buffers of requests in flight beyond the pool.
pub const HEADROOM_MIN_BYTES: u64 = 16 * MIB;
/// Headroom: 1/`HEADROOM_DIVISOR` of the limit.
pub const HEADROOM_DIVISOR: u64 = 4;
/// Rings sized from the limit take at most 1/`RING_SHARE_DIVISOR` of it, all workers together.
pub const RING_SHARE_DIVISOR: u64 = 4;
/// The smallest ring config validation accepts.
const MIN_RING_RECORDS: usize = 16;

/// A cgroup memory limit and the file it was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// `memory.max` or `memory.limit_in_bytes` of this process's cgroup or an ancestor.
    pub file: PathBuf,
}

/// What weir will hold, and the limit it was checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    /// The cgroup limit, if there is one.
    pub limit: Option<MemoryLimit>,
    /// Worker threads.
    pub workers: usize,
    /// Each worker's access-log ring capacity; `None` when access logging is off.
    pub ring_records: Option<usize>,
    /// `ring_records` was unset and sized here (from the limit, or the default without one).
    pub ring_records_sized: bool,
    /// All rings.
    pub rings_bytes: u64,
    /// Each worker's span ring capacity; `None` when tracing is off.
    pub span_ring_records: Option<usize>,
    /// All span rings.
    pub span_rings_bytes: u64,
    /// All workers' pools and state.
    pub workers_bytes: u64,
    /// The process itself.
    pub process_bytes: u64,
    /// Kept free for connections and requests in flight (0 without a limit).
    pub headroom_bytes: u64,
}

impl MemoryPlan {
    /// Fixed memory plus headroom.
    pub fn needed_bytes(&self) -> u64 {
        self.rings_bytes + self.span_rings_bytes + self.workers_bytes + self.process_bytes + self.headroom_bytes
    }

    /// One line for logs and `weir check`.
    pub fn summary(&self) -> String {
        let rings = match self.ring_records {
            Some(n) => format!(
                "access-log rings {} × {n} records{} = {}",
                self.workers,
                if self.ring_records_sized { " (sized from the memory limit)" } else { "" },
                mib(self.rings_bytes)
            ),
            None => "no access-log rings".into(),
        };
        match &self.limit {
            Some(l) => format!(
                "memory limit {} ({}): {rings}; with pools, process and headroom {} in all",
                mib(l.bytes),
                l.file.display(),
                mib(self.needed_bytes())
            ),
            None => format!("no cgroup memory limit; {rings}"),
        }
    }

    fn parts(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.ring_records {
            parts.push(format!(
                "access-log rings {} workers × {n} records × {RECORD_BYTES} B = {}",
                self.workers,
                mib(self.rings_bytes)
            ));
        }
        if let Some(n) = self.span_ring_records {
            parts.push(format!(
                "span rings {} workers × {n} spans × {SPAN_BYTES} B = {}",
                self.workers,
                mib(self.span_rings_bytes)
            ));
        }
        parts.push(format!(
            "worker pools and state {} × {} = {}",
            self.workers,
            mib(WORKER_BYTES),
            mib(self.workers_bytes)
        ));
        parts.push(format!("process {}", mib(self.process_bytes)));
        parts.push(format!(
            "headroom for connections and requests in flight {} (a quarter of the limit, at least {})",
            mib(self.headroom_bytes),
            mib(HEADROOM_MIN_BYTES)
        ));
        parts.join(", ")
    }
}

/// The config's fixed memory plus headroom does not fit the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryShortfall {
    /// What was asked for (with the smallest rings when they were to be sized).
    pub plan: MemoryPlan,
    /// The largest `ring_records` that fits with the other parts as they are (None: not even
    /// the smallest ring).
    pub max_ring_records: Option<usize>,
    /// The smallest limit that fits the config as it is.
    pub min_limit_bytes: u64,
}

impl fmt::Display for MemoryShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.plan;
        let limit = p.limit.as_ref().map_or(0, |l| l.bytes);
        let file = p.limit.as_ref().map_or_else(String::new, |l| format!(", {}", l.file.display()));
        write!(
            f,
            "memory limit {} ({limit} bytes{file}) is too small for this config: {}: {} in all. ",
            mib(limit),
            p.parts(),
            mib(p.needed_bytes())
        )?;
        let mut fixes = Vec::new();
        match (p.ring_records_sized, self.max_ring_records) {
            (false, Some(max)) => fixes.push(format!(
                "lower [access_log] ring_records to at most {max} (or remove it: weir then sizes the rings from the limit)"
            )),
            (false, None) if p.ring_records.is_some() => {
                fixes.push("set [access_log] sink = \"off\" or lower [access_log] ring_records".into())
            }
            _ => {}
        }
        if p.workers > 1 {
            fixes.push(format!("lower [proxy] workers (now {}; 0 is one per CPU)", p.workers));
        }
        fixes.push(format!("raise the memory limit to at least {}", mib(self.min_limit_bytes)));
        let last = fixes.pop().unwrap_or_default();
        if fixes.is_empty() { write!(f, "Fix: {last}") } else { write!(f, "Fix: {}, or {last}", fixes.join(", ")) }
    }
}

impl std::error::Error for MemoryShortfall {}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// The headroom kept free under `limit`.
pub fn headroom(limit: u64) -> u64 {
    (limit / HEADROOM_DIVISOR).max(HEADROOM_MIN_BYTES)
}

/// The smallest limit that holds `fixed` bytes plus its headroom.
fn min_limit(fixed: u64) -> u64 {
    let limit = (fixed + HEADROOM_MIN_BYTES).max((fixed * HEADROOM_DIVISOR).div_ceil(HEADROOM_DIVISOR - 1));
    limit.div_ceil(MIB) * MIB
}

/// What `config` with `workers` workers holds, checked against `limit`. Sizes the rings when
/// `[access_log] ring_records` is unset: a quarter of the limit for all rings, at most what
/// fits beside the rest, at most [`DEFAULT_RING_RECORDS`] each (that default without a limit).
#[expect(clippy::result_large_err, reason = "called once per start or check; the shortfall is the report")]
pub fn plan(config: &Config, workers: usize, limit: Option<MemoryLimit>) -> Result<MemoryPlan, MemoryShortfall> {
    let workers = workers.max(1);
    let w = workers as u64;
    let workers_bytes = w * WORKER_BYTES;
    let span_ring_records = config.tracing.enabled().then_some(crate::otlp::RING_SPANS);
    let span_rings_bytes = span_ring_records.map_or(0, |n| w * n as u64 * SPAN_BYTES);
    let other = workers_bytes + span_rings_bytes + PROCESS_BYTES;
    let limit_bytes = limit.as_ref().map(|l| l.bytes);
    let headroom_bytes = limit_bytes.map_or(0, headroom);
    let logging = config.access_log.sink != LogSink::Off;
    let sized = config.access_log.ring_records.is_none();
    let ring_records = match (logging, config.access_log.ring_records, limit_bytes) {
        (false, _, _) => None,
        (true, Some(n), _) => Some(n),
        (true, None, None) => Some(DEFAULT_RING_RECORDS),
        (true, None, Some(l)) => {
            let share = l / RING_SHARE_DIVISOR / w / RECORD_BYTES;
            let fits = l.saturating_sub(headroom_bytes + other) / w / RECORD_BYTES;
            Some((share.min(fits) as usize).clamp(MIN_RING_RECORDS, DEFAULT_RING_RECORDS))
        }
    };
    let rings_bytes = ring_records.map_or(0, |n| w * n as u64 * RECORD_BYTES);
    let plan = MemoryPlan {
        limit,
        workers,
        ring_records,
        ring_records_sized: sized,
        rings_bytes,
        span_ring_records,
        span_rings_bytes,
        workers_bytes,
        process_bytes: PROCESS_BYTES,
        headroom_bytes,
    };
    match limit_bytes {
        Some(l) if plan.needed_bytes() > l => {
            let max = l.saturating_sub(headroom_bytes + other) / w / RECORD_BYTES;
            Err(MemoryShortfall {
                max_ring_records: (max >= MIN_RING_RECORDS as u64).then_some(max as usize),
                min_limit_bytes: min_limit(rings_bytes + other),
                plan,
            })
        }
        _ => Ok(plan),
    }
}

/// The memory limit of this process's cgroup, if it has one and it can be read.
pub fn cgroup_memory_limit() -> Option<MemoryLimit> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    limit_from(&cgroup, &mountinfo, |p| std::fs::read_to_string(p).ok())
}

/// The limit for a process with `/proc/self/cgroup` text `cgroup` and `/proc/self/mountinfo`
/// text `mountinfo`; `read` reads a cgroup file. The memory controller is v1 when a v1
/// hierarchy lists it, else the v2 (unified) hierarchy's `memory.max` applies. Every cgroup
/// from the process's own up to the mount's root is read, and the smallest limit wins (an
/// ancestor's limit binds its descendants).
fn limit_from(cgroup: &str, mountinfo: &str, read: impl Fn(&Path) -> Option<String>) -> Option<MemoryLimit> {
    let entries: Vec<(&str, &str)> = cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((controllers, path))
        })
        .collect();
    let v1 = entries.iter().find(|(controllers, _)| controllers.split(',').any(|c| c == "memory"));
    let (path, fstype, file) = match v1 {
        Some((_, path)) => (*path, "cgroup", "memory.limit_in_bytes"),
        None => (entries.iter().find(|(controllers, _)| controllers.is_empty())?.1, "cgroup2", "memory.max"),
    };
    let (root, mount) = mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split_whitespace();
        if post.next()? != fstype {
            return None;
        }
        let options = post.nth(1).unwrap_or("");
        if fstype == "cgroup" && !options.split(',').any(|o| o == "memory") {
            return None;
        }
        let mut pre = pre.split_whitespace().skip(3);
        let (root, mount) = (pre.next()?, pre.next()?);
        (path == root || path.starts_with(&format!("{}/", root.trim_end_matches('/'))) || root == "/")
            .then(|| (root.to_string(), PathBuf::from(mount)))
    })?;
    let relative = path.strip_prefix(root.trim_end_matches('/')).unwrap_or("").trim_start_matches('/');
    let mut dir = mount.join(relative);
    let mut best: Option<MemoryLimit> = None;
    loop {
        let candidate = dir.join(file);
        if let Some(bytes) = read(&candidate).and_then(|t| parse_limit(&t))
            && best.as_ref().is_none_or(|b| bytes < b.bytes)
        {
            best = Some(MemoryLimit { bytes, file: candidate });
        }
        if dir == mount || !dir.pop() || !dir.starts_with(&mount) {
            return best;
        }
    }
}

/// A limit file's value; `None` for "no limit" (`max` on v2, the page-rounded `i64::MAX` on v1).
fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse::<u64>().ok().filter(|&b| b < 1 << 62)
}

#[cfg(test)]
mod tests;
