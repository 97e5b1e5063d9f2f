//! The packaging in deploy/ and the operator guide checked against the code: the Kubernetes
//! manifests (the fields that make weir work on a node and keep it confined), the example
//! configs, the systemd unit, the seccomp profile, and docs/OPERATING.md's references (config
//! fields and their defaults, metrics, access-log fields, error reasons), which must name
//! exactly what exists: a field, metric or reason added to the code and not to the guide fails
//! here, and so does one the guide names that the code does not have.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use weir::memory::MemoryLimit;
use weir_core::accesslog::{InlineStr, LineNames, LogRecord};
use weir_core::config::Config;
use weir_core::outcome::ErrorReason;
use weir_tests::Weir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// Every document of every deploy/kubernetes/*.yaml, with its file.
fn k8s_docs() -> Vec<(String, Yaml)> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    let mut docs = Vec::new();
    for file in files {
        let name = file.file_name().expect("file name").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).expect("read manifest");
        let mut n = 0;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{name}: not valid YAML: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
                n += 1;
            }
        }
        assert!(n > 0, "{name} holds no document");
    }
    docs
}

/// The value at `path` (mapping keys, or `[name]` for the element of a list whose `name` is
/// that), or `Null`.
fn at<'a>(v: &'a Yaml, path: &[&str]) -> &'a Yaml {
    static NULL: Yaml = Yaml::Null;
    let mut cur = v;
    for key in path {
        cur = match key.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
            Some(name) => cur
                .as_sequence()
                .and_then(|s| s.iter().find(|e| e.get("name").and_then(Yaml::as_str) == Some(name)))
                .unwrap_or(&NULL),
            None => cur.get(*key).unwrap_or(&NULL),
        };
    }
    cur
}

fn the<'a>(docs: &'a [(String, Yaml)], kind: &str) -> &'a Yaml {
    let found: Vec<_> = docs.iter().filter(|(_, d)| d.get("kind").and_then(Yaml::as_str) == Some(kind)).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} in deploy/kubernetes");
    &found[0].1
}

fn strings(v: &Yaml) -> BTreeSet<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|e| e.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// The config embedded in the ConfigMap, validated as `weir check` does.
fn configmap_config(docs: &[(String, Yaml)]) -> Config {
    let text = at(the(docs, "ConfigMap"), &["data", "weir.toml"]).as_str().expect("ConfigMap data weir.toml");
    Config::parse(text, Path::new("configmap")).unwrap_or_else(|e| panic!("the ConfigMap's weir.toml is invalid:\n{e}"))
}

/// The capabilities docs/OPERATING.md's requirements table lists, e.g. `CAP_BPF`.
fn documented_capabilities() -> BTreeSet<String> {
    table_rows(&read("docs/OPERATING.md"), "Requirements")
        .iter()
        .filter_map(|row| code(&row[0]))
        .filter(|c| c.starts_with("CAP_"))
        .map(String::from)
        .collect()
}

#[test]
fn every_manifest_is_yaml_with_kind_and_name() {
    for (file, doc) in k8s_docs() {
        for key in ["apiVersion", "kind"] {
            assert!(doc.get(key).and_then(Yaml::as_str).is_some(), "{file}: a document without {key}");
        }
        assert!(at(&doc, &["metadata", "name"]).as_str().is_some(), "{file}: a document without metadata.name");
    }
}

#[test]
fn the_configmap_holds_a_valid_config() {
    let config = configmap_config(&k8s_docs());
    assert!(!config.services.is_empty(), "the example config has no service");
    assert!(!config.steering.cgroups.is_empty(), "the example config steers nothing");
}

