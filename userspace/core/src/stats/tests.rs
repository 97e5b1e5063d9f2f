//! Tests of the stats shard: counting, merging and publishing RED per service, per caller and
//! per route and backend.

use super::*;

fn rec(status: u16, ms: u64) -> RequestRecord {
    RequestRecord {
        status: Some(status),
        error: None,
        duration: Duration::from_millis(ms),
        panic: false,
        source: SOURCE_DIRECT,
        exemplar: None,
        grpc: None,
    }
}

#[test]
fn counts_codes_errors_and_exact_sums() {
    let mut s = ServiceStats::default();
    s.record(&rec(200, 1));
    s.record(&rec(200, 3));
    s.record(&RequestRecord {
        status: Some(503),
        error: Some(ErrorReason::ConnectFailure),
        duration: Duration::from_millis(2),
        panic: true,
        ..rec(0, 0)
    });
    assert_eq!(s.code(200), 2);
    assert_eq!(s.code(503), 1);
    assert_eq!(s.codes().collect::<Vec<_>>(), vec![(200, 2), (503, 1)]);
    assert_eq!(s.requests(), 3);
    assert_eq!(s.errors_by_reason().find(|(r, _)| *r == ErrorReason::ConnectFailure).map(|x| x.1), Some(1));
    assert_eq!(s.duration_count, 3);
    assert_eq!(s.duration_sum_ns, 6_000_000);
    assert_eq!(s.panic_requests, 1);
}

#[test]
fn a_50ms_request_lands_in_the_0_1_bucket_not_0_05() {
    let mut s = ServiceStats::default();
    s.record(&RequestRecord { duration: Duration::from_micros(50_200), ..rec(200, 0) });
    let b = s.cumulative_buckets();
    let le = |bound: f64| b.iter().find(|(x, _)| (*x - bound).abs() < 1e-12).map(|x| x.1).expect("bucket");
    assert_eq!(le(0.05), 0);
    assert_eq!(le(0.1), 1);
    assert_eq!(b.last().map(|x| x.1), Some(1), "+Inf holds everything");
    // Exactly on a bound counts in that bucket (le = less or equal).
    s.record(&rec(200, 50));
    let b = s.cumulative_buckets();
    assert_eq!(b.iter().find(|(x, _)| (*x - 0.05).abs() < 1e-12).map(|x| x.1), Some(1));
}

#[test]
fn beyond_the_last_bucket_counts_only_in_inf() {
    let mut s = ServiceStats::default();
    s.record(&rec(200, 31_000));
    let b = s.cumulative_buckets();
    assert_eq!(b[b.len() - 2].1, 0);
    assert_eq!(b[b.len() - 1].1, 1);
}

#[test]
fn shards_merge_by_name_across_reordered_slots() {
    let mut a = StatsShard::default();
    let mut b = StatsShard::default();
    let (ax, ay) = (a.slot("x"), a.slot("y"));
    let (by, bx) = (b.slot("y"), b.slot("x"));
    a.service_mut(ax).record(&rec(200, 1));
    a.service_mut(ay).record(&rec(500, 1));
    b.service_mut(bx).record(&rec(200, 1));
    b.service_mut(by).retry(RetryReason::Status503);
    let m = Merged::merge([&a.publish(), &b.publish()]);
    assert_eq!(m.get("x").map(|s| s.code(200)), Some(2));
    assert_eq!(m.get("y").map(|s| s.code(500)), Some(1));
    assert_eq!(m.get("y").map(|s| s.retries[4]), Some(1));
}

#[test]
fn http2_closes_are_counted_by_reason_and_summed_over_workers() {
    let (mut a, mut b) = (StatsShard::default(), StatsShard::default());
    a.http2_closed(Http2Close::ControlFlood);
    a.http2_closed(Http2Close::GoawayTimeout);
    b.http2_closed(Http2Close::ControlFlood);
    let m = Merged::merge([&a.publish(), &b.publish()]);
    let counts: Vec<_> = Http2Close::ALL.iter().map(|r| (r.as_str(), m.counters.http2_closed[*r as usize])).collect();
    assert_eq!(counts, [("control-flood", 2), ("enhance-your-calm", 0), ("protocol-error", 0), ("goaway-timeout", 1)]);
}

#[test]
fn a_service_costs_a_name_until_it_is_counted_and_publishing_copies_only_what_changed() {
    let mut shard = StatsShard::default();
    let slots: Vec<usize> = (0..1000).map(|i| shard.slot(&format!("svc-{i}"))).collect();
    assert_eq!((shard.len(), shard.heap_bytes()), (1000, 0), "slots alone hold no stats");
    assert!(shard.publish().services.is_empty(), "an uncounted service is not published");
    shard.service_mut(slots[7]).record(&rec(200, 1));
    let first = shard.publish();
    assert_eq!(first.services.len(), 1);
    let second = shard.publish();
    assert!(Arc::ptr_eq(&first.services[0].1, &second.services[0].1), "an unchanged service shares its copy");
    shard.service_mut(slots[7]).record(&rec(200, 1));
    let third = shard.publish();
    assert_eq!(third.services[0].1.code(200), 2, "a counted service is copied again");
    // A long idle time gives the HDR histogram back; the counters stay.
    let with_hdr = shard.heap_bytes();
    for _ in 0..HDR_IDLE_PUBLISHES {
        shard.publish();
    }
    assert!(shard.heap_bytes() + 20_000 < with_hdr, "{} vs {with_hdr}", shard.heap_bytes());
    let last = shard.publish();
    assert_eq!((last.services[0].1.code(200), last.services[0].1.quantile(0.5)), (2, Duration::ZERO));
}

