//! `cargo xtask demo`: weir end to end on this machine. Starts three demo endpoints on
//! loopback and three gRPC servers (grpcio; the third answers UNAVAILABLE to everything), weir
//! with the bundled config (deploy/examples/demo.toml), and two demo workloads in their own
//! cgroup (under the cgroup v2 mount found in /proc/self/mountinfo): one dials the HTTP service
//! VIP 127.10.0.1:80, a gRPC client (grpcio) dials the gRPC service VIP 127.10.0.2:80; eBPF
//! steers both through weir. Prints lines per second (requests, errors, p50/p99, which endpoint
//! answered; weir's RED for both services, gRPC status codes included) until Ctrl-C or
//! `--duration`, then stops weir and removes the cgroup. At `--takeover-at` seconds, and each
//! time Enter is pressed, a new weir takes the running one over (`weir run --takeover`) while
//! the workloads keep going: their lines show no error. Endpoints, client, cgroup and process handling come from
//! weir-testkit. With `--kubernetes` both services come from the test Kubernetes API server
//! instead ([`crate::demo_k8s`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use weir_testkit::client::get_once;
use weir_testkit::{Behavior, Cgroup, Client, Endpoint, proc, wait_until};

use crate::{is_root, root, run, setup};

const CONFIG: &str = include_str!("../../deploy/examples/demo.toml");
const ENDPOINTS: [&str; 3] = ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"];
const VIP: &str = "127.10.0.1:80";
const GRPC_ENDPOINTS: [&str; 3] = ["127.0.0.1:18084", "127.0.0.1:18085", "127.0.0.1:18086"];
const GRPC_VIP: &str = "127.10.0.2:80";
const ADMIN: &str = "127.0.0.1:15000";

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Requests per second the workload sends.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// After this many seconds endpoint 3 starts answering 503, to show retries and ejection
    /// (0 = never; not with --kubernetes).
    #[arg(long, default_value_t = 5)]
    chaos_at: u64,
    /// After this many seconds a new weir takes the running one over, live (0 = never; Enter
    /// runs one at any time; not with --kubernetes, where Enter still does).
    #[arg(long, default_value_t = 10)]
    takeover_at: u64,
    /// Learn the services from a (test) Kubernetes API server instead of the config file: the
    /// Services `checkout` (HTTP) and `greeter` (`appProtocol: grpc`) in namespace `demo` on
    /// ClusterIPs 127.10.0.1:80 and 127.10.0.2:80; HTTP endpoint 3 is scaled up after 5 s and
    /// endpoint 1 terminated after 10 s.
    #[arg(long)]
    kubernetes: bool,
}

#[derive(Args)]
pub(crate) struct ClientArgs {
    #[arg(long)]
    vip: SocketAddr,
    #[arg(long)]
    cgroup: PathBuf,
    #[arg(long)]
    duration: u64,
    #[arg(long)]
    rate: u32,
}

/// Stops child processes and then removes the demo cgroup however the demo ends.
struct Cleanup {
    children: Arc<std::sync::Mutex<Vec<Child>>>,
    _cgroup: Cgroup,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.children.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            // SIGTERM first, so weir drains and detaches; SIGKILL if it does not exit.
            proc::terminate(c, Duration::from_secs(25));
        }
        // Then the cgroup (a field, dropped after this).
    }
}

fn admin() -> SocketAddr {
    ADMIN.parse().expect("a socket address")
}

