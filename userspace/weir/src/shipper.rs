//! The access-log shipper: one thread that drains every worker's ring, formats NDJSON lines in
//! batches and writes them to the sink (stdout, a file reopened on SIGUSR1, TCP or a unix
//! socket, reconnected with back-off). Owns the gap accounting: records dropped because a ring
//! was full or the sink failed are counted, and the next shipped line carries how many were
//! lost before it (`dropped_before`). Lines reach a sink whole (`sink.rs`): a full disk or a
//! stalled socket never leaves part of a record followed by another. A network sink that takes
//! nothing is written at most [`MAX_UNCONFIRMED_BYTES`] per connection and, once it has taken
//! nothing for [`SINK_WRITE_TIMEOUT`], dropped (between two lines) and retried with back-off
//! that only a sink taking lines resets; while there is no sink to write to, records are
//! drained and counted, not formatted. So a stalled sink costs the node neither CPU nor
//! megabytes of loopback traffic.
//! A steered caller's workload (`source_workload`) is looked up here, by the record's cgroup
//! id in the published caller table, so that the record a worker writes stays small.
//! Must not: make a worker wait: a slow, dead or never-reading sink only stalls this thread,
//! and the rings absorb or drop.

mod sink;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_core::accesslog::{LineNames, NO_ID, Names};
use weir_core::config::LogSink;
use weir_proxy::caller::Callers;
use weir_proxy::{LogSource, Shared};

use sink::{Settled, Sink, Step};

/// Records formatted per ring per turn.
const BATCH_RECORDS: usize = 512;
/// Formatted lines the shipper holds at most (plus one line) before it writes them.
const MAX_PENDING_BYTES: usize = 256 * 1024;
/// How long a connected network sink may take nothing, while bytes wait for it, before it is
/// given up as stalled.
const SINK_WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// Bytes written to a network sink connection that its peer has not taken yet, at most: a
/// sink that stops reading gets no more than this, not the socket buffers' megabytes.
pub const MAX_UNCONFIRMED_BYTES: u64 = 1 << 20;
/// A network sink connection that has taken lines for this long resets the back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Counters the admin server reads.
#[derive(Debug, Default)]
pub struct ShipperStats {
    /// Lines the sink has taken (for a network sink: acknowledged by its side of the socket).
    pub shipped: AtomicU64,
    /// Records lost because the sink failed (ring drops are counted by the workers).
    pub sink_dropped: AtomicU64,
    /// Set by SIGUSR1: reopen the file sink (after logrotate moved it).
    pub reopen: AtomicBool,
}

/// The running shipper.
#[derive(Debug)]
pub struct Shipper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Shared counters.
    pub stats: Arc<ShipperStats>,
    ring_dropped: Vec<Arc<AtomicU64>>,
}

impl Shipper {
    /// Starts shipping from `sources` to `sink`, naming callers from `data`'s caller table.
    /// `drop_caps`: the thread gives up every capability first (it needs none).
    /// `names`: backend names by the ids records carry.
    pub fn start(
        sink: LogSink,
        sources: Vec<LogSource>,
        data: Arc<Shared>,
        drop_caps: bool,
        names: Arc<Names>,
    ) -> std::io::Result<Shipper> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ShipperStats::default());
        let ring_dropped = sources.iter().map(|s| s.dropped.clone()).collect();
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::Builder::new().name("weir-logship".into()).spawn(move || {
                if drop_caps && let Err(e) = crate::privileges::drop_thread_caps(&Default::default()) {
                    tracing::warn!("log shipper: cannot drop capabilities: {e}");
                }
                run(sink, sources, &data.callers, stop, stats, &names)
            })?
        };
        Ok(Shipper { stop, thread: Some(thread), stats, ring_dropped })
    }

    /// Records dropped in total (full rings + sink failures).
    pub fn dropped(&self) -> u64 {
        self.ring_dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum::<u64>()
            + self.stats.sink_dropped.load(Ordering::Relaxed)
    }

    /// Ships what is queued (bounded by `timeout`) and stops.
    pub fn stop(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + timeout;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn run(
    kind: LogSink,
    mut sources: Vec<LogSource>,
    callers: &Callers,
    stop: Arc<AtomicBool>,
    stats: Arc<ShipperStats>,
    names: &Names,
) {
    let mut sink = Sink::new(kind);
    let mut seen_dropped = vec![0u64; sources.len()];
    // Lines lost at the sink since the last formatted line (reported by the next one).
    let mut sink_gap = 0u64;
    loop {
        if stats.reopen.swap(false, Ordering::Relaxed) && !sink.reopen() {
            stats.reopen.store(true, Ordering::Relaxed);
        }
        let stopping = stop.load(Ordering::SeqCst);
        let mut settled = Settled::default();
        let step = sink.next_step(&mut settled);
        let mut taken = 0u64;
        if step != Step::Hold {
            let table = callers.table.load();
            'sources: for (i, src) in sources.iter_mut().enumerate() {
                let n = src.consumer.slots().min(BATCH_RECORDS);
                if n == 0 {
                    continue;
                }
                let Ok(chunk) = src.consumer.read_chunk(n) else { continue };
                // Records not iterated (a full batch) stay in the ring for the next turn.
                for record in chunk {
                    let dropped_now = src.dropped.load(Ordering::Relaxed);
                    let gap = dropped_now - seen_dropped[i] + std::mem::take(&mut sink_gap);
                    seen_dropped[i] = dropped_now;
                    taken += 1;
                    if step == Step::Write {
                        let backend = (record.backend != NO_ID).then(|| names.get(record.backend)).flatten();
                        let source_workload = table
                            .by_cgroup
                            .get(&record.source_cgroup_id)
                            .and_then(|c| std::str::from_utf8(c.workload.as_bytes()).ok());
                        sink.queue(&record, gap, LineNames { backend: backend.as_deref(), source_workload });
                        if sink.pending_bytes() >= MAX_PENDING_BYTES {
                            break 'sources;
                        }
                    } else {
                        settled.lost += 1;
                        settled.gap += 1 + gap;
                    }
                }
            }
        }
        sink.flush(&mut settled);
        sink_gap += settled.gap;
        stats.shipped.fetch_add(settled.shipped, Ordering::Relaxed);
        stats.sink_dropped.fetch_add(settled.lost, Ordering::Relaxed);
        if taken == 0 {
            if stopping && !sink.flushing() {
                return;
            }
            sink.wait(IDLE_POLL);
        }
    }
}

#[cfg(test)]
mod tests;
