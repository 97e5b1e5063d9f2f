//! A test Kubernetes API server on loopback HTTP that speaks the real wire format for what weir
//! reads: Services, EndpointSlices, Gateway API HTTPRoutes (list with `limit`/`continue` paging and a list
//! `resourceVersion`; watch as a chunked stream of JSON events from a `resourceVersion`, with
//! bookmarks; `410 Gone` — an `ERROR` event of code 410 — for a version older than its history;
//! `labelSelector`) and `GET` of one Node. HTTPRoutes answer 404, as in a cluster without
//! the Gateway API CRD, after [`FakeApi::install_httproutes`]`(false)`. Switches make it cut every watch, stall (hold every
//! answer), answer 5xx or 429, or stop; [`FakeApi::restart`] brings it back on the same port
//! with a new history, as an API server restored from a backup would be. weir reaches it
//! through a kubeconfig file ([`FakeApi::kubeconfig`]), exactly as it reaches a cluster. Must
//! not: be used by product code.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::{Value, json};
use weir_core::config::selector::Selector;

/// The resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// gateway.networking.k8s.io/v1 HTTPRoute.
    HttpRoute,
}

impl Resource {
    fn list_kind(self) -> &'static str {
        match self {
            Resource::Service => "ServiceList",
            Resource::EndpointSlice => "EndpointSliceList",
            Resource::HttpRoute => "HTTPRouteList",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Service => "v1",
            Resource::EndpointSlice => "discovery.k8s.io/v1",
            Resource::HttpRoute => "gateway.networking.k8s.io/v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Service => "Service",
            Resource::EndpointSlice => "EndpointSlice",
            Resource::HttpRoute => "HTTPRoute",
        }
    }
}

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: Resource,
    kind: &'static str,
    old: Option<Value>,
    new: Value,
}

#[derive(Debug)]
struct State {
    rv: u64,
    /// Watches from a version below this get 410 Gone.
    oldest: u64,
    objects: BTreeMap<(Resource, String), Value>,
    nodes: BTreeMap<String, Value>,
    history: Vec<Change>,
    /// Switches.
    stalled: bool,
    fail_status: Option<u16>,
    /// Bumped by `cut`: open watches end.
    cut_epoch: u64,
    stopped: bool,
    /// The HTTPRoute CRD is not installed: its paths answer 404.
    no_httproutes: bool,
    /// Requests by path kind, for tests.
    requests: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    bookmark_every: Duration,
}

/// A running test API server.
#[derive(Debug)]
pub struct FakeApi {
    inner: Arc<Inner>,
    /// Where it listens (on 127.0.0.0/8).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApi {
    /// Starts on a free loopback port with an empty cluster.
    pub fn start() -> FakeApi {
        FakeApi::start_at("127.0.0.1:0".parse().expect("addr"), 1)
    }

    /// Starts on `addr` (on 127.0.0.0/8) with an empty cluster.
    pub fn start_on(addr: SocketAddr) -> FakeApi {
        FakeApi::start_at(addr, 1)
    }

