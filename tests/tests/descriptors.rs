//! File descriptors are weir's own limit, never an endpoint's failure: with its open-files
//! limit cut under it (`prlimit` on the running process), connects that fail with EMFILE are
//! answered 503 `overloaded` with `Retry-After` and counted as weir's own, no endpoint is
//! ejected, accepts back off instead of spinning, and everything works again the moment
//! descriptors are free. At start weir raises its soft limit to the hard one and derives
//! `max_connections` from it.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use weir_tests::testkit::client::get_once;
use weir_tests::{Client, Endpoint, WeirProcess, eventually, metric_value};

const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");

fn config(ep: &Endpoint, proxy_extra: &str) -> String {
    format!(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 1\n{proxy_extra}\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"off\"\n[[service]]\nname = \"s\"\nvip = \"127.10.31.1:80\"\nendpoints = [\"{0}\"]\n\
         [[service]]\nname = \"t\"\nvip = \"127.10.31.2:80\"\nendpoints = [\"{0}\"]\n",
        ep.addr
    )
}

fn metrics(weir: &WeirProcess) -> String {
    get_once(weir.admin, "admin", "/metrics", Duration::from_secs(5)).expect("GET /metrics").body_string()
}

fn open_files(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// (soft, hard) open-files limit of `pid`.
fn hard_limit(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("open files line").to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

/// Sets the soft open-files limit of `pid` (`SOFT:`; lowering it, or raising it up to the hard
/// limit, needs no privilege).
fn prlimit(pid: i32, limit: &str) {
    let out = Command::new("prlimit").arg("--pid").arg(pid.to_string()).arg(format!("--nofile={limit}")).output();
    let out = out.expect("run prlimit (util-linux)");
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn out_of_descriptors_is_weirs_own_overload_never_the_endpoints_failure() {
    let ep = Endpoint::start("e");
    let weir = WeirProcess::start(WEIR, &config(&ep, ""), None);
    let mut warm = Client::connect(weir.proxy);
    assert_eq!(warm.get("/", "s").status, 200);
    // Cut the limit to what weir holds now plus a few: the clients below take the rest.
    let pid = weir.pid();
    let limit = open_files(pid) + 8;
    prlimit(pid, &format!("{limit}:"));
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(weir.proxy).expect("connect (queued in the kernel when not accepted)"));
    }
    eventually(Duration::from_secs(10), "weir's descriptors all taken", || (open_files(pid) >= limit).then_some(()));
    // A request for the other service needs a new upstream connection.
    let mut answers = Vec::new();
    for _ in 0..5 {
        let r = warm.get("/", "t");
        answers.push((r.status, r.header("x-weir-error").map(str::to_string), r.header("retry-after").is_some()));
        if r.status == 200 {
            break;
        }
    }
    assert!(
        answers.iter().any(|(s, e, ra)| *s == 503 && e.as_deref() == Some("overloaded") && *ra),
        "no 503 overloaded with Retry-After while out of descriptors: {answers:?}"
    );
    // Give descriptors back: close the idle clients and restore the limit.
    drop(idle);
    let (_, hard) = hard_limit(pid);
    prlimit(pid, &format!("{hard}:"));
    eventually(Duration::from_secs(10), "a request succeeds again", || {
        (Client::connect(weir.proxy).get("/", "t").status == 200).then_some(())
    });
    let text = eventually(Duration::from_secs(5), "the counters published", || {
        let m = metrics(&weir);
        (metric_value(&m, "weir_local_resource_errors_total{op=\"connect\"}") >= 1.0).then_some(m)
    });
    assert_eq!(metric_value(&text, "weir_outlier_ejections_total{service=\"t\"}"), 0.0, "the endpoint was blamed");
    assert_eq!(metric_value(&text, "weir_request_errors_total{service=\"t\",reason=\"connect-failure\"}"), 0.0);
    assert!(metric_value(&text, "weir_request_errors_total{service=\"t\",reason=\"overloaded\"}") >= 1.0);
    let accepts = metric_value(&text, "weir_local_resource_errors_total{op=\"accept\"}");
    assert!(accepts >= 1.0, "the accepts that failed were not counted");
    // Backing off (10 ms doubling to 1 s) makes a handful of attempts; spinning makes thousands.
    assert!(accepts < 200.0, "{accepts} failed accepts: the listener spun on EMFILE");
    assert_eq!(
        metric_value(&text, "weir_endpoints{service=\"t\",state=\"active\"}"),
        1.0,
        "the endpoint stayed in rotation"
    );
}

#[test]
fn the_soft_limit_is_raised_at_start_and_max_connections_fits_the_limit() {
    let ep = Endpoint::start("e");
    // Start weir with a soft limit of 256 under a hard one of 4096.
    let cmd_limit = |cmd: &mut Command, _: Option<std::path::PathBuf>| {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let r = libc::rlimit { rlim_cur: 256, rlim_max: 4096 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    };
    let any: std::net::SocketAddr = weir_tests::ANY_PORT.parse().expect("addr");
    let weir = WeirProcess::start_on(WEIR, &config(&ep, ""), None, any, any, cmd_limit);
    assert_eq!(hard_limit(weir.pid()), ("4096".to_string(), "4096".to_string()), "soft raised to hard");
    // `weir check` gives the budget, and warns about a configured value that cannot fit.
    let dir = weir_tests::scratch_dir("fds");
    let file = dir.join("weir.toml");
    std::fs::write(
        &file,
        config(&ep, "max_connections = 100000").replace("@PROXY@", "127.0.0.1:0").replace("@ADMIN@", "127.0.0.1:0"),
    )
    .expect("write");
    let mut check = Command::new(WEIR);
    check.args(["check", "--config"]).arg(&file);
    let limit = |cmd: &mut Command| {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: as above.
        unsafe {
            cmd.pre_exec(|| {
                let r = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    };
    limit(&mut check);
    let out = check.output().expect("weir check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning, not an error: {stderr}");
    assert!(stderr.contains("warning: descriptors: limit 1024; max_connections 100000 (configured)"), "{stderr}");
    assert!(stderr.contains("past about 476 connections"), "{stderr}");
    std::fs::write(&file, config(&ep, "").replace("@PROXY@", "127.0.0.1:0").replace("@ADMIN@", "127.0.0.1:0"))
        .expect("write");
    let mut check = Command::new(WEIR);
    check.args(["check", "--config"]).arg(&file);
    limit(&mut check);
    let out = check.output().expect("weir check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("max_connections 476 (derived from the limit)"), "{stdout}");
}
