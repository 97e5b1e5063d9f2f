//! Compiles the kernel programs (ebpf/programs) for bpfel-unknown-none with aya-build, so that
//! a plain `cargo build` rebuilds them when their source changes. Needs the nightly toolchain
//! with rust-src and bpf-linker on PATH: `cargo xtask setup` installs both.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../../ebpf/programs");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "weir-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src and \
         bpf-linker) and try again",
    )
}
