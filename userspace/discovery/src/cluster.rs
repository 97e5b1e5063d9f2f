//! What weir knows of the cluster: the records of Services and EndpointSlices, and for each
//! Service the weir services it resolves to. Changes mark a Service dirty; [`Cluster::resolve`]
//! recomputes only the dirty ones, so a change costs one Service's work whatever the cluster's
//! size, and the result equals a fresh full sync (a property test checks it). A relist marks
//! and sweeps in place (no second copy of the records). Owns the semantics kube-proxy users
//! rely on: slices joined by Service name and merged, endpoints de-duplicated by address and
//! port, ports matched by name, ready endpoints first and serving-terminating ones only when
//! none is ready, `internalTrafficPolicy: Local`, topology hints only when every endpoint has
//! one and one is for this zone. Must not: do I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use weir_core::config::{EndpointConfig, ServiceAliases, ServiceConfig};

use crate::gateway::RouteRecord;
use crate::record::{ObjectKey, ServiceRecord, SliceRecord};

/// The cluster domain of Service host names (`NAME.NAMESPACE.svc.cluster.local`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Records by kind, the weir services each Service resolves to, and what changed since the
/// last [`Cluster::resolve`].
#[derive(Debug, Default)]
pub struct Cluster {
    services: HashMap<ObjectKey, (ServiceRecord, u32)>,
    slices: HashMap<ObjectKey, (SliceRecord, u32)>,
    /// Service key → its slices' keys.
    slices_of: HashMap<ObjectKey, HashSet<ObjectKey>>,
    /// HTTPRoutes attached to a Service (in the route's namespace).
    routes: HashMap<ObjectKey, (RouteRecord, u32)>,
    /// Service key → the HTTPRoutes attached to it.
    routes_of: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Backend Service key → the parent Services whose routes send to it (with a count of
    /// references): a change of the backend recomputes its parents.
    users_of: HashMap<ObjectKey, HashMap<ObjectKey, u32>>,
    /// Shared values: an unchanged weir service stays the same `Arc` from one publication to
    /// the next, so the snapshot and the workers recognise it by pointer and keep its state.
    resolved: BTreeMap<ObjectKey, Vec<Arc<ServiceConfig>>>,
    dirty: HashSet<ObjectKey>,
    /// This node's zone (`topology.kubernetes.io/zone`), once known.
    zone: Option<Arc<str>>,
    /// Relist generation per kind: records not seen in a relist are swept at its end.
    service_epoch: u32,
    slice_epoch: u32,
    route_epoch: u32,
    endpoints: usize,
}

/// What [`Cluster::apply_route`] did with a new version of an HTTPRoute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteApplied {
    /// It is the route now.
    Applied,
    /// Unchanged.
    Unchanged,
    /// It skips a rule for an invalid value: the previous version keeps serving.
    KeptPrevious,
}