#[test]
fn the_daemonset_runs_weir_on_the_node_with_only_the_documented_capabilities() {
    let docs = k8s_docs();
    let ds = the(&docs, "DaemonSet");
    let pod = at(ds, &["spec", "template", "spec"]);
    assert_eq!(pod.get("hostNetwork").and_then(Yaml::as_bool), Some(true), "hostNetwork");
    assert_ne!(pod.get("hostPID").and_then(Yaml::as_bool), Some(true), "hostPID");
    assert_eq!(at(pod, &["dnsPolicy"]).as_str(), Some("ClusterFirstWithHostNet"));
    assert_eq!(at(pod, &["priorityClassName"]).as_str(), Some("system-node-critical"));
    let tolerates_all = at(pod, &["tolerations"]).as_sequence().is_some_and(|t| {
        t.iter().any(|t| t.get("operator").and_then(Yaml::as_str) == Some("Exists") && t.get("key").is_none())
    });
    assert!(tolerates_all, "weir must tolerate every taint");
    assert_eq!(at(ds, &["spec", "updateStrategy", "type"]).as_str(), Some("RollingUpdate"));
    // A node's weir is replaced by a takeover: the new pod beside the old one, never none.
    assert_eq!(
        at(ds, &["spec", "updateStrategy", "rollingUpdate", "maxUnavailable"]).as_u64(),
        Some(0),
        "a node must never be without its weir during an update"
    );
    assert_eq!(
        at(ds, &["spec", "updateStrategy", "rollingUpdate", "maxSurge"]).as_u64(),
        Some(1),
        "the new pod must run beside the old one to take it over"
    );

    for list in ["containers", "initContainers"] {
        for c in at(pod, &[list]).as_sequence().into_iter().flatten() {
            let name = at(c, &["name"]).as_str().unwrap_or("?");
            let sc = at(c, &["securityContext"]);
            assert_ne!(sc.get("privileged").and_then(Yaml::as_bool), Some(true), "{name} is privileged");
            assert_eq!(sc.get("allowPrivilegeEscalation").and_then(Yaml::as_bool), Some(false), "{name}");
            assert_eq!(
                strings(at(sc, &["capabilities", "drop"])),
                BTreeSet::from(["ALL".to_string()]),
                "{name} drops ALL"
            );
        }
    }
    let weir = at(pod, &["containers", "[weir]"]);
    let sc = at(weir, &["securityContext"]);
    let added: BTreeSet<String> =
        strings(at(sc, &["capabilities", "add"])).into_iter().map(|c| format!("CAP_{c}")).collect();
    assert_eq!(
        added,
        documented_capabilities(),
        "the weir container adds other capabilities than docs/OPERATING.md lists"
    );

    assert_eq!(at(sc, &["seccompProfile", "type"]).as_str(), Some("Localhost"));
    let profile = at(sc, &["seccompProfile", "localhostProfile"]).as_str().expect("localhostProfile");
    assert!(
        repo().join("deploy/kubernetes/seccomp").join(profile).is_file(),
        "the seccomp profile {profile} is not in deploy/kubernetes/seccomp/"
    );

    // The probes reach the loopback admin API from the kubelet, in the node's namespace.
    let config = configmap_config(&docs);
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = at(weir, &[probe, "httpGet"]);
        assert_eq!(at(get, &["path"]).as_str(), Some("/ready"), "{probe} path");
        assert_eq!(at(get, &["port"]).as_u64(), Some(15000), "{probe} port");
        assert_eq!(
            at(get, &["port"]).as_u64(),
            Some(u64::from(config.admin.listen.port())),
            "{probe} port is not [admin] listen"
        );
        assert_eq!(
            at(get, &["host"]).as_str().map(String::from),
            Some(config.admin.listen.ip().to_string()),
            "{probe} host is not [admin] listen's address"
        );
    }

    // SIGTERM drains for at most drain_timeout; the kubelet's SIGKILL must come later.
    let grace = at(pod, &["terminationGracePeriodSeconds"]).as_u64().expect("terminationGracePeriodSeconds");
    let drain = config.proxy.drain_timeout.as_secs();
    assert!(grace >= drain + 5, "terminationGracePeriodSeconds {grace} < drain_timeout {drain} s + 5 s");

    // The config file is the ConfigMap's, where weir is told to read it.
    let args: Vec<&str> = at(weir, &["args"]).as_sequence().expect("args").iter().filter_map(Yaml::as_str).collect();
    assert_eq!(args, ["run", "--config", "/etc/weir/weir.toml", "--takeover"]);
    // A hostPort would keep the new pod of an update off the node while the old one runs.
    let host_ports: Vec<u64> = at(weir, &["ports"])
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("hostPort").and_then(Yaml::as_u64))
        .collect();
    assert!(
        host_ports.is_empty(),
        "the weir container declares hostPorts {host_ports:?}: the surge pod cannot schedule"
    );
    let mount = |name: &str| at(weir, &["volumeMounts", &format!("[{name}]")]);
    let volume = |name: &str| at(pod, &["volumes", &format!("[{name}]")]);
    assert_eq!(at(mount("config"), &["mountPath"]).as_str(), Some("/etc/weir"));
    assert_eq!(
        at(volume("config"), &["configMap", "name"]).as_str(),
        at(the(&docs, "ConfigMap"), &["metadata", "name"]).as_str()
    );

    // The steered cgroups are under the (read-only) cgroup v2 root mount, and the pins under bpffs.
    let cg = mount("cgroup-root");
    assert_eq!(cg.get("readOnly").and_then(Yaml::as_bool), Some(true), "the cgroup root mount must be read-only");
    assert!(at(volume("cgroup-root"), &["hostPath", "path"]).as_str().is_some());
    let cg_path = at(cg, &["mountPath"]).as_str().expect("cgroup mountPath");
    for steered in &config.steering.cgroups {
        assert!(
            steered.starts_with(cg_path),
            "[steering] cgroups entry {} is not under the cgroup mount {cg_path}",
            steered.display()
        );
    }
    let bpffs = at(mount("bpffs"), &["mountPath"]).as_str().expect("bpffs mountPath");
    assert_eq!(at(volume("bpffs"), &["hostPath", "path"]).as_str(), Some("/sys/fs/bpf"));
    assert!(
        config.steering.pin_dir.starts_with(bpffs),
        "[steering] pin_dir {} is not under the bpffs mount {bpffs}",
        config.steering.pin_dir.display()
    );

    // Pods reach the proxy on a node address that the init container puts on the node.
    let init = at(pod, &["initContainers", "[node-address]"]);
    let script: String =
        at(init, &["command"]).as_sequence().expect("command").iter().filter_map(Yaml::as_str).collect();
    let addr = format!("{}/32", config.proxy.listen.ip());
    assert!(script.contains(&addr), "the node-address init container does not add [proxy] listen's address {addr}");
    assert!(
        !config.proxy.listen.ip().is_loopback(),
        "a pod's loopback is not the node's: [proxy] listen must be a node address"
    );
}

