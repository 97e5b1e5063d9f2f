//! The discovery thread: a tokio current-thread runtime of its own (a relist is tens of MB of
//! JSON and must not stall `/ready` or `/metrics` on the admin thread) that watches Services,
//! EndpointSlices and Gateway API HTTPRoutes with kube-rs (list with paging, then watch with bookmarks; back-off on errors;
//! a relist on 410 Gone), turns each object into a record at once, and hands the resolved
//! services to the caller's `publish`, batched: nothing until the Service and EndpointSlice
//! watches have listed once (and the HTTPRoute watch has listed, or failed: a cluster without
//! the Gateway API CRD answers 404, said once, retried with back-off, and discovery goes on
//! without routes), then at most one publication per batch window. When the API server is down, slow, failing or
//! cut off, nothing is published and the last good state keeps serving. Must not: keep an API
//! object after converting it, or publish a half-done relist.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use weir_core::config::{KubernetesConfig, ServiceConfig};

use crate::Error;
use crate::cluster::Cluster;
use crate::cluster::RouteApplied;
use crate::convert::{self, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, Settings};
use crate::gateway::{self, HttpRoute};
use crate::record::{ObjectKey, key};
use crate::stats::{HttpRoutes, Kind, Outcome, Stats};

/// The zone label of a Node.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// How discovery runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// `[kubernetes]`.
    pub config: KubernetesConfig,
    /// `[steering] own_mark` when steering is on: the API connections carry it.
    pub own_mark: Option<u32>,
    /// Changes within this window are published together. Default 100 ms.
    pub batch: Duration,
    /// Server-side timeout of one watch request; the watch is re-opened after it (and after
    /// this plus 5 s without a byte, which catches a stalled connection).
    pub watch_timeout_seconds: u32,
    /// Objects per list page.
    pub page_size: u32,
}

impl Options {
    /// The defaults for `config`.
    pub fn new(config: KubernetesConfig, own_mark: Option<u32>) -> Options {
        Options { config, own_mark, batch: Duration::from_millis(100), watch_timeout_seconds: 290, page_size: 500 }
    }
}

/// The running discovery thread.
#[derive(Debug)]
pub struct Discovery {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Resolved services, handed to the caller after each batch (on the discovery thread); a
/// service unchanged since the previous batch is the same `Arc`. `false`: the caller cannot
/// take them now; they are offered again (the latest set) after the next batch window.
pub type Publish = Box<dyn FnMut(Vec<Arc<ServiceConfig>>) -> bool + Send>;

impl Discovery {
    /// Loads the credentials (an error here is a configuration problem: weir does not start)
    /// and starts the thread. `publish` gets the whole discovered set, first once both
    /// watches have listed, then after each batch of changes.
    pub fn start(options: Options, stats: Arc<Stats>, publish: Publish) -> Result<Discovery, Error> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::Runtime)?;
        let config = rt.block_on(crate::client::load_config(options.config.kubeconfig.as_deref()))?;
        let client = {
            let _guard = rt.enter();
            crate::client::client(config, options.own_mark)?
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("weir-discovery".into())
            .spawn(move || rt.block_on(run(client, options, stats, publish, stop_rx)))
            .map_err(Error::Runtime)?;
        Ok(Discovery { stop: Some(stop_tx), thread: Some(thread) })
    }

    /// Stops the thread and waits up to `timeout` for it.
    pub fn stop(mut self, timeout: Duration) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + timeout;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// One event of either watch, as it comes off the merged stream.
#[allow(
    clippy::large_enum_variant,
    reason = "each event is moved once, into the match that converts it: not worth a box per event"
)]
enum Step {
    Service(Result<Event<Service>, watcher::Error>),
    Slice(Result<Event<EndpointSlice>, watcher::Error>),
    Route(Result<Event<HttpRoute>, watcher::Error>),
}