/// What [`Cluster::resolve`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Kubernetes Services whose weir services were recomputed.
    pub recomputed: usize,
    /// Whether any weir service differs from before.
    pub changed: bool,
}

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Cluster {
        Cluster::default()
    }

    /// Marks `key` and every Service whose routes send to it for recomputation.
    fn touch(&mut self, key: &ObjectKey) {
        self.dirty.insert(key.clone());
        if let Some(users) = self.users_of.get(key) {
            self.dirty.extend(users.keys().cloned());
        }
    }

    /// Adds or replaces an HTTPRoute. A version that skips a rule for an invalid value does
    /// not replace one that is there: the previous version keeps serving.
    pub fn apply_route(&mut self, key: ObjectKey, record: RouteRecord) -> RouteApplied {
        let epoch = self.route_epoch;
        if let Some(old) = self.routes.get_mut(&key) {
            if old.0 == record {
                old.1 = epoch;
                return RouteApplied::Unchanged;
            }
            if record.invalid {
                old.1 = epoch;
                return RouteApplied::KeptPrevious;
            }
        }
        self.delete_route(&key);
        for p in &record.parents {
            self.routes_of.entry(p.service.clone()).or_default().insert(key.clone());
            self.dirty.insert(p.service.clone());
            for b in record.rules.iter().flat_map(|r| &r.backends).filter_map(|b| b.service.as_ref()) {
                *self.users_of.entry(b.clone()).or_default().entry(p.service.clone()).or_default() += 1;
            }
        }
        self.routes.insert(key, (record, epoch));
        RouteApplied::Applied
    }

    /// Removes an HTTPRoute: its parents are plain Services again (or keep their other routes).
    pub fn delete_route(&mut self, key: &ObjectKey) {
        let Some((old, _)) = self.routes.remove(key) else { return };
        for p in &old.parents {
            if let Some(set) = self.routes_of.get_mut(&p.service) {
                set.remove(key);
                if set.is_empty() {
                    self.routes_of.remove(&p.service);
                }
            }
            self.dirty.insert(p.service.clone());
            for b in old.rules.iter().flat_map(|r| &r.backends).filter_map(|b| b.service.as_ref()) {
                if let Some(users) = self.users_of.get_mut(b) {
                    if let Some(n) = users.get_mut(&p.service) {
                        *n -= 1;
                        if *n == 0 {
                            users.remove(&p.service);
                        }
                    }
                    if users.is_empty() {
                        self.users_of.remove(b);
                    }
                }
            }
        }
    }

    /// A relist of HTTPRoutes starts.
    pub fn begin_route_relist(&mut self) {
        self.route_epoch = self.route_epoch.wrapping_add(1);
    }

    /// The relist of HTTPRoutes is complete: sweeps the routes it did not list.
    pub fn end_route_relist(&mut self) {
        let epoch = self.route_epoch;
        let gone: Vec<ObjectKey> =
            self.routes.iter().filter(|(_, (_, e))| *e != epoch).map(|(k, _)| k.clone()).collect();
        for k in gone {
            self.delete_route(&k);
        }
    }

    /// What weir does not serve of the HTTPRoutes it has, located, in route order.
    pub fn route_problems(&self) -> Vec<String> {
        let mut keys: Vec<&ObjectKey> = self.routes.keys().collect();
        keys.sort();
        keys.into_iter().flat_map(|k| self.routes[k].0.problems.iter().cloned()).collect()
    }

    /// Whether HTTPRoute `key` is known.
    pub fn has_route(&self, key: &ObjectKey) -> bool {
        self.routes.contains_key(key)
    }

    /// HTTPRoutes known.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Adds or replaces a Service.
    pub fn apply_service(&mut self, key: ObjectKey, record: ServiceRecord) {
        let epoch = self.service_epoch;
        match self.services.get_mut(&key) {
            Some(old) if old.0 == record => old.1 = epoch,
            _ => {
                self.touch(&key);
                self.services.insert(key, (record, epoch));
            }
        }
    }

    /// Removes a Service (its slices stay until they are deleted too).
    pub fn delete_service(&mut self, key: &ObjectKey) {
        if self.services.remove(key).is_some() {
            self.touch(key);
        }
    }

    /// Adds or replaces an EndpointSlice.
    pub fn apply_slice(&mut self, key: ObjectKey, record: SliceRecord) {
        let epoch = self.slice_epoch;
        if let Some(old) = self.slices.get_mut(&key)
            && old.0 == record
        {
            old.1 = epoch;
            return;
        }
        self.delete_slice(&key);
        self.touch(&record.service);
        self.slices_of.entry(record.service.clone()).or_default().insert(key.clone());
        self.endpoints += record.endpoints.len();
        self.slices.insert(key, (record, epoch));
    }

    /// Removes an EndpointSlice; a Service whose last slice is gone keeps nothing of it.
    pub fn delete_slice(&mut self, key: &ObjectKey) {
        let Some((old, _)) = self.slices.remove(key) else { return };
        self.endpoints -= old.endpoints.len();
        self.touch(&old.service);
        if let Some(set) = self.slices_of.get_mut(&old.service) {
            set.remove(key);
            if set.is_empty() {
                self.slices_of.remove(&old.service);
            }
        }
    }

    /// A relist of Services starts: records it does not list again are removed by
    /// [`Cluster::end_service_relist`].
    pub fn begin_service_relist(&mut self) {
        self.service_epoch = self.service_epoch.wrapping_add(1);
    }

    /// The relist of Services is complete: sweeps the Services it did not list.
    pub fn end_service_relist(&mut self) {
        let epoch = self.service_epoch;
        let gone: Vec<ObjectKey> =
            self.services.iter().filter(|(_, (_, e))| *e != epoch).map(|(k, _)| k.clone()).collect();
        for k in gone {
            self.delete_service(&k);
        }
    }

    /// A relist of EndpointSlices starts.
    pub fn begin_slice_relist(&mut self) {
        self.slice_epoch = self.slice_epoch.wrapping_add(1);
    }

    /// The relist of EndpointSlices is complete: sweeps the slices it did not list.
    pub fn end_slice_relist(&mut self) {
        let epoch = self.slice_epoch;
        let gone: Vec<ObjectKey> =
            self.slices.iter().filter(|(_, (_, e))| *e != epoch).map(|(k, _)| k.clone()).collect();
        for k in gone {
            self.delete_slice(&k);
        }
    }

    /// Sets this node's zone; Services whose endpoints carry hints are recomputed.
    pub fn set_zone(&mut self, zone: Option<&str>) {
        if self.zone.as_deref() == zone {
            return;
        }
        self.zone = zone.map(Arc::from);
        let hinted: Vec<ObjectKey> = self
            .slices
            .values()
            .filter(|(s, _)| s.endpoints.iter().any(|e| e.zones.is_some()))
            .map(|(s, _)| s.service.clone())
            .collect();
        for k in &hinted {
            self.touch(k);
        }
    }

    /// Whether anything changed since the last [`Cluster::resolve`].
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Recomputes the weir services of every Service that changed.
    pub fn resolve(&mut self) -> Resolved {
        let mut out = Resolved::default();
        for key in std::mem::take(&mut self.dirty) {
            out.recomputed += 1;
            let services = match self.services.get(&key) {
                Some((svc, _)) if svc.skip.is_none() => {
                    let slices = self.slices_of.get(&key).into_iter().flatten().filter_map(|k| self.slices.get(k));
                    let mut services = resolve_service(svc, slices.map(|(s, _)| s), self.zone.as_deref());
                    if let Some(attached) = self.routes_of.get(&key) {
                        for (service, port) in services.iter_mut().zip(&svc.ports) {
                            let on_port = attached
                                .iter()
                                .filter_map(|k| self.routes.get(k))
                                .map(|(r, _)| r)
                                .filter(|r| crate::routes::attaches(r, &key, port));
                            if let Some((backends, routes)) =
                                crate::routes::attach(port, on_port, |b, p| self.backend_endpoints(b, p))
                            {
                                service.endpoints = Vec::new();
                                service.backends = backends;
                                service.routes = routes;
                            }
                        }
                    }
                    services
                }
                _ => Vec::new(),
            };
            let changed = if services.is_empty() {
                self.resolved.remove(&key).is_some()
            } else {
                let old = self.resolved.get(&key);
                if old
                    .is_some_and(|old| old.len() == services.len() && old.iter().zip(&services).all(|(o, n)| **o == *n))
                {
                    false
                } else {
                    // Ports whose weir service did not change keep their value.
                    let shared = services
                        .into_iter()
                        .map(|n| match old.and_then(|old| old.iter().find(|o| ***o == n)) {
                            Some(o) => Arc::clone(o),
                            None => Arc::new(n),
                        })
                        .collect();
                    self.resolved.insert(key, shared);
                    true
                }
            };
            out.changed |= changed;
        }
        out
    }

    /// The endpoints of port `port` (by number) of Service `key`: none when weir does not
    /// serve it or it has no such port.
    fn backend_endpoints(&self, key: &ObjectKey, port: u16) -> Vec<EndpointConfig> {
        let Some((svc, _)) = self.services.get(key).filter(|(s, _)| s.skip.is_none()) else { return Vec::new() };
        let Some(p) = svc.ports.iter().find(|p| p.port == port) else { return Vec::new() };
        let slices = self.slices_of.get(key).into_iter().flatten().filter_map(|k| self.slices.get(k));
        endpoints(svc, slices.map(|(s, _)| s), &p.name, self.zone.as_deref())
    }

    /// Every weir service, in Service key order (`namespace/name`), ports in Service order; an
    /// unchanged one is the same `Arc` as in the previous call.
    pub fn services(&self) -> Vec<Arc<ServiceConfig>> {
        self.resolved.values().flatten().cloned().collect()
    }

    /// Kubernetes Services known (served or not).
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Weir services resolved from them.
    pub fn served_count(&self) -> usize {
        self.resolved.values().map(Vec::len).sum()
    }

    /// Endpoints in all slices known.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
    }
}

