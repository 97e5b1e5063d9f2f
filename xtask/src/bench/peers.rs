//! The six paths and what each runs: the upstream (nginx `return 200` on its own port), weir
//! (direct, steered, with access-log sinks, and two-worker steered with CPU-affine accept on
//! or off), and the peers users would otherwise pick — nginx, HAProxy and Envoy — each
//! configured for one worker/thread with keep-alive to the upstream, logs off, and the
//! settings their own docs advise for benchmarks. Writes every config to target/bench/configs/
//! so the report can show them. Must not: measure anything.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use weir_testkit::ReservedPort;

use super::procs::{self, Proc};

/// The VIP the steered client dials (never served by anything but weir).
pub(super) const VIP: &str = "127.10.0.1:80";
/// The VIP of the steered weir with the socket-level redirect off (both steer one cgroup).
pub(super) const VIP_TCP: &str = "127.10.0.2:80";
/// The service name weir routes by when a client dials it directly (Host header).
pub(super) const SERVICE: &str = "bench";

/// One path a request can take from the load generator to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathId {
    /// Straight to the upstream.
    Direct,
    /// weir, one worker, client dialing weir's address (routed by Host).
    Weir,
    /// weir through eBPF steering: client in a steered cgroup dialing the VIP; the socket-level
    /// redirect on (weir's default).
    WeirSteered,
    /// The same with `[steering] socket_redirect = false` (its own VIP): the local leg is TCP.
    WeirSteeredTcp,
    /// nginx reverse proxy.
    Nginx,
    /// HAProxy, http mode.
    Haproxy,
    /// Envoy.
    Envoy,
}

impl PathId {
    /// Every path, in report order.
    pub(super) const ALL: [PathId; 7] = [
        PathId::Direct,
        PathId::Weir,
        PathId::WeirSteered,
        PathId::WeirSteeredTcp,
        PathId::Nginx,
        PathId::Haproxy,
        PathId::Envoy,
    ];

    /// The paths of `--only redirect`: the redirect on and off beside the direct-dial paths
    /// (Envoy left out for time).
    pub(super) const REDIRECT: [PathId; 6] =
        [PathId::Direct, PathId::Weir, PathId::WeirSteered, PathId::WeirSteeredTcp, PathId::Nginx, PathId::Haproxy];

    /// Stable key (JSON, file names).
    pub(super) fn key(self) -> &'static str {
        match self {
            PathId::Direct => "direct",
            PathId::Weir => "weir",
            PathId::WeirSteered => "weir-steered",
            PathId::WeirSteeredTcp => "weir-steered-tcp",
            PathId::Nginx => "nginx",
            PathId::Haproxy => "haproxy",
            PathId::Envoy => "envoy",
        }
    }

    /// What the report calls it.
    pub(super) fn label(self) -> &'static str {
        match self {
            PathId::Direct => "direct (no proxy)",
            PathId::Weir => "weir",
            PathId::WeirSteered => "weir + eBPF steering + socket redirect",
            PathId::WeirSteeredTcp => "weir + eBPF steering, socket redirect off",
            PathId::Nginx => "nginx",
            PathId::Haproxy => "HAProxy",
            PathId::Envoy => "Envoy",
        }
    }
}

/// Binaries and directories of one benchmark run.
#[derive(Debug)]
pub(super) struct Env {
    /// target/bench.
    pub dir: PathBuf,
    /// Release weir.
    pub weir: PathBuf,
    /// Release weir-loadgen.
    pub loadgen: PathBuf,
    /// nginx, or why it is missing.
    pub nginx: Result<PathBuf, String>,
    /// haproxy, or why it is missing.
    pub haproxy: Result<PathBuf, String>,
    /// envoy, or why it is missing.
    pub envoy: Result<PathBuf, String>,
    /// nghttpd (the HTTP/2 upstream), or why it is missing.
    pub nghttpd: Result<PathBuf, String>,
    /// h2load (the HTTP/2 load generator), or why it is missing.
    pub h2load: Result<PathBuf, String>,
    /// The cgroup for the steered path, or why steering cannot run here.
    pub cgroup: Result<PathBuf, String>,
    /// CPU list for the proxy under test.
    pub proxy_cpu: String,
    /// CPU list for the load generator and the upstream.
    pub client_cpu: String,
}

