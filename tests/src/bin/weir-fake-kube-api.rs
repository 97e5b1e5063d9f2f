//! `weir-fake-kube-api`: the test Kubernetes API server (`weir_tests::kube_api`) as a process,
//! for `cargo xtask demo --kubernetes`. Writes a kubeconfig that points at it to the path given
//! with `--kubeconfig`, prints its address, then applies one JSON command per line of stdin:
//! `{"op": "apply", "object": {…}}` (a Service or an EndpointSlice, by its `kind`), `{"op":
//! "delete", "kind": "EndpointSlice", "namespace": "…", "name": "…"}`, `{"op": "node", "name":
//! "…", "zone": "…"}`. Exits when stdin closes. Listens on 127.0.0.1 only.

use std::io::BufRead as _;

use weir_tests::kube_api::FakeApi;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kubeconfig =
        args.iter().position(|a| a == "--kubeconfig").and_then(|i| args.get(i + 1)).expect("--kubeconfig PATH");
    let api = FakeApi::start();
    let path = std::path::Path::new(kubeconfig);
    let written = api.kubeconfig(path.parent().expect("a directory"));
    if written != path {
        std::fs::rename(&written, path).expect("move the kubeconfig into place");
    }
    println!("{}", api.addr);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Ok(cmd) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!("weir-fake-kube-api: not JSON: {line}");
            continue;
        };
        match (cmd["op"].as_str(), cmd["kind"].as_str().or(cmd["object"]["kind"].as_str())) {
            (Some("apply"), Some("Service")) => api.apply_service(cmd["object"].clone()),
            (Some("apply"), Some("EndpointSlice")) => api.apply_slice(cmd["object"].clone()),
            (Some("delete"), Some(kind)) => {
                let (ns, name) =
                    (cmd["namespace"].as_str().unwrap_or_default(), cmd["name"].as_str().unwrap_or_default());
                if kind == "Service" {
                    api.delete_service(ns, name);
                } else {
                    api.delete_slice(ns, name);
                }
            }
            (Some("node"), _) => api.set_node(cmd["name"].as_str().unwrap_or_default(), cmd["zone"].as_str()),
            _ => eprintln!("weir-fake-kube-api: unknown command: {line}"),
        }
    }
}
