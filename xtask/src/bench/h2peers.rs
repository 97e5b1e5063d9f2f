//! The paths of the HTTP/2 section and what each runs. The upstream is `nghttpd --no-tls`
//! (nghttp2's server, one thread) serving a 3-byte static file: on this machine it answers
//! about 3× as many h2c streams per CPU-second as HAProxy's own `http-request return`, so with
//! it on the client's core the proxy under test stays the bottleneck. Every proxy speaks h2c
//! with prior knowledge on both sides, one worker/thread on the proxy's core, logs off: weir
//! (service `protocol = "http2"`, routed by `:authority`), HAProxy (`proto h2` on the bind and
//! the server), Envoy (codec AUTO, HTTP/2 to the cluster, the HTTP/1.1 section's benchmark
//! settings), and nginx, whose only HTTP/2 upstream is `grpc_pass` (one stream per upstream
//! connection, kept alive). Configs go to target/bench/configs/. Must not: measure anything.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use weir_testkit::ReservedPort;

use super::h2load;
use super::peers::{self, Env, Running, SERVICE, VIP, WeirSpec, s};
use super::procs::{self, Proc};

/// One path of the HTTP/2 section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum H2Path {
    /// Straight to nghttpd.
    Direct,
    /// weir, one worker, `protocol = "http2"`.
    Weir,
    /// nginx, `listen … http2` and `grpc_pass`.
    Nginx,
    /// HAProxy, `proto h2` on both sides.
    Haproxy,
    /// Envoy, HTTP/2 on both sides.
    Envoy,
}

impl H2Path {
    /// Every path, in report order.
    pub(super) const ALL: [H2Path; 5] = [H2Path::Direct, H2Path::Weir, H2Path::Nginx, H2Path::Haproxy, H2Path::Envoy];

    /// Stable key (JSON, file names).
    pub(super) fn key(self) -> &'static str {
        match self {
            H2Path::Direct => "direct",
            H2Path::Weir => "weir",
            H2Path::Nginx => "nginx",
            H2Path::Haproxy => "haproxy",
            H2Path::Envoy => "envoy",
        }
    }

    /// What the report calls it.
    pub(super) fn label(self) -> &'static str {
        match self {
            H2Path::Direct => "direct (no proxy)",
            H2Path::Weir => "weir",
            H2Path::Nginx => "nginx (grpc_pass)",
            H2Path::Haproxy => "HAProxy",
            H2Path::Envoy => "Envoy",
        }
    }

    /// Why this path cannot run here, if it cannot.
    pub(super) fn unavailable(self, env: &Env) -> Option<String> {
        let why = |r: &Result<PathBuf, String>| r.as_ref().err().cloned();
        match self {
            H2Path::Direct | H2Path::Weir => None,
            H2Path::Nginx => why(&env.nginx),
            H2Path::Haproxy => why(&env.haproxy),
            H2Path::Envoy => why(&env.envoy),
        }
    }
}

fn bin(r: &Result<PathBuf, String>) -> anyhow::Result<PathBuf> {
    r.clone().map_err(anyhow::Error::msg)
}

/// Starts nghttpd on the client CPU, serving `ok\n` at `/` (target/bench/h2-upstream/).
pub(super) fn start_upstream(env: &Env) -> anyhow::Result<(Proc, SocketAddr)> {
    let nghttpd = bin(&env.nghttpd).context("the HTTP/2 upstream is nghttpd")?;
    let port = ReservedPort::loopback()?;
    let addr = port.addr();
    let docs = env.dir.join("h2-upstream");
    std::fs::create_dir_all(&docs)?;
    std::fs::write(docs.join("index.html"), "ok\n")?;
    let args = ["--no-tls", "-a", "127.0.0.1", "-d", &s(&docs), &addr.port().to_string()];
    let mut p = Proc::spawn("upstream nghttpd", &env.client_cpu, &nghttpd, &args, &[], &env.log_path("h2-upstream"))?
        .holding(port);
    h2load::wait_ready(env, &mut p, addr)?;
    Ok((p, addr))
}

/// weir's config: the HTTP/1.1 section's, with the service's endpoints spoken to over h2c.
pub(super) fn weir_toml(upstream: SocketAddr, cpus: &str) -> anyhow::Result<String> {
    let spec = WeirSpec { name: "weir-h2", sink: "off", cgroup: None, workers: 1, vip: VIP, cpu_affinity: None, cpus };
    let h1 = peers::weir_toml(upstream, &spec);
    let anchor = format!("name = \"{SERVICE}\"\n");
    if !h1.contains(&anchor) {
        bail!("weir's bench config has no `{}` line to add the protocol to", anchor.trim());
    }
    Ok(h1.replacen(&anchor, &format!("{anchor}protocol = \"http2\"\n"), 1))
}

/// HAProxy, 1 thread, h2c on the bind and to the server (whose streams share its connections:
/// `http-reuse always`), the HTTP/1.1 section's timeouts.
pub(super) fn haproxy_conf(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 11000\n  no strict-limits\n\n\
defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  timeout http-keep-alive 300s\n  http-reuse always\n\n\
frontend fe\n  bind {listen} proto h2\n  default_backend be\n\nbackend be\n  server up {upstream} proto h2\n"
    )
}

