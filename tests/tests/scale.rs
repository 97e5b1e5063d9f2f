//! A 10 000-service table (10 endpoints each, 2 workers) in a separate weir process: its memory
//! is asserted, never its timing. Idle services cost little, one-service reloads do not
//! ratchet memory up, and memory follows the table back down to one service. The bounds are
//! relative to a one-service weir measured in the same run.

use std::time::Duration;

use weir_tests::{WeirProcess, eventually, metric_value, rss_kib};

const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");

/// A config with `services` services of 10 endpoints each; `variant` changes one service's
/// endpoints (a one-service change).
fn table(services: usize, variant: usize) -> String {
    let mut out = String::from(
        "[proxy]\nlisten = \"@PROXY@\"\nworkers = 2\n[admin]\nlisten = \"@ADMIN@\"\n[steering]\nenabled = false\n\
         [access_log]\nsink = \"off\"\n",
    );
    for i in 0..services {
        let port = 20_000 + (i % 40_000);
        let first = if i == 7 { format!("127.0.9.{}", variant % 200 + 1) } else { "127.0.1.1".into() };
        let eps: Vec<String> = std::iter::once(format!("\"{first}:{port}\""))
            .chain((2..=10).map(|j| format!("\"127.0.1.{j}:{port}\"")))
            .collect();
        out.push_str(&format!(
            "[[service]]\nname = \"svc-{i}\"\nvip = \"127.20.{}.{}:80\"\nendpoints = [{}]\n",
            i >> 8,
            i & 255,
            eps.join(", ")
        ));
    }
    out
}

/// RSS once it has stopped moving (two readings 300 ms apart within 1 MiB), KiB.
fn settled_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    eventually(Duration::from_secs(20), "RSS to settle", || {
        std::thread::sleep(Duration::from_millis(300)); // the interval between two readings
        let now = rss_kib(pid);
        let stable = now.abs_diff(last) < 1024;
        last = now;
        stable.then_some(now)
    })
}

fn reloads_ok(weir: &WeirProcess) -> f64 {
    let r = weir_testkit::client::get_once(weir.admin, "admin", "/metrics", Duration::from_secs(10)).expect("/metrics");
    metric_value(&r.body_string(), "weir_config_reloads_total{result=\"success\"}")
}

fn reload(weir: &WeirProcess, toml: &str) {
    let before = reloads_ok(weir);
    weir.write_config(toml);
    weir.signal(libc::SIGHUP);
    eventually(Duration::from_secs(30), "the reload to apply", || (reloads_ok(weir) > before).then_some(()));
}

#[test]
fn ten_thousand_services_fit_in_tens_of_megabytes_and_memory_follows_the_table_down() {
    let one = WeirProcess::start(WEIR, &table(1, 0), None);
    let baseline = settled_rss(one.pid() as u32);
    drop(one);

    let weir = WeirProcess::start(WEIR, &table(10_000, 0), None);
    let pid = weir.pid() as u32;
    let big = settled_rss(pid);
    eprintln!("scale: one service {baseline} KiB, 10 000 services {big} KiB");
    assert!(big <= baseline + 64 * 1024, "10 000 idle services cost {} KiB above one service", big - baseline);

    // One-service changes: memory does not ratchet up.
    for variant in 1..=10 {
        reload(&weir, &table(10_000, variant));
    }
    let after = eventually(Duration::from_secs(30), "RSS back near its settled value", || {
        let now = settled_rss(pid);
        (now <= big + big / 10).then_some(now)
    });
    eprintln!("scale: after 10 one-service reloads {after} KiB");

    // The table shrinks to one service: memory follows it down.
    reload(&weir, &table(1, 0));
    let small = eventually(Duration::from_secs(30), "RSS to come down", || {
        let now = settled_rss(pid);
        (now <= 2 * baseline).then_some(now)
    });
    eprintln!("scale: back to one service {small} KiB");
}
