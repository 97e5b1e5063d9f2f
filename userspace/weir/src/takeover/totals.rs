//! The counters a weir hands to the one that takes it over, so that every counter (and the
//! duration histograms) continues where it was and `rate()` sees no reset. Gauges are not
//! handed over: they start fresh. Owns: what is carried over and its wire form (JSON,
//! `format` versioned; reasons travel by name, status codes by number, callers by their
//! `source` label value, so that versions with other reasons, buckets or caller slots still
//! read each other). Must not: run on a worker.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use weir_core::outcome::ErrorReason;

use weir_core::stats::{
    DURATION_BUCKETS_SECONDS, Http2Close, Merged, Published, RetryReason, SOURCE_DIRECT, SOURCE_OTHER, ServiceStats,
    SourceSlot, SourceStats, WorkerCounters,
};
use weir_proxy::caller::CallerTable;

/// Version of [`Totals`]' wire form.
pub const FORMAT: u32 = 1;

/// Every counter of a weir (its own and those it inherited), as handed over.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    /// [`FORMAT`].
    pub format: u32,
    /// Per service.
    pub services: Vec<ServiceTotals>,
    /// The `source` names the weir gave (beyond `direct` and `other`), in the order it gave
    /// them: the weir taking over gives the same names (`identity::Naming::adopt`).
    #[serde(default)]
    pub source_names: Vec<String>,
    /// `weir_downstream_connections_refused_total`.
    pub connections_refused: u64,
    /// `weir_unrouted_requests_total`.
    pub unrouted: u64,
    /// `weir_downstream_write_timeouts_total`.
    pub downstream_write_timeouts: u64,
    /// `weir_local_resource_errors_total{op="connect"}`.
    #[serde(default)]
    pub local_connect_errors: u64,
    /// `weir_local_resource_errors_total{op="accept"}`.
    #[serde(default)]
    pub accept_errors: u64,
    /// `weir_http2_connections_closed_total`, by reason name.
    #[serde(default)]
    pub http2_closed: Vec<(String, u64)>,
    /// `weir_access_log_records_total{result="shipped"}`.
    pub access_log_shipped: u64,
    /// `weir_access_log_records_total{result="dropped"}`.
    pub access_log_dropped: u64,
    /// `weir_config_reloads_total{result="success"}`.
    pub reloads_ok: u64,
    /// `weir_config_reloads_total{result="failure"}`.
    pub reloads_failed: u64,
    /// `weir_takeovers_total{result="success"}`.
    pub takeovers_ok: u64,
    /// `weir_takeovers_total{result="failure"}`.
    pub takeovers_failed: u64,
}

/// One service's counters and duration histogram.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceTotals {
    /// The service (by name: names survive config changes, indexes do not).
    pub name: String,
    /// Requests by status code (0: none), only the codes seen.
    pub codes: Vec<(u16, u64)>,
    /// gRPC calls by final status, only the codes seen.
    #[serde(default)]
    pub grpc: Vec<(u8, u64)>,
    /// Errors weir answered, by reason.
    pub errors: Vec<(String, u64)>,
    /// Retries by reason.
    pub retries: Vec<(String, u64)>,
    /// Retries not made for an empty budget.
    pub budget_exhausted: u64,
    /// Ejections.
    pub ejections: u64,
    /// Requests balanced in panic mode.
    pub panic_requests: u64,
    /// Upper bounds (seconds) of `buckets`, without +Inf.
    pub bucket_bounds: Vec<f64>,
    /// Non-cumulative bucket counts, +Inf last.
    pub buckets: Vec<u64>,
    /// Sum of durations in nanoseconds (decimal: it may exceed 2^64).
    pub duration_sum_ns: String,
    /// Count of durations.
    pub duration_count: u64,
    /// The HDR histogram's recorded values (µs) and counts.
    pub hdr_us: Vec<(u64, u64)>,
    /// Each caller's share (`weir_requests_total` and `weir_request_duration_seconds` by
    /// `source`), buckets as `bucket_bounds`.
    #[serde(default)]
    pub sources: Vec<SourceTotals>,
}

