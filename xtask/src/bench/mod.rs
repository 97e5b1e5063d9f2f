//! `cargo xtask bench [--quick]`: weir side by side with the proxies users would otherwise
//! pick, in one run, with identical settings for every path, written into the repo.
//!
//! Paths: direct to the upstream; weir (one worker) dialed directly; weir through eBPF
//! steering (client in a steered cgroup dialing a VIP); nginx; HAProxy; Envoy. Pinning: the
//! proxy on CPU 1, the load generator and the upstream on CPU 0 (the per-hop test moves the
//! upstream and the generator onto CPU 1 too). Outputs: target/bench/results.{json,md},
//! latency plots (SVG + PNG), and docs/BENCHMARKS.md regenerated.
//!
//! Then scenarios of weir alone: the access-log cost, the gain of CPU-affine accept (two
//! workers, weir on both CPUs, the steered client and the upstream on CPU 0), large service
//! tables, and the per-request cost of caller identity and tracing (identity.rs); and the
//! HTTP/2 section: h2c on both sides of weir, nginx, HAProxy and Envoy against nghttpd, loaded
//! by h2load (`--only http2` runs it alone).
//!
//! Files: install.rs (peers, builds, machine), peers.rs (configs, starting paths), procs.rs
//! (processes, /proc, cgroup, sinks), measure.rs (one path's measurements), rounds.rs (the
//! paths measured in interleaved rounds, results as medians of rounds), features.rs
//! (access-log cost), affinity.rs (CPU-affine accept), scale.rs (service tables), h2.rs,
//! h2peers.rs and h2load.rs (the HTTP/2 section), report.rs (tables, goals), docs.rs
//! (docs/BENCHMARKS.md), plot.rs (the percentile plot).
//! Must not: leave processes, cgroups or files outside target/ and docs/ behind.

mod affinity;
mod docs;
mod features;
mod h2;
mod h2load;
mod h2peers;
mod identity;
mod install;
mod measure;
mod multicore;
mod peers;
mod plot;
mod policy;
mod procs;
mod redirect;
mod report;
mod rounds;
mod scale;

use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;

use crate::{capture, is_root, root, setup};
use measure::{Memory, OpenRun, PerHop, Plan, Saturation};
use peers::{Env, PathId};
use procs::BenchCgroup;

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// A ~2-minute run (shorter and fewer measurements) instead of the full ~12 minutes.
    #[arg(long)]
    quick: bool,
    /// Do not install missing peers; report them as unavailable.
    #[arg(long)]
    no_install: bool,
    /// Leave docs/BENCHMARKS.md alone (results still go to target/bench/).
    #[arg(long)]
    no_docs: bool,
    /// Run only one section, print it and write target/bench/SECTION.{md,json}: `scale`
    /// (large service tables), `http2` (h2c through weir, HAProxy, Envoy and nginx) — for these
    /// two docs/BENCHMARKS.md is left alone —, `policy` (what ten routes and a split add per
    /// hop), `multicore` (two workers on two cores against nginx's two, and 1 000 keep-alive
    /// clients), `identity` (the cost of caller identity and tracing) or `redirect` (weir
    /// steered with the socket-level redirect on and off beside weir dialed directly, nginx and
    /// HAProxy, without the memory test); for the last four their section of docs/BENCHMARKS.md
    /// is replaced unless --no-docs.
    #[arg(long, value_parser = ["scale", "policy", "multicore", "http2", "identity", "redirect"])]
    only: Option<String>,
}

/// Everything measured on one path.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PathResult {
    /// Stable key.
    pub key: String,
    /// Report label.
    pub label: String,
    /// "ok", "unavailable" (its peer could not be installed or run here) or "failed".
    pub status: String,
    /// Why it is unavailable or failed.
    pub note: Option<String>,
    /// Added latency test.
    pub per_hop: Option<PerHop>,
    /// Open loop, one per rate.
    pub open: Vec<OpenRun>,
    /// Closed loop.
    pub saturation: Option<Saturation>,
    /// Memory.
    pub memory: Option<Memory>,
    /// Measurements of this path that failed.
    pub problems: Vec<String>,
}

