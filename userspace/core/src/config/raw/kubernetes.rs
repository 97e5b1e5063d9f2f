//! `[kubernetes]` as written, its defaults, and its checks (a selector the API server would
//! refuse, a name that cannot exist) before discovery starts. Must not: reach the API server.

use serde::Deserialize;

use super::Checker;
use crate::config::PathPart::{Index, Key};
use crate::config::{KubernetesConfig, Protocol};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawKubernetes {
    enabled: bool,
    kubeconfig: Option<String>,
    node_name: Option<String>,
    service_selector: String,
    exclude_namespaces: Vec<String>,
    default_protocol: Protocol,
}

impl Default for RawKubernetes {
    fn default() -> Self {
        RawKubernetes {
            enabled: false,
            kubeconfig: None,
            node_name: None,
            service_selector: String::new(),
            exclude_namespaces: vec!["kube-system".into()],
            default_protocol: Protocol::Tcp,
        }
    }
}

/// Checks `[kubernetes]`: a selector the API server would refuse, or a namespace that cannot
/// exist, is a problem here rather than a watch that fails at run time.
pub(super) fn check_kubernetes(c: &mut Checker, k: RawKubernetes) -> KubernetesConfig {
    let p = |key: &'static str| [Key("kubernetes"), Key(key)];
    if let Err(e) = crate::config::selector::Selector::parse(&k.service_selector) {
        c.problem(&p("service_selector"), format!("{:?} is not a label selector: {e}", k.service_selector));
    }
    if k.kubeconfig.as_deref().is_some_and(str::is_empty) {
        c.problem(&p("kubeconfig"), "is empty: remove it for the in-cluster service account".into());
    }
    if k.node_name.as_deref().is_some_and(|n| !crate::config::selector::is_dns_subdomain(n)) {
        c.problem(
            &p("node_name"),
            format!("{:?} is not a Kubernetes node name", k.node_name.as_deref().unwrap_or_default()),
        );
    }
    for (i, ns) in k.exclude_namespaces.iter().enumerate() {
        if !crate::config::selector::is_dns_label(ns) {
            c.problem(
                &[Key("kubernetes"), Key("exclude_namespaces"), Index(i)],
                format!("{ns:?} is not a namespace name (1 to 63 of a-z 0-9 -)"),
            );
        }
    }
    KubernetesConfig {
        enabled: k.enabled,
        kubeconfig: k.kubeconfig.map(Into::into),
        node_name: k.node_name,
        service_selector: k.service_selector,
        exclude_namespaces: k.exclude_namespaces,
        default_protocol: k.default_protocol,
    }
}