#[test]
fn the_daemonset_may_list_and_watch_services_endpointslices_and_httproutes_and_get_nodes_and_nothing_else() {
    let docs = k8s_docs();
    let config = configmap_config(&docs);
    assert!(config.kubernetes.enabled, "the ConfigMap does not enable Kubernetes discovery");
    let role = the(&docs, "ClusterRole");
    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for rule in at(role, &["rules"]).as_sequence().expect("rules") {
        for group in strings(at(rule, &["apiGroups"])) {
            for resource in strings(at(rule, &["resources"])) {
                for verb in strings(at(rule, &["verbs"])) {
                    granted.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    let want: BTreeSet<(String, String, String)> = [
        ("", "services", "list"),
        ("", "services", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("gateway.networking.k8s.io", "httproutes", "list"),
        ("gateway.networking.k8s.io", "httproutes", "watch"),
        ("", "nodes", "get"),
    ]
    .iter()
    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
    .collect();
    assert_eq!(granted, want, "the ClusterRole must allow exactly what discovery uses");
    let binding = the(&docs, "ClusterRoleBinding");
    assert_eq!(at(binding, &["roleRef", "name"]).as_str(), at(role, &["metadata", "name"]).as_str());
    let sa = the(&docs, "ServiceAccount");
    let subject = at(binding, &["subjects"]).as_sequence().and_then(|s| s.first()).expect("a subject");
    assert_eq!(at(subject, &["name"]).as_str(), at(sa, &["metadata", "name"]).as_str());
    assert_eq!(at(subject, &["namespace"]).as_str(), at(sa, &["metadata", "namespace"]).as_str());
    let pod = at(the(&docs, "DaemonSet"), &["spec", "template", "spec"]);
    assert_eq!(at(pod, &["serviceAccountName"]).as_str(), at(sa, &["metadata", "name"]).as_str());
    assert_ne!(at(pod, &["automountServiceAccountToken"]).as_bool(), Some(false), "the token is not mounted");
    let env = at(pod, &["containers", "[weir]", "env", "[NODE_NAME]"]);
    assert_eq!(at(env, &["valueFrom", "fieldRef", "fieldPath"]).as_str(), Some("spec.nodeName"));
}

/// `text` with its line breaks (and a YAML comment's `#` after them) read as single spaces, so a
/// phrase is found wherever the text wraps.
fn prose(text: &str) -> String {
    text.lines().map(|l| l.trim().trim_start_matches('#').trim()).collect::<Vec<_>>().join(" ")
}

/// Bytes of a Kubernetes memory quantity (`1Gi`, `320Mi`, `512M`, `1000000`).
fn quantity(q: &str) -> u64 {
    let units: [(&str, u64); 6] =
        [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("k", 1000), ("M", 1_000_000), ("G", 1_000_000_000)];
    let (number, unit) =
        units.iter().find_map(|(suffix, unit)| q.strip_suffix(suffix).map(|n| (n, *unit))).unwrap_or((q, 1));
    number.parse::<u64>().unwrap_or_else(|_| panic!("{q:?} is not a memory quantity this test reads")) * unit
}

#[test]
fn the_daemonsets_memory_holds_what_the_configmap_config_needs() {
    let docs = k8s_docs();
    let config = configmap_config(&docs);
    let weir = at(the(&docs, "DaemonSet"), &["spec", "template", "spec", "containers", "[weir]"]);
    let memory = |kind: &str| {
        quantity(at(weir, &["resources", kind, "memory"]).as_str().unwrap_or_else(|| panic!("no {kind}.memory")))
    };
    let (limit, request) = (memory("limits"), memory("requests"));
    let cgroup = Some(MemoryLimit { bytes: limit, file: "daemonset.yaml limits.memory".into() });
    // One worker per CPU unless the config fixes the count: every node size up to the largest
    // the limit holds must pass weir's own start-up check, and that largest size is the one
    // the manifest and the guide name.
    let sizes: Vec<usize> = match config.proxy.workers {
        0 => (1..=1024).collect(),
        n => vec![n],
    };
    let plans: Vec<_> =
        sizes.iter().map_while(|&w| weir::memory::plan(&config, w, cgroup.clone()).ok().map(|p| (w, p))).collect();
    let Some((largest, _)) = plans.last() else {
        panic!("limits.memory {limit} B does not hold weir with one worker for the ConfigMap's config")
    };
    if config.proxy.workers == 0 {
        let said = format!("up to {largest} CPUs");
        for (file, text) in [
            ("deploy/kubernetes/daemonset.yaml", read("deploy/kubernetes/daemonset.yaml")),
            ("docs/OPERATING.md", read("docs/OPERATING.md")),
        ] {
            assert!(prose(&text).contains(&said), "{file} does not say the memory limit holds nodes of {said:?}");
        }
        // At a common node size the rings are still useful (a few seconds of sink stall).
        let (_, at32) = plans.iter().find(|(w, _)| *w == 32).expect("32 workers fit");
        assert!(at32.ring_records.is_some_and(|n| n >= 16_384), "rings of {:?} records at 32 CPUs", at32.ring_records);
    }
    // The request covers what weir commits at start on any of those nodes.
    for (w, p) in &plans {
        let committed = p.process_bytes + p.rings_bytes;
        assert!(
            request >= committed,
            "requests.memory {request} B < {committed} B committed at start with {w} workers"
        );
    }
    assert!(request <= limit, "requests.memory above limits.memory");
}

#[test]
fn operating_md_gives_the_memory_formula_with_the_codes_numbers() {
    let doc = read("docs/OPERATING.md");
    let start = doc.find("\n## Memory\n").expect("docs/OPERATING.md has a `## Memory` section");
    let section = prose(&doc[start..doc[start + 1..].find("\n## ").map_or(doc.len(), |e| start + 1 + e)]);
    let mib = |b: u64| format!("{} MiB", b >> 20);
    for needed in [
        format!("ring_records × {} B", weir::memory::RECORD_BYTES),
        format!("workers × {}", mib(weir::memory::WORKER_BYTES)),
        format!("| process | {} |", mib(weir::memory::PROCESS_BYTES)),
        format!("a quarter of the limit, at least {}", mib(weir::memory::HEADROOM_MIN_BYTES)),
        format!("at most {} records", weir_core::config::DEFAULT_RING_RECORDS),
    ] {
        assert!(section.contains(&needed), "docs/OPERATING.md's Memory section does not say {needed:?}");
    }
    assert_eq!((weir::memory::HEADROOM_DIVISOR, weir::memory::RING_SHARE_DIVISOR), (4, 4), "the guide says a quarter");
}

#[test]
fn the_seccomp_profile_allows_io_uring_and_bpf_and_denies_the_rest() {
    let profile: Json =
        serde_json::from_str(&read("deploy/kubernetes/seccomp/weir-seccomp.json")).expect("seccomp JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let mut unconditional = BTreeSet::new();
    let mut any = BTreeSet::new();
    for rule in profile["syscalls"].as_array().expect("syscalls") {
        let names = rule["names"].as_array().expect("names").iter().filter_map(Json::as_str);
        for name in names {
            if rule["action"] == "SCMP_ACT_ALLOW" {
                any.insert(name.to_string());
                if rule.get("args").is_none() {
                    unconditional.insert(name.to_string());
                }
            }
        }
    }
    // Each of these was seen missing once, or is the reason for the profile: io_uring and bpf;
    // capset (weir drops capabilities after start); chmod (the pin directory is made 0700).
    for needed in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "bpf",
        "capset",
        "chmod",
        "epoll_wait",
        "accept4",
        "connect",
        "setsockopt",
        "sched_setaffinity",
        "inotify_add_watch",
        "rt_sigaction",
        "futex",
        "mmap",
        "execve",
    ] {
        assert!(unconditional.contains(needed), "the seccomp profile does not allow {needed}");
    }
    for needed in ["socket", "clone"] {
        assert!(any.contains(needed), "the seccomp profile does not allow {needed} at all");
    }
    for denied in
        ["mount", "umount2", "unshare", "setns", "ptrace", "kexec_load", "init_module", "perf_event_open", "keyctl"]
    {
        assert!(!any.contains(denied), "the seccomp profile allows {denied}");
    }
}

// ---------------------------------------------------------------------------------------------
// systemd

/// A unit file: section → key → values (a key may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) =
            line.split_once('=').unwrap_or_else(|| panic!("weir.service:{}: not key=value: {line}", i + 1));
        assert!(!section.is_empty(), "weir.service:{}: a key before any section", i + 1);
        assert!(!line.ends_with('\\'), "weir.service:{}: continuation lines are not parsed here", i + 1);
        out.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    out
}

#[test]
fn the_host_config_is_valid() {
    let config = Config::parse(&read("deploy/systemd/weir.toml"), Path::new("deploy/systemd/weir.toml"))
        .unwrap_or_else(|e| panic!("deploy/systemd/weir.toml is invalid:\n{e}"));
    assert!(!config.services.is_empty());
    assert!(
        config.services.iter().all(|s| s.listen.is_some()),
        "every host example service has its own listen address"
    );
}

#[test]
fn the_systemd_unit_starts_reloads_and_drains_weir() {
    let text = read("deploy/systemd/weir.service");
    let unit = parse_unit(&text);
    let service = unit.get("Service").expect("[Service] section");
    let one = |key: &str| -> &str {
        let values = service.get(key).unwrap_or_else(|| panic!("weir.service has no {key}"));
        values.last().expect("a value")
    };
    assert_eq!(one("Type"), "simple");
    // The weir a reload starts tells systemd it is the main process (MAINPID=).
    assert_eq!(one("NotifyAccess"), "all", "the weir started by ExecReload must be allowed to send MAINPID=");
    assert_eq!(one("ExecStart"), "/usr/local/bin/weir run --config /etc/weir/weir.toml");
    // `systemctl reload weir`: validate, then a takeover that returns once the new weir serves.
    assert_eq!(
        service.get("ExecReload").map(Vec::as_slice),
        Some(
            &[
                "/usr/local/bin/weir check --config /etc/weir/weir.toml".to_string(),
                "/usr/local/bin/weir run --config /etc/weir/weir.toml --takeover --detach".to_string(),
            ][..]
        ),
        "ExecReload must validate, then take over"
    );
    assert_eq!(one("KillSignal"), "SIGTERM");
    let host = Config::parse(&read("deploy/systemd/weir.toml"), Path::new("weir.toml")).expect("host config");
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().expect("TimeoutStopSec in seconds");
    let drain = host.proxy.drain_timeout.as_secs();
    assert!(stop >= 20 && stop > drain, "TimeoutStopSec {stop} does not cover the {drain} s drain");
    let bounding: BTreeSet<String> = one("CapabilityBoundingSet").split_whitespace().map(String::from).collect();
    assert_eq!(bounding, documented_capabilities(), "CapabilityBoundingSet differs from docs/OPERATING.md");
    assert_eq!(one("LimitMEMLOCK"), "infinity", "Linux < 5.11 charges BPF maps to RLIMIT_MEMLOCK");
    assert_eq!(one("NoNewPrivileges"), "yes");
    let filter = one("SystemCallFilter");
    for call in ["@system-service", "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(filter.split_whitespace().any(|c| c == call), "SystemCallFilter lacks {call}");
    }
    assert!(unit.get("Install").and_then(|s| s.get("WantedBy")).is_some(), "[Install] WantedBy");

    // systemd's own check, where systemd-analyze exists (CI images may not have it: then the
    // parse above is the check). `verify` refuses a unit whose ExecStart binary is missing, so
    // the copy it checks runs this build's weir; it reports unknown keys only as messages, so
    // any message about the unit fails the test.
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze not on PATH: weir.service was only parse-checked");
        return;
    };
    let dir = weir_tests::scratch_dir("systemd");
    let copy = dir.join("weir.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/weir ", &format!("{} ", env!("CARGO_BIN_EXE_weir-cli"))))
        .expect("write unit copy");
    let out = Command::new(analyze).arg("verify").arg(&copy).output().expect("run systemd-analyze");
    let messages = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = messages.lines().filter(|l| l.contains("weir.service")).collect();
    assert!(out.status.success() && about_unit.is_empty(), "systemd-analyze verify weir.service:\n{messages}");
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var("PATH").ok()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// docs/OPERATING.md

/// The rows (cells, trimmed) of the Markdown tables in the section under `## {heading}`,
/// without header and separator rows.
fn table_rows(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc
        .lines()
        .position(|l| l.trim() == format!("## {heading}"))
        .unwrap_or_else(|| panic!("docs/OPERATING.md has no `## {heading}` section"));
    let lines: Vec<&str> = doc.lines().skip(start + 1).take_while(|l| !l.starts_with("## ")).collect();
    let cells = |l: &str| -> Vec<String> {
        let inner = l.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split('|').map(|c| c.trim().to_string()).collect()
    };
    let is_separator = |l: &str| {
        l.trim().starts_with('|')
            && cells(l).iter().all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':'))
    };
    let mut rows = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let header = lines.get(i + 1).is_some_and(|next| is_separator(next));
        if line.trim().starts_with('|') && !is_separator(line) && !header {
            rows.push(cells(line));
        }
    }
    rows
}