/// Envoy: the HTTP/1.1 section's config (its benchmarking FAQ's settings) with codec AUTO (h2c
/// prior knowledge is detected), HTTP/2 options downstream, and HTTP/2 to the cluster.
pub(super) fn envoy_conf(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<String> {
    let h1 = peers::envoy_conf(listen, upstream);
    let edits = [
        ("          codec_type: HTTP1\n", "          codec_type: AUTO\n          http2_protocol_options: {}\n"),
        (
            "    connect_timeout: 1s\n",
            "    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          \
http2_protocol_options: {}\n",
        ),
    ];
    let mut out = h1;
    for (from, to) in edits {
        if !out.contains(from) {
            bail!("Envoy's bench config has no {:?} to turn into HTTP/2", from.trim());
        }
        out = out.replacen(from, to, 1);
    }
    Ok(out)
}

/// nginx, 1 worker: `listen … http2` (h2c with prior knowledge) and `grpc_pass` with a
/// keep-alive pool (nginx multiplexes no upstream connection: one stream each).
pub(super) fn nginx_conf(prefix: &std::path::Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    peers::nginx_conf(
        prefix,
        &format!(
            "upstream up {{\n    server {upstream};\n    keepalive 256;\n    keepalive_requests 100000000;\n    keepalive_timeout 300s;\n  }}\n  \
server {{\n    listen {listen} http2;\n    location / {{\n      grpc_pass grpc://up;\n    }}\n  }}"
        ),
    )
}

/// Starts the proxy of `path` (nothing for `Direct`), ready once it answers over h2c.
pub(super) fn start(env: &Env, path: H2Path, upstream: SocketAddr) -> anyhow::Result<Running> {
    let running = |proc: Option<Proc>, addr: SocketAddr, admin: Option<SocketAddr>| Running {
        proc,
        addr,
        host: SERVICE.into(),
        cgroup: None,
        admin,
    };
    if path == H2Path::Direct {
        return Ok(running(None, upstream, None));
    }
    if path == H2Path::Weir {
        let conf = env.write_config("weir-h2.toml", &weir_toml(upstream, &env.proxy_cpu)?)?;
        let ready_file = env.dir.join("logs").join("weir-h2.ready.json");
        let _ = std::fs::remove_file(&ready_file);
        let args = ["run", "--config", &s(&conf), "--ready-file", &s(&ready_file)];
        let mut p = Proc::spawn(
            "weir-h2",
            &env.proxy_cpu,
            &env.weir,
            &args,
            &[("RUST_LOG", "warn")],
            &env.log_path("weir-h2"),
        )?;
        let (listen, admin) = procs::wait_ready_file(&mut p, &ready_file)?;
        procs::wait_ready(&mut p, admin, "admin", "/ready")?;
        h2load::wait_ready(env, &mut p, listen)?;
        return Ok(running(Some(p), listen, Some(admin)));
    }
    // A port held for the peer while it runs (nginx, HAProxy and Envoy bind with SO_REUSEADDR).
    let port = ReservedPort::loopback()?;
    let listen = port.addr();
    let cpu = &env.proxy_cpu;
    let p = match path {
        H2Path::Direct | H2Path::Weir => unreachable!("handled above"),
        H2Path::Nginx => {
            let prefix = env.dir.join("nginx-h2");
            std::fs::create_dir_all(prefix.join("logs"))?;
            let conf = env.write_config("nginx-h2.conf", &nginx_conf(&prefix, listen, upstream))?;
            let args = ["-p", &s(&prefix), "-c", &s(&conf)];
            Proc::spawn("nginx-h2", cpu, &bin(&env.nginx)?, &args, &[], &env.log_path("nginx-h2"))?
        }
        H2Path::Haproxy => {
            let conf = env.write_config("haproxy-h2.cfg", &haproxy_conf(listen, upstream))?;
            let args = ["-f", &s(&conf), "-db"];
            Proc::spawn("haproxy-h2", cpu, &bin(&env.haproxy)?, &args, &[], &env.log_path("haproxy-h2"))?
        }
        H2Path::Envoy => {
            let conf = env.write_config("envoy-h2.yaml", &envoy_conf(listen, upstream)?)?;
            let args = ["-c", &s(&conf), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"];
            Proc::spawn("envoy-h2", cpu, &bin(&env.envoy)?, &args, &[], &env.log_path("envoy-h2"))?
        }
    };
    let mut p = p.holding(port);
    h2load::wait_ready(env, &mut p, listen)?;
    Ok(running(Some(p), listen, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn every_config_speaks_http2_on_both_sides() {
        let w = weir_toml(addr(9000), "1").expect("weir");
        assert!(w.contains("name = \"bench\"\nprotocol = \"http2\"\n"), "{w}");
        let e = envoy_conf(addr(8000), addr(9000)).expect("envoy");
        assert!(e.contains("codec_type: AUTO\n          http2_protocol_options: {}"), "{e}");
        assert!(e.contains("explicit_http_config:\n          http2_protocol_options: {}"), "{e}");
        assert!(!e.contains("HTTP1"), "{e}");
        let h = haproxy_conf(addr(8000), addr(9000));
        assert!(h.contains("bind 127.0.0.1:8000 proto h2") && h.contains("server up 127.0.0.1:9000 proto h2"), "{h}");
        let n = nginx_conf(std::path::Path::new("/p"), addr(8000), addr(9000));
        assert!(n.contains("listen 127.0.0.1:8000 http2;") && n.contains("grpc_pass grpc://up;"), "{n}");
    }
}
