//! Outlier detection: consecutive-gateway-failure ejection with a cap, panic mode, and return
//! from ejection on probation.
//!
//! Owns: the health state of one service's endpoints ([`ServiceHealth`]), shared by all worker
//! cores through an `Arc`, so every core sees an ejection within the latency of a cache-line
//! transfer. All state is atomics; every method takes `&self`. No locks, no allocation on the
//! request path (`is_eligible`, `try_claim`, `record`, `eligibility`); the happy path (a success
//! on an endpoint with no recorded failure) only loads, so cache lines stay shared.
//! Must not: read the clock, do I/O, or pick endpoints (the balancer does, using
//! [`ServiceHealth::is_eligible`]).
//!
//! Time in this module is `now_ms: u64`, milliseconds since a process-wide monotonic epoch chosen
//! by the caller (e.g. an `Instant` taken at start-up), because atomics cannot hold an `Instant`.
//! All cores must use the same epoch.
//!
//! Endpoint lifecycle: *active* → (N consecutive gateway failures, within the cap) → *ejected*
//! until `ejected_until_ms` → *probation*: eligible again, one request at a time. The first
//! verdict decides: success → active (counted as restored); gateway failure → ejected again at
//! once for longer. Outcomes that arrive while an endpoint is ejected (requests started before
//! the ejection) are ignored. An endpoint on probation still counts as ejected for the cap and
//! as unhealthy for panic mode until it is restored.
//!
//! Active health checks (run elsewhere) add one state: *unhealthy* ([`ServiceHealth::mark_down`]),
//! from any other state. An unhealthy endpoint gets no request, not even in panic mode, and
//! outcomes recorded for it are ignored; when its checks pass again
//! ([`ServiceHealth::mark_up`]) it returns through probation, as after an ejection (counted
//! as ejected until its probation request passes, so it may briefly hold the cap above
//! `max_ejection_percent`). The ejection cap does not limit it: checks are direct evidence.

use crate::outcome::Outcome;
use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[cfg(test)]
mod tests;

/// Outlier-detection policy of a service. Defaults: the config's (Envoy's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Whether ejection is on at all. Default: true. When off, every endpoint is eligible.
    pub enabled: bool,
    /// Consecutive gateway failures that eject an active endpoint. Default: 5.
    pub consecutive_gateway_failures: u32,
    /// Ejection time per time ejected: the n-th ejection lasts `base × n`. Default: 30 000 ms.
    pub base_ejection_ms: u64,
    /// Cap on `base × n` (before jitter). Default: 300 000 ms.
    pub max_ejection_ms: u64,
    /// Random extra ejection time, uniform in `0..=jitter_ms`. Default: 2 000 ms.
    pub jitter_ms: u64,
    /// At most this percentage of the service's endpoints may be ejected, checked after the
    /// ejection (4 endpoints at 50 % → 2; 3 → 1; 1 → 0). Default: 50.
    pub max_ejection_percent: u32,
    /// Below this percentage of healthy endpoints the service is in panic mode and the caller
    /// balances over all endpoints. 0 disables panic mode. Default: 50.
    pub panic_threshold_percent: u32,
    /// A probe whose outcome was never recorded frees the probation slot after this long.
    /// Default: 15 000 ms (the default request timeout).
    pub probe_timeout_ms: u64,
}

/// Random extra ejection time, uniform in `0..=EJECTION_JITTER_MS` (not configurable).
pub const EJECTION_JITTER_MS: u64 = 2_000;

impl Default for OutlierPolicy {
    /// The config's defaults (`[service.outlier]`).
    fn default() -> Self {
        crate::config::ServiceConfig::defaults().outlier_policy()
    }
}

/// What one attempt says about an endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthSignal {
    /// The endpoint answered (any response that is not a gateway failure, 4xx and 500 included:
    /// the endpoint is alive). Resets the consecutive-failure count; passes probation.
    Success,
    /// A gateway failure ([`Outcome::is_gateway_failure`]).
    GatewayFailure,
    /// Says nothing about the endpoint (keep-alive race, weir's own error, cancelled attempt).
    /// Frees a probation slot without a verdict.
    Neutral,
}