/// The text of a cell that is one code span (`` `x` `` or ``` ``x`` ```).
fn code(cell: &str) -> Option<&str> {
    let cell = cell.trim();
    for ticks in ["``", "`"] {
        if let Some(inner) = cell.strip_prefix(ticks).and_then(|c| c.strip_suffix(ticks))
            && !inner.contains('`')
        {
            return Some(inner.trim());
        }
    }
    None
}

/// A config field by its documented name: `[proxy] listen`, `[[service]] name`,
/// `[service.timeouts] connect_ms`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Field {
    table: String,
    key: String,
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.table, self.key)
    }
}

impl Field {
    fn parse(s: &str) -> Option<Field> {
        let (table, key) = s.split_once(' ')?;
        (table.starts_with('[') && table.ends_with(']')).then(|| Field { table: table.into(), key: key.trim().into() })
    }

    /// A minimal TOML document that sets this field to `value` (other required fields may be
    /// missing: only "unknown field" matters to the caller).
    fn probe(&self, value: &str) -> String {
        let set = format!("{} = {value}\n", self.key);
        match self.table.as_str() {
            "[[service]]" => format!("[[service]]\n{set}"),
            t if t.starts_with("[[service.") => format!("[[service]]\n{t}\n{set}"),
            t if t.starts_with("[service.") => format!("[[service]]\n{t}\n{set}"),
            t => format!("{t}\n{set}"),
        }
    }
}

