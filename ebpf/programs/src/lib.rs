//! Host-side library target of the kernel programs crate.
//!
//! It exists so that `userspace/weir` can name this crate as a build-dependency (which makes
//! cargo rebuild the loader when the programs change); the programs themselves are the binary
//! target, compiled for `bpfel-unknown-none` by aya-build.
#![no_std]
