//! Configs reaching the workers: reading and validating the config file (the one place weir
//! reads it), reloads (SIGHUP or a change of the file: a no-op for the same text or an equal
//! config, rejected whole when a restart-only field changed), and the one publication path
//! that reloads and Kubernetes discovery share (`Control::publish`: the file's services with
//! the discovered ones beside them, the kernel's service map, then the snapshot in one atomic
//! swap), which also drops the counters inherited from a weir taken over for services since
//! removed. Must not: run on a worker core's path.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use weir_core::config::Config;
use weir_proxy::Snapshot;

use crate::app::{Control, unix_now};
use crate::steering::Steering;
use crate::takeover::{Inherited, Totals};

/// Reading the config file failed before it could be checked, or it is not a valid config.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", file.display())]
    Read {
        /// The file.
        file: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config.
    #[error(transparent)]
    Invalid(#[from] weir_core::config::ConfigError),
}

fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish() | 1 // never 0, the "nothing applied yet" value
}

/// Reads `path` and validates it ([`Config::parse`]): the one place weir reads its config file.
pub fn load_config(path: &Path) -> Result<Config, LoadError> {
    let src = std::fs::read_to_string(path).map_err(|source| LoadError::Read { file: path.to_path_buf(), source })?;
    Ok(Config::parse(&src, path)?)
}

