//! Per-core load balancers: choose an endpoint index for an attempt.
//!
//! Owns: the balancing policies (power-of-two-choices over least outstanding requests with a
//! peak-EWMA latency tie-break, smooth weighted round robin, weighted random) and the per-endpoint
//! load this core observes (outstanding requests, latency estimate).
//! Must not: share state between cores (a [`Balancer`] is a per-worker value used with
//! `&mut self`; build one per core from the immutable endpoint list, off the request path),
//! decide health (the caller passes eligibility, from `outlier`), allocate on `pick`/`on_*`, read
//! the clock (time is a `std::time::Instant` argument) or use ambient randomness (the RNG is
//! seeded by the caller).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// How much faster (estimate ratio) an endpoint must be to win a P2C tie on latency.
const LATENCY_TIE_RATIO: f64 = 1.25;

/// Time constant of the latency estimate's exponential decay. Default: 10 s (Linkerd's
/// peak-EWMA default).
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// Weighted samples tried before falling back to a linear scan of eligible endpoints.
const SAMPLE_TRIES: u32 = 8;

/// Load-balancing policy of a service. Default: [`LbPolicy::P2c`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Power of two choices: sample two distinct endpoints by weight, take the one with fewer
    /// outstanding requests per unit of weight; on a tie, a clearly (25 %) lower latency estimate, else the first pick.
    #[default]
    P2c,
    /// Smooth weighted round robin (nginx): exact weighted interleaving.
    RoundRobin,
    /// Weighted random.
    Random,
}

/// What this core knows about one endpoint's load.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    /// Attempts started and not yet finished on this core.
    outstanding: u32,
    /// Peak-EWMA latency estimate in nanoseconds; 0 until the first sample.
    ewma_ns: f64,
    /// When `ewma_ns` was last updated (`None`: never measured).
    updated_at: Option<Instant>,
    /// Smooth weighted round robin "current weight".
    rr_current: i64,
}

impl Load {
    /// Peak-EWMA update (tower/Linkerd): a sample above the estimate replaces it at once; a lower
    /// one is blended in with weight `1 - exp(-elapsed / EWMA_DECAY)`. Reading the estimate is
    /// an update with a 0 ns sample, so an idle endpoint's estimate decays towards 0 and it gets
    /// measured again.
    fn observe(&mut self, sample_ns: f64, now: Instant) -> f64 {
        match self.updated_at {
            None => self.ewma_ns = sample_ns,
            Some(_) if sample_ns > self.ewma_ns => self.ewma_ns = sample_ns,
            Some(at) => {
                let elapsed = now.saturating_duration_since(at).as_nanos() as f64;
                let decay = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
                self.ewma_ns = self.ewma_ns * decay + sample_ns * (1.0 - decay);
            }
        }
        // Never move the update time backwards if callers pass slightly stale instants.
        if self.updated_at.is_none_or(|at| now > at) {
            self.updated_at = Some(now);
        }
        self.ewma_ns
    }

    /// Current estimate (decayed to `now`); never-measured endpoints read 0 and so win ties.
    fn estimate(&mut self, now: Instant) -> f64 {
        if self.updated_at.is_none() {
            return 0.0;
        }
        self.observe(0.0, now)
    }
}

/// Weighted sampling in O(1) with Vose's alias method, in exact integer arithmetic.
#[derive(Debug, Clone)]
struct AliasTable {
    weights: Box<[u32]>,
    /// Threshold out of `total` for keeping column `i` rather than its alias.
    keep: Box<[u64]>,
    alias: Box<[u32]>,
    total: u64,
}

