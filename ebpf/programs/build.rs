//! Rebuild the kernel programs when the linker that produced them changes.
use which::which;

fn main() {
    // bpf-linker is installed by `cargo xtask setup`; relinking with a new one must rebuild.
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
