//! Where Kubernetes discovery meets the rest of weir, in one place: the discovery thread hands
//! over the whole discovered set after each batch; it is kept here and composed with the file
//! config ([`weir_discovery::compose`]) whenever either changes, and published through
//! `Control::republish`, the same path a file reload takes. Until both watches have listed
//! once, weir serves the file's services only, and `/ready` and `weir_kubernetes_synced` say
//! so. Must not: reach into the proxy: a discovered service is published as a file's is.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use weir_core::config::{Config, ServiceConfig};
use weir_discovery::{Discovery, Options, Stats};

use crate::app::Control;

/// Discovery's state as the rest of weir sees it.
#[derive(Debug, Default)]
pub struct KubernetesState {
    /// Counters and sync state, written by the discovery thread.
    pub stats: Arc<Stats>,
    /// The discovered services; `None` until both watches have listed once.
    discovered: Mutex<Option<Arc<Vec<Arc<ServiceConfig>>>>>,
    /// File services left out of the last publication, and why.
    pub conflicts: Mutex<Vec<String>>,
    /// Signalled once the first discovered set has been published.
    first_published: Condvar,
}

impl KubernetesState {
    /// Nothing discovered yet.
    pub fn new() -> KubernetesState {
        KubernetesState::default()
    }

    /// `file` with the discovered services (none before the first sync); records the
    /// conflicts.
    pub fn compose(&self, file: &Config) -> Config {
        let Some(discovered) = self.discovered.lock().clone() else { return file.clone() };
        let composed = weir_discovery::compose(file, &discovered);
        let mut conflicts = self.conflicts.lock();
        if composed.conflicts != *conflicts {
            for c in &composed.conflicts {
                tracing::error!("kubernetes: {c}");
            }
            *conflicts = composed.conflicts;
        }
        self.stats.conflicts.store(conflicts.len() as u64, Ordering::Relaxed);
        composed.config
    }

    /// Whether the discovered services are part of what is published (both watches have
    /// listed once): a composed config is then every service there is.
    pub fn synced(&self) -> bool {
        self.discovered.lock().is_some()
    }

    /// Waits up to `timeout` until the first discovered set is published; whether it is.
    pub fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut published = self.discovered.lock();
        while published.is_none() {
            if self.first_published.wait_until(&mut published, deadline).timed_out() {
                break;
            }
        }
        published.is_some()
    }

    /// The line `/ready` adds: whether discovered services are served.
    pub fn ready_line(&self, file_services: usize) -> String {
        if self.stats.synced.load(Ordering::Relaxed) {
            format!(
                "kubernetes: synced; {} discovered services and {file_services} from the config file\n",
                self.stats.services.load(Ordering::Relaxed)
            )
        } else {
            let why = self.stats.last_error.lock().clone().map(|e| format!(" (last error: {e})")).unwrap_or_default();
            format!(
                "kubernetes: not synced with the API server yet{why}; serving the config file's {file_services} services only\n"
            )
        }
    }
}

/// Starts discovery when `[kubernetes] enabled`: it publishes through `control`.
pub fn start(control: &Arc<Control>) -> anyhow::Result<Option<Discovery>> {
    let Some(state) = &control.kubernetes else { return Ok(None) };
    let config = control.file_config.lock().clone();
    let own_mark = control.steering.lock().is_some().then_some(config.steering.own_mark);
    let mut options = Options::new(config.kubernetes.clone(), own_mark);
    if let Some(ms) = std::env::var("WEIR_KUBERNETES_BATCH_MS").ok().and_then(|v| v.parse().ok()) {
        options.batch = Duration::from_millis(ms);
    }
    let weak = Arc::downgrade(control);
    let publish = Box::new(move |services: Vec<Arc<ServiceConfig>>| {
        let Some(control) = weak.upgrade() else { return true };
        let Some(state) = &control.kubernetes else { return true };
        let previous = state.discovered.lock().replace(Arc::new(services));
        match control.republish() {
            Ok(true) => {
                if previous.is_none() {
                    tracing::info!(
                        services = state.stats.services.load(Ordering::Relaxed),
                        "kubernetes: synced with the API server; discovered services are served"
                    );
                    state.first_published.notify_all();
                }
                true
            }
            Ok(false) => {
                // Not now (this weir is being taken over): offered again after the next batch.
                *state.discovered.lock() = previous;
                false
            }
            Err(e) => {
                tracing::error!(
                    "kubernetes: publishing the discovered services failed, the previous ones keep serving: {e}"
                );
                if previous.is_none() {
                    state.first_published.notify_all();
                }
                true
            }
        }
    });
    Ok(Some(Discovery::start(options, state.stats.clone(), publish)?))
}