impl AliasTable {
    fn new(weights: &[u32]) -> AliasTable {
        let weights: Box<[u32]> = weights.iter().map(|&w| w.max(1)).collect();
        let n = weights.len() as u64;
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        // Column i holds w_i * n out of `total` (= the mean column height scaled by n).
        let mut scaled: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n).collect();
        let mut keep = vec![total; weights.len()];
        let mut alias: Vec<u32> = (0..weights.len() as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..weights.len()).partition(|&i| scaled[i] < total);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            keep[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= total - scaled[s];
            if scaled[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // Exact arithmetic: whatever remains has scaled == total and keeps itself.
        AliasTable { weights, keep: keep.into(), alias: alias.into(), total }
    }

    fn len(&self) -> usize {
        self.weights.len()
    }

    fn sample(&self, rng: &mut SmallRng) -> usize {
        let i = rng.random_range(0..self.len());
        if rng.random_range(0..self.total) < self.keep[i] { i } else { self.alias[i] as usize }
    }

    /// A weight-proportional sample among indices satisfying `ok`: a few O(1) samples, then a
    /// linear weighted scan (when most endpoints are excluded). `None` iff none satisfies `ok`.
    fn sample_where(&self, rng: &mut SmallRng, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.len() == 0 {
            return None;
        }
        for _ in 0..SAMPLE_TRIES {
            let i = self.sample(rng);
            if ok(i) {
                return Some(i);
            }
        }
        let total: u64 = (0..self.len()).filter(|&i| ok(i)).map(|i| u64::from(self.weights[i])).sum();
        if total == 0 {
            return None;
        }
        let mut point = rng.random_range(0..total);
        let mut last_ok = None;
        for i in 0..self.len() {
            if ok(i) {
                let w = u64::from(self.weights[i]);
                if point < w {
                    return Some(i);
                }
                point -= w;
                last_ok = Some(i);
            }
        }
        // Eligibility may change between the two passes (it reads atomics shared with other
        // cores); settle for the last eligible index seen.
        last_ok
    }
}

/// A per-core balancer over a fixed endpoint list (indices `0..len`).
///
/// Lifecycle per attempt: [`Balancer::pick`] → [`Balancer::on_start`] → [`Balancer::on_finish`]
/// (or [`Balancer::on_cancel`]). Indices out of range are ignored by `on_*`. When the endpoint
/// list changes, build a new balancer; let in-flight attempts finish against the one they
/// started on, and carry latency knowledge over with [`Balancer::carry_latency_from`].
#[derive(Debug, Clone)]
pub struct Balancer {
    policy: LbPolicy,
    table: AliasTable,
    loads: Box<[Load]>,
    rng: SmallRng,
}

impl Balancer {
    /// Build a balancer for `weights.len()` endpoints. A weight of 0 is treated as 1 (config
    /// validation rejects it). `seed` seeds this balancer's RNG (use a different seed per core).
    pub fn new(policy: LbPolicy, weights: &[u32], seed: u64) -> Balancer {
        Balancer {
            policy,
            table: AliasTable::new(weights),
            loads: vec![Load::default(); weights.len()].into(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The policy this balancer applies.
    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.loads.len()
    }

    /// Whether the balancer has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.loads.is_empty()
    }

    /// Attempts started on this core and not finished, for endpoint `idx` (0 if out of range).
    pub fn outstanding(&self, idx: usize) -> u32 {
        self.loads.get(idx).map_or(0, |l| l.outstanding)
    }

    /// Latency estimate of endpoint `idx` at `now`, `None` if never measured or out of range.
    pub fn latency_estimate(&mut self, idx: usize, now: Instant) -> Option<Duration> {
        let load = self.loads.get_mut(idx).filter(|l| l.updated_at.is_some())?;
        Some(Duration::from_nanos(load.estimate(now) as u64))
    }

    /// Choose an endpoint among those for which `eligible(idx)` is true.
    ///
    /// `avoid` is the endpoint of the previous attempt: it is chosen only when it is the only
    /// eligible endpoint. Returns `None` when nothing is eligible. Allocation-free; O(1) expected
    /// for P2C and random (O(n) when few endpoints are eligible), O(n) for round robin.
    pub fn pick(&mut self, now: Instant, eligible: impl Fn(usize) -> bool, avoid: Option<usize>) -> Option<usize> {
        let candidate = |i: usize| eligible(i) && Some(i) != avoid;
        let chosen = match self.policy {
            LbPolicy::P2c => self.pick_p2c(now, &candidate),
            LbPolicy::Random => self.table.sample_where(&mut self.rng, candidate),
            LbPolicy::RoundRobin => self.pick_round_robin(&candidate),
        };
        chosen.or_else(|| avoid.filter(|&i| i < self.len() && eligible(i)))
    }

    fn pick_p2c(&mut self, now: Instant, candidate: &impl Fn(usize) -> bool) -> Option<usize> {
        let a = self.table.sample_where(&mut self.rng, candidate)?;
        let Some(b) = self.table.sample_where(&mut self.rng, |i| i != a && candidate(i)) else {
            return Some(a);
        };
        // Lower (outstanding + 1) / weight wins: cross-multiplied, exact.
        let cost =
            |i: usize, other: usize| u64::from(self.loads[i].outstanding + 1) * u64::from(self.table.weights[other]);
        let (cost_a, cost_b) = (cost(a, b), cost(b, a));
        if cost_a != cost_b {
            return Some(if cost_a < cost_b { a } else { b });
        }
        // Only a clearly faster endpoint wins a tie; between near-equals the random first pick
        // stands, so that equal endpoints share sequential load instead of the one measured
        // last losing every tie until its estimate decays.
        let (ewma_a, ewma_b) = (self.loads[a].estimate(now), self.loads[b].estimate(now));
        Some(if ewma_b * LATENCY_TIE_RATIO < ewma_a { b } else { a })
    }

    /// nginx smooth weighted round robin over the candidates of this call: every candidate gains
    /// its weight, the largest current weight wins (first on ties) and pays back the total.
    fn pick_round_robin(&mut self, candidate: &impl Fn(usize) -> bool) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (i, load) in self.loads.iter_mut().enumerate() {
            if !candidate(i) {
                continue;
            }
            let w = i64::from(self.table.weights[i]);
            load.rr_current += w;
            total += w;
            if best.is_none_or(|(_, current)| load.rr_current > current) {
                best = Some((i, load.rr_current));
            }
        }
        let (best, _) = best?;
        self.loads[best].rr_current -= total;
        Some(best)
    }

