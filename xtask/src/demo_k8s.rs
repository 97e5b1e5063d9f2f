//! `cargo xtask demo --kubernetes`: the demo's services come from a Kubernetes API server
//! instead of the config file. The test API server (`weir-fake-kube-api`, from the tests
//! package) serves the Service `checkout` in namespace `demo` on ClusterIP 127.10.0.1:80 with
//! one EndpointSlice per demo endpoint (each endpoint has its own port), and the Service
//! `greeter` (port `appProtocol: grpc`) on 127.10.0.2:80 with one slice for the three gRPC
//! servers; weir reaches it through a kubeconfig file. While the demo runs, HTTP endpoint 3 is
//! scaled up (a new slice) and endpoint 1 terminated (terminating, then gone), and the
//! per-second lines show weir following.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::root;

/// The test API server binary (package weir-tests).
pub(crate) const FAKE_API: &str = "weir-fake-kube-api";
/// The discovered HTTP service's name.
pub(crate) const HTTP_SERVICE: &str = "checkout.demo";
/// The discovered gRPC service's name.
pub(crate) const GRPC_SERVICE: &str = "greeter.demo";

const SERVICE_FIXTURE: &str = include_str!("../../tests/fixtures/kubernetes/service-clusterip.json");
const SLICE_FIXTURE: &str = include_str!("../../tests/fixtures/kubernetes/endpointslice.json");
const PORTS: [u16; 3] = [18081, 18082, 18083];
const GRPC_PORTS: [u16; 3] = [18084, 18085, 18086];

/// The pipe that changes the test API server's cluster.
pub(crate) struct Cluster {
    stdin: ChildStdin,
}

fn service() -> Value {
    let mut s: Value = serde_json::from_str(SERVICE_FIXTURE).expect("fixture");
    s["metadata"]["name"] = json!("checkout");
    s["metadata"]["namespace"] = json!("demo");
    s["spec"]["clusterIP"] = json!("127.10.0.1");
    s["spec"]["clusterIPs"] = json!(["127.10.0.1"]);
    s["spec"]["ports"] = json!([{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]);
    s
}

/// The gRPC Service: its port says `appProtocol: grpc`, so weir balances every call over
/// HTTP/2.
fn greeter() -> Value {
    let mut s = service();
    s["metadata"]["name"] = json!("greeter");
    s["spec"]["clusterIP"] = json!("127.10.0.2");
    s["spec"]["clusterIPs"] = json!(["127.10.0.2"]);
    s["spec"]["ports"] =
        json!([{"name": "api", "protocol": "TCP", "port": 80, "targetPort": 50051, "appProtocol": "grpc"}]);
    s
}

/// The slice of gRPC server `n` (1..=3): the servers share 127.0.0.1 on ports of their own, and
/// a slice has one port per name, so each is a slice of its own (as the HTTP endpoints are).
fn greeter_slice(n: usize) -> Value {
    let mut s = slice(1, false);
    s["metadata"]["name"] = json!(format!("greeter-{n}"));
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!("greeter");
    s["ports"] = json!([{"name": "api", "protocol": "TCP", "port": GRPC_PORTS[n - 1]}]);
    s
}

/// The slice of demo endpoint `n` (1..=3): ready, or terminating.
fn slice(n: usize, terminating: bool) -> Value {
    let mut s: Value = serde_json::from_str(SLICE_FIXTURE).expect("fixture");
    s["metadata"]["name"] = json!(format!("checkout-{n}"));
    s["metadata"]["namespace"] = json!("demo");
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!("checkout");
    s["ports"] = json!([{"name": "http", "protocol": "TCP", "port": PORTS[n - 1]}]);
    let conditions = if terminating {
        json!({"ready": false, "serving": true, "terminating": true})
    } else {
        json!({"ready": true, "serving": true, "terminating": false})
    };
    s["endpoints"] = json!([{"addresses": ["127.0.0.1"], "conditions": conditions, "nodeName": "demo-node"}]);
    s
}

impl Cluster {
    /// Starts the test API server with the Service and the slices of endpoints 1 and 2;
    /// returns its pipe, its process (stopped with the demo's other children) and the
    /// `[kubernetes]` table that points weir at it.
    pub(crate) fn start(dir: &Path) -> anyhow::Result<(Cluster, Child, String)> {
        let kubeconfig = dir.join("kubeconfig");
        let mut child = Command::new(root().join("target/debug").join(FAKE_API))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the test Kubernetes API server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        eprintln!("demo: test Kubernetes API server on http://{} (kubeconfig {})", line.trim(), kubeconfig.display());
        let stdin = child.stdin.take().context("stdin")?;
        let mut cluster = Cluster { stdin };
        cluster.send(json!({"op": "node", "name": "demo-node", "zone": "demo-zone"}))?;
        cluster.send(json!({"op": "apply", "object": service()}))?;
        cluster.send(json!({"op": "apply", "object": slice(1, false)}))?;
        cluster.send(json!({"op": "apply", "object": slice(2, false)}))?;
        cluster.send(json!({"op": "apply", "object": greeter()}))?;
        for n in 1..=3 {
            cluster.send(json!({"op": "apply", "object": greeter_slice(n)}))?;
        }
        let table = format!(
            "[kubernetes]\nenabled = true\nkubeconfig = \"{}\"\nnode_name = \"demo-node\"\ndefault_protocol = \"http\"\n",
            kubeconfig.display()
        );
        Ok((cluster, child, table))
    }

    fn send(&mut self, cmd: Value) -> anyhow::Result<()> {
        writeln!(self.stdin, "{cmd}").context("writing to the test API server")
    }

    /// The demo's story: endpoint 3 scaled up at 5 s, endpoint 1 terminating at 10 s and gone
    /// at 13 s.
    pub(crate) fn script(mut self, stop: Arc<AtomicBool>) {
        let start = Instant::now();
        let steps: [(u64, &str, Value); 3] = [
            (
                5,
                "endpoint 3 scaled up (EndpointSlice checkout-3 added)",
                json!({"op": "apply", "object": slice(3, false)}),
            ),
            (
                10,
                "endpoint 1 terminating (ready: false, terminating: true): it gets no new requests",
                json!({"op": "apply", "object": slice(1, true)}),
            ),
            (
                13,
                "endpoint 1 gone (EndpointSlice checkout-1 deleted)",
                json!({"op": "delete", "kind": "EndpointSlice", "namespace": "demo", "name": "checkout-1"}),
            ),
        ];
        for (at, what, cmd) in steps {
            while start.elapsed() < Duration::from_secs(at) {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            println!("demo: kubernetes: {what}");
            if self.send(cmd).is_err() {
                return;
            }
        }
        // Keep stdin open (the server exits when it closes) until the demo stops.
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The demo config without its file service, with `table` appended.
pub(crate) fn config(base: &str, table: &str) -> String {
    let head = base.split("\n[[service]]").next().unwrap_or(base);
    format!("{head}\n{table}")
}