impl From<&Outcome> for HealthSignal {
    fn from(outcome: &Outcome) -> Self {
        if outcome.is_gateway_failure() {
            HealthSignal::GatewayFailure
        } else if matches!(outcome, Outcome::Response { .. }) {
            HealthSignal::Success
        } else {
            HealthSignal::Neutral
        }
    }
}

/// An ejection that [`ServiceHealth::record`] performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ejection {
    /// Endpoint index.
    pub endpoint: usize,
    /// Ejected until this time (ms since the epoch).
    pub until_ms: u64,
    /// Length of this ejection, jitter included (ms).
    pub duration_ms: u64,
    /// Times ejected, this one included (after decay, see [`ServiceHealth::record`]).
    pub times_ejected: u32,
    /// The endpoint failed its probation (re-ejected without N failures).
    pub from_probation: bool,
}

/// A state change caused by [`ServiceHealth::record`], for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum OutlierEvent {
    /// The endpoint was ejected (count `weir_outlier_ejections_total`).
    Ejected(Ejection),
    /// The endpoint reached the failure threshold but the ejection cap was full: not ejected.
    CapReached {
        /// Endpoint index.
        endpoint: usize,
    },
    /// The endpoint passed probation and is active again.
    Restored {
        /// Endpoint index.
        endpoint: usize,
    },
}

/// Whether the caller should balance over eligible endpoints or, in panic mode, over all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Eligibility {
    /// Endpoints neither ejected nor on probation.
    pub healthy_count: u32,
    /// Endpoints of the service.
    pub total: u32,
    /// `healthy_count < panic_threshold_percent × total`: ignore eligibility (and count it).
    pub panic: bool,
}

/// State of an endpoint as shown by the admin `/endpoints` view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// Balanced normally.
    Active,
    /// Not eligible until `ejected_until_ms`.
    Ejected,
    /// Ejection over; the next request decides.
    Probation,
    /// Failing its active health checks: no request until they pass.
    Unhealthy,
}

/// One endpoint in the admin `/endpoints` JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointHealthView {
    /// Endpoint address.
    pub address: SocketAddr,
    /// Current state.
    pub state: EndpointState,
    /// End of the current or last ejection (ms since the epoch), while ejected or on probation.
    pub ejected_until_ms: Option<u64>,
    /// Times ejected (drives the back-off of the next ejection).
    pub times_ejected: u32,
    /// Consecutive gateway failures since the last success.
    pub consecutive_failures: u32,
}

// The endpoint state word: `until_ms << 2 | tag`. One atomic, so a single load tells eligibility
// and a single CAS moves an endpoint between states.
const TAG_ACTIVE: u64 = 0;
/// Ejected until `until`; on probation once `now >= until`. Counted in `ejected`.
const TAG_EJECTED: u64 = 1;
/// A core owns the endpoint while deciding an ejection (a few instructions): not eligible.
const TAG_TRANSITION: u64 = 2;
/// Failing its active health checks. Counted in `down`.
const TAG_DOWN: u64 = 3;
const WORD_ACTIVE: u64 = TAG_ACTIVE;

const fn tag(word: u64) -> u64 {
    word & 3
}
const fn until(word: u64) -> u64 {
    word >> 2
}
const fn ejected_word(until_ms: u64) -> u64 {
    (until_ms << 2) | TAG_EJECTED
}

/// One endpoint's shared state, alone on its cache line so cores recording outcomes for
/// different endpoints do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Cell {
    word: AtomicU64,
    consecutive_failures: AtomicU32,
    times_ejected: AtomicU32,
    /// When the endpoint last passed probation (ms); drives the decay of `times_ejected`.
    healthy_since_ms: AtomicU64,
    /// Probation probe in flight until this time (ms); 0 = none.
    probe_deadline_ms: AtomicU64,
}

