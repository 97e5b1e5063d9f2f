//! Reloads the config when its file changes. Watches the file's *directory*, because
//! Kubernetes ConfigMap volumes replace the file by swapping a `..data` symlink, which a watch
//! on the file itself would miss. Debounced, and a reload happens only when the content
//! actually changed. Must not: apply anything itself; it calls [`Control::reload`].

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};

use crate::app::Control;

/// A registered watch, not yet consuming its events.
pub struct Watch {
    control: Arc<Control>,
    watcher: notify::RecommendedWatcher,
    rx: tokio::sync::mpsc::UnboundedReceiver<()>,
    last: Option<Vec<u8>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// Registers the watch now (so that no change after start can be missed) and remembers the
/// file's current content. Errors (e.g. inotify limits) are logged: SIGHUP still reloads.
pub fn register(control: Arc<Control>) -> Option<Watch> {
    let dir = match control.config_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("config file watch unavailable ({e}); SIGHUP still reloads");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!("cannot watch {} ({e}); SIGHUP still reloads", dir.display());
        return None;
    }
    let last = std::fs::read(&control.config_path).ok();
    Some(Watch { control, watcher, rx, last })
}

impl Watch {
    /// Consumes events until the runtime stops: debounces, compares content, reloads.
    pub async fn run(self) {
        let Watch { control, watcher, mut rx, mut last } = self;
        let _watcher = watcher; // lives as long as this task
        while rx.recv().await.is_some() {
            // Debounce: editors and ConfigMap updates write in several steps.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let now = std::fs::read(&control.config_path).ok();
            if now == last {
                continue;
            }
            if now.is_none() {
                tracing::error!(
                    "config file {} is unreadable; the previous config keeps serving",
                    control.config_path.display()
                );
                control.reloads_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                last = None;
                continue;
            }
            last = now;
            let control = control.clone();
            let _ = tokio::task::spawn_blocking(move || control.reload()).await;
        }
    }
}