pub(crate) fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs and creates a cgroup: run it as root (`sudo -E cargo xtask demo`)");
    }
    setup::setup()?;
    eprintln!("demo: building weir");
    run(Command::new("cargo").current_dir(root()).args(["build", "--quiet", "-p", "weir"]))?;
    if args.kubernetes {
        run(Command::new("cargo").current_dir(root()).args([
            "build",
            "--quiet",
            "-p",
            "weir-tests",
            "--bin",
            crate::demo_k8s::FAKE_API,
        ]))?;
    }
    let weir = root().join("target/debug/weir");

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc_handler(move || stop.store(true, Ordering::SeqCst))?;
    }
    let endpoints = ENDPOINTS
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let addr: SocketAddr = addr.parse()?;
            Endpoint::try_start_at(&(i + 1).to_string(), addr)
                .map(Arc::new)
                .with_context(|| format!("demo endpoint {addr} is in use"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let cgroup = Cgroup::try_create(&format!("weir-demo-{}", std::process::id()))?;
    let cgroup_path = cgroup.path.clone();
    let children = Arc::new(std::sync::Mutex::new(Vec::new()));
    let cleanup = Cleanup { children: children.clone(), _cgroup: cgroup };
    let push = |c: Child| children.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    for (i, addr) in GRPC_ENDPOINTS.iter().enumerate() {
        // The third one is unhealthy: weir retries its UNAVAILABLE elsewhere and ejects it.
        let unhealthy: &[&str] = if i == 2 { &["--status", "14"] } else { &[] };
        push(grpc_server(&format!("g{}", i + 1), addr, unhealthy)?);
    }

    let dir = root().join("target/demo");
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("demo.toml");
    let access_log = dir.join("access.log");
    let _ = std::fs::remove_file(&access_log);
    let mut config = CONFIG
        .replace("@DEMO_CGROUP@", &cgroup_path.display().to_string())
        .replace("sink = \"off\"", &format!("sink = \"file:{}\"", access_log.display()));
    let mut cluster = None;
    if args.kubernetes {
        let (api, process, table) = crate::demo_k8s::Cluster::start(&dir)?;
        config = crate::demo_k8s::config(&config, &table);
        cluster = Some(api);
        push(process);
    }
    std::fs::write(&config_path, config)?;

    eprintln!("demo: starting weir ({})", config_path.display());
    let mut weir_child = start_weir(&weir, &config_path, false)?;
    // With discovery, the workloads start once the discovered services are served.
    let ready_body = if args.kubernetes { "kubernetes: synced" } else { "" };
    wait_ready(&mut weir_child, ready_body)?;
    push(weir_child);

    let duration = args.duration.unwrap_or(u64::MAX / 4);
    eprintln!("demo: workload in {} dials http://{VIP}/ at {} req/s", cgroup_path.display(), args.rate);
    let mut client = Command::new(std::env::current_exe()?)
        .args(["demo-client", "--vip", VIP, "--cgroup"])
        .arg(&cgroup_path)
        .args(["--duration", &duration.to_string(), "--rate", &args.rate.to_string()])
        .stdout(Stdio::inherit())
        .spawn()
        .context("starting the demo workload")?;
    eprintln!("demo: a gRPC workload in the same cgroup calls {GRPC_VIP} (service `greeter`) at 50 calls/s");
    let mut grpc_client = Command::new(weir_testkit::tools::python());
    grpc_client
        .arg(root().join("tests/clients/grpc_client.py"))
        .args(["loop", GRPC_VIP, "-", "50", &duration.to_string()])
        .stdout(Stdio::inherit());
    weir_testkit::cgroup::join_on_exec(&mut grpc_client, &cgroup_path);
    push(grpc_client.spawn().context("starting the gRPC workload")?);
    eprintln!("demo: access log in {}; RED below is read from http://{ADMIN}/metrics", access_log.display());
    {
        let (stop, failing) = (stop.clone(), endpoints[2].clone());
        let chaos_at = if args.kubernetes { 0 } else { args.chaos_at };
        let services = if args.kubernetes {
            (crate::demo_k8s::HTTP_SERVICE, crate::demo_k8s::GRPC_SERVICE)
        } else {
            ("checkout", "greeter")
        };
        std::thread::spawn(move || monitor(stop, &failing, chaos_at, services));
    }
    if let Some(cluster) = cluster.take() {
        let stop = stop.clone();
        std::thread::spawn(move || cluster.script(stop));
    }
    {
        // Takeovers: at --takeover-at, and whenever Enter is pressed.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // With discovery a new weir serves the discovered services from its own first list:
        // no scheduled takeover (docs/OPERATING.md, Kubernetes discovery).
        if args.takeover_at > 0 && !args.kubernetes {
            let (tx, stop) = (tx.clone(), stop.clone());
            let at = Instant::now() + Duration::from_secs(args.takeover_at);
            std::thread::spawn(move || {
                // Wakes at the time, or early when the demo stops.
                if wait_until(at.saturating_duration_since(Instant::now()), || {
                    stop.load(Ordering::SeqCst).then_some(())
                })
                .is_none()
                {
                    let _ = tx.send(());
                }
            });
        }
        std::thread::spawn(move || {
            for _ in std::io::stdin().lines().map_while(Result::ok) {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        eprintln!("demo: press Enter to make a new weir take the running one over");
        let (weir, config_path, stop, children) = (weir.clone(), config_path.clone(), stop.clone(), children.clone());
        std::thread::spawn(move || {
            for () in rx {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = take_over(&weir, &config_path, &children) {
                    println!("demo: the takeover failed: {e:#} (the running weir serves on)");
                }
            }
        });
    }
    // Until Ctrl-C, or the workload ends (its --duration).
    let status = loop {
        if stop.load(Ordering::SeqCst) {
            break proc::terminate(&mut client, Duration::from_secs(5)).0.context("the demo workload")?;
        }
        if let Some(s) = proc::wait_exit(&mut client, Duration::from_millis(100)) {
            break s;
        }
    };
    eprintln!("demo: stopping weir");
    drop(cleanup);
    drop(endpoints);
    if !status.success() && !stop.load(Ordering::SeqCst) {
        bail!("the demo workload failed: {status}");
    }
    Ok(())
}

/// A demo gRPC server (tests/clients/grpc_server.py) called `name` on `addr`, serving once it
/// has said so.
fn grpc_server(name: &str, addr: &str, args: &[&str]) -> anyhow::Result<Child> {
    use std::io::BufRead as _;
    let port = addr.rsplit(':').next().context("a port")?;
    let mut child = Command::new(weir_testkit::tools::python())
        .arg(root().join("tests/clients/grpc_server.py"))
        .args(["--name", name, "--port", port])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting a demo gRPC server")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if !line.starts_with("port ") {
        bail!("demo gRPC server {name} did not start on {addr} (in use?)");
    }
    Ok(child)
}

fn start_weir(weir: &std::path::Path, config: &std::path::Path, takeover: bool) -> anyhow::Result<Child> {
    let mut cmd = Command::new(weir);
    cmd.args(["run", "--config"]).arg(config);
    if takeover {
        cmd.arg("--takeover");
    }
    cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .spawn()
        .context("starting weir")
}

/// The pid of the weir that answers the admin API.
fn serving_pid() -> Option<u64> {
    let r = get_once(admin(), "admin", "/config", Duration::from_secs(1)).ok()?;
    serde_json::from_str::<serde_json::Value>(&r.body_string()).ok()?["pid"].as_u64()
}

/// Starts `weir run --takeover` and waits until it serves; the weir it replaced drains and
/// exits by itself (reaped by the cleanup).
fn take_over(
    weir: &std::path::Path,
    config: &std::path::Path,
    children: &std::sync::Mutex<Vec<Child>>,
) -> anyhow::Result<()> {
    let old = serving_pid();
    let t0 = Instant::now();
    println!("demo: a new weir takes over from pid {} (weir run --takeover)", old.unwrap_or(0));
    let mut new = start_weir(weir, config, true)?;
    let pid = u64::from(new.id());
    let serving = wait_until(Duration::from_secs(20), || match new.try_wait() {
        Ok(Some(status)) => Some(Err(anyhow::anyhow!("the new weir exited: {status}"))),
        Err(e) => Some(Err(e.into())),
        Ok(None) => (serving_pid() == Some(pid)).then_some(Ok(())),
    });
    children.lock().unwrap_or_else(|e| e.into_inner()).push(new);
    serving.unwrap_or_else(|| Err(anyhow::anyhow!("the new weir is not serving after 20 s")))?;
    println!(
        "demo: weir pid {pid} serves, {} ms after it started; pid {} drains and exits",
        t0.elapsed().as_millis(),
        old.unwrap_or(0)
    );
    Ok(())
}

fn ctrlc_handler(f: impl Fn() + Send + 'static) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            f();
        }
    });
    Ok(())
}

