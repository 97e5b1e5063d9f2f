//! Local rate limits (`[service.rate_limit]`): a token bucket per service, or per calling
//! workload, that holds node-wide whatever the number of workers.
//!
//! The bucket is GCRA (a token bucket kept as one "theoretical arrival time" per key) in an
//! atomic shared by every worker ([`RateLimit`]); each worker draws tokens from it in small
//! batches into its own [`LocalTokens`] and spends them without touching anything shared. So
//! the request path of a worker with tokens left reads and writes only its own memory; a
//! refill is one CAS per batch; a worker whose bucket is empty reads one shared word and
//! writes nothing. Tokens are granted only by the shared bucket, so the node never passes
//! more than `rate × t + burst` requests; a worker can hold at most one batch it has not
//! spent yet, so the node passes at least `rate × t − workers × batch`. A batch is a
//! twentieth of a worker's share of one second (at least one token, at most the burst).
//!
//! Per client, the shared bucket is one slot of a fixed table (4-way set associative): a new
//! client takes the slot of its set that is longest past its last request, so memory never
//! grows with the number of clients. A bucket whose time has passed is exactly a full
//! bucket, so evicting such a slot loses nothing; with more active clients than slots, an
//! evicted client starts again with a full bucket (the limit errs towards letting through).
//! Each worker keeps its batches for recent clients in a small direct-mapped array.
//!
//! Callers are keyed by [`Caller`]: the workload identity (the caller's cgroup id) of a
//! steered connection, else the peer's IP address. Time is `now_ns`, nanoseconds since an epoch all
//! workers share. Must not: lock, allocate on the request path, or read the clock.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{RateLimitConfig, RateLimitPer};

/// Who is calling, as a rate limit keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The peer's address (the calling workload's IP).
    Addr(IpAddr),
    /// A workload identity: the caller's cgroup v2 id, for a connection weir steered.
    Workload(u64),
}

impl Caller {
    /// A non-zero 64-bit key (splitmix64 of the identity; its lowest bit is always set, so
    /// tables index it by higher bits).
    pub fn key(self) -> u64 {
        let raw: u64 = match self {
            Caller::Addr(IpAddr::V4(v4)) => u64::from(u32::from(v4)),
            Caller::Addr(IpAddr::V6(v6)) => {
                let b = u128::from(v6);
                ((b >> 64) as u64).rotate_left(17) ^ (b as u64) ^ 0x6a09_e667_f3bc_c909
            }
            Caller::Workload(id) => id ^ 0xbb67_ae85_84ca_a73b,
        };
        let mut z = raw.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) | 1
    }
}

/// Slots of the per-client table (ways × sets).
pub const CLIENT_SLOTS: usize = 4096;
const WAYS: usize = 4;
/// Per-worker batches kept for recent clients.
const LOCAL_CLIENTS: usize = 64;

/// The shared side of one service's rate limit.
#[derive(Debug)]
pub struct RateLimit {
    /// Nanoseconds between two tokens.
    interval_ns: u64,
    /// Tokens a full bucket holds.
    burst: u64,
    /// Tokens a worker draws at once.
    batch: u32,
    service: AtomicU64,
    /// Per client: `CLIENT_SLOTS` pairs of (key, theoretical arrival time).
    clients: Box<[Slot]>,
}

#[derive(Debug, Default)]
struct Slot {
    key: AtomicU64,
    tat: AtomicU64,
}

/// Why a request was not let through: when the next one would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Time until the bucket holds a token again.
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u32 {
        (self.retry_after.as_nanos().div_ceil(1_000_000_000) as u32).max(1)
    }
}

impl RateLimit {
    /// The limit of `cfg` for `workers` workers.
    pub fn new(cfg: &RateLimitConfig, workers: usize) -> RateLimit {
        let rate = u64::from(cfg.requests_per_second.max(1));
        let burst = u64::from(cfg.burst().max(1));
        let share = rate / (workers.max(1) as u64 * 20);
        let batch = share.clamp(1, burst) as u32;
        let clients = match cfg.per {
            RateLimitPer::Client => (0..CLIENT_SLOTS).map(|_| Slot::default()).collect(),
            RateLimitPer::Service => Box::default(),
        };
        RateLimit { interval_ns: 1_000_000_000 / rate, burst, batch, service: AtomicU64::new(0), clients }
    }

    /// One bucket per caller (`per = "client"`).
    pub fn per_client(&self) -> bool {
        !self.clients.is_empty()
    }

    /// Tokens a worker draws at once.
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// Takes up to `want` tokens from `tat` at `now_ns`: how many, or how long until one.
    fn take(&self, tat: &AtomicU64, want: u32, now_ns: u64) -> Result<u32, Limited> {
        let limit = now_ns.saturating_add(self.burst * self.interval_ns);
        let mut seen = tat.load(Ordering::Acquire);
        loop {
            let base = seen.max(now_ns);
            let next = base.saturating_add(self.interval_ns);
            if next > limit {
                return Err(Limited { retry_after: Duration::from_nanos(next - limit) });
            }
            let n = ((limit - base) / self.interval_ns).min(u64::from(want.max(1)));
            match tat.compare_exchange_weak(seen, base + n * self.interval_ns, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(n as u32),
                Err(now_seen) => seen = now_seen,
            }
        }
    }

    /// The slot of `key`: its own, or the one of its set longest past its last request.
    fn slot(&self, key: u64) -> &Slot {
        let sets = self.clients.len() / WAYS;
        let set = &self.clients[((key >> 32) as usize % sets) * WAYS..][..WAYS];
        if let Some(s) = set.iter().find(|s| s.key.load(Ordering::Acquire) == key) {
            return s;
        }
        let victim = set.iter().min_by_key(|s| s.tat.load(Ordering::Relaxed)).unwrap_or(&set[0]);
        let (old_key, old_tat) = (victim.key.load(Ordering::Acquire), victim.tat.load(Ordering::Acquire));
        if victim.key.compare_exchange(old_key, key, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // A full bucket for the newcomer (unless a racing worker already drew from it).
            let _ = victim.tat.compare_exchange(old_tat, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        victim
    }

    /// Clients the shared table remembers now (for tests and the admin view).
    pub fn clients_known(&self) -> usize {
        self.clients.iter().filter(|s| s.key.load(Ordering::Relaxed) != 0).count()
    }
}

/// One worker's tokens drawn from a [`RateLimit`] and not spent yet.
#[derive(Debug, Clone)]
pub struct LocalTokens {
    service: u32,
    clients: Box<[(u64, u32)]>,
}

impl LocalTokens {
    /// No tokens yet, for `limit`.
    pub fn new(limit: &RateLimit) -> LocalTokens {
        let clients = if limit.per_client() { vec![(0, 0); LOCAL_CLIENTS].into() } else { Box::default() };
        LocalTokens { service: 0, clients }
    }

    /// Lets one request of `caller` through, or says when the next would pass.
    pub fn admit(&mut self, limit: &RateLimit, caller: Caller, now_ns: u64) -> Result<(), Limited> {
        if !limit.per_client() {
            if self.service == 0 {
                self.service = limit.take(&limit.service, limit.batch, now_ns)?;
            }
            self.service -= 1;
            return Ok(());
        }
        let key = caller.key();
        let entry = &mut self.clients[(key >> 16) as usize % LOCAL_CLIENTS];
        if entry.0 != key {
            // Another client's batch (at most one, unspent) is forgotten: never more passes.
            *entry = (key, 0);
        }
        if entry.1 == 0 {
            entry.1 = limit.take(&limit.slot(key).tat, limit.batch, now_ns)?;
        }
        entry.1 -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