impl Control {
    /// Reads, validates and applies the config file. On any error the running snapshot and
    /// the kernel's service map stay as they were.
    pub fn reload(&self) -> Result<(), String> {
        let mut applied = self.reload_lock.lock();
        if let crate::takeover::Phase::Offered { pid } | crate::takeover::Phase::Swapping { pid } = self.handoff.phase()
        {
            // The new weir steers with this weir's service table until it has taken over, and
            // then applies the file itself.
            tracing::info!("config reload skipped: {} is taking this weir over", crate::takeover::Who(pid));
            return Ok(());
        }
        let started = Instant::now();
        let mut published = false;
        let text = std::fs::read_to_string(&self.config_path)
            .map_err(|source| LoadError::Read { file: self.config_path.clone(), source }.to_string());
        let hash = text.as_ref().map_or(0, |t| text_hash(t));
        let result = text.and_then(|text| {
            if hash == *applied {
                return Ok(()); // the text already running
            }
            let mut config = Config::parse(&text, &self.config_path).map_err(|e| e.to_string())?;
            self.listens.apply(&mut config);
            let file = self.file_config.lock().clone();
            if config == file {
                return Ok(()); // the same config, written differently: nothing to publish
            }
            let fixed = restart_only_changes(&file, &config);
            if !fixed.is_empty() {
                return Err(format!(
                    "{}: {} cannot change while weir runs; restart weir to apply (nothing was applied)",
                    self.config_path.display(),
                    fixed.join(", ")
                ));
            }
            // Unchanged services keep the values already running (the duplicates just parsed
            // are freed), so the snapshot sees them as the same and keeps their state.
            config.share_unchanged(&file);
            self.publish(&config)?;
            *self.file_config.lock() = config;
            published = true;
            Ok(())
        });
        match &result {
            Ok(()) => {
                *applied = hash;
                if published {
                    self.last_reload_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.last_reload_unix.store(unix_now(), Ordering::Relaxed);
                *self.snapshot_loaded.lock() = Instant::now();
                *self.last_error.lock() = None;
                tracing::info!("config reloaded from {}", self.config_path.display());
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock() = Some(e.clone());
                tracing::error!("config reload rejected, the previous config keeps serving: {e}");
            }
        }
        result
    }

    /// Publishes `file` with the discovered services beside it (when discovery is on): the
    /// kernel's service map first (unless a takeover defers it), then the snapshot, in one
    /// atomic swap. The one path by which a config reaches the workers after start; callers
    /// hold `reload_lock`.
    fn publish(&self, file: &Config) -> Result<(), String> {
        let old = self.shared.snapshot.load_full();
        let config = match &self.kubernetes {
            Some(k) => k.compose(file),
            None => file.clone(),
        };
        if !self.steering_deferred.load(Ordering::SeqCst)
            && let Some(steering) = self.steering.lock().as_mut()
        {
            steering.sync_services(&config).map_err(|e| format!("updating the eBPF service map: {e:#}"))?;
        }
        let snapshot = Arc::new(Snapshot::build(config, old.workers, Some(&old)));
        self.shared.snapshot.store(snapshot.clone());
        self.prune_inherited(&snapshot.config);
        Ok(())
    }

    /// Takes the counters of the weir this one took over (at the commit, then as it drains),
    /// less those of services this weir no longer has, in place of what it sent before; once
    /// the identity thread has given the `source` names the old weir gave, so that each
    /// caller's series continues under its name and none is missing from a scrape.
    pub(crate) fn inherit(&self, totals: Totals) {
        if let Some(identity) = self.identity.lock().as_ref() {
            identity.adopt(totals.source_names.clone());
        }
        let inherited = Arc::new(Inherited::new(totals));
        let _serial = self.reload_lock.lock();
        self.inherited.store(inherited);
        self.prune_inherited(&self.shared.snapshot.load().config);
    }

    /// Drops the inherited counters of the services `config` (just published) does not have,
    /// as the workers release a removed service's stats slot. Only once `config` is complete:
    /// until discovery has synced, a discovered service missing from it may still exist, and
    /// keeps what it inherited. Callers hold `reload_lock`, so that counters inherited
    /// meanwhile are checked against the newest config.
    fn prune_inherited(&self, config: &Config) {
        if self.kubernetes.as_ref().is_some_and(|k| !k.synced()) {
            return;
        }
        let inherited = self.inherited.load();
        if inherited.totals.services.is_empty() {
            return;
        }
        let names: HashSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        if let Some(kept) = inherited.retain(|name| names.contains(name)) {
            tracing::info!(
                services = inherited.totals.services.len() - kept.totals.services.len(),
                "dropped the inherited counters of services since removed"
            );
            self.inherited.store(Arc::new(kept));
        }
    }

    /// Publishes the running file config with the discovered services as they are now (after
    /// discovery handed over a new set). `Ok(false)`: not now, a takeover of this weir is in
    /// progress (the weir taking over steers with this weir's service table until it is done);
    /// discovery offers the set again.
    pub fn republish(&self) -> Result<bool, String> {
        let _serial = self.reload_lock.lock();
        if let crate::takeover::Phase::Offered { .. }
        | crate::takeover::Phase::Swapping { .. }
        | crate::takeover::Phase::HandedOver { .. } = self.handoff.phase()
        {
            return Ok(false);
        }
        let file = self.file_config.lock().clone();
        self.publish(&file).map(|()| true)
    }

    /// A takeover by this weir is done: the kernel's service table becomes this weir's own,
    /// file and discovered services, and steering attaches what this config adds.
    pub(crate) fn finish_takeover(&self, steering: &mut Steering) -> anyhow::Result<()> {
        let _serial = self.reload_lock.lock();
        let config = self.shared.snapshot.load().config.clone();
        let done = steering.finish_takeover(&config);
        self.steering_deferred.store(false, Ordering::SeqCst);
        done
    }
}

/// Fields a running weir cannot apply (they are bound, attached or sized at start), that differ
/// between `old` and `new`. A reload that changes any of them is rejected as a whole, so what
/// runs is always exactly one file's config.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let service_listens = |c: &Config| {
        c.services.iter().map(|s| (s.name.clone(), s.listen)).filter(|(_, l)| l.is_some()).collect::<Vec<_>>()
    };
    [
        ("[proxy] listen", old.proxy.listen != new.proxy.listen),
        ("[proxy] workers", old.proxy.workers != new.proxy.workers),
        ("[proxy] max_connections", old.proxy.max_connections != new.proxy.max_connections),
        ("[admin] listen", old.admin.listen != new.admin.listen),
        ("[admin] allow_non_loopback", old.admin.allow_non_loopback != new.admin.allow_non_loopback),
        ("[steering]", old.steering != new.steering),
        ("[access_log]", old.access_log != new.access_log),
        ("[tracing] otlp_endpoint", old.tracing.otlp_endpoint != new.tracing.otlp_endpoint),
        ("[metrics]", old.metrics != new.metrics),
        ("[kubernetes]", old.kubernetes != new.kubernetes),
        ("a service's `listen`", service_listens(old) != service_listens(new)),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

#[cfg(test)]
mod load_tests {
    #[test]
    fn a_missing_file_is_named() {
        let err = super::load_config(std::path::Path::new("/nonexistent/weir.toml")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/weir.toml: cannot read config file"), "{err}");
    }
}
