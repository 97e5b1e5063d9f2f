//! Heap allocations on weir's worker threads per proxied request, counted by a global
//! allocator: a warm worker must not allocate per request beyond what its io_uring runtime
//! does for each operation. Its own binary, so no other test's workers are counted.
//!
//! What a warm request costs today, and why each allocation is there:
//! - one per I/O operation inside compio (its operation record: client read, upstream write,
//!   upstream read, client write);
//! - none for timers: weir keeps its own (`io/timer.rs`), where compio's cost one per loop
//!   turn while any was pending (it splits its timer map to find the expired ones);
//! - none for the request's state machine: it is kept off the connection's future (so that an
//!   idle keep-alive connection stays down to its read buffer and a small future) in a block
//!   the worker recycles (`recycle.rs`), not a `Box` per request.
//!
//! Read buffers, response heads and field lists come from per-worker pools.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::Mutex;

use weir_tests::clients::{self, Nghttpd};
use weir_tests::{Client, Endpoint, Weir, scratch_dir};

/// One measurement at a time: the counters are process-wide.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Counts worker allocations while `f` runs.
fn measured(f: impl FnOnce()) -> u64 {
    WORKER_ALLOCS.store(0, Ordering::SeqCst);
    MEASURING.store(true, Ordering::SeqCst);
    f();
    MEASURING.store(false, Ordering::SeqCst);
    WORKER_ALLOCS.load(Ordering::SeqCst)
}

struct Counting;

static MEASURING: AtomicBool = AtomicBool::new(false);
static WORKER_ALLOCS: AtomicU64 = AtomicU64::new(0);

/// Whether the calling thread is a weir worker (`weir-worker-N`), read with prctl into a
/// stack buffer so that the check itself does not allocate.
fn on_worker_thread() -> bool {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL-terminated) into `name`.
    let rc = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    rc == 0 && name.starts_with(b"weir-worker-")
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MEASURING.load(Ordering::Relaxed) && on_worker_thread() {
            WORKER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if MEASURING.load(Ordering::Relaxed) && on_worker_thread() {
            WORKER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// compio's operation records of the two sends (the request to the endpoint, the response to
/// the client); both receives come from the multishot receive each connection keeps armed.
const MAX_ALLOCS_PER_REQUEST: f64 = 2.5;

#[test]
fn a_warm_worker_allocates_only_what_its_runtime_needs_per_request() {
    let ep = Endpoint::start("a");
    per_request_allocations(&format!("endpoints = [\"{}\"]\n", ep.addr));
}

/// The same bound with traffic policy: ten routes (nine prefixes that do not match and a
/// regex, before the one that does) and a 90/10 split between two backends, header edits and
/// a rate limit. Routing, splitting and the limit allocate nothing per request.
#[test]
fn routing_splitting_and_rate_limiting_allocate_nothing_per_request() {
    let (a, b) = (Endpoint::start("a"), Endpoint::start("b"));
    let mut policy = format!(
        "[[service.backend]]\nname = \"stable\"\nendpoints = [\"{}\"]\n\
         [[service.backend]]\nname = \"canary\"\nendpoints = [\"{}\"]\n",
        a.addr, b.addr
    );
    for i in 0..9 {
        policy += &format!("[[service.route]]\nmatch = {{ path_prefix = \"/v{i}/\" }}\nbackends = {{ canary = 1 }}\n");
    }
    policy += "[[service.route]]\nmatch = { path_regex = \"/users/[0-9]+\" }\nbackends = { canary = 1 }\n\
               [[service.route]]\nbackends = { stable = 90, canary = 10 }\n\
               request_headers = { set = { \"x-weir-route\" = \"default\" }, remove = [\"x-debug\"] }\n\
               [service.rate_limit]\nrequests_per_second = 1000000\n";
    per_request_allocations(&policy);
    assert!(b.requests() > 0 && a.requests() > 8 * b.requests(), "the split ran: {} / {}", a.requests(), b.requests());
}

/// Warms a worker up on a service with `service_fields`, then measures its allocations per
/// HTTP/1.1 request against [`MAX_ALLOCS_PER_REQUEST`].
fn per_request_allocations(service_fields: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let weir = Weir::start(&format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 1\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"off\"\n[[service]]\nname = \"alloc\"\nvip = \"127.10.9.1:80\"\n{service_fields}"
    ));
    let mut c = Client::connect(weir.proxy);
    // Warm up: pools, buffers, the balancers, the stats shard (and its per-route entries).
    for _ in 0..500 {
        assert_eq!(c.get("/", "alloc").status, 200);
    }
    const REQUESTS: u64 = 3000;
    let allocs = measured(|| {
        for _ in 0..REQUESTS {
            assert_eq!(c.get("/", "alloc").status, 200);
        }
    });
    let per_request = allocs as f64 / REQUESTS as f64;
    eprintln!("worker allocations per request: {per_request:.2}");
    assert!(per_request > 0.0, "nothing was counted: the worker thread name check is broken");
    assert!(
        per_request <= MAX_ALLOCS_PER_REQUEST,
        "a warm worker made {per_request:.2} heap allocations per request (at most {MAX_ALLOCS_PER_REQUEST} expected)"
    );
    drop(weir);
}

/// Per HTTP/2 request (a stream on a kept connection), to an HTTP/2 endpoint and to an
/// HTTP/1.1 one: the h2 codec's per-stream state on both sides (header maps and their decoded
/// values, the request and response parts, stream slots), the request translated once and
/// built once per attempt, compio's operation records, and weir's per-stream task. Measured
/// 30.0 and 25.0 (the HTTP/1.1 endpoint's response arrives on its multishot receive); the
/// bound leaves 10 %.
const MAX_ALLOCS_PER_H2_REQUEST: [(&str, f64); 2] = [("http2", 33.0), ("http", 27.5)];

#[test]
fn a_warm_worker_allocates_a_bounded_amount_per_http2_request() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let docs = scratch_dir("alloc-h2");
    clients::write_file(&docs, "index.html", b"hello");
    let h2 = Nghttpd::start(&docs);
    let h1 = Endpoint::start("b");
    let weir = Weir::start(&format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 1\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"off\"\n[[service]]\nname = \"http2\"\nvip = \"127.10.9.2:80\"\nprotocol = \"http2\"\n\
         endpoints = [\"{}\"]\n[[service]]\nname = \"http\"\nvip = \"127.10.9.3:80\"\nendpoints = [\"{}\"]\n",
        h2.addr, h1.addr
    ));
    for (service, bound) in MAX_ALLOCS_PER_H2_REQUEST {
        let url = format!("http://{}/index.html", weir.proxy);
        let h2load = |n: u64| {
            let out = clients::run(
                std::process::Command::new("h2load").args(["-n", &n.to_string(), "-c", "1", "-m", "1"]).args([
                    "-H",
                    &format!(":authority: {service}"),
                    &url,
                ]),
                std::time::Duration::from_secs(60),
            );
            assert!(out.contains(&format!("{n} succeeded, 0 failed")), "{out}");
        };
        h2load(500); // warm: pools, buffers, the endpoint connection
        const REQUESTS: u64 = 3000;
        let allocs = measured(|| h2load(REQUESTS));
        // One connection per run: its setup (settings, the h2 connection state) is in the count.
        let per_request = allocs as f64 / REQUESTS as f64;
        eprintln!("{service}: worker allocations per HTTP/2 request: {per_request:.2}");
        assert!(per_request > 0.0, "nothing was counted");
        assert!(per_request <= bound, "{service}: {per_request:.2} allocations per HTTP/2 request (at most {bound})");
    }
}