/// Health of one service's endpoints, shared by all worker cores (`Arc<ServiceHealth>`).
/// Endpoint indices are positions in the address list it was built from.
#[derive(Debug)]
pub struct ServiceHealth {
    policy: OutlierPolicy,
    addrs: Box<[SocketAddr]>,
    cells: Box<[Cell]>,
    /// Endpoints whose word is `TAG_EJECTED`, plus ejections being decided. Never above
    /// `max_ejected`, except after a reload that shrank the service or a return from failed
    /// health checks.
    ejected: AtomicU32,
    max_ejected: u32,
    /// Endpoints whose word is `TAG_DOWN`.
    down: AtomicU32,
}

impl ServiceHealth {
    /// All endpoints active.
    pub fn new(policy: OutlierPolicy, endpoints: &[SocketAddr]) -> ServiceHealth {
        let n = endpoints.len();
        ServiceHealth {
            policy,
            addrs: endpoints.into(),
            cells: (0..n).map(|_| Cell::default()).collect(),
            ejected: AtomicU32::new(0),
            max_ejected: (n as u64 * u64::from(policy.max_ejection_percent.min(100)) / 100) as u32,
            down: AtomicU32::new(0),
        }
    }

    /// Endpoints under active health checks: all unhealthy until their first check passes
    /// ([`ServiceHealth::mark_up_first`]), so none gets a request before it was checked.
    pub fn new_checked(policy: OutlierPolicy, endpoints: &[SocketAddr]) -> ServiceHealth {
        let h = ServiceHealth::new(policy, endpoints);
        for cell in h.cells.iter() {
            cell.word.store(TAG_DOWN, Ordering::Relaxed);
        }
        h.down.store(endpoints.len() as u32, Ordering::Release);
        h
    }