/// Whether a watch error is the API's 404 for the resource (its CRD is not installed).
fn not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The label selector of the Service watch: the user's, and never what kube-proxy skips too.
pub fn service_selector(user: &str) -> String {
    let mut s = format!("!{SERVICE_PROXY_NAME_LABEL}");
    if !user.trim().is_empty() {
        s = format!("{},{s}", user.trim());
    }
    s
}

async fn run(
    client: kube::Client,
    options: Options,
    stats: Arc<Stats>,
    mut publish: Publish,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let kc = &options.config;
    let node_name = kc.node_name.clone().or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()));
    if node_name.is_none() {
        tracing::warn!(
            "kubernetes: no node name ([kubernetes] node_name or NODE_NAME): internalTrafficPolicy Local services get no endpoints and topology hints are not used"
        );
    }
    let settings = Settings {
        node_name: node_name.clone(),
        exclude_namespaces: kc.exclude_namespaces.clone(),
        default_protocol: kc.default_protocol,
    };
    let base = |c: watcher::Config| c.page_size(options.page_size).timeout(options.watch_timeout_seconds);
    let services = watcher::watcher(
        Api::<Service>::all(client.clone()),
        base(watcher::Config::default().labels(&service_selector(&kc.service_selector))),
    )
    .default_backoff()
    .map(Step::Service)
    .boxed();
    let slices = watcher::watcher(
        Api::<EndpointSlice>::all(client.clone()),
        base(watcher::Config::default().labels(SERVICE_NAME_LABEL)),
    )
    .default_backoff()
    .map(Step::Slice)
    .boxed();
    let routes = watcher::watcher(Api::<HttpRoute>::all(client.clone()), base(watcher::Config::default()))
        .default_backoff()
        .map(Step::Route)
        .boxed();
    let mut events = futures_util::stream::select(futures_util::stream::select(services, slices), routes);

    let (zone_tx, mut zone_rx) = tokio::sync::mpsc::channel::<Option<String>>(1);
    if let Some(node) = node_name {
        tokio::spawn(node_zone(Api::<Node>::all(client.clone()), node, zone_tx));
    }

    let mut cluster = Cluster::new();
    // Per kind: listed once; a relist under way.
    let mut listed = [false, false, false];
    let mut relisting = [false, false, false];
    // The HTTPRoute watch failed before it listed (no CRD, no permission): publish without it.
    let mut routes_failed = false;
    // HTTPRoute versions not applied (the previous one serves), with their problems.
    let mut rejected: std::collections::BTreeMap<ObjectKey, Vec<String>> = std::collections::BTreeMap::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut published = false;
    // A set the caller could not take yet.
    let mut pending = false;
    // While the watches run without error, discovery is in step with the API even when
    // nothing changes: the sync time moves on every tick.
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        let until = deadline;
        let wait = async move {
            match until {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let wait = std::pin::pin!(wait);
        tokio::select! {
            _ = &mut stop => return,
            Some(zone) = zone_rx.recv() => cluster.set_zone(zone.as_deref()),
            _ = tick.tick() => {
                if published && stats.last_error.lock().is_none() {
                    stats.last_sync_unix.store(unix_now(), Ordering::Relaxed);
                }
            }
            () = wait => {
                deadline = None;
                if relisting.iter().any(|r| *r) {
                    continue;
                }
                let resolved = cluster.resolve();
                stats.services.store(cluster.served_count() as u64, Ordering::Relaxed);
                stats.endpoints.store(cluster.endpoint_count() as u64, Ordering::Relaxed);
                if resolved.changed || !published || pending {
                    pending = !publish(cluster.services());
                    if pending {
                        deadline = Some(tokio::time::Instant::now() + options.batch);
                    } else {
                        published = true;
                        stats.synced.store(true, Ordering::Relaxed);
                    }
                }
                stats.last_sync_unix.store(unix_now(), Ordering::Relaxed);
            }
            step = events.next() => {
                let Some(step) = step else { return };
                let kind = match &step {
                    Step::Service(_) => Kind::Service,
                    Step::Slice(_) => Kind::EndpointSlice,
                    Step::Route(_) => Kind::HttpRoute,
                };
                let k = kind as usize;
                match step {
                    Step::Route(Err(e)) => {
                        stats.event(kind, Outcome::Error);
                        // A relist that failed is abandoned: it never holds the other kinds back.
                        relisting[k] = false;
                        routes_failed = true;
                        if not_found(&e) {
                            let before = stats.httproutes.swap(HttpRoutes::NotInstalled as u8, Ordering::Relaxed);
                            if before != HttpRoutes::NotInstalled as u8 {
                                tracing::warn!(
                                    "kubernetes: this cluster does not serve HTTPRoutes ({}/v1: 404, the Gateway API CRD is not installed); Services and EndpointSlices are discovered without them, and HTTPRoutes are looked for again now and then",
                                    gateway::GROUP
                                );
                            } else {
                                tracing::debug!("kubernetes: HTTPRoutes still not served: {e}");
                            }
                        } else {
                            if !listed[k] {
                                stats.httproutes.store(HttpRoutes::Failing as u8, Ordering::Relaxed);
                            }
                            tracing::warn!("kubernetes: watching httproutes: {e}; serving the last good routes, retrying");
                            *stats.last_error.lock() = Some(format!("httproute: {e}"));
                        }
                        if listed[0] && listed[1] && !published && deadline.is_none() {
                            deadline = Some(tokio::time::Instant::now() + options.batch);
                        }
                        continue;
                    }
                    Step::Route(Ok(Event::Init)) => {
                        if listed[k] {
                            stats.relist(kind);
                        }
                        relisting[k] = true;
                        cluster.begin_route_relist();
                    }
                    Step::Route(Ok(Event::InitDone)) => {
                        relisting[k] = false;
                        listed[k] = true;
                        let before = stats.httproutes.swap(HttpRoutes::Served as u8, Ordering::Relaxed);
                        if before == HttpRoutes::NotInstalled as u8 {
                            tracing::info!("kubernetes: this cluster serves HTTPRoutes now; they are read");
                        }
                        cluster.end_route_relist();
                        rejected.retain(|k, _| cluster.has_route(k));
                    }
                    Step::Route(Ok(Event::Apply(r) | Event::InitApply(r))) => {
                        let excluded = r.metadata.namespace.as_ref().is_some_and(|ns| settings.exclude_namespaces.contains(ns));
                        match gateway::route(&r).filter(|_| !excluded) {
                            Some((key, record)) => {
                                for p in &record.problems {
                                    tracing::warn!("kubernetes: {p}");
                                }
                                stats.route_problems_total.fetch_add(record.problems.len() as u64, Ordering::Relaxed);
                                let problems = record.problems.clone();
                                match cluster.apply_route(key.clone(), record) {
                                    RouteApplied::KeptPrevious => {
                                        stats.event(kind, Outcome::Ignored);
                                        stats.route_problems_total.fetch_add(1, Ordering::Relaxed);
                                        let why = format!("HTTPRoute {key}: this version is not applied (a rule has an invalid value); the previous version keeps serving");
                                        tracing::warn!("kubernetes: {why}");
                                        rejected.insert(key, problems.into_iter().chain(std::iter::once(why)).collect());
                                    }
                                    RouteApplied::Applied | RouteApplied::Unchanged => {
                                        stats.event(kind, Outcome::Applied);
                                        rejected.remove(&key);
                                    }
                                }
                            }
                            None => {
                                // No longer attached to a Service here (its parents are
                                // Gateways now, or its namespace is excluded): it leaves.
                                stats.event(kind, Outcome::Ignored);
                                if let (Some(ns), Some(name)) = (r.metadata.namespace.as_deref(), r.metadata.name.as_deref()) {
                                    let key = key(ns, name);
                                    cluster.delete_route(&key);
                                    rejected.remove(&key);
                                }
                            }
                        }
                    }
                    Step::Route(Ok(Event::Delete(r))) => {
                        stats.event(kind, Outcome::Deleted);
                        if let (Some(ns), Some(name)) = (r.metadata.namespace.as_deref(), r.metadata.name.as_deref()) {
                            let key = key(ns, name);
                            cluster.delete_route(&key);
                            rejected.remove(&key);
                        }
                    }
                    Step::Service(Err(e)) | Step::Slice(Err(e)) => {
                        stats.event(kind, Outcome::Error);
                        tracing::warn!("kubernetes: watching {}s: {e}; serving the last good state, retrying", kind.as_str());
                        *stats.last_error.lock() = Some(format!("{}: {e}", kind.as_str()));
                        continue;
                    }
                    Step::Service(Ok(Event::Init)) | Step::Slice(Ok(Event::Init)) => {
                        if listed[k] {
                            stats.relist(kind);
                        }
                        relisting[k] = true;
                                match kind {
                            Kind::Service => cluster.begin_service_relist(),
                            _ => cluster.begin_slice_relist(),
                        }
                    }
                    Step::Service(Ok(Event::InitDone)) | Step::Slice(Ok(Event::InitDone)) => {
                        relisting[k] = false;
                        listed[k] = true;
                        match kind {
                            Kind::Service => cluster.end_service_relist(),
                            _ => cluster.end_slice_relist(),
                        }
                        *stats.last_error.lock() = None;
                    }
                    Step::Service(Ok(Event::Apply(svc) | Event::InitApply(svc))) => {
                        match convert::service(&svc, &settings) {
                            Some((key, record, rejected)) => {
                                stats.event(kind, if record.skip.is_some() { Outcome::Ignored } else { Outcome::Applied });
                                for r in &rejected {
                                    stats.annotation_errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::warn!("kubernetes: Service {key}: annotation {} not applied (the default stays): {}", r.key, r.reason);
                                }
                                cluster.apply_service(key, record);
                            }
                            None => stats.event(kind, Outcome::Ignored),
                        }
                    }
                    Step::Service(Ok(Event::Delete(svc))) => {
                        stats.event(kind, Outcome::Deleted);
                        if let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) {
                            cluster.delete_service(&key(ns, name));
                        }
                    }
                    Step::Slice(Ok(Event::Apply(slice) | Event::InitApply(slice))) => match convert::slice(&slice, &settings) {
                        Some((key, record)) => {
                            stats.event(kind, Outcome::Applied);
                            cluster.apply_slice(key, record);
                        }
                        None => stats.event(kind, Outcome::Ignored),
                    },
                    Step::Slice(Ok(Event::Delete(slice))) => {
                        stats.event(kind, Outcome::Deleted);
                        if let (Some(ns), Some(name)) = (slice.metadata.namespace.as_deref(), slice.metadata.name.as_deref()) {
                            cluster.delete_slice(&key(ns, name));
                        }
                    }
                }
                if kind == Kind::HttpRoute && !relisting[k] {
                    // The problems of the routes in effect, and of versions not applied.
                    let mut problems = cluster.route_problems();
                    problems.extend(rejected.values().flatten().cloned());
                    *stats.route_problems.lock() = problems;
                }
                if !relisting[k] {
                    // A watch event arrived: that watch works again.
                    stats.last_error.lock().take();
                }
                let all_listed = listed[0] && listed[1] && (listed[2] || routes_failed);
                if all_listed && (cluster.is_dirty() || !published) && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + options.batch);
                }
            }
        }
    }
}

/// Reads this node's zone label, retrying with back-off until it answers (the zone only
/// narrows topology hints; without it they are not used).
async fn node_zone(nodes: Api<Node>, node: String, tx: tokio::sync::mpsc::Sender<Option<String>>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match nodes.get(&node).await {
            Ok(n) => {
                let zone = n.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).cloned();
                let _ = tx.send(zone).await;
                return;
            }
            Err(e) => {
                if backoff <= Duration::from_millis(500) {
                    tracing::warn!(
                        "kubernetes: reading node {node} (for its zone): {e}; topology hints unused until it answers"
                    );
                } else {
                    tracing::debug!("kubernetes: reading node {node}: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}
