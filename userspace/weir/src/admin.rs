//! The admin HTTP server, on its own thread with a tokio current-thread runtime, never on a
//! worker core: `/ready`, `/metrics` (0.0.4 text, or OpenMetrics with exemplars when the
//! scraper's `Accept` asks for `application/openmetrics-text`), `/config`, `/endpoints`,
//! `/callers`, `/steering`. A scrape merges
//! the workers' published stats shards here, so it never adds latency to the data path. Must
//! not: take a lock a worker takes, or block the config watcher for long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::app::Control;

/// The running admin server.
#[derive(Debug)]
pub struct AdminServer {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl AdminServer {
    /// Serves on `listener` (already bound) from a new thread; also runs the config watcher.
    pub fn start(listener: std::net::TcpListener, control: Arc<Control>) -> anyhow::Result<AdminServer> {
        listener.set_nonblocking(true)?;
        let watch = crate::watch::register(control.clone());
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("weir-admin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("admin runtime: {e}");
                        return;
                    }
                };
                rt.block_on(serve(listener, control, stop_rx, watch));
            })
            .context("starting the admin thread")?;
        Ok(AdminServer { stop: Mutex::new(Some(stop_tx)), thread: Mutex::new(Some(thread)) })
    }

    /// Stops accepting, lets the requests in progress finish (idle connections are closed),
    /// and waits up to `timeout` for the thread. Connections not yet accepted stay queued on
    /// the socket (for a weir that took this one over and serves the same socket).
    pub fn stop(&self, timeout: Duration) {
        if let Some(tx) = self.stop.lock().take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.lock().take() {
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

/// How long a stopping admin server lets the requests in progress finish.
const STOP_GRACE: Duration = Duration::from_secs(1);

async fn serve(
    listener: std::net::TcpListener,
    control: Arc<Control>,
    mut stop: oneshot::Receiver<()>,
    watch: Option<crate::watch::Watch>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("admin listener: {e}");
            return;
        }
    };
    if let Some(w) = watch {
        tokio::spawn(w.run());
    }
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let control = control.clone();
                let mut closing = closing_rx.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let control = control.clone();
                        async move { Ok::<_, std::convert::Infallible>(route(&control, req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = closing.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        }
    }
    // Readiness-based accept: nothing was taken off the queue that is not served.
    drop(listener);
    let _ = closing_tx.send(true);
    let _ = tokio::time::timeout(STOP_GRACE, async { while connections.join_next().await.is_some() {} }).await;
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    resp
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", e.to_string()),
    }
}

fn route(control: &Control, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match req.uri().path() {
        "/ready" => {
            if control.draining.load(Ordering::SeqCst) {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else if control.ready.load(Ordering::SeqCst) {
                match &control.kubernetes {
                    // Ready either way (the file's services serve); the body says whether the
                    // discovered ones do too.
                    Some(k) => {
                        let file_services = control.file_config.lock().services.len();
                        respond(StatusCode::OK, "text/plain", format!("ready\n{}", k.ready_line(file_services)))
                    }
                    None => respond(StatusCode::OK, "text/plain", "ready\n"),
                }
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n")
            }
        }
        "/config" => {
            let snapshot = control.shared.snapshot.load_full();
            json(&serde_json::json!({
                "file": control.config_path,
                "generation": snapshot.generation,
                "loaded_seconds_ago": control.snapshot_loaded.lock().elapsed().as_secs_f64(),
                "last_reload_error": *control.last_error.lock(),
                "pid": std::process::id(),
                "config": &*snapshot.config,
                "memory": &control.memory,
                "kubernetes": control.kubernetes.as_ref().map(|k| serde_json::json!({
                    "synced": k.stats.synced.load(Ordering::Relaxed),
                    "conflicts": *k.conflicts.lock(),
                    "last_error": *k.stats.last_error.lock(),
                    "httproutes": k.stats.httproutes().as_str(),
                    "httproute_problems": *k.stats.route_problems.lock(),
                })),
            }))
        }
        "/endpoints" => json(&crate::metrics::endpoints_view(control)),
        "/metrics" => {
            let openmetrics = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
            let kind = if openmetrics { crate::metrics::OPENMETRICS } else { crate::metrics::TEXT_004 };
            respond(StatusCode::OK, kind, crate::metrics::render(control, openmetrics))
        }
        "/callers" => json(&crate::metrics::callers_view(control)),
        "/steering" => match control.steering.lock().as_ref() {
            Some(s) => json(&s.status()),
            None => json(&serde_json::json!({ "enabled": false })),
        },
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /ready /metrics /config /endpoints /callers /steering\n",
        ),
    }
}

/// A blocking GET against a running weir's admin API (for `weir steer status`).
pub fn get(admin: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("malformed admin response")?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("admin answered {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}