/// Config fields as written in a file, with their values, from a validated config serialised to
/// JSON: `Duration`s (`{secs, nanos}`) are the `_ms` fields, tagged enums (`{kind, target}`,
/// the access-log sink) are written as their TOML string, service sub-tables become
/// `[service.x]`. The config must have one service.
fn fields_of(config: &Config) -> BTreeMap<Field, Json> {
    fn is_duration(v: &Json) -> bool {
        v.as_object().is_some_and(|o| o.len() == 2 && o.contains_key("secs") && o.contains_key("nanos"))
    }
    fn leaf(table: &str, key: &str, v: &Json) -> (Field, Json) {
        if is_duration(v) {
            let ms = v["secs"].as_u64().expect("secs") * 1000 + v["nanos"].as_u64().expect("nanos") / 1_000_000;
            return (Field { table: table.into(), key: format!("{key}_ms") }, Json::from(ms));
        }
        if let Some(kind) = v.get("kind").and_then(Json::as_str) {
            let written = match v.get("target").and_then(Json::as_str) {
                Some(t) => format!("{kind}:{t}"),
                None => kind.to_string(),
            };
            return (Field { table: table.into(), key: key.into() }, Json::from(written));
        }
        (Field { table: table.into(), key: key.into() }, v.clone())
    }
    let json = serde_json::to_value(config).expect("config serialises");
    let mut out = BTreeMap::new();
    for (section, value) in json.as_object().expect("config object") {
        if section == "services" {
            let services = value.as_array().expect("services");
            assert_eq!(services.len(), 1, "fields_of wants a config with one service");
            for (key, v) in services[0].as_object().expect("service object") {
                if let (Some(items), true) = (v.as_array(), ["backend", "route"].contains(&key.as_str())) {
                    // `[[service.backend]]` and `[[service.route]]`: their sub-tables (a
                    // route's `match`, `timeouts`, `retry`, `request_headers`, `fault`) are
                    // dotted keys (`match.path_prefix`); a field any element sets counts (ALL_SET
                    // sets each optional one in some element: an unset one has no shape).
                    let table = format!("[[service.{key}]]");
                    for item in items {
                        for (k, v) in item.as_object().expect("table") {
                            let sub = v.is_object() && !is_duration(v) && k != "backends";
                            let leaves: Vec<(String, &Json)> = match v.as_object() {
                                Some(o) if sub => o.iter().map(|(k2, v2)| (format!("{k}.{k2}"), v2)).collect(),
                                _ => vec![(k.clone(), v)],
                            };
                            for (k, v) in leaves {
                                if !v.is_null() {
                                    let (f, v) = leaf(&table, &k, v);
                                    out.insert(f, v);
                                }
                            }
                        }
                    }
                } else if v.is_object() && !is_duration(v) && v.get("kind").is_none() {
                    let table = format!("[service.{key}]");
                    for (k, v) in v.as_object().expect("sub-table") {
                        let (f, v) = leaf(&table, k, v);
                        out.insert(f, v);
                    }
                } else {
                    let (f, v) = leaf("[[service]]", key, v);
                    out.insert(f, v);
                }
            }
        } else {
            for (key, v) in value.as_object().expect("section object") {
                let (f, v) = leaf(&format!("[{section}]"), key, v);
                out.insert(f, v);
            }
        }
    }
    out
}