/// One caller's share of a service's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceTotals {
    /// Its `source` label value.
    pub source: String,
    /// Requests by status code (0: none), only the codes seen.
    pub codes: Vec<(u16, u64)>,
    /// Non-cumulative bucket counts, +Inf last.
    pub buckets: Vec<u64>,
    /// Sum of durations in nanoseconds (decimal).
    pub duration_sum_ns: String,
    /// Count of durations.
    pub duration_count: u64,
}

impl Totals {
    /// The counters of `stats` (gauges left out), callers named by `callers`.
    pub fn from_merged(stats: &Merged, callers: &CallerTable) -> Totals {
        let c = &stats.counters;
        Totals {
            format: FORMAT,
            services: stats.services().map(|(name, s)| ServiceTotals::from_stats(name, s, callers)).collect(),
            source_names: callers.sources.iter().skip(2).map(|s| s.to_string()).collect(),
            connections_refused: c.connections_refused,
            unrouted: c.unrouted,
            downstream_write_timeouts: c.downstream_write_timeouts,
            local_connect_errors: c.local_connect_errors,
            accept_errors: c.accept_errors,
            http2_closed: Http2Close::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), c.http2_closed[*r as usize]))
                .filter(|(_, n)| *n > 0)
                .collect(),
            ..Totals::default()
        }
    }

    /// The stats part as one published shard (gauges zero), to merge with the workers', each
    /// caller's share under the slot `callers` gives its name (a name it has not given is left
    /// out).
    pub fn to_published(&self, callers: &CallerTable) -> Published {
        let slot_of = |name: &str| -> Option<SourceSlot> {
            match name {
                "direct" => Some(SOURCE_DIRECT),
                "other" => Some(SOURCE_OTHER),
                _ => callers.sources.iter().skip(2).position(|s| &**s == name).map(|i| (i + 2) as SourceSlot),
            }
        };
        let services = self
            .services
            .iter()
            .map(|s| {
                let mut stats = ServiceStats::default();
                s.add_to(&mut stats, &slot_of);
                (Arc::<str>::from(s.name.as_str()), Arc::new(stats))
            })
            .collect();
        let mut counters = WorkerCounters {
            connections_refused: self.connections_refused,
            unrouted: self.unrouted,
            downstream_write_timeouts: self.downstream_write_timeouts,
            local_connect_errors: self.local_connect_errors,
            accept_errors: self.accept_errors,
            ..WorkerCounters::default()
        };
        for (name, n) in &self.http2_closed {
            if let Some(r) = Http2Close::ALL.iter().find(|r| r.as_str() == name) {
                counters.http2_closed[*r as usize] += n;
            }
        }
        Published { services, counters }
    }

    /// Reads a body; an error (with the reason) when it is not a format this weir reads.
    pub fn decode(body: &[u8]) -> Result<Totals, String> {
        serde_json::from_slice::<Totals>(body).map_err(|e| format!("unreadable counters: {e}"))?.checked()
    }

    /// `self`, if it is in a format this weir reads.
    pub fn checked(self) -> Result<Totals, String> {
        if self.format != FORMAT {
            return Err(format!("counters in format {} (this weir reads {FORMAT})", self.format));
        }
        Ok(self)
    }
}

impl ServiceTotals {
    fn from_stats(name: &str, s: &ServiceStats, callers: &CallerTable) -> ServiceTotals {
        ServiceTotals {
            sources: s
                .sources()
                .map(|(slot, st)| SourceTotals {
                    source: callers.source_name(slot).to_string(),
                    codes: st.codes().filter(|(_, n)| *n > 0).collect(),
                    buckets: st.buckets.to_vec(),
                    duration_sum_ns: st.duration_sum_ns.to_string(),
                    duration_count: st.duration_count,
                })
                .collect(),
            name: name.to_string(),
            codes: s.codes().filter(|(_, n)| *n > 0).collect(),
            grpc: s.grpc_codes().collect(),
            errors: s.errors_by_reason().filter(|(_, n)| *n > 0).map(|(r, n)| (r.as_str().to_string(), n)).collect(),
            retries: s.retries_by_reason().filter(|(_, n)| *n > 0).map(|(r, n)| (r.as_str().to_string(), n)).collect(),
            budget_exhausted: s.budget_exhausted,
            ejections: s.ejections,
            panic_requests: s.panic_requests,
            bucket_bounds: DURATION_BUCKETS_SECONDS.to_vec(),
            buckets: s.buckets.to_vec(),
            duration_sum_ns: s.duration_sum_ns.to_string(),
            duration_count: s.duration_count,
            hdr_us: s.hdr_recorded(),
        }
    }