impl PathResult {
    fn new(id: PathId) -> PathResult {
        PathResult {
            key: id.key().into(),
            label: id.label().into(),
            status: "ok".into(),
            note: None,
            per_hop: None,
            open: Vec::new(),
            saturation: None,
            memory: None,
            problems: Vec::new(),
        }
    }
}

pub(crate) fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    procs::cleanup_on_signal()?;
    let command = format!(
        "cargo xtask bench{}{}",
        if args.quick { " --quick" } else { "" },
        args.only.as_deref().map_or(String::new(), |o| format!(" --only {o}"))
    );
    let dir = root().join("target/bench");
    // Configs and logs of this run only (the report embeds every config it finds).
    for sub in ["configs", "logs"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    if !is_root() {
        eprintln!(
            "bench: not root: the steered path (eBPF, cgroups) will be reported unavailable, and peers cannot be installed"
        );
    }
    if is_root() && !args.no_install {
        // nightly rust-src + bpf-linker: weir's build script compiles the eBPF programs.
        setup::setup()?;
    }
    let (weir, loadgen) = install::build()?;
    let (nginx, haproxy, envoy) = install::peers(&dir, is_root() && !args.no_install);
    let (nghttpd, h2load) = install::h2_tools(is_root() && !args.no_install);
    let machine = install::machine(&[
        ("nginx", &nginx),
        ("haproxy", &haproxy),
        ("envoy", &envoy),
        ("nghttpd", &nghttpd),
        ("h2load", &h2load),
    ])?;
    let cgroup_guard = if is_root() {
        BenchCgroup::create().map_err(|e| format!("{e:#}"))
    } else {
        Err("needs root (eBPF, cgroups)".into())
    };
    let (proxy_cpu, client_cpu) = if machine.nproc >= 2 { ("1", "0") } else { ("0", "0") };
    let env = Env {
        dir: dir.clone(),
        weir,
        loadgen,
        nginx,
        haproxy,
        envoy,
        nghttpd,
        h2load,
        cgroup: cgroup_guard.as_ref().map(|c| c.cgroup.path.clone()).map_err(Clone::clone),
        proxy_cpu: proxy_cpu.into(),
        client_cpu: client_cpu.into(),
    };
    let nofile = weir_testkit::proc::raise_nofile(None).unwrap_or(0);
    // This process (and the access-log sink threads it runs) stays off the proxy's core.
    weir_testkit::proc::pin_to_cpu(client_cpu.parse()?).context("pinning the benchmark to the client CPU")?;
    let plan = Plan::new(args.quick);
    eprintln!(
        "bench: {} CPUs ({}), proxy on CPU {proxy_cpu}, load generator + upstream on CPU {client_cpu}, open files limit {nofile}",
        machine.nproc, machine.cpu_model
    );

    let others_before = procs::cpu_snapshot();
    let measuring = Instant::now();
    if args.only.as_deref() == Some("http2") {
        let h = h2::run(&env, args.quick);
        let mut out = h2::markdown(&h);
        out.push('\n');
        out.push_str(&h2::goal_lines(&h2::goals(&h)));
        std::fs::write(dir.join("http2.md"), &out)?;
        std::fs::write(dir.join("http2.json"), serde_json::to_string_pretty(&h)?)?;
        println!("{out}");
        return Ok(());
    }
    let (mut upstream, upstream_addr) = peers::start_upstream(&env)?;
    eprintln!("bench: upstream nginx on {upstream_addr}");
    if args.only.as_deref() == Some("multicore") {
        let m = multicore::run(&env, &plan, upstream_addr, &upstream);
        drop(upstream);
        drop(cgroup_guard);
        let md = multicore::markdown(&m);
        std::fs::write(dir.join("multicore.md"), &md)?;
        std::fs::write(dir.join("multicore.json"), serde_json::to_string_pretty(&m)?)?;
        println!("{md}");
        if !args.no_docs {
            let note = only_note("multicore", args.quick, &others_before, measuring, &machine);
            docs::splice_section(multicore::HEADING, &md, &note)?;
            eprintln!("bench: docs/BENCHMARKS.md: two-worker section replaced");
        }
        return Ok(());
    }
    if args.only.as_deref() == Some("policy") {
        let c = policy::run(&env, &plan, upstream_addr, &upstream)?;
        drop(upstream);
        let md = policy::markdown(&c);
        std::fs::write(dir.join("policy.md"), &md)?;
        std::fs::write(dir.join("policy.json"), serde_json::to_string_pretty(&c)?)?;
        println!("{md}");
        if !args.no_docs {
            let note = only_note("policy", args.quick, &others_before, measuring, &machine);
            docs::splice_section(policy::HEADING, &md, &note)?;
            eprintln!("bench: docs/BENCHMARKS.md: traffic policy section replaced");
        }
        return Ok(());
    }
    if args.only.as_deref() == Some("scale") {
        let s = scale::run(&env, &plan, upstream_addr);
        drop(upstream);
        let md = scale::markdown(&s);
        let goals = report::scale_goals(&s);
        let mut out = md.clone();
        for g in &goals {
            let _ = std::fmt::Write::write_fmt(
                &mut out,
                format_args!(
                    "- {}: {} (target {}): {}\n",
                    g.name,
                    g.measured,
                    g.target,
                    match g.met {
                        Some(true) => "met",
                        Some(false) => "MISSED",
                        None => "not measured",
                    }
                ),
            );
        }
        std::fs::write(dir.join("scale.md"), &out)?;
        std::fs::write(dir.join("scale.json"), serde_json::to_string_pretty(&s)?)?;
        println!("{out}");
        return Ok(());
    }
    if args.only.as_deref() == Some("redirect") {
        let paths = rounds::run(&env, &plan, upstream_addr, &mut upstream, &PathId::REDIRECT, false);
        drop(upstream);
        drop(cgroup_guard);
        let (cpu_s, top) = procs::other_load(&others_before, &procs::cpu_snapshot());
        let share = cpu_s / (measuring.elapsed().as_secs_f64() * machine.nproc as f64);
        let top = top.iter().take(3).map(|(n, s)| format!("{n} {s:.0} s")).collect::<Vec<_>>().join(", ");
        let background = format!(
            "other processes alive at start and end used {:.0}% of the machine ({top}; short-lived ones, such as builds, are not counted)",
            share * 100.0
        );
        let command = format!("cargo xtask bench --only redirect{}", if args.quick { " --quick" } else { "" });
        let out = redirect::markdown(&paths, &plan, &machine, &command, &now_utc(), &background);
        std::fs::write(dir.join("redirect.md"), &out)?;
        std::fs::write(dir.join("redirect.json"), serde_json::to_string_pretty(&paths)?)?;
        if !args.no_docs {
            docs::write_redirect_section(&out)?;
        }
        println!("{out}");
        return Ok(());
    }
    if args.only.as_deref() == Some("identity") {
        let s = identity::run(&env, &plan, upstream_addr, &upstream);
        drop(upstream);
        drop(cgroup_guard);
        let md = identity::markdown(&s, &plan);
        std::fs::write(dir.join("identity.md"), &md)?;
        std::fs::write(dir.join("identity.json"), serde_json::to_string_pretty(&s)?)?;
        println!("{md}");
        if !args.no_docs {
            let note = only_note("identity", args.quick, &others_before, measuring, &machine);
            docs::splice_section(identity::HEADING, &md, &note)?;
            eprintln!("bench: docs/BENCHMARKS.md: identity section replaced");
        }
        return Ok(());
    }
    let paths = rounds::run(&env, &plan, upstream_addr, &mut upstream, &PathId::ALL, true);
    eprintln!("bench: access-log cost (weir variants)");
    let features = features::run(&env, &plan, upstream_addr, &upstream).unwrap_or_else(|e| {
        eprintln!("bench: access-log comparison failed: {e:#}");
        Vec::new()
    });
    eprintln!("bench: CPU-affine accept (2 workers, steered, client on CPU {client_cpu})");
    let affinity = affinity::run(&env, &plan, upstream_addr);
    eprintln!("bench: two workers on two cores (weir vs nginx; 1 000 keep-alive clients)");
    let multicore = multicore::run(&env, &plan, upstream_addr, &upstream);
    eprintln!("bench: large service tables (1 000 to 100 000 services)");
    let scale = scale::run(&env, &plan, upstream_addr);
    eprintln!("bench: caller identity and tracing (4 weir variants)");
    let identity = identity::run(&env, &plan, upstream_addr, &upstream);
    eprintln!("bench: traffic policy per hop (plain vs ten routes and a split)");
    let policy = policy::run(&env, &plan, upstream_addr, &upstream)
        .unwrap_or_else(|e| policy::PolicyCost::not_run(format!("{e:#}")));
    drop(upstream);
    eprintln!("bench: HTTP/2 (h2c through weir, nginx, HAProxy, Envoy; nghttpd upstream, h2load)");
    let http2 = h2::run(&env, args.quick);
    drop(cgroup_guard);
    if procs::stopping() {
        bail!("interrupted by a signal: nothing written");
    }
    let (other_cpu_s, top) = procs::other_load(&others_before, &procs::cpu_snapshot());
    let background = report::Background {
        cpu_seconds: other_cpu_s,
        share_of_machine: other_cpu_s / (measuring.elapsed().as_secs_f64() * machine.nproc as f64),
        top,
    };
    if background.share_of_machine > 0.05 {
        eprintln!(
            "bench: warning: other processes used {:.0}% of the machine during the run ({}): numbers are noisier than usual",
            background.share_of_machine * 100.0,
            background.top.iter().map(|(n, s)| format!("{n} {s:.0} s")).collect::<Vec<_>>().join(", ")
        );
    }

    let run = report::Run {
        command,
        machine,
        plan,
        paths,
        features,
        affinity,
        multicore,
        scale,
        identity,
        policy,
        http2,
        background,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let results = report::Results::new(run, &env);
    report::write(&results, &dir, !args.no_docs)?;
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn unavailable(env: &Env, id: PathId) -> Option<String> {
    let why = |r: &Result<std::path::PathBuf, String>| r.as_ref().err().cloned();
    match id {
        PathId::Direct | PathId::Weir => None,
        PathId::WeirSteered | PathId::WeirSteeredTcp => why(&env.cgroup),
        PathId::Nginx => why(&env.nginx),
        PathId::Haproxy => why(&env.haproxy),
        PathId::Envoy => why(&env.envoy),
    }
}

/// The line under a section that `--only SECTION` replaced in docs/BENCHMARKS.md: which run
/// made it, and how busy the machine was meanwhile.
fn only_note(
    section: &str,
    quick: bool,
    others_before: &procs::CpuSnapshot,
    measuring: Instant,
    machine: &install::Machine,
) -> String {
    let (other_cpu_s, top) = procs::other_load(others_before, &procs::cpu_snapshot());
    let share = other_cpu_s / (measuring.elapsed().as_secs_f64() * machine.nproc as f64);
    format!(
        "_This section: `cargo xtask bench --only {section}{}` on {} (weir {}), the rest of this file from the run \
named at the top. Other processes used {other_cpu_s:.0} CPU-s meanwhile, {:.0}% of the machine ({}): latencies \
are noisy when that is high; CPU per request is counted for weir alone._",
        if quick { " --quick" } else { "" },
        now_utc(),
        capture(std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]))
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        share * 100.0,
        top.iter().map(|(n, s)| format!("{n} {s:.0} s")).collect::<Vec<_>>().join(", ")
    )
}

/// `date -u` as an ISO timestamp (for the report).
fn now_utc() -> String {
    capture(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