/// A service with only its required fields: every other field at its default.
const MINIMAL: &str = "[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\n";

/// A service that also sets every optional field that defaults to unset, so that each of them
/// serialises as a value whose shape names it (an unset `Option<Duration>` would not say it is
/// an `_ms` field).
const ALL_SET: &str = "[proxy]\nmax_connections = 5000\n[[service]]\nname = \"a\"\nvip = \"127.10.0.1:80\"\nlisten = \"127.0.0.1:16001\"\n\
                       [service.timeouts]\nattempt_ms = 1000\n\
                       [service.rate_limit]\nrequests_per_second = 100\nburst = 10\n\
                       [service.health_check]\npath = \"/healthz\"\n\
                       [[service.backend]]\nname = \"b\"\nendpoints = [\"127.0.0.1:18081\"]\n\
                       [[service.route]]\nmatch = { path_prefix = \"/p/\", method = \"GET\" }\nbackends = { b = 1 }\n\
                       timeouts = { request_ms = 2000, attempt_ms = 500 }\n\
                       retry = { attempts = 2, backoff_base_ms = 10, backoff_max_ms = 20, on_server_error = false, \
                       on_rate_limited = true, on_grpc_status = [\"unavailable\"] }\n\
                       [[service.route]]\nmatch = { path_exact = \"/e\" }\nbackends = { b = 1 }\n\
                       [[service.route]]\nmatch = { path_regex = \"/r/.*\" }\nbackends = { b = 1 }\n\
                       [access_log]\nring_records = 1024\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\n\
                       [kubernetes]\nkubeconfig = \"/etc/weir/kubeconfig\"\nnode_name = \"node-a\"\n";