/// The weir name of one port of a Service: `NAME.NAMESPACE`, with `:PORTNAME` when the Service
/// has more than one port.
pub fn service_name(svc: &ServiceRecord, port_name: &str) -> String {
    if svc.ports.len() == 1 {
        format!("{}.{}", svc.name, svc.namespace)
    } else {
        format!("{}.{}:{}", svc.name, svc.namespace, port_name)
    }
}

fn resolve_service<'a>(
    svc: &ServiceRecord,
    slices: impl Iterator<Item = &'a SliceRecord> + Clone,
    zone: Option<&str>,
) -> Vec<ServiceConfig> {
    let template = svc.policy.as_deref().cloned().unwrap_or_else(ServiceConfig::defaults);
    let base = format!("{}.{}", svc.name, svc.namespace);
    svc.ports
        .iter()
        .map(|port| {
            let mut service = template.clone();
            service.name = service_name(svc, &port.name);
            service.protocol = port.protocol;
            service.vip = SocketAddr::new(svc.cluster_ips[0], port.port);
            service.endpoints = endpoints(svc, slices.clone(), &port.name, zone);
            let mut hosts = Vec::new();
            for host in [format!("{base}.svc"), format!("{base}.svc.{CLUSTER_DOMAIN}")] {
                hosts.push(format!("{host}:{}", port.port));
                if svc.ports.len() == 1 || port.port == 80 {
                    hosts.push(host);
                }
            }
            if svc.ports.len() > 1 {
                hosts.push(format!("{base}:{}", port.port));
                if port.port == 80 {
                    hosts.push(base.clone());
                }
            }
            service.aliases = ServiceAliases {
                vips: svc.cluster_ips[1..].iter().map(|ip| SocketAddr::new(*ip, port.port)).collect(),
                hosts,
            };
            service
        })
        .collect()
}