/// Waits (at most 20 s) until weir's `/ready` answers 200 with `body_has` in its body; fails if
/// weir exits first.
fn wait_ready(weir: &mut Child, body_has: &str) -> anyhow::Result<()> {
    let ready = wait_until(Duration::from_secs(20), || match weir.try_wait() {
        Ok(Some(status)) => Some(Err(anyhow::anyhow!("weir exited during start: {status}"))),
        Err(e) => Some(Err(e.into())),
        Ok(None) => get_once(admin(), "admin", "/ready", Duration::from_secs(1))
            .ok()
            .filter(|r| r.status == 200 && r.body_string().contains(body_has))
            .map(|_| Ok(())),
    });
    ready.unwrap_or_else(|| Err(anyhow::anyhow!("weir did not become ready within 20 s")))
}

/// Once a second: weir's own RED for the HTTP and the gRPC service (`services`), from
/// `/metrics` (rate and errors from the counters, p50/p99 from the histogram buckets' deltas),
/// endpoint states and retries. At `chaos_at` seconds, endpoint 3 (`failing`) starts answering
/// 503.
fn monitor(stop: Arc<AtomicBool>, failing: &Endpoint, chaos_at: u64, services: (&str, &str)) {
    let (http_service, grpc_service) = services;
    let start = Instant::now();
    let mut prev: Option<Red> = None;
    let mut prev_grpc: Option<Grpc> = None;
    let mut chaos = false;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(1)); // the report's pace
        if chaos_at > 0 && start.elapsed().as_secs() >= chaos_at && !chaos {
            chaos = true;
            failing.set(Behavior::Status(503));
            println!("demo: endpoint 3 now answers 503 to everything: watch weir retry and eject it");
        }
        let Ok(r) = get_once(admin(), "admin", "/metrics", Duration::from_secs(5)) else { continue };
        if r.status != 200 {
            continue;
        }
        let text = r.body_string();
        let red = Red::parse(&text, http_service);
        let grpc = Grpc::parse(&text, grpc_service);
        if let Some(p) = &prev {
            let n = red.requests - p.requests;
            let q =
                |q: f64| quantile(&p.buckets, &red.buckets, q).map_or("-".into(), |s| format!("{:.2}ms", s * 1000.0));
            println!(
                "weir   t={:>3}s  {http_service}: rate={n:<5} 5xx={:<3} weir-errors={:<3} p50≈{} p99≈{}  retries={} endpoints active={} ejected={}",
                start.elapsed().as_secs(),
                red.server_errors - p.server_errors,
                red.weir_errors - p.weir_errors,
                q(0.5),
                q(0.99),
                red.retries - p.retries,
                red.active,
                red.ejected,
            );
        }
        if let Some(g) = &prev_grpc {
            let codes: Vec<String> = grpc
                .codes
                .iter()
                .map(|(c, n)| (c, n - g.codes.iter().find(|(k, _)| k == c).map_or(0.0, |(_, v)| *v)))
                .filter(|(_, n)| *n > 0.0)
                .map(|(c, n)| format!("{c}={n}"))
                .collect();
            println!(
                "weir   t={:>3}s  {grpc_service} (gRPC): grpc-status {}  retries={} endpoints active={} ejected={}",
                start.elapsed().as_secs(),
                if codes.is_empty() { "-".to_string() } else { codes.join(" ") },
                grpc.retries - g.retries,
                grpc.active,
                grpc.ejected,
            );
        }
        prev = Some(red);
        prev_grpc = Some(grpc);
    }
}