/// The configuration reference table: field → (default cell, row).
fn documented_fields() -> BTreeMap<Field, String> {
    let mut out = BTreeMap::new();
    for row in table_rows(&read("docs/OPERATING.md"), "Configuration reference") {
        let name = code(&row[0])
            .unwrap_or_else(|| panic!("configuration reference: first cell is not `[table] field`: {row:?}"));
        let field =
            Field::parse(name).unwrap_or_else(|| panic!("configuration reference: {name:?} is not `[table] field`"));
        assert!(row.len() >= 3, "configuration reference: {field}: no default column");
        assert!(out.insert(field.clone(), row[1].clone()).is_none(), "configuration reference: {field} twice");
    }
    assert!(!out.is_empty(), "the configuration reference lists no field");
    out
}

#[test]
fn operating_md_documents_every_config_field_and_no_other() {
    let documented = documented_fields();
    let full = Config::parse(ALL_SET, Path::new("all-set")).expect("ALL_SET is valid");
    let existing = fields_of(&full);
    let nulls: Vec<String> = existing.iter().filter(|(_, v)| v.is_null()).map(|(f, _)| f.to_string()).collect();
    assert!(nulls.is_empty(), "set these optional fields in ALL_SET so their shape shows: {nulls:?}");

    let existing_names: BTreeSet<&Field> = existing.keys().collect();
    let documented_names: BTreeSet<&Field> = documented.keys().collect();
    let undocumented: Vec<String> = existing_names.difference(&documented_names).map(|f| f.to_string()).collect();
    let unknown: Vec<String> = documented_names.difference(&existing_names).map(|f| f.to_string()).collect();
    assert!(
        undocumented.is_empty(),
        "config fields missing from docs/OPERATING.md's configuration reference: {undocumented:?}"
    );
    assert!(unknown.is_empty(), "docs/OPERATING.md documents config fields that do not exist: {unknown:?}");

    // The same from the parser's side: every raw table denies unknown fields.
    for field in documented.keys() {
        if let Err(e) = Config::parse(&field.probe("1"), Path::new("probe")) {
            assert!(!e.to_string().contains("unknown field"), "the parser does not know {field}: {e}");
        }
    }
    assert!(
        Config::parse(&Field::parse("[proxy] no_such_field").expect("field").probe("1"), Path::new("probe"))
            .is_err_and(|e| e.to_string().contains("unknown field")),
        "the probe cannot tell an unknown field"
    );
}

#[test]
fn operating_md_gives_every_config_field_its_real_default() {
    let defaults = fields_of(&Config::parse(MINIMAL, Path::new("minimal")).expect("MINIMAL is valid"));
    for (field, cell) in documented_fields() {
        let Some(actual) = defaults.get(&field) else { continue }; // the test above reports it
        match cell.as_str() {
            "—" => {
                // Required: the minimal service sets it, and the config is invalid without it.
                let without: String = MINIMAL
                    .lines()
                    .filter(|l| !l.starts_with(&format!("{} =", field.key)))
                    .map(|l| format!("{l}\n"))
                    .collect();
                assert_ne!(without, MINIMAL, "{field} is documented as required but MINIMAL does not set it");
                let err = Config::parse(&without, Path::new("minimal")).expect_err("a required field is missing");
                assert!(
                    err.to_string().contains(&format!("missing field `{}`", field.key)),
                    "{field} is not required: {err}"
                );
            }
            "unset" => assert!(actual.is_null(), "{field}: documented unset, default is {actual}"),
            _ => {
                let literal = code(&cell)
                    .unwrap_or_else(|| panic!("{field}: default {cell:?} is not a code span, `—` or `unset`"));
                let doc: toml::Table = toml::from_str(&format!("v = {literal}"))
                    .unwrap_or_else(|e| panic!("{field}: default {literal} is not a TOML value: {e}"));
                let doc = serde_json::to_value(&doc["v"]).expect("TOML value to JSON");
                let same = match (doc.as_f64(), actual.as_f64()) {
                    (Some(a), Some(b)) => a == b,
                    _ => doc == *actual,
                };
                assert!(same, "{field}: docs/OPERATING.md says the default is {literal}, the code's is {actual}");
            }
        }
    }
}