/// The endpoints one port of a Service balances over.
fn endpoints<'a>(
    svc: &ServiceRecord,
    slices: impl Iterator<Item = &'a SliceRecord>,
    port_name: &str,
    zone: Option<&str>,
) -> Vec<EndpointConfig> {
    // Merge the slices, de-duplicating by address and port. Of duplicates (an endpoint moving
    // between slices, or a pod IP reused while the old pod terminates) the ready one wins, then
    // the serving one, then the one not terminating (kube-proxy's preference); the rest of the
    // record breaks ties, so the choice never depends on the order the slices are visited in.
    let rank = |e: &'a crate::record::EndpointRecord| (e.ready, e.serving, !e.terminating, e.local, &e.zones);
    let mut merged: BTreeMap<SocketAddr, &crate::record::EndpointRecord> = BTreeMap::new();
    for slice in slices {
        let Some(&(_, port)) = slice.ports.iter().find(|(n, _)| &**n == port_name) else { continue };
        for e in &slice.endpoints {
            if svc.local_only && !e.local {
                continue;
            }
            let addr = SocketAddr::new(e.addr, port);
            merged
                .entry(addr)
                .and_modify(|have| {
                    if rank(e) > rank(have) {
                        *have = e;
                    }
                })
                .or_insert(e);
        }
    }
    let mut chosen: Vec<(SocketAddr, &crate::record::EndpointRecord)> =
        merged.iter().filter(|(_, e)| e.ready).map(|(a, e)| (*a, *e)).collect();
    if chosen.is_empty() {
        chosen = merged.iter().filter(|(_, e)| e.serving && e.terminating).map(|(a, e)| (*a, *e)).collect();
    }
    if let Some(zone) = zone.filter(|_| !svc.local_only) {
        let all_hinted = !chosen.is_empty() && chosen.iter().all(|(_, e)| e.zones.is_some());
        let for_zone =
            |e: &crate::record::EndpointRecord| e.zones.as_ref().is_some_and(|z| z.iter().any(|z| &**z == zone));
        if all_hinted && chosen.iter().any(|(_, e)| for_zone(e)) {
            chosen.retain(|(_, e)| for_zone(e));
        }
    }
    chosen.into_iter().map(|(addr, _)| EndpointConfig { addr, weight: 1 }).collect()
}

#[cfg(test)]
mod tests;