#[test]
fn routes_are_counted_by_index_and_backend_name_and_merged() {
    let (stable, canary): (Arc<str>, Arc<str>) = (Arc::from("stable"), Arc::from("canary"));
    let mut a = StatsShard::default();
    let mut b = StatsShard::default();
    let (sa, sb) = (a.slot("shop"), b.slot("shop"));
    for _ in 0..3 {
        a.service_mut(sa).route_mut(1, &stable).record(&rec(200, 1));
    }
    a.service_mut(sa).route_mut(1, &canary).fault(FaultKind::Abort);
    // Another worker's copy of the name (a reload made a new Arc): the same entry.
    b.service_mut(sb).route_mut(1, &Arc::from("stable")).record(&rec(503, 40));
    b.service_mut(sb).route_mut(0, &canary).record(&rec(200, 1));
    let m = Merged::merge([&a.publish(), &b.publish()]);
    let routes = m.get("shop").expect("counted").routes();
    let of = |r: u16, n: &str| routes.iter().find(|x| x.route == r && &*x.backend == n).expect("entry");
    assert_eq!(routes.len(), 3);
    assert_eq!((of(1, "stable").code(200), of(1, "stable").code(503)), (3, 1));
    assert_eq!(of(1, "stable").cumulative_buckets().last().map(|x| x.1), Some(4));
    assert_eq!(of(1, "canary").faults, [1, 0]);
    assert_eq!(of(0, "canary").duration_count, 1);
}

#[test]
fn callers_are_counted_apart_and_merged_by_slot_with_the_latest_exemplar() {
    let mut a = ServiceStats::default();
    let mut b = ServiceStats::default();
    let trace = |t: u8, unix_ms: u64| Some(Exemplar { trace_id: [t; 16], duration_ns: 0, unix_ms });
    a.record(&RequestRecord { source: 5, exemplar: trace(1, 100), ..rec(200, 3) });
    a.record(&RequestRecord { source: SOURCE_OTHER, ..rec(503, 3) });
    b.record(&RequestRecord { source: 5, exemplar: trace(2, 200), ..rec(200, 3) });
    b.record(&RequestRecord { source: SOURCE_DIRECT, ..rec(200, 40) });
    a.merge(&b);
    let slots: Vec<SourceSlot> = a.sources().map(|(s, _)| s).collect();
    assert_eq!(slots, vec![SOURCE_DIRECT, SOURCE_OTHER, 5]);
    let five = a.source(5).expect("slot 5");
    assert_eq!((five.requests(), five.failures(true), five.duration_count), (2, 0, 2));
    assert_eq!(a.source(SOURCE_OTHER).map(|s| s.failures(false)), Some(1));
    let bucket = bucket_of(3_000_000);
    let e = five.exemplar(bucket).expect("an exemplar in the 5 ms bucket");
    assert_eq!((e.trace_id, e.duration_ns), ([2; 16], 3_000_000), "the latest sampled request wins");
    assert!(five.exemplar(0).is_none());
    assert_eq!(a.requests(), 4, "service totals still count everything");
}

#[test]
fn bucket_quantiles_interpolate_like_prometheus() {
    let mut s = SourceStats::default();
    assert_eq!(s.quantile_seconds(0.5), None);
    for _ in 0..10 {
        s.record(200, bucket_of(7_000_000), 7_000_000, None); // (0.005, 0.01]
    }
    let p50 = s.quantile_seconds(0.5).expect("p50");
    assert!((p50 - 0.0075).abs() < 1e-9, "{p50}");
    s.record(200, bucket_of(60_000_000_000), 60_000_000_000, None);
    assert_eq!(s.quantile_seconds(1.0), Some(30.0), "+Inf answers the highest finite bound");
}

#[test]
fn quantiles_come_from_the_hdr_histogram() {
    let mut s = ServiceStats::default();
    for ms in 1..=100 {
        s.record(&rec(200, ms));
    }
    let p50 = s.quantile(0.5).as_secs_f64();
    let p99 = s.quantile(0.99).as_secs_f64();
    assert!((0.049..=0.051).contains(&p50), "{p50}");
    assert!((0.098..=0.1).contains(&p99), "{p99}");
}

#[test]
fn a_released_slot_is_no_longer_published_and_is_reused() {
    let mut shard = StatsShard::default();
    let (a, b) = (shard.slot("a"), shard.slot("b"));
    shard.service_mut(a).record(&RequestRecord { source: 5, ..rec(200, 1) });
    shard.service_mut(b).record(&rec(200, 1));
    assert_eq!(shard.publish().services.len(), 2);
    shard.release(a);
    shard.release(a); // twice: no effect
    let p = shard.publish();
    assert_eq!(p.services.iter().map(|(n, _)| &**n).collect::<Vec<_>>(), ["b"]);
    assert_eq!((shard.len(), shard.capacity()), (1, 2));
    // A new service takes the freed slot and starts from zero; "a" back is a new service too.
    let c = shard.slot("c");
    assert_eq!(c, a);
    assert_eq!(shard.service(c).map(ServiceStats::requests), None);
    shard.service_mut(c).record(&rec(200, 1));
    let c_stats = shard.service(c).expect("counted");
    assert!(c_stats.source(5).is_none(), "the freed slot's callers went with it");
    assert_eq!(c_stats.source(SOURCE_DIRECT).map(SourceStats::requests), Some(1));
    let a2 = shard.slot("a");
    assert_eq!((a2, shard.len(), shard.capacity()), (2, 3, 3));
    assert_eq!(shard.slot("b"), b, "a live service keeps its slot");
    // Churn: services come and go, the shard stays as large as the largest table.
    for round in 0..100 {
        let s = shard.slot(&format!("churn-{round}"));
        shard.service_mut(s).record(&rec(200, 1));
        shard.release(s);
    }
    assert_eq!(shard.capacity(), 4);
}
