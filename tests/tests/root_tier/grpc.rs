//! Root tier: gRPC and HTTP/2 from a steered workload. A grpcio and a grpc-js client in the
//! steered cgroup dial a gRPC service's VIP with no idea weir exists; eBPF steers the
//! connection to weir, which balances each call of the one HTTP/2 connection.

use std::net::SocketAddr;

use weir_tests::Weir;
use weir_tests::clients::{grpc_js_in, grpc_py_in, grpc_server};
use weir_tests::root::{Cgroup, require_root};

use super::steering::steered_config;

#[test]
fn grpc_calls_from_a_steered_workload_are_balanced_per_call() {
    require_root();
    let cg = Cgroup::create("grpc");
    let (a, b) = (grpc_server("a", &[]), grpc_server("b", &[]));
    let svc = format!(
        "[[service]]\nname = \"greeter\"\nvip = \"127.10.4.40:80\"\nprotocol = \"grpc\"\nlb = \"round_robin\"\nendpoints = [\"{}\", \"{}\"]\n",
        a.addr, b.addr
    );
    let weir = Weir::start(&steered_config(&cg, &svc));
    let vip: SocketAddr = "127.10.4.40:80".parse().expect("vip");
    // The clients dial the VIP itself (its own authority): only steering gets them to weir.
    let out = grpc_py_in(Some(&cg.path), vip, "-", &["shapes"]);
    assert_eq!(out["ok"].as_array().map(Vec::len), Some(4), "{out}");
    let out = grpc_py_in(Some(&cg.path), vip, "-", &["calls", "40"]);
    assert_eq!(out["codes"]["OK"].as_u64(), Some(40), "{out}");
    assert_eq!((out["servers"]["a"].as_u64(), out["servers"]["b"].as_u64()), (Some(20), Some(20)), "{out}");
    let js = grpc_js_in(Some(&cg.path), vip, "-", 10);
    assert_eq!((js["codes"]["OK"].as_u64(), js["stream"].as_u64()), (Some(10), Some(5)), "{js}");
    weir.wait_metric_at_least("weir_grpc_responses_total{service=\"greeter\",grpc_code=\"ok\"}", 55.0);
    // From outside the cgroup the VIP is not steered: nothing listens there.
    let outside = grpc_py_in(None, vip, "-", &["calls", "1"]);
    assert_eq!(outside["codes"]["UNAVAILABLE"].as_u64(), Some(1), "{outside}");
}
