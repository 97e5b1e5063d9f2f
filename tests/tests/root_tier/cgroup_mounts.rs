//! Steering does not depend on where the cgroup v2 hierarchy is mounted: the hierarchy is
//! mounted a second time at a fresh directory under /tmp, a cgroup is created through that
//! mount, weir is configured with the path under it, and a workload in that cgroup dialing a
//! VIP is steered through weir.

use weir_tests::root::{Cgroup, Cgroup2Mount, cgroup2_root, probe, require_root};
use weir_tests::{Endpoint, WeirProcess};

use super::steering::steered_config;

const PROBE: &str = env!("CARGO_BIN_EXE_weir-probe");
const WEIR: &str = env!("CARGO_BIN_EXE_weir-cli");

#[test]
fn a_cgroup_reached_through_a_second_cgroup2_mount_is_steered() {
    require_root();
    // Dropped last (declared first): weir detaches, the cgroup goes, then the mount.
    let mount = Cgroup2Mount::new().unwrap_or_else(|e| panic!("cannot mount a second cgroup2 hierarchy: {e}"));
    let name = format!("weir-test-mount-{}", std::process::id());
    let cg = Cgroup::try_create_in(&mount.path, &name).unwrap_or_else(|e| panic!("{e}"));
    let primary = cgroup2_root().expect("cgroup v2 root");
    assert!(cg.path.starts_with(&mount.path) && !cg.path.starts_with(&primary), "{}", cg.path.display());
    assert!(primary.join(&name).join("cgroup.procs").exists(), "the second mount is not the same hierarchy");

    let a = Endpoint::start("a");
    let svc = format!("[[service]]\nname = \"mounted\"\nvip = \"127.10.10.1:80\"\nendpoints = [\"{}\"]\n", a.addr);
    let weir = WeirProcess::start(WEIR, &steered_config(&cg, &svc), None);
    let status =
        weir_tests::testkit::client::get_once(weir.admin, "admin", "/steering", std::time::Duration::from_secs(5))
            .expect("GET /steering");
    assert!(
        status.body_string().contains(&*cg.path.to_string_lossy()),
        "weir does not report the cgroup under the second mount: {}",
        status.body_string()
    );

    let r = probe(PROBE, Some(&cg), &["--addr", "127.10.10.1:80", "--requests", "10", "--connections", "2"]);
    assert_eq!((r.num("ok"), r.num("via"), r.by_endpoint("a")), (10, 10, 10), "{:?}", r.json);
    assert!(
        r.json["peers"].as_object().is_some_and(|p| p.keys().all(|k| *k == weir.proxy.to_string())),
        "the connect was not rewritten to the proxy: {:?}",
        r.json["peers"]
    );
    assert_eq!(a.requests(), 10);
    // The same VIP from outside the cgroup is not steered (nothing listens on it).
    let outside = probe(PROBE, None, &["--addr", "127.10.10.1:80"]);
    assert_eq!(outside.num("ok"), 0, "a workload outside the cgroup was steered: {:?}", outside.json);
    drop(weir);
}
