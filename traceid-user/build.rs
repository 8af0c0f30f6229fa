//! Embeds the kernel object built by `cargo xtask build-ebpf`.
//!
//! When it has not been built (a plain `cargo test` of the pure engine), an empty object is
//! embedded instead and the agent says how to build it when asked to load programs.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let built = env::var_os("TRACEID_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpfel-unknown-none/release/traceid-ebpf"));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("traceid-ebpf.o");
    println!("cargo:rerun-if-env-changed=TRACEID_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", built.display());
    match fs::read(&built) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => fs::write(&out, []).unwrap(),
    }
}