/// The gRPC service's numbers from one scrape: calls by final grpc-status, retries, endpoints.
struct Grpc {
    codes: Vec<(String, f64)>,
    retries: f64,
    active: f64,
    ejected: f64,
}

impl Grpc {
    fn parse(text: &str, service: &str) -> Grpc {
        let mut g = Grpc { codes: Vec::new(), retries: 0.0, active: 0.0, ejected: 0.0 };
        let label = format!("service=\"{service}\"");
        for line in text.lines().filter(|l| l.contains(&label)) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let v: f64 = value.parse().unwrap_or(0.0);
            if let Some(code) =
                name.strip_prefix("weir_grpc_responses_total").and_then(|n| n.split("grpc_code=\"").nth(1))
            {
                g.codes.push((code.trim_end_matches("\"}").to_string(), v));
            } else if name.starts_with("weir_retries_total") {
                g.retries += v;
            } else if name.starts_with("weir_endpoints") && name.contains("state=\"active\"") {
                g.active = v;
            } else if name.starts_with("weir_endpoints") {
                g.ejected += v;
            }
        }
        g
    }
}

/// The HTTP service's RED numbers from one scrape.
struct Red {
    requests: f64,
    server_errors: f64,
    weir_errors: f64,
    retries: f64,
    active: f64,
    ejected: f64,
    /// (le, cumulative count)
    buckets: Vec<(f64, f64)>,
}