impl Env {
    fn config_path(&self, name: &str) -> PathBuf {
        self.dir.join("configs").join(name)
    }

    pub(super) fn write_config(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.config_path(name);
        std::fs::create_dir_all(path.parent().context("config dir")?)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub(super) fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }
}

/// A started path: where the client dials, and the proxy process (none for direct).
#[derive(Debug)]
pub(super) struct Running {
    /// The proxy (None on the direct path).
    pub proc: Option<Proc>,
    /// Address the load generator dials.
    pub addr: SocketAddr,
    /// Host header it sends.
    pub host: String,
    /// cgroup the load generator joins first (steered path).
    pub cgroup: Option<PathBuf>,
    /// weir's admin address.
    pub admin: Option<SocketAddr>,
}

/// The nginx config of the upstream: `return 200 "ok\n"`, one worker, keep-alive without
/// a request limit.
pub(super) fn upstream_conf(env: &Env, listen: SocketAddr) -> String {
    let prefix = env.dir.join("nginx-upstream");
    nginx_conf(&prefix, &format!("server {{\n    listen {listen};\n    location / {{ return 200 \"ok\\n\"; }}\n  }}"))
}

pub(super) fn nginx_conf(prefix: &Path, body: &str) -> String {
    let p = prefix.display();
    format!(
        "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
worker_rlimit_nofile 20000;\nevents {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  default_type text/plain;\n\
  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
  fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  {body}\n}}\n"
    )
}

/// Starts the upstream on the client CPU.
pub(super) fn start_upstream(env: &Env) -> anyhow::Result<(Proc, SocketAddr)> {
    let nginx = env.nginx.clone().map_err(anyhow::Error::msg).context("the upstream is nginx")?;
    // A port held for nginx while it runs (it binds with SO_REUSEADDR).
    let port = ReservedPort::loopback()?;
    let addr = port.addr();
    let prefix = env.dir.join("nginx-upstream");
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = env.write_config("upstream-nginx.conf", &upstream_conf(env, addr))?;
    let mut p = Proc::spawn(
        "upstream nginx",
        &env.client_cpu,
        &nginx,
        &["-p", &s(&prefix), "-c", &s(&conf)],
        &[],
        &env.log_path("upstream"),
    )?
    .holding(port);
    procs::wait_ready(&mut p, addr, "upstream", "/")?;
    Ok((p, addr))
}

pub(super) fn s(p: &Path) -> String {
    p.display().to_string()
}

/// How one weir process of the benchmark is set up.
#[derive(Debug, Clone, Copy)]
pub(super) struct WeirSpec<'a> {
    /// Name for its config and log files.
    pub name: &'a str,
    /// `[access_log] sink`.
    pub sink: &'a str,
    /// Steered for this cgroup (the client dials `vip`), or dialed directly.
    pub cgroup: Option<&'a Path>,
    /// `[proxy] workers`.
    pub workers: usize,
    /// The service VIP.
    pub vip: &'a str,
    /// `[steering] cpu_affinity`, written only when set (the default is on).
    pub cpu_affinity: Option<bool>,
    /// taskset CPU list it starts on.
    pub cpus: &'a str,
    /// `[steering] socket_redirect`, written only when set (the default is on).
    pub socket_redirect: Option<bool>,
}