    fn add_to(&self, s: &mut ServiceStats, slot_of: &dyn Fn(&str) -> Option<SourceSlot>) {
        for &(code, n) in &self.codes {
            s.add_code(code, n);
        }
        for &(code, n) in &self.grpc {
            s.add_grpc(code, n);
        }
        for (reason, n) in &self.errors {
            if let Some(i) = ErrorReason::ALL.iter().position(|r| r.as_str() == reason) {
                s.errors[i] += n;
            }
        }
        for (reason, n) in &self.retries {
            if let Some(i) = RetryReason::ALL.iter().position(|r| r.as_str() == reason) {
                s.retries[i] += n;
            }
        }
        s.budget_exhausted += self.budget_exhausted;
        s.ejections += self.ejections;
        s.panic_requests += self.panic_requests;
        // Buckets with other bounds (another version's) cannot be added to these.
        if self.bucket_bounds == DURATION_BUCKETS_SECONDS && self.buckets.len() == s.buckets.len() {
            for (a, b) in s.buckets.iter_mut().zip(&self.buckets) {
                *a += b;
            }
            s.duration_sum_ns += self.duration_sum_ns.parse::<u128>().unwrap_or(0);
            s.duration_count += self.duration_count;
        }
        for &(value, count) in &self.hdr_us {
            s.record_hdr_n(value, count);
        }
        let same_buckets = self.bucket_bounds == DURATION_BUCKETS_SECONDS;
        for src in &self.sources {
            let Some(slot) = slot_of(&src.source) else { continue };
            let mut st = SourceStats::default();
            for &(code, n) in &src.codes {
                st.add_code(code, n);
            }
            if same_buckets && src.buckets.len() == st.buckets.len() {
                st.buckets.copy_from_slice(&src.buckets);
                st.duration_sum_ns = src.duration_sum_ns.parse::<u128>().unwrap_or(0);
                st.duration_count = src.duration_count;
            }
            s.add_source(slot, &st);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_core::stats::{RequestRecord, StatsShard};

    use super::*;

    fn one(p: &Published) -> &ServiceStats {
        &p.services.iter().find(|(n, _)| &**n == "checkout").expect("checkout").1
    }

    #[test]
    fn counters_and_histograms_survive_the_wire_and_gauges_do_not() {
        let mut shard = StatsShard::default();
        let i = shard.slot("checkout");
        let s = shard.service_mut(i);
        for ms in [1, 2, 3, 40, 2000] {
            s.record(&RequestRecord {
                status: Some(200),
                error: None,
                duration: Duration::from_millis(ms),
                panic: false,
                source: weir_core::stats::SOURCE_DIRECT,
                exemplar: None,
                grpc: Some(0),
            });
        }
        s.record(&RequestRecord {
            status: Some(503),
            error: Some(ErrorReason::ConnectFailure),
            duration: Duration::from_millis(1),
            panic: true,
            source: weir_core::stats::SOURCE_DIRECT,
            exemplar: None,
            grpc: None,
        });
        s.retry(RetryReason::Status503);
        s.upstream_connections = 7;
        shard.counters.unrouted = 3;
        shard.counters.http2_closed[Http2Close::ALL[0] as usize] = 2;
        let published = shard.publish();
        let merged = Merged::merge([&published]);
        let table = CallerTable::default();
        let body = serde_json::to_vec(&Totals::from_merged(&merged, &table)).expect("encode");
        let back = Totals::decode(&body).expect("decode").to_published(&table);
        let (a, b) = (one(&published), one(&back));
        assert_eq!(a.codes().collect::<Vec<_>>(), b.codes().collect::<Vec<_>>());
        assert_eq!(a.grpc_codes().collect::<Vec<_>>(), b.grpc_codes().collect::<Vec<_>>());
        assert_eq!((a.errors, a.retries, a.panic_requests), (b.errors, b.retries, b.panic_requests));
        assert_eq!((a.buckets, a.duration_sum_ns, a.duration_count), (b.buckets, b.duration_sum_ns, b.duration_count));
        assert_eq!(a.quantile(0.5), b.quantile(0.5));
        assert_eq!(a.quantile(0.99), b.quantile(0.99));
        assert_eq!(b.upstream_connections, 0, "a gauge was handed over");
        assert_eq!(back.counters.unrouted, 3);
        assert_eq!(back.counters.http2_closed, published.counters.http2_closed);
    }

    #[test]
    fn another_format_is_refused_and_unknown_reasons_are_skipped() {
        assert!(Totals::decode(br#"{"format":2,"services":[]}"#).is_err());
        let t = Totals::decode(
            br#"{"format":1,"services":[{"name":"checkout","codes":[[200,5]],"errors":[["from-the-future",1]],"retries":[],
            "budget_exhausted":0,"ejections":0,"panic_requests":0,"bucket_bounds":[1.0],"buckets":[1,2],
            "duration_sum_ns":"5","duration_count":2,"hdr_us":[]}],"connections_refused":0,"unrouted":0,
            "downstream_write_timeouts":0,"access_log_shipped":0,"access_log_dropped":0,"reloads_ok":0,
            "reloads_failed":0,"takeovers_ok":1,"takeovers_failed":0}"#,
        )
        .expect("format 1");
        let p = t.to_published(&CallerTable::default());
        let a = one(&p);
        assert_eq!((a.code(200), a.errors.iter().sum::<u64>(), a.duration_count), (5, 0, 0));
    }

    /// A caller table naming `names` (slots 2 and up, in order).
    fn table(generation: u64, names: &[&str]) -> CallerTable {
        let mut t = CallerTable { generation, ..CallerTable::default() };
        t.sources.extend(names.iter().map(|n| Arc::<str>::from(*n)));
        t
    }

    #[test]
    fn callers_travel_by_name_into_the_slots_the_new_weir_gives_them() {
        let mut shard = StatsShard::default();
        let i = shard.slot("checkout");
        let s = shard.service_mut(i);
        let rec = |source, ms| RequestRecord {
            status: Some(200),
            error: None,
            duration: Duration::from_millis(ms),
            panic: false,
            source,
            exemplar: None,
            grpc: None,
        };
        // The old weir: shop/web in slot 2, billing.service in slot 3.
        for (slot, n) in [(2, 3), (3, 2), (SOURCE_DIRECT, 1), (SOURCE_OTHER, 4)] {
            for _ in 0..n {
                s.record(&rec(slot, 7));
            }
        }
        let old = table(5, &["shop/web", "billing.service"]);
        let totals = Totals::from_merged(&Merged::merge([&shard.publish()]), &old);
        assert_eq!(totals.source_names, vec!["shop/web", "billing.service"]);
        let totals = Totals::decode(&serde_json::to_vec(&totals).expect("encode")).expect("decode");
        // The new weir gave the names in another order, and one is not given yet.
        let new = table(9, &["billing.service"]);
        let p = totals.to_published(&new);
        let a = one(&p);
        let requests = |slot| a.source(slot).map(|s| (s.requests(), s.duration_count));
        assert_eq!(requests(2), Some((2, 2)), "billing.service under the new weir's slot 2");
        assert_eq!((requests(SOURCE_DIRECT), requests(SOURCE_OTHER)), (Some((1, 1)), Some((4, 4))));
        assert_eq!(requests(3), None, "shop/web left out until the new weir has given its name");
        let given = table(10, &["billing.service", "shop/web"]);
        assert_eq!(one(&totals.to_published(&given)).source(3).map(|s| s.requests()), Some(3));
        assert_eq!(a.requests(), 10, "the service's own totals do not depend on the names");
    }
}