impl Red {
    fn parse(text: &str, service: &str) -> Red {
        let mut r = Red {
            requests: 0.0,
            server_errors: 0.0,
            weir_errors: 0.0,
            retries: 0.0,
            active: 0.0,
            ejected: 0.0,
            buckets: Vec::new(),
        };
        let label = format!("service=\"{service}\"");
        for line in text.lines().filter(|l| l.contains(&label)) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let v: f64 = value.parse().unwrap_or(0.0);
            if name.starts_with("weir_requests_total") {
                r.requests += v;
                if name.contains("code=\"5") {
                    r.server_errors += v;
                }
            } else if name.starts_with("weir_request_errors_total") {
                r.weir_errors += v;
            } else if name.starts_with("weir_retries_total") {
                r.retries += v;
            } else if name.starts_with("weir_endpoints") && name.contains("state=\"active\"") {
                r.active = v;
            } else if name.starts_with("weir_endpoints") && !name.contains("state=\"active\"") {
                r.ejected += v;
            } else if let Some(le) = name
                .strip_prefix("weir_request_duration_seconds_bucket")
                .and_then(|n| n.split("le=\"").nth(1))
                .and_then(|n| n.split('"').next())
            {
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
                r.buckets.push((le, v));
            }
        }
        r
    }
}

/// Like Prometheus' histogram_quantile over the interval between two scrapes.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let deltas: Vec<(f64, f64)> = after.iter().zip(before).map(|((le, a), (_, b))| (*le, a - b)).collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, cum) in deltas {
        if cum >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let in_bucket = cum - below;
            return Some(lower + (le - lower) * if in_bucket > 0.0 { (rank - below) / in_bucket } else { 0.0 });
        }
        (lower, below) = (le, cum);
    }
    None
}

/// The demo workload: moves itself into the cgroup, then sends `rate` requests per second on
/// a keep-alive connection to the VIP and prints a line per second.
pub(crate) fn client(args: ClientArgs) -> anyhow::Result<()> {
    weir_testkit::cgroup::join(&args.cgroup)?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let end = Instant::now() + Duration::from_secs(args.duration);
    let mut conn: Option<Client> = None;
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 2)?;
    let (mut ok, mut errors, mut via_weir, mut by_endpoint) = (0u64, 0u64, 0u64, [0u64; 4]);
    let start = Instant::now();
    let mut next_print = start + Duration::from_secs(1);
    let mut next_send = start;
    while Instant::now() < end {
        let now = Instant::now();
        if now < next_send {
            std::thread::sleep(next_send - now); // the workload's request rate
        }
        next_send += interval;
        let t0 = Instant::now();
        match request(&mut conn, args.vip) {
            Ok((endpoint, weir)) => {
                ok += 1;
                via_weir += u64::from(weir);
                if endpoint < by_endpoint.len() {
                    by_endpoint[endpoint] += 1;
                }
                let _ = hist.record(t0.elapsed().as_micros() as u64);
            }
            Err(e) => {
                errors += 1;
                conn = None;
                if errors <= 3 {
                    eprintln!("demo-client: request failed: {e:#}");
                }
            }
        }
        if Instant::now() >= next_print {
            println!(
                "t={:>3}s  requests={:<5} errors={:<3} p50={:.2}ms p99={:.2}ms  through weir={}  by endpoint: 1={} 2={} 3={}",
                start.elapsed().as_secs(),
                ok + errors,
                errors,
                hist.value_at_quantile(0.5) as f64 / 1000.0,
                hist.value_at_quantile(0.99) as f64 / 1000.0,
                via_weir,
                by_endpoint[1],
                by_endpoint[2],
                by_endpoint[3],
            );
            (ok, errors, via_weir, by_endpoint) = (0, 0, 0, [0; 4]);
            hist.reset();
            next_print += Duration::from_secs(1);
        }
    }
    Ok(())
}

/// One GET on the kept connection (opened first if needed): which endpoint answered
/// (`x-endpoint`), and whether the request went through weir (the endpoint echoes weir's `via`).
fn request(conn: &mut Option<Client>, vip: SocketAddr) -> anyhow::Result<(usize, bool)> {
    if conn.is_none() {
        let c = Client::try_connect_timeout(vip, Duration::from_secs(2), Duration::from_secs(5))
            .with_context(|| format!("connecting to {vip}"))?;
        *conn = Some(c);
    }
    let r = conn.as_mut().context("connection")?.request("GET", "/", "checkout", b"")?;
    if r.status != 200 {
        bail!("status {} ({})", r.status, r.body_string().trim());
    }
    let endpoint = r.header("x-endpoint").and_then(|e| e.parse().ok()).context("no x-endpoint in the response")?;
    Ok((endpoint, r.header("x-seen-via").is_some_and(|v| v.contains("weir"))))
}