/// weir's config for `spec`: the upstream as the only endpoint of service `bench`, both
/// listeners on any free port (`127.0.0.1:0`; weir reports the ones it bound).
pub(super) fn weir_toml(upstream: SocketAddr, spec: &WeirSpec) -> String {
    let WeirSpec { sink, cgroup, workers, vip, cpu_affinity, socket_redirect, .. } = *spec;
    let mut steering = match cgroup {
        Some(cg) => format!("enabled = true\ncgroups = [\"{}\"]", cg.display()),
        None => "enabled = false".to_string(),
    };
    if let Some(on) = cpu_affinity {
        let _ = write!(steering, "\ncpu_affinity = {on}");
    }
    if let Some(on) = socket_redirect {
        let _ = write!(steering, "\nsocket_redirect = {on}");
    }
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\nmax_connections = 12000\ndownstream_idle_timeout_ms = 300000\n\n\
[admin]\nlisten = \"127.0.0.1:0\"\n\n[steering]\n{steering}\n\n[access_log]\nsink = \"{sink}\"\n\n\
[[service]]\nname = \"{SERVICE}\"\nvip = \"{vip}\"\nendpoints = [\"{upstream}\"]\n\n\
[service.timeouts]\nupstream_idle_ms = 60000\n"
    )
}

/// Starts weir (`name` for files) with access-log `sink`, one worker on the proxy's CPU,
/// steered for `cgroup` if given.
pub(super) fn start_weir(
    env: &Env,
    name: &str,
    upstream: SocketAddr,
    sink: &str,
    cgroup: Option<&Path>,
) -> anyhow::Result<Running> {
    let spec = WeirSpec {
        name,
        sink,
        cgroup,
        workers: 1,
        vip: VIP,
        cpu_affinity: None,
        cpus: &env.proxy_cpu,
        socket_redirect: None,
    };
    start_weir_spec(env, &spec, upstream)
}

/// Starts weir as `spec` says; ready once it has written its ready file (the ports it bound)
/// and its admin API and listener answer.
pub(super) fn start_weir_spec(env: &Env, spec: &WeirSpec, upstream: SocketAddr) -> anyhow::Result<Running> {
    start_weir_with(env, spec, upstream, "")
}

/// [`start_weir_spec`] with `extra` TOML appended to the config (more tables).
pub(super) fn start_weir_with(
    env: &Env,
    spec: &WeirSpec,
    upstream: SocketAddr,
    extra: &str,
) -> anyhow::Result<Running> {
    start_weir_toml(env, spec, &format!("{}{extra}", weir_toml(upstream, spec)))
}

/// Starts weir as `spec` says with the config `toml` (the service is still [`SERVICE`]).
pub(super) fn start_weir_toml(env: &Env, spec: &WeirSpec, toml: &str) -> anyhow::Result<Running> {
    let conf = env.write_config(&format!("{}.toml", spec.name), toml)?;
    let ready_file = env.dir.join("logs").join(format!("{}.ready.json", spec.name));
    let _ = std::fs::remove_file(&ready_file);
    let mut p = Proc::spawn(
        spec.name,
        spec.cpus,
        &env.weir,
        &["run", "--config", &s(&conf), "--ready-file", &s(&ready_file)],
        &[("RUST_LOG", "warn")],
        &env.log_path(spec.name),
    )?;
    let (listen, admin) = procs::wait_ready_file(&mut p, &ready_file)?;
    procs::wait_ready(&mut p, admin, "admin", "/ready")?;
    procs::wait_ready(&mut p, listen, SERVICE, "/")?;
    let (addr, cgroup) = match spec.cgroup {
        Some(cg) => (spec.vip.parse()?, Some(cg.to_path_buf())),
        None => (listen, None),
    };
    Ok(Running { proc: Some(p), addr, host: SERVICE.into(), cgroup, admin: Some(admin) })
}