    fn start_at(addr: SocketAddr, first_rv: u64) -> FakeApi {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("test API server: bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                rv: first_rv,
                oldest: first_rv,
                objects: BTreeMap::new(),
                nodes: BTreeMap::new(),
                history: Vec::new(),
                stalled: false,
                fail_status: None,
                cut_epoch: 0,
                stopped: false,
                no_httproutes: false,
                requests: BTreeMap::new(),
            }),
            changed: Condvar::new(),
            bookmark_every: Duration::from_millis(500),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (inner, stop, conns) = (inner.clone(), stop.clone(), conns.clone());
            listener.set_nonblocking(true).expect("nonblocking");
            std::thread::Builder::new()
                .name("fake-kube-api".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((s, _)) => {
                                let _ = s.set_nonblocking(false);
                                if let Ok(c) = s.try_clone() {
                                    conns.lock().push(c);
                                }
                                let inner = inner.clone();
                                let _ = std::thread::Builder::new().name("fake-kube-conn".into()).spawn(move || {
                                    let _ = serve(&inner, s);
                                });
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })
                .expect("spawn the test API server")
        };
        FakeApi { inner, addr, stop, conns, thread: Some(thread) }
    }

    /// Stops listening and closes every connection (the API server is gone).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        {
            let mut st = self.inner.state.lock();
            st.stopped = true;
        }
        self.inner.changed.notify_all();
        for c in self.conns.lock().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Replaces this server with a new one on the same port, with the same objects but a new
    /// history: every version a client holds is older than it, so watches get 410 Gone and
    /// clients relist. A stopped server comes back this way too.
    pub fn restart(&mut self) {
        self.stop();
        let (objects, nodes, rv, no_httproutes) = {
            let st = self.inner.state.lock();
            (st.objects.clone(), st.nodes.clone(), st.rv, st.no_httproutes)
        };
        let next = FakeApi::start_at(self.addr, rv + 1_000_000);
        {
            let mut st = next.inner.state.lock();
            st.nodes = nodes;
            st.no_httproutes = no_httproutes;
            for ((res, key), mut obj) in objects {
                st.rv += 1;
                obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                st.objects.insert((res, key), obj);
            }
            st.oldest = st.rv;
        }
        *self = next;
    }

    /// A kubeconfig file (in `dir`) that points at this server.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: weir\n    namespace: default\n\
             current-context: fake\nusers:\n- name: weir\n  user:\n    token: test-token\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    fn change(&self, resource: Resource, mut obj: Value, delete: bool) {
        let ns = obj["metadata"]["namespace"].as_str().expect("metadata.namespace").to_string();
        let name = obj["metadata"]["name"].as_str().expect("metadata.name").to_string();
        let key = (resource, format!("{ns}/{name}"));
        let mut st = self.inner.state.lock();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["kind"] = json!(resource.kind());
        obj["apiVersion"] = json!(resource.api_version());
        let old = if delete { st.objects.remove(&key) } else { st.objects.insert(key, obj.clone()) };
        if delete && old.is_none() {
            st.rv -= 1;
            return;
        }
        let kind = match (delete, &old) {
            (true, _) => "DELETED",
            (false, None) => "ADDED",
            (false, Some(_)) => "MODIFIED",
        };
        let new = if delete {
            let mut last = old.clone().expect("deleted object");
            last["metadata"]["resourceVersion"] = json!(rv.to_string());
            last
        } else {
            obj
        };
        st.history.push(Change { rv, resource, kind, old, new });
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Creates or replaces a Service (kubectl's JSON).
    pub fn apply_service(&self, obj: Value) {
        self.change(Resource::Service, obj, false);
    }

    /// Deletes a Service.
    pub fn delete_service(&self, namespace: &str, name: &str) {
        self.change(Resource::Service, json!({"metadata": {"namespace": namespace, "name": name}}), true);
    }

    /// Creates or replaces an EndpointSlice.
    pub fn apply_slice(&self, obj: Value) {
        self.change(Resource::EndpointSlice, obj, false);
    }

    /// Deletes an EndpointSlice.
    pub fn delete_slice(&self, namespace: &str, name: &str) {
        self.change(Resource::EndpointSlice, json!({"metadata": {"namespace": namespace, "name": name}}), true);
    }

    /// Creates or replaces an HTTPRoute (`creationTimestamp` is kept as given).
    pub fn apply_route(&self, obj: Value) {
        self.change(Resource::HttpRoute, obj, false);
    }

    /// Deletes an HTTPRoute.
    pub fn delete_route(&self, namespace: &str, name: &str) {
        self.change(Resource::HttpRoute, json!({"metadata": {"namespace": namespace, "name": name}}), true);
    }

    /// Whether the Gateway API HTTPRoute CRD is installed (it is at start); without it,
    /// HTTPRoute lists and watches answer 404 as a real API server does.
    pub fn install_httproutes(&self, installed: bool) {
        self.inner.state.lock().no_httproutes = !installed;
    }

    /// Adds a Node with a zone label.
    pub fn set_node(&self, name: &str, zone: Option<&str>) {
        let mut labels = json!({"kubernetes.io/hostname": name});
        if let Some(z) = zone {
            labels["topology.kubernetes.io/zone"] = json!(z);
        }
        let node = json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "labels": labels, "resourceVersion": "1"}});
        self.inner.state.lock().nodes.insert(name.to_string(), node);
    }

    /// Closes every open watch (a cut connection: clients resume from their version).
    pub fn cut(&self) {
        self.inner.state.lock().cut_epoch += 1;
        self.inner.changed.notify_all();
    }

    /// Holds every answer (and watch event) while `on`.
    pub fn stall(&self, on: bool) {
        self.inner.state.lock().stalled = on;
        self.inner.changed.notify_all();
    }

    /// Answers every request with this status (500, 503, 429…) while set; ends open watches.
    pub fn fail_with(&self, status: Option<u16>) {
        let mut st = self.inner.state.lock();
        st.fail_status = status;
        st.cut_epoch += 1;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Forgets the history up to now, and cuts every watch: a client's next watch is from a
    /// version older than what is left, gets 410 Gone, and the client relists.
    pub fn compact(&self) {
        let mut st = self.inner.state.lock();
        st.rv += 1;
        st.oldest = st.rv;
        st.history.clear();
        st.cut_epoch += 1;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Requests served so far by kind: `list`, `watch` (a watch that streams), `gone` (a watch
    /// answered 410 Gone), `node`, `failed` (answered with the `fail_with` status).
    pub fn requests(&self, what: &str) -> u64 {
        self.inner.state.lock().requests.get(what).copied().unwrap_or(0)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_string();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    Some(Request { path: path.to_string(), query })
}

fn decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 3 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
            .flatten();
        match (hex, b[i]) {
            (Some(x), _) => {
                out.push(x);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn write_json(s: &mut TcpStream, status: u16, body: &Value, extra: &str) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).expect("json");
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    write!(
        s,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
        body.len()
    )?;
    s.write_all(&body)?;
    s.flush()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn count(inner: &Inner, what: &str) {
    *inner.state.lock().requests.entry(what.to_string()).or_default() += 1;
}

fn serve(inner: &Inner, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let Some(req) = read_request(&mut reader) else { return Ok(()) };
    let mut s = stream;
    // A stalled server holds the answer.
    {
        let mut st = inner.state.lock();
        while st.stalled && !st.stopped {
            inner.changed.wait_for(&mut st, Duration::from_millis(100));
        }
        if st.stopped {
            return Ok(());
        }
        if let Some(code) = st.fail_status {
            drop(st);
            count(inner, "failed");
            let extra = if code == 429 { "retry-after: 1\r\n" } else { "" };
            return write_json(
                &mut s,
                code,
                &status(code, "InternalError", "the test API server fails on purpose"),
                extra,
            );
        }
    }
    let resource = match req.path.as_str() {
        "/api/v1/services" => Resource::Service,
        "/apis/discovery.k8s.io/v1/endpointslices" => Resource::EndpointSlice,
        "/apis/gateway.networking.k8s.io/v1/httproutes" if !inner.state.lock().no_httproutes => Resource::HttpRoute,
        p if p.starts_with("/api/v1/nodes/") => {
            count(inner, "node");
            let name = &p["/api/v1/nodes/".len()..];
            let node = inner.state.lock().nodes.get(name).cloned();
            return match node {
                Some(n) => write_json(&mut s, 200, &n, ""),
                None => write_json(&mut s, 404, &status(404, "NotFound", &format!("nodes \"{name}\" not found")), ""),
            };
        }
        other => {
            count(inner, "unknown");
            return write_json(
                &mut s,
                404,
                &status(404, "NotFound", &format!("the test API server does not serve {other}")),
                "",
            );
        }
    };
    let selector = match Selector::parse(req.query.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return write_json(&mut s, 400, &status(400, "BadRequest", &e), ""),
    };
    if req.query.get("watch").is_some_and(|v| v == "true" || v == "1") {
        watch(inner, s, resource, &selector, &req)
    } else {
        count(inner, "list");
        list(inner, s, resource, &selector, &req)
    }
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

fn list(
    inner: &Inner,
    mut s: TcpStream,
    resource: Resource,
    selector: &Selector,
    req: &Request,
) -> std::io::Result<()> {
    let limit: usize = req.query.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let st = inner.state.lock();
    // A continue token is the list's version and the last key, hex-encoded.
    let (list_rv, after) = match req.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let raw = (0..token.len() / 2)
                .filter_map(|i| u8::from_str_radix(&token[2 * i..2 * i + 2], 16).ok())
                .collect::<Vec<u8>>();
            let raw = String::from_utf8_lossy(&raw).into_owned();
            let (rv, key) = raw.split_once('|').unwrap_or(("0", ""));
            let rv: u64 = rv.parse().unwrap_or(0);
            if rv < st.oldest {
                drop(st);
                return write_json(&mut s, 410, &status(410, "Expired", "the continue token is too old"), "");
            }
            (rv, Some(key.to_string()))
        }
        None => (st.rv, None),
    };
    let mut items = Vec::new();
    let mut last = None;
    let mut more = false;
    for ((res, key), obj) in st.objects.range((resource, after.clone().unwrap_or_default())..) {
        if *res != resource {
            break;
        }
        if after.as_ref().is_some_and(|a| key <= a) || !selector.matches(&labels(obj)) {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(obj.clone());
        last = Some(key.clone());
    }
    drop(st);
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if more && let Some(last) = last {
        let token: String = format!("{list_rv}|{last}").bytes().map(|b| format!("{b:02x}")).collect();
        metadata["continue"] = json!(token);
    }
    write_json(
        &mut s,
        200,
        &json!({"kind": resource.list_kind(), "apiVersion": resource.api_version(), "metadata": metadata, "items": items}),
        "",
    )
}

fn chunk(s: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).expect("json");
    line.push(b'\n');
    write!(s, "{:x}\r\n", line.len())?;
    s.write_all(&line)?;
    s.write_all(b"\r\n")?;
    s.flush()
}

fn watch(
    inner: &Inner,
    mut s: TcpStream,
    resource: Resource,
    selector: &Selector,
    req: &Request,
) -> std::io::Result<()> {
    let from: u64 = req.query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = req.query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )?;
    let ends = Instant::now() + timeout;
    let mut st = inner.state.lock();
    // `watch`: a watch that streams; `gone`: one answered 410 Gone.
    let what = if from < st.oldest { "gone" } else { "watch" };
    *st.requests.entry(what.to_string()).or_default() += 1;
    if from < st.oldest {
        drop(st);
        chunk(
            &mut s,
            &json!({"type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from}"))}),
        )?;
        return s.write_all(b"0\r\n\r\n");
    }
    let epoch = st.cut_epoch;
    let mut sent = from;
    let mut next_bookmark = Instant::now() + inner.bookmark_every;
    loop {
        if st.stopped || st.cut_epoch != epoch || Instant::now() >= ends {
            break;
        }
        if !st.stalled {
            let pending: Vec<Change> =
                st.history.iter().filter(|c| c.rv > sent && c.resource == resource).cloned().collect();
            let newest = st.rv;
            drop(st);
            for c in pending {
                let was = c.old.as_ref().is_some_and(|o| selector.matches(&labels(o)));
                let is = selector.matches(&labels(&c.new));
                let kind = match (c.kind, was, is) {
                    ("DELETED", true, _) => Some("DELETED"),
                    ("DELETED", false, _) => None,
                    (_, true, true) => Some("MODIFIED"),
                    (_, false, true) => Some("ADDED"),
                    (_, true, false) => Some("DELETED"),
                    (_, false, false) => None,
                };
                if let Some(kind) = kind {
                    chunk(&mut s, &json!({"type": kind, "object": c.new}))?;
                }
            }
            // Every change of this resource up to `newest` is sent.
            sent = sent.max(newest);
            if bookmarks && Instant::now() >= next_bookmark {
                let rv = sent;
                chunk(
                    &mut s,
                    &json!({"type": "BOOKMARK", "object": {"kind": resource.kind(), "apiVersion": resource.api_version(), "metadata": {"resourceVersion": rv.to_string()}}}),
                )?;
                next_bookmark = Instant::now() + inner.bookmark_every;
            }
            st = inner.state.lock();
        }
        inner.changed.wait_for(&mut st, Duration::from_millis(100));
    }
    drop(st);
    s.write_all(b"0\r\n\r\n")
}