#[test]
fn operating_md_documents_every_metric_with_its_type() {
    let documented: BTreeMap<String, String> = table_rows(&read("docs/OPERATING.md"), "Metrics reference")
        .into_iter()
        .filter_map(|row| Some((code(&row[0])?.to_string(), row.get(1)?.clone())))
        .filter(|(name, _)| name.starts_with("weir_"))
        .collect();
    let weir = Weir::start(&format!(
        "[proxy]\nlisten = \"@PROXY@\"\n[admin]\nlisten = \"@ADMIN@\"\n[access_log]\nsink = \"off\"\n{MINIMAL}"
    ));
    // Discovery's families, exported only with [kubernetes] enabled: from a weir that watches
    // the test API server.
    let api = weir_tests::kube_api::FakeApi::start();
    let kubeconfig = api.kubeconfig(&weir_tests::scratch_dir("deploy-kubeconfig"));
    let discovering = Weir::start(&format!(
        "[proxy]\nlisten = \"@PROXY@\"\n[admin]\nlisten = \"@ADMIN@\"\n[access_log]\nsink = \"off\"\n\
         [kubernetes]\nenabled = true\nkubeconfig = \"{}\"\n{MINIMAL}",
        kubeconfig.display()
    ));
    let exported: BTreeMap<String, String> = (weir.metrics() + &discovering.metrics())
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect();
    for (name, kind) in &exported {
        assert_eq!(
            documented.get(name),
            Some(kind),
            "docs/OPERATING.md's metrics reference lacks {name} ({kind}) or gives another type"
        );
    }
    // Exported only while steering is attached (root tier): documented, not seen here.
    let steering_only = ["weir_steering_kernel_events_total"];
    for name in documented.keys() {
        assert!(
            exported.contains_key(name) || steering_only.contains(&name.as_str()),
            "docs/OPERATING.md documents {name}, which weir does not export"
        );
    }
}

#[test]
fn operating_md_documents_every_access_log_field() {
    let documented: BTreeSet<String> = table_rows(&read("docs/OPERATING.md"), "Access log")
        .iter()
        .filter_map(|row| code(&row[0]).map(String::from))
        .collect();
    // A record with every optional part present: a truncated path and a gap before it.
    let record = LogRecord {
        start_unix_us: 1_764_000_000_000_000,
        service: InlineStr::new(b"a"),
        endpoint: Some("127.0.0.1:18081".parse().expect("addr")),
        client: Some("127.0.0.1:40000".parse().expect("addr")),
        method: InlineStr::new(b"GET"),
        authority: InlineStr::new(b"a"),
        path: InlineStr::new(&[b'x'; 1000]),
        status: 503,
        error: Some(ErrorReason::ConnectFailure),
        attempts: 3,
        bytes_in: 1,
        bytes_out: 2,
        duration_us: 3,
        upstream_us: 4,
        worker: 1,
        protocol: weir_core::accesslog::LogProtocol::Http2,
        grpc_status: Some(14),
        route: 1,
        backend: 0,
        source_cgroup_id: 4242,
    };
    let mut line = Vec::new();
    let names = LineNames { backend: Some("canary"), source_workload: Some("shop/web") };
    record.write_json(7, names, &mut line);
    let json: Json = serde_json::from_slice(&line).expect("an access-log line is JSON");
    let written: BTreeSet<String> = json.as_object().expect("object").keys().cloned().collect();
    assert_eq!(documented, written, "docs/OPERATING.md's access-log fields differ from what weir writes");
}

#[test]
fn operating_md_documents_every_error_reason_with_its_status() {
    let documented: BTreeMap<String, u16> = table_rows(&read("docs/OPERATING.md"), "Failure behaviour")
        .into_iter()
        .filter_map(|row| Some((code(&row[0])?.to_string(), row.get(1)?.parse().ok()?)))
        .collect();
    let actual: BTreeMap<String, u16> = ErrorReason::ALL.iter().map(|r| (r.as_str().to_string(), r.status())).collect();
    assert_eq!(documented, actual, "docs/OPERATING.md's x-weir-error table differs from ErrorReason");
}

#[test]
fn operating_md_documents_every_admin_endpoint_and_each_answers() {
    let documented: BTreeSet<String> = table_rows(&read("docs/OPERATING.md"), "Admin API")
        .iter()
        .filter_map(|row| code(&row[0]).map(String::from))
        .filter(|p| p.starts_with('/'))
        .collect();
    let weir = Weir::start(&format!(
        "[proxy]\nlisten = \"@PROXY@\"\n[admin]\nlisten = \"@ADMIN@\"\n[access_log]\nsink = \"off\"\n{MINIMAL}"
    ));
    // The 404 lists what the admin server routes.
    let (status, body) = weir.admin_get("/no-such-path");
    assert_eq!(status, 404);
    let routed: BTreeSet<String> = body.split_whitespace().filter(|w| w.starts_with('/')).map(String::from).collect();
    assert_eq!(documented, routed, "docs/OPERATING.md's Admin API table differs from what weir serves");
    for path in &documented {
        assert_eq!(weir.admin_get(path).0, 200, "{path}");
    }
}
