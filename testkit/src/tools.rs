//! The third-party clients and servers the tests drive weir with (gRPC in Python and Node,
//! HTTP/2 frames from Python's `h2`, WebSocket): where `cargo xtask setup` installs them (a
//! virtualenv and a node_modules under the workspace's target directory, pinned versions), and
//! how a test finds them. Must not: install anything itself (tests never reach the network).

use std::path::PathBuf;

/// Python packages for the tests, pinned.
pub const PYTHON_PACKAGES: &[&str] = &["grpcio==1.85.3", "h2==4.4.1", "websockets==17.4"];

/// npm packages for the tests, pinned.
pub const NODE_PACKAGES: &[&str] = &["@grpc/grpc-js@1.14.7"];

/// Where the test tools live: `target/test-tools`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools")
}

/// The virtualenv holding [`PYTHON_PACKAGES`].
pub fn venv() -> PathBuf {
    dir().join("venv")
}

/// The directory `npm install --prefix` fills with [`NODE_PACKAGES`].
pub fn node_prefix() -> PathBuf {
    dir().join("node")
}

/// The virtualenv's Python; panics with the fix when `cargo xtask setup` has not installed it.
pub fn python() -> PathBuf {
    let p = venv().join("bin/python");
    assert!(p.is_file(), "{} is missing: run `cargo xtask setup` (it installs {PYTHON_PACKAGES:?})", p.display());
    p
}

/// `NODE_PATH` for scripts that `require` [`NODE_PACKAGES`]; panics with the fix when missing.
pub fn node_path() -> PathBuf {
    let p = node_prefix().join("node_modules");
    assert!(
        p.join("@grpc/grpc-js/package.json").is_file(),
        "{} is missing @grpc/grpc-js: run `cargo xtask setup` (it installs {NODE_PACKAGES:?})",
        p.display()
    );
    p
}