    /// The health of a reloaded endpoint list: endpoints of `old` that remain (matched by
    /// address) keep their state — ejected ones stay ejected until the same time, failure and
    /// ejection counts carry over — and new ones start active. If the service shrank, carried
    /// ejections may exceed the new cap; no endpoint is un-ejected for it, further ejections wait.
    /// An unhealthy endpoint stays so while `checked` (the service still runs active checks);
    /// without checks it returns through probation.
    /// Off the request path (allocates). Outcomes recorded on `old` after this call are lost.
    pub fn carry_over(old: &ServiceHealth, policy: OutlierPolicy, endpoints: &[SocketAddr], checked: bool) -> Self {
        let new =
            if checked { ServiceHealth::new_checked(policy, endpoints) } else { ServiceHealth::new(policy, endpoints) };
        let mut old_index = HashMap::with_capacity(old.addrs.len());
        for (i, addr) in old.addrs.iter().enumerate() {
            old_index.entry(*addr).or_insert(i);
        }
        let (mut ejected, mut down) = (0, 0);
        for (cell, addr) in new.cells.iter().zip(endpoints) {
            let Some(prev) = old_index.get(addr).map(|&i| &old.cells[i]) else {
                // A new endpoint of a checked service waits for its first check.
                down += u32::from(checked);
                continue;
            };
            let word = prev.word.load(Ordering::Acquire);
            let next = match tag(word) {
                TAG_EJECTED => {
                    ejected += 1;
                    word
                }
                TAG_DOWN if checked => {
                    down += 1;
                    word
                }
                TAG_DOWN if policy.enabled => {
                    ejected += 1;
                    ejected_word(0)
                }
                _ => WORD_ACTIVE,
            };
            cell.word.store(next, Ordering::Relaxed);
            let copy = |to: &AtomicU64, from: &AtomicU64| to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
            copy(&cell.healthy_since_ms, &prev.healthy_since_ms);
            copy(&cell.probe_deadline_ms, &prev.probe_deadline_ms);
            let failures = prev.consecutive_failures.load(Ordering::Relaxed);
            cell.consecutive_failures.store(failures, Ordering::Relaxed);
            cell.times_ejected.store(prev.times_ejected.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        new.ejected.store(ejected, Ordering::Release);
        new.down.store(down, Ordering::Release);
        new
    }

    /// The policy in force.
    pub fn policy(&self) -> &OutlierPolicy {
        &self.policy
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the service has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Endpoint addresses, by index.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Endpoints currently counted as ejected (ejected or on probation).
    pub fn ejected_count(&self) -> u32 {
        self.ejected.load(Ordering::Acquire)
    }

    /// Most endpoints that may be ejected at once: `floor(len × max_ejection_percent / 100)`.
    pub fn max_ejected(&self) -> u32 {
        self.max_ejected
    }

    /// Whether the balancer may pick `endpoint` now: active, or on probation with no probe in
    /// flight. Loads only. Out-of-range indices are not eligible. Always true (in range) when
    /// detection is disabled.
    pub fn is_eligible(&self, endpoint: usize, now_ms: u64) -> bool {
        let Some(cell) = self.cells.get(endpoint) else {
            return false;
        };
        let word = cell.word.load(Ordering::Acquire);
        if !self.policy.enabled {
            return tag(word) != TAG_DOWN;
        }
        match tag(word) {
            TAG_ACTIVE => true,
            TAG_EJECTED if now_ms >= until(word) => probe_free(cell, now_ms),
            _ => false,
        }
    }

    /// The first check of `endpoint` (unhealthy since [`ServiceHealth::new_checked`]) passed:
    /// active at once (nothing failed yet, so no probation). Returns whether it changed.
    pub fn mark_up_first(&self, endpoint: usize) -> bool {
        let Some(cell) = self.cells.get(endpoint) else { return false };
        if cell.word.compare_exchange(TAG_DOWN, WORD_ACTIVE, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        self.down.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Whether `endpoint` may get requests in panic mode: anything but failing its active
    /// health checks. Loads only.
    pub fn is_usable(&self, endpoint: usize) -> bool {
        self.cells.get(endpoint).is_some_and(|c| tag(c.word.load(Ordering::Acquire)) != TAG_DOWN)
    }

    /// Takes `endpoint` out because it fails its active health checks (from any state; an
    /// ejected endpoint's ejection ends here, its count kept). Returns whether it changed.
    /// Idempotent, so a checker may assert it after every failed check.
    pub fn mark_down(&self, endpoint: usize) -> bool {
        let Some(cell) = self.cells.get(endpoint) else { return false };
        loop {
            let word = cell.word.load(Ordering::Acquire);
            match tag(word) {
                TAG_DOWN => return false,
                // Another core is deciding an ejection: the next check tries again.
                TAG_TRANSITION => return false,
                t => {
                    if cell.word.compare_exchange(word, TAG_DOWN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        if t == TAG_EJECTED {
                            self.ejected.fetch_sub(1, Ordering::AcqRel);
                        }
                        cell.probe_deadline_ms.store(0, Ordering::Release);
                        self.down.fetch_add(1, Ordering::AcqRel);
                        return true;
                    }
                }
            }
        }
    }

    /// `endpoint` passes its active health checks again: an unhealthy endpoint goes on
    /// probation (active at once when outlier detection is off). Returns whether it changed.
    /// Idempotent: nothing happens to an endpoint in any other state.
    pub fn mark_up(&self, endpoint: usize, now_ms: u64) -> bool {
        let Some(cell) = self.cells.get(endpoint) else { return false };
        let next = if self.policy.enabled { ejected_word(now_ms) } else { WORD_ACTIVE };
        if cell.word.compare_exchange(TAG_DOWN, next, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        if self.policy.enabled {
            self.ejected.fetch_add(1, Ordering::AcqRel);
        }
        self.down.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Claim `endpoint` for an attempt after the balancer picked it. Active endpoints: true,
    /// loads only. On probation: takes the single probe slot with a CAS, so only one core sends
    /// a request at a time; false if another core holds it (pick again). The slot is freed by
    /// the next [`ServiceHealth::record`] for the endpoint, or after `probe_timeout_ms`.
    /// An attempt abandoned without an outcome should record [`HealthSignal::Neutral`].
    /// In panic mode the caller may skip this.
    pub fn try_claim(&self, endpoint: usize, now_ms: u64) -> bool {
        let Some(cell) = self.cells.get(endpoint) else {
            return false;
        };
        let word = cell.word.load(Ordering::Acquire);
        if !self.policy.enabled {
            return tag(word) != TAG_DOWN;
        }
        match tag(word) {
            TAG_ACTIVE => true,
            TAG_EJECTED if now_ms >= until(word) => {
                let held = cell.probe_deadline_ms.load(Ordering::Acquire);
                if held != 0 && now_ms < held {
                    return false;
                }
                let deadline = now_ms.saturating_add(self.policy.probe_timeout_ms).max(1);
                cell.probe_deadline_ms.compare_exchange(held, deadline, Ordering::AcqRel, Ordering::Acquire).is_ok()
            }
            _ => false,
        }
    }

    /// Record what an attempt on `endpoint` said about it. Returns the state change, if any.
    ///
    /// - Active: a gateway failure counts; the N-th consecutive one ejects for
    ///   `min(base × times_ejected, max) + uniform(0..=jitter)` ms, if the cap allows (checked
    ///   after the ejection, by CAS on the service count: racing cores cannot overshoot it or
    ///   eject the same endpoint twice). A success resets the count (a store only if it was
    ///   non-zero).
    /// - Probation: the verdict. Success → active, `times_ejected` kept; gateway failure →
    ///   ejected again at once with `times_ejected + 1`; neutral → frees the probe slot.
    /// - Ejected (not yet expired): ignored.
    ///
    /// `times_ejected` decays by one for every `max_ejection_ms` an endpoint stays active after
    /// passing probation, so an endpoint that failed once long ago starts again from `base`.
    pub fn record(
        &self,
        endpoint: usize,
        signal: HealthSignal,
        now_ms: u64,
        rng: &mut impl Rng,
    ) -> Option<OutlierEvent> {
        if !self.policy.enabled {
            return None;
        }
        let cell = self.cells.get(endpoint)?;
        let word = cell.word.load(Ordering::Acquire);
        match tag(word) {
            TAG_ACTIVE => match signal {
                HealthSignal::Success => {
                    if cell.consecutive_failures.load(Ordering::Relaxed) != 0 {
                        cell.consecutive_failures.store(0, Ordering::Relaxed);
                    }
                    None
                }
                HealthSignal::Neutral => None,
                HealthSignal::GatewayFailure => {
                    let failures = cell.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if failures < self.policy.consecutive_gateway_failures.max(1) {
                        return None;
                    }
                    self.eject_active(endpoint, cell, now_ms, rng)
                }
            },
            TAG_EJECTED if now_ms >= until(word) => self.probation_verdict(endpoint, cell, word, signal, now_ms, rng),
            _ => None,
        }
    }

    fn eject_active(&self, endpoint: usize, cell: &Cell, now_ms: u64, rng: &mut impl Rng) -> Option<OutlierEvent> {
        // Own the endpoint first: exactly one core decides its ejection.
        cell.word.compare_exchange(WORD_ACTIVE, TAG_TRANSITION, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        let max = self.max_ejected;
        let reserved = self.ejected.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        if reserved.is_err() {
            // Failures stay at the threshold: the next failure tries again.
            cell.word.store(WORD_ACTIVE, Ordering::Release);
            return Some(OutlierEvent::CapReached { endpoint });
        }
        let times = self.decayed_times(cell, now_ms).saturating_add(1);
        Some(OutlierEvent::Ejected(self.publish_ejection(endpoint, cell, times, now_ms, rng, false)))
    }

    fn probation_verdict(
        &self,
        endpoint: usize,
        cell: &Cell,
        word: u64,
        signal: HealthSignal,
        now_ms: u64,
        rng: &mut impl Rng,
    ) -> Option<OutlierEvent> {
        match signal {
            HealthSignal::Neutral => {
                if cell.probe_deadline_ms.load(Ordering::Relaxed) != 0 {
                    cell.probe_deadline_ms.store(0, Ordering::Release);
                }
                None
            }
            HealthSignal::Success => {
                cell.word.compare_exchange(word, WORD_ACTIVE, Ordering::AcqRel, Ordering::Relaxed).ok()?;
                cell.consecutive_failures.store(0, Ordering::Relaxed);
                cell.healthy_since_ms.store(now_ms, Ordering::Relaxed);
                cell.probe_deadline_ms.store(0, Ordering::Release);
                self.ejected.fetch_sub(1, Ordering::AcqRel);
                Some(OutlierEvent::Restored { endpoint })
            }
            HealthSignal::GatewayFailure => {
                // Still counted as ejected: no cap check needed.
                cell.word.compare_exchange(word, TAG_TRANSITION, Ordering::AcqRel, Ordering::Relaxed).ok()?;
                let times = cell.times_ejected.load(Ordering::Relaxed).saturating_add(1);
                let ejection = self.publish_ejection(endpoint, cell, times, now_ms, rng, true);
                Some(OutlierEvent::Ejected(ejection))
            }
        }
    }

    /// Called by the core that owns the endpoint in `TAG_TRANSITION` with a reserved slot.
    fn publish_ejection(
        &self,
        endpoint: usize,
        cell: &Cell,
        times: u32,
        now_ms: u64,
        rng: &mut impl Rng,
        from_probation: bool,
    ) -> Ejection {
        let policy = &self.policy;
        let backoff = policy.base_ejection_ms.saturating_mul(u64::from(times)).min(policy.max_ejection_ms);
        let jitter = if policy.jitter_ms > 0 { rng.random_range(0..=policy.jitter_ms) } else { 0 };
        let duration_ms = backoff.saturating_add(jitter).max(1);
        // Keep `until << 2` in range: about 36 million years of uptime.
        let until_ms = now_ms.saturating_add(duration_ms).min(u64::MAX >> 2);
        cell.times_ejected.store(times, Ordering::Relaxed);
        cell.consecutive_failures.store(0, Ordering::Relaxed);
        cell.probe_deadline_ms.store(0, Ordering::Relaxed);
        cell.word.store(ejected_word(until_ms), Ordering::Release);
        Ejection { endpoint, until_ms, duration_ms, times_ejected: times, from_probation }
    }

    fn decayed_times(&self, cell: &Cell, now_ms: u64) -> u32 {
        let times = cell.times_ejected.load(Ordering::Relaxed);
        if times == 0 {
            return 0;
        }
        let healthy_for = now_ms.saturating_sub(cell.healthy_since_ms.load(Ordering::Relaxed));
        let steps = healthy_for / self.policy.max_ejection_ms.max(1);
        times.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
    }

    /// Healthy count and panic mode, in O(1) from the service-wide ejected and unhealthy
    /// counts (endpoints on probation count as unhealthy until restored). With no endpoint:
    /// not panic, the caller answers `no-healthy-endpoint`.
    pub fn eligibility(&self) -> Eligibility {
        let total = self.cells.len() as u32;
        let down = self.down.load(Ordering::Acquire);
        let ejected = if self.policy.enabled { self.ejected.load(Ordering::Acquire) } else { 0 };
        let healthy_count = total.saturating_sub(ejected).saturating_sub(down);
        let panic = total > 0
            && u64::from(healthy_count) * 100 < u64::from(self.policy.panic_threshold_percent) * u64::from(total);
        Eligibility { healthy_count, total, panic }
    }

    /// Per-endpoint view for the admin `/endpoints` JSON. Allocates; admin thread only.
    pub fn snapshot(&self, now_ms: u64) -> Vec<EndpointHealthView> {
        self.cells
            .iter()
            .zip(self.addrs.iter())
            .map(|(cell, &address)| {
                let word = cell.word.load(Ordering::Acquire);
                let (state, ejected_until_ms) = match tag(word) {
                    TAG_DOWN => (EndpointState::Unhealthy, None),
                    TAG_EJECTED if now_ms >= until(word) => (EndpointState::Probation, Some(until(word))),
                    TAG_EJECTED => (EndpointState::Ejected, Some(until(word))),
                    _ => (EndpointState::Active, None),
                };
                let times_ejected = match state {
                    EndpointState::Active => self.decayed_times(cell, now_ms),
                    _ => cell.times_ejected.load(Ordering::Relaxed),
                };
                EndpointHealthView {
                    address,
                    state,
                    ejected_until_ms,
                    times_ejected,
                    consecutive_failures: cell.consecutive_failures.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

fn probe_free(cell: &Cell, now_ms: u64) -> bool {
    let held = cell.probe_deadline_ms.load(Ordering::Acquire);
    held == 0 || now_ms >= held
}