    /// An attempt to endpoint `idx` started.
    pub fn on_start(&mut self, idx: usize) {
        if let Some(load) = self.loads.get_mut(idx) {
            load.outstanding = load.outstanding.saturating_add(1);
        }
    }

    /// An attempt to endpoint `idx` got its response head after `latency` (time to first
    /// response byte is the usual measure); updates the latency estimate.
    pub fn on_finish(&mut self, idx: usize, latency: Duration, now: Instant) {
        if let Some(load) = self.loads.get_mut(idx) {
            load.outstanding = load.outstanding.saturating_sub(1);
            load.observe(latency.as_nanos() as f64, now);
        }
    }

    /// An attempt to endpoint `idx` ended without a meaningful latency (connect failure, local
    /// error, client gone): only the outstanding count changes, so fast failures do not make an
    /// endpoint look fast.
    pub fn on_cancel(&mut self, idx: usize) {
        if let Some(load) = self.loads.get_mut(idx) {
            load.outstanding = load.outstanding.saturating_sub(1);
        }
    }

    /// Copy latency estimates from the balancer of the previous endpoint list: `old_index(new)`
    /// gives an endpoint's index in `old`, if it was there. Outstanding counts are not copied
    /// (in-flight attempts finish against `old`). Off the request path; O(n).
    pub fn carry_latency_from(&mut self, old: &Balancer, old_index: impl Fn(usize) -> Option<usize>) {
        for (i, load) in self.loads.iter_mut().enumerate() {
            if let Some(prev) = old_index(i).and_then(|o| old.loads.get(o)) {
                load.ewma_ns = prev.ewma_ns;
                load.updated_at = prev.updated_at;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: [LbPolicy; 3] = [LbPolicy::P2c, LbPolicy::RoundRobin, LbPolicy::Random];

    fn counts(b: &mut Balancer, picks: usize, now: Instant) -> Vec<usize> {
        let mut counts = vec![0; b.len()];
        for _ in 0..picks {
            counts[b.pick(now, |_| true, None).expect("an endpoint is eligible")] += 1;
        }
        counts
    }

    /// Pearson chi-square statistic of `observed` against weights.
    fn chi_square(observed: &[usize], weights: &[u32]) -> f64 {
        let n: usize = observed.iter().sum();
        let total: u32 = weights.iter().sum();
        observed
            .iter()
            .zip(weights)
            .map(|(&o, &w)| {
                let e = n as f64 * f64::from(w) / f64::from(total);
                (o as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn alias_table_is_exact() {
        let t = AliasTable::new(&[1, 2, 3, 4]);
        // Probability mass of each index, out of n * total = 40: w_i * n.
        let mut mass = [0u64; 4];
        for i in 0..4 {
            mass[i] += t.keep[i];
            mass[t.alias[i] as usize] += t.total - t.keep[i];
        }
        assert_eq!(mass, [4, 8, 12, 16], "mass proportional to weight");
    }

    #[test]
    fn random_follows_weights() {
        let weights = [1, 2, 3, 4];
        let mut b = Balancer::new(LbPolicy::Random, &weights, 7);
        let c = counts(&mut b, 100_000, Instant::now());
        // 3 degrees of freedom: p = 0.001 critical value is 16.27.
        assert!(chi_square(&c, &weights) < 16.27, "counts {c:?} do not follow {weights:?}");
    }

    #[test]
    fn p2c_is_uniform_over_equal_idle_endpoints() {
        let weights = [1; 5];
        let mut b = Balancer::new(LbPolicy::P2c, &weights, 11);
        let c = counts(&mut b, 50_000, Instant::now());
        // 4 degrees of freedom: p = 0.001 critical value is 18.47.
        assert!(chi_square(&c, &weights) < 18.47, "counts {c:?} not uniform");
    }

    #[test]
    fn round_robin_is_exact_and_smooth() {
        let mut b = Balancer::new(LbPolicy::RoundRobin, &[5, 1, 1], 0);
        let now = Instant::now();
        let seq: Vec<usize> = (0..7).map(|_| b.pick(now, |_| true, None).expect("eligible")).collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0], "nginx smooth weighted round robin order");

        let mut b = Balancer::new(LbPolicy::RoundRobin, &[1, 2, 3], 0);
        assert_eq!(counts(&mut b, 600, now), [100, 200, 300]);
    }

    #[test]
    fn p2c_avoids_the_loaded_endpoint() {
        let mut b = Balancer::new(LbPolicy::P2c, &[1; 4], 3);
        for _ in 0..10 {
            b.on_start(0);
        }
        let c = counts(&mut b, 10_000, Instant::now());
        // Two distinct candidates are compared, so endpoint 0 always loses to an idle one.
        assert_eq!(c[0], 0, "loaded endpoint picked: {c:?}");
        assert!(c[1..].iter().all(|&n| n > 2_500), "others share the load: {c:?}");
    }

    #[test]
    fn p2c_outstanding_is_relative_to_weight() {
        // Endpoint 0 has weight 4 and 2 outstanding (cost 3/4); endpoint 1 weight 1 and 0 (1/1).
        let mut b = Balancer::new(LbPolicy::P2c, &[4, 1], 5);
        b.on_start(0);
        b.on_start(0);
        let c = counts(&mut b, 1_000, Instant::now());
        assert_eq!(c, [1_000, 0]);
    }

    #[test]
    fn p2c_ewma_breaks_ties_towards_the_faster_endpoint() {
        let t0 = Instant::now();
        let mut b = Balancer::new(LbPolicy::P2c, &[1, 1, 1], 9);
        for (idx, ms) in [(0, 100), (1, 10), (2, 50)] {
            b.on_start(idx);
            b.on_finish(idx, Duration::from_millis(ms), t0);
        }
        let now = t0 + Duration::from_millis(10);
        let c = counts(&mut b, 3_000, now);
        // Each pair resolves to its faster member: 1 wins both its pairs, 2 wins against 0.
        assert_eq!(c[0], 0, "slowest never wins a tie: {c:?}");
        assert!(c[1] > c[2], "fastest wins most: {c:?}");
    }

    #[test]
    fn p2c_near_equal_latencies_share_sequential_load() {
        let t0 = Instant::now();
        let mut b = Balancer::new(LbPolicy::P2c, &[1, 1], 9);
        for (idx, ms) in [(0, 10), (1, 11)] {
            b.on_start(idx);
            b.on_finish(idx, Duration::from_millis(ms), t0);
        }
        let c = counts(&mut b, 2_000, t0 + Duration::from_millis(10));
        assert!(c[0] > 700 && c[1] > 700, "a 10 % difference is noise, not a reason to starve one: {c:?}");
    }

    #[test]
    fn peak_ewma_jumps_up_decays_down() {
        let t0 = Instant::now();
        let mut b = Balancer::new(LbPolicy::P2c, &[1], 1);
        assert_eq!(b.latency_estimate(0, t0), None, "never measured");
        b.on_finish(0, Duration::from_millis(10), t0);
        b.on_finish(0, Duration::from_millis(100), t0 + Duration::from_millis(1));
        let peak = b.latency_estimate(0, t0 + Duration::from_millis(1)).expect("measured");
        assert_eq!(peak, Duration::from_millis(100), "a slow sample is taken at once");
        // A fast sample one time constant later moves the estimate most of the way down.
        let later = t0 + Duration::from_millis(1) + EWMA_DECAY;
        b.on_finish(0, Duration::from_millis(10), later);
        let est = b.latency_estimate(0, later).expect("measured").as_secs_f64() * 1e3;
        assert!((40.0..50.0).contains(&est), "≈ 10 + 90/e ms after decay, got {est} ms");
        // Idle for a long time: the estimate decays towards 0 so the endpoint is tried again.
        let idle = later + EWMA_DECAY * 10;
        assert!(b.latency_estimate(0, idle).expect("measured") < Duration::from_millis(1));
    }

    #[test]
    fn avoid_is_honoured_unless_it_is_the_only_choice() {
        let now = Instant::now();
        for policy in POLICIES {
            let mut b = Balancer::new(policy, &[1, 3, 1], 21);
            for _ in 0..1_000 {
                let i = b.pick(now, |_| true, Some(1)).expect("eligible");
                assert_ne!(i, 1, "{policy:?} picked the avoided endpoint");
            }
            assert_eq!(b.pick(now, |i| i == 1, Some(1)), Some(1), "{policy:?} falls back");
            assert_eq!(b.pick(now, |i| i == 2, Some(1)), Some(2), "{policy:?}");
        }
    }

    #[test]
    fn ineligible_is_never_picked() {
        let now = Instant::now();
        for policy in POLICIES {
            let mut b = Balancer::new(policy, &[2; 10], 33);
            for _ in 0..2_000 {
                let i = b.pick(now, |i| i % 3 == 0, None).expect("eligible");
                assert_eq!(i % 3, 0, "{policy:?} picked ineligible {i}");
            }
            // Only one eligible among many: the scan fallback finds it.
            let mut b = Balancer::new(policy, &[1; 200], 34);
            for _ in 0..100 {
                assert_eq!(b.pick(now, |i| i == 137, None), Some(137), "{policy:?}");
            }
            assert_eq!(b.pick(now, |_| false, None), None, "{policy:?}: nothing eligible");
            assert_eq!(b.pick(now, |_| false, Some(3)), None, "{policy:?}: avoid ineligible");
        }
    }

    #[test]
    fn empty_balancer_picks_nothing() {
        let now = Instant::now();
        for policy in POLICIES {
            let mut b = Balancer::new(policy, &[], 0);
            assert!(b.is_empty());
            assert_eq!(b.pick(now, |_| true, None), None);
            assert_eq!(b.pick(now, |_| true, Some(0)), None, "avoid out of range");
            b.on_start(0);
            b.on_finish(0, Duration::from_millis(1), now);
            b.on_cancel(0);
        }
    }

    #[test]
    fn counters_and_carry_over() {
        let t0 = Instant::now();
        let mut old = Balancer::new(LbPolicy::P2c, &[1, 1], 0);
        old.on_start(1);
        old.on_start(1);
        assert_eq!(old.outstanding(1), 2);
        old.on_cancel(1);
        assert_eq!(old.latency_estimate(1, t0), None, "a cancel is not a latency sample");
        old.on_finish(1, Duration::from_millis(40), t0);
        assert_eq!(old.outstanding(1), 0);
        old.on_finish(1, Duration::from_millis(40), t0);
        assert_eq!(old.outstanding(1), 0, "never below zero");

        // New list: old endpoint 1 is now at index 0.
        let mut new = Balancer::new(LbPolicy::P2c, &[1, 1, 1], 1);
        new.carry_latency_from(&old, |i| (i == 0).then_some(1));
        assert_eq!(new.latency_estimate(0, t0), Some(Duration::from_millis(40)));
        assert_eq!(new.latency_estimate(1, t0), None);
        assert_eq!(new.outstanding(0), 0);
    }
}