/// Starts the proxy of path `id` (nothing for `Direct`).
pub(super) fn start(env: &Env, id: PathId, upstream: SocketAddr) -> anyhow::Result<Running> {
    // A port held for the peer while it runs (nginx, HAProxy and Envoy bind with SO_REUSEADDR).
    let port = ReservedPort::loopback()?;
    let listen = port.addr();
    let bin = |r: &Result<PathBuf, String>| r.clone().map_err(anyhow::Error::msg);
    let (mut p, host) = match id {
        PathId::Direct => {
            return Ok(Running { proc: None, addr: upstream, host: SERVICE.into(), cgroup: None, admin: None });
        }
        PathId::Weir => return start_weir(env, "weir", upstream, "off", None),
        PathId::WeirSteered => {
            let cg = env.cgroup.clone().map_err(anyhow::Error::msg)?;
            return start_weir(env, "weir-steered", upstream, "off", Some(&cg));
        }
        PathId::WeirSteeredTcp => {
            let cg = env.cgroup.clone().map_err(anyhow::Error::msg)?;
            let spec = WeirSpec {
                name: "weir-steered-tcp",
                sink: "off",
                cgroup: Some(&cg),
                workers: 1,
                vip: VIP_TCP,
                cpu_affinity: None,
                cpus: &env.proxy_cpu,
                socket_redirect: Some(false),
            };
            return start_weir_spec(env, &spec, upstream);
        }
        PathId::Nginx => {
            let prefix = env.dir.join("nginx-proxy");
            std::fs::create_dir_all(prefix.join("logs"))?;
            let conf = env.write_config("nginx.conf", &nginx_proxy_conf(&prefix, listen, upstream))?;
            let p = Proc::spawn(
                "nginx",
                &env.proxy_cpu,
                &bin(&env.nginx)?,
                &["-p", &s(&prefix), "-c", &s(&conf)],
                &[],
                &env.log_path("nginx"),
            )?;
            (p, SERVICE)
        }
        PathId::Haproxy => {
            let conf = env.write_config("haproxy.cfg", &haproxy_conf(listen, upstream))?;
            let p = Proc::spawn(
                "haproxy",
                &env.proxy_cpu,
                &bin(&env.haproxy)?,
                &["-f", &s(&conf), "-db"],
                &[],
                &env.log_path("haproxy"),
            )?;
            (p, SERVICE)
        }
        PathId::Envoy => {
            let conf = env.write_config("envoy.yaml", &envoy_conf(listen, upstream))?;
            let args = ["-c", &s(&conf), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"];
            let p = Proc::spawn("envoy", &env.proxy_cpu, &bin(&env.envoy)?, &args, &[], &env.log_path("envoy"))?;
            (p, SERVICE)
        }
    };
    p = p.holding(port);
    procs::wait_ready(&mut p, listen, host, "/")?;
    Ok(Running { proc: Some(p), addr: listen, host: host.into(), cgroup: None, admin: None })
}

/// nginx as a reverse proxy: 1 worker, HTTP/1.1 keep-alive pool to the upstream.
pub(super) fn nginx_proxy_conf(prefix: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    nginx_conf(
        prefix,
        &format!(
            "upstream up {{\n    server {upstream};\n    keepalive 64;\n    keepalive_requests 100000000;\n    keepalive_timeout 300s;\n  }}\n  \
server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      \
proxy_set_header Connection \"\";\n    }}\n  }}"
        ),
    )
}

/// HAProxy in http mode: 1 thread, keep-alive both sides, idle server connections shared
/// (`http-reuse always`), no logging. The fd limit here may be below what maxconn asks for:
/// `no strict-limits` lets it start with what it has.
pub(super) fn haproxy_conf(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 11000\n  no strict-limits\n\n\
defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  timeout http-keep-alive 300s\n  http-reuse always\n\n\
frontend fe\n  bind {listen}\n  default_backend be\n\nbackend be\n  server up {upstream}\n"
    )
}

/// Envoy per its "how to benchmark Envoy" FAQ: circuit breakers out of the way, no request-id
/// generation, no dynamic stats, all stats rejected, no access log; HTTP/1.1 both sides.
pub(super) fn envoy_conf(listen: SocketAddr, upstream: SocketAddr) -> String {
    let big = 1_000_000_000u64;
    format!(
        r#"static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: {lip}, port_value: {lport}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: HTTP1
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: up}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              dynamic_stats: false
              suppress_envoy_headers: true
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    circuit_breakers:
      thresholds:
      - {{max_connections: {big}, max_pending_requests: {big}, max_requests: {big}, max_retries: {big}}}
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {uip}, port_value: {uport}}}}}}}
stats_config:
  stats_matcher: {{reject_all: true}}
"#,
        lip = listen.ip(),
        lport = listen.port(),
        uip = upstream.ip(),
        uport = upstream.port(),
    )
}
