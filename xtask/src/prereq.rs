//! Build and test prerequisites, checked cheaply on every run and installed on first use.
//!
//! Each install prints one line first saying what it installs and why.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context, Result};

use crate::util::{self, probe, run, step};

/// The bpf-linker release that links the kernel programs (built against LLVM 22, rustc's LLVM).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major version bpf-linker is built against (Debian packages `llvm-22-dev`...).
pub const LLVM_MAJOR: u32 = 22;
/// Debian packages bpf-linker's build needs.
const BPF_LINKER_BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Debian packages the integration tests drive (real peers: servers, clients, runtimes).
pub const INTEGRATION_PACKAGES: &[&str] = &[
    "nginx-light",
    "curl",
    "iproute2",
    "python3-flask",
    "python3-requests",
    "golang-go",
    // Gin, for the Go middle of the chain tests (tests/services/chain/middle.go).
    "golang-github-gin-gonic-gin-dev",
    "ca-certificates",
    "openssl",
    // promtool (`promtool check metrics` on the /metrics exposition, tests/metrics.rs).
    "prometheus",
    // The reference OpenMetrics parser, to check the exposition with exemplars.
    "python3-prometheus-client",
    // Real containers for the identity tests (tests/identity.rs): runc runs bundles whose
    // root holds a static busybox (httpd, wget, sh).
    "runc",
    "busybox-static",
    // A server that accepts the h2c upgrade (tests/h2c.rs, tests/services/h2c/app.py).
    "python3-hypercorn",
];

/// Debian packages the unit tests need: the Go inspection tests (traceid-user/src/golang)
/// build real Go programs to read, and rewrite their DWARF sections with objcopy.
pub const UNIT_TEST_PACKAGES: &[&str] = &["golang-go", "binutils"];

/// Python packages the integration tests need beyond Debian's (`python3 -m pip install`).
pub const PIP_PACKAGES: &[&str] = &[
    // Validates deploy/kubernetes/*.yaml against bundled Kubernetes schemas, offline.
    "kubernetes-validate",
    // gRPC server and clients (tests/h2.rs, tests/services/grpc).
    "grpcio",
    // The gRPC chain (tests/grpc_chain.rs): W3C context through the OpenTelemetry
    // instrumentation, as services really propagate it.
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-grpc",
];

/// `apt-get update` runs at most once per xtask run, and only when something is installed.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Everything `build-ebpf` needs: nightly + rust-src, bpf-linker 0.13.0 (and `~/.cargo/bin`
/// first on PATH so cargo and the linker are found).
pub fn ensure_build() -> Result<()> {
    ensure_cargo_bin_on_path()?;
    ensure_nightly()?;
    ensure_component(
        Some("nightly"),
        "rust-src",
        "-Z build-std=core rebuilds core for bpfel-unknown-none",
    )?;
    ensure_bpf_linker()?;
    Ok(())
}

/// `cargo fuzz` (cargo-fuzz), which builds the fuzz targets with sanitizers on nightly and runs
/// them with libFuzzer; installed with `cargo install` when missing.
pub fn ensure_cargo_fuzz() -> Result<()> {
    ensure_cargo_bin_on_path()?;
    ensure_nightly()?;
    if probe(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    step("installing cargo-fuzz (builds and runs the fuzz targets with libFuzzer) — a few minutes, once");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz (`cargo install cargo-fuzz --locked`)")
}

/// Puts `$CARGO_HOME/bin` (rustup's proxies, cargo-installed tools) first on PATH, so that
/// `cargo +nightly` reaches the rustup proxy and a bpf-linker installed there is found.
pub fn ensure_cargo_bin_on_path() -> Result<()> {
    let bin = util::cargo_home()?.join("bin");
    if bin.is_dir() {
        util::prepend_path(&bin)?;
    }
    Ok(())
}

fn rustup() -> Result<Command> {
    if !util::on_path("rustup") {
        bail!(
            "`rustup` is not on PATH: it is needed to install the nightly toolchain and its \
             components (install rustup from https://rustup.rs, then `. \"$HOME/.cargo/env\"`)"
        );
    }
    Ok(Command::new("rustup"))
}

/// The nightly toolchain (the kernel crate needs `-Z build-std`).
pub fn ensure_nightly() -> Result<()> {
    let list = probe(rustup()?.args(["toolchain", "list"])).unwrap_or_default();
    if has_nightly_toolchain(&list) {
        return Ok(());
    }
    step("installing the nightly Rust toolchain (the kernel programs build with -Z build-std) — about a minute, once");
    run(rustup()?.args(["toolchain", "install", "nightly", "--profile", "minimal"]))
        .context("installing the nightly toolchain")
}

/// A rustup component of `toolchain` (None: the toolchain active in the workspace).
pub fn ensure_component(toolchain: Option<&str>, component: &str, why: &str) -> Result<()> {
    let mut list = rustup()?;
    list.current_dir(util::repo_root())
        .args(["component", "list", "--installed"]);
    if let Some(tc) = toolchain {
        list.args(["--toolchain", tc]);
    }
    let installed = probe(&mut list).unwrap_or_default();
    let rustc_vv = probe(Command::new("rustc").args(["-vV"])).unwrap_or_default();
    if has_component(&installed, component, parse_rustc_host(&rustc_vv)) {
        return Ok(());
    }
    let tc_name = toolchain.unwrap_or("the active toolchain");
    step(format!(
        "installing rustup component {component} for {tc_name} ({why}) — once"
    ));
    let mut add = rustup()?;
    add.current_dir(util::repo_root())
        .args(["component", "add", component]);
    if let Some(tc) = toolchain {
        add.args(["--toolchain", tc]);
    }
    run(&mut add).with_context(|| format!("installing rustup component {component} for {tc_name}"))
}

/// `bpf-linker` 0.13.0 on PATH or in `~/.cargo/bin`; else built with `cargo install` against
/// Debian's LLVM 22. Leaves the directory of the right linker first on PATH.
pub fn ensure_bpf_linker() -> Result<()> {
    let cargo_bin = util::cargo_home()?.join("bin");
    let mut found = None;
    for candidate in [PathBuf::from("bpf-linker"), cargo_bin.join("bpf-linker")] {
        let version = probe(Command::new(&candidate).arg("--version"))
            .and_then(|out| parse_bpf_linker_version(&out).map(str::to_owned));
        match version.as_deref() {
            Some(BPF_LINKER_VERSION) => {
                if candidate.is_absolute() {
                    util::prepend_path(&cargo_bin)?;
                }
                return Ok(());
            }
            Some(other) => found = found.or(Some(other.to_owned())),
            None => {}
        }
    }
    let reason = match &found {
        Some(v) => format!("found {v}, need {BPF_LINKER_VERSION}"),
        None => "links the kernel programs".to_owned(),
    };
    ensure_debs(
        BPF_LINKER_BUILD_PACKAGES,
        &format!("LLVM {LLVM_MAJOR} development files, to build bpf-linker"),
    )?;
    let llvm_bin = PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}/bin"));
    if !llvm_bin.join("llvm-config").is_file() {
        bail!(
            "installing bpf-linker: {} is missing after installing {}; bpf-linker needs \
             llvm-config {LLVM_MAJOR} first on PATH",
            llvm_bin.join("llvm-config").display(),
            BPF_LINKER_BUILD_PACKAGES.join(" ")
        );
    }
    step(format!(
        "installing bpf-linker {BPF_LINKER_VERSION} (built against LLVM {LLVM_MAJOR}; {reason}) — about a minute, once"
    ));
    let path = std::env::join_paths(std::iter::once(llvm_bin.clone()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .context("building PATH with LLVM's bin directory first")?;
    let install = |locked: bool| {
        let mut cmd = Command::new("cargo");
        cmd.env("PATH", &path).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ]);
        if locked {
            cmd.arg("--locked");
        }
        run(&mut cmd)
    };
    if let Err(err) = install(true) {
        step(format!(
            "bpf-linker with --locked failed ({err:#}); retrying without --locked"
        ));
        install(false).context("installing bpf-linker")?;
    }
    util::prepend_path(&cargo_bin)?;
    let out = probe(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if parse_bpf_linker_version(&out) != Some(BPF_LINKER_VERSION) {
        bail!(
            "installing bpf-linker: after `cargo install`, `bpf-linker --version` printed {:?}, \
             expected bpf-linker {BPF_LINKER_VERSION}",
            out.trim()
        );
    }
    Ok(())
}

/// The Debian packages and Python packages the integration tests use.
pub fn ensure_integration() -> Result<()> {
    ensure_debs(
        INTEGRATION_PACKAGES,
        "peers the integration tests run against",
    )?;
    ensure_pip(PIP_PACKAGES)?;
    ensure_node_modules()?;
    Ok(())
}

/// The npm project of the Node gRPC client (tests/grpc_node.rs), relative to the repository.
const GRPC_NODE_DIR: &str = "tests/services/grpc-node";

/// Node and npm (Debian's, when neither is on PATH), then the Node gRPC client's packages
/// (`npm ci`, from its lock file) when its `node_modules` is missing.
fn ensure_node_modules() -> Result<()> {
    if !util::on_path("node") || !util::on_path("npm") {
        ensure_debs(&["nodejs", "npm"], "Node, for the @grpc/grpc-js client")?;
    }
    let dir = util::repo_root().join(GRPC_NODE_DIR);
    if dir.join("node_modules").is_dir() {
        return Ok(());
    }
    step(format!(
        "installing @grpc/grpc-js in {GRPC_NODE_DIR} (npm ci: the Node gRPC client of the integration tests) — once"
    ));
    let mut cmd = Command::new("npm");
    cmd.current_dir(&dir)
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"]);
    run(&mut cmd).with_context(|| format!("installing the npm packages of {GRPC_NODE_DIR}"))
}

fn deb_installed(package: &str) -> bool {
    probe(Command::new("dpkg-query").args(["-W", "-f", "${Status}", package]))
        .is_some_and(|s| dpkg_status_installed(&s))
}

/// Installs the missing ones of `packages` in one `apt-get install`.
pub fn ensure_debs(packages: &[&str], why: &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::on_path("apt-get") {
        bail!(
            "installing {}: apt-get is not available (this recipe expects Debian 12); install them by hand",
            missing.join(" ")
        );
    }
    step(format!(
        "installing Debian packages {} ({why}) — once",
        missing.join(" ")
    ));
    apt_update()?;
    let noninteractive: &OsStr = OsStr::new("noninteractive");
    let mut cmd = util::as_root("apt-get", &[("DEBIAN_FRONTEND", noninteractive)])?;
    cmd.args(["install", "-y"]).args(&missing);
    run(&mut cmd).with_context(|| format!("installing Debian packages {}", missing.join(" ")))
}

fn apt_update() -> Result<()> {
    if APT_UPDATED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut cmd = util::as_root("apt-get", &[])?;
    cmd.arg("update");
    run(&mut cmd).context("refreshing the apt package lists (apt-get update)")?;
    APT_UPDATED.store(true, Ordering::Relaxed);
    Ok(())
}

/// The Python the Debian packages above install into (`/usr/bin/python3`), so pip packages
/// land next to python3-flask; `python3` from PATH when it is absent (e.g. pyenv shadows it).
fn system_python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Installs the missing ones of `packages` with `python3 -m pip install --quiet`.
pub fn ensure_pip(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    let python = system_python();
    if probe(Command::new(python).args(["-m", "pip", "--version"])).is_none() {
        ensure_debs(&["python3-pip"], "pip, to install Python test packages")?;
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| probe(Command::new(python).args(["-m", "pip", "show", "--quiet", p])).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(format!(
        "installing Python packages {} for {python} (the integration tests use them) — once",
        missing.join(" ")
    ));
    let mut cmd = util::as_root(python, &[])?;
    // Debian 12's Python is "externally managed" (PEP 668): pip refuses without this flag.
    cmd.args(["-m", "pip", "install", "--quiet", "--break-system-packages"])
        .args(&missing);
    run(&mut cmd).with_context(|| format!("installing Python packages {}", missing.join(" ")))
}

/// Whether `rustup toolchain list` shows the nightly channel (`nightly-<host>`; dated
/// nightlies like `nightly-2024-05-01-<host>` are not what `+nightly` selects).
pub fn has_nightly_toolchain(list: &str) -> bool {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| match name.strip_prefix("nightly") {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('-')
                .and_then(|r| r.chars().next())
                .is_some_and(|c| !c.is_ascii_digit()),
            None => false,
        })
}

/// Whether `rustup component list --installed` shows `component` (`rust-src`, or
/// `clippy-<host>` for `clippy`). Without the host triple, any `component-<triple>`.
pub fn has_component(list: &str, component: &str, host: Option<&str>) -> bool {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| match name.strip_prefix(component) {
            Some("") => true,
            Some(rest) => rest.strip_prefix('-').is_some_and(|triple| match host {
                Some(host) => triple == host,
                // At least a triple's two dashes, so that `rust` does not match `rust-src`.
                None => triple.matches('-').count() >= 2,
            }),
            None => false,
        })
}

/// The host triple from `rustc -vV` (`host: x86_64-unknown-linux-gnu`).
pub fn parse_rustc_host(verbose_version: &str) -> Option<&str> {
    verbose_version
        .lines()
        .find_map(|l| l.strip_prefix("host:"))
        .map(str::trim)
        .filter(|h| !h.is_empty())
}

/// The version from `bpf-linker --version` (`bpf-linker 0.13.0`).
pub fn parse_bpf_linker_version(out: &str) -> Option<&str> {
    let mut words = out.lines().next()?.split_whitespace();
    let name = words.next()?;
    if Path::new(name).file_name()? != "bpf-linker" {
        return None;
    }
    words.next()
}

/// Whether `dpkg-query -W -f='${Status}'` says the package is installed.
pub fn dpkg_status_installed(status: &str) -> bool {
    status.contains("install ok installed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_linker_version() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0\n"),
            Some("0.13.0")
        );
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.9.13"),
            Some("0.9.13")
        );
        assert_eq!(
            parse_bpf_linker_version("/root/.cargo/bin/bpf-linker 0.13.0\n"),
            Some("0.13.0")
        );
        assert_eq!(parse_bpf_linker_version(""), None);
        assert_eq!(parse_bpf_linker_version("bpf-linker"), None);
        assert_eq!(parse_bpf_linker_version("error: something\n"), None);
        assert_ne!(
            parse_bpf_linker_version("bpf-linker 0.13.1"),
            Some(BPF_LINKER_VERSION)
        );
    }

    #[test]
    fn nightly_toolchain() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly_toolchain(list));
        assert!(!has_nightly_toolchain(
            "stable-x86_64-unknown-linux-gnu (default)\n"
        ));
        assert!(!has_nightly_toolchain(
            "nightly-2024-05-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(has_nightly_toolchain(
            "nightly-aarch64-unknown-linux-gnu (default)\n"
        ));
        assert!(!has_nightly_toolchain("no installed toolchains\n"));
        assert!(!has_nightly_toolchain(""));
    }

    #[test]
    fn components() {
        let list = "cargo-x86_64-unknown-linux-gnu\n\
                    clippy-x86_64-unknown-linux-gnu\n\
                    rust-src\n\
                    rust-std-x86_64-unknown-linux-gnu\n\
                    rustc-x86_64-unknown-linux-gnu\n";
        let host = Some("x86_64-unknown-linux-gnu");
        for host in [host, None] {
            assert!(has_component(list, "rust-src", host));
            assert!(has_component(list, "clippy", host));
            assert!(!has_component(list, "rustfmt", host));
            assert!(!has_component(
                "rust-std-x86_64-unknown-linux-gnu\n",
                "rust-src",
                host
            ));
            assert!(has_component(
                "rustfmt-x86_64-unknown-linux-gnu\n",
                "rustfmt",
                host
            ));
            assert!(!has_component("", "rust-src", host));
        }
        assert!(!has_component(list, "rust", host));
        assert!(!has_component(
            "clippy-aarch64-unknown-linux-gnu\n",
            "clippy",
            host
        ));
    }

    #[test]
    fn rustc_host() {
        let vv = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\n\
                  host: x86_64-unknown-linux-gnu\nrelease: 1.95.0\nLLVM version: 22.1.0\n";
        assert_eq!(parse_rustc_host(vv), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(parse_rustc_host("rustc 1.95.0\n"), None);
    }

    #[test]
    fn dpkg_status() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed("unknown ok not-installed"));
        assert!(!dpkg_status_installed(""));
    }

    #[test]
    fn package_lists() {
        for p in INTEGRATION_PACKAGES.iter().chain(BPF_LINKER_BUILD_PACKAGES) {
            assert!(!p.is_empty() && !p.contains(char::is_whitespace), "{p:?}");
        }
        assert!(BPF_LINKER_BUILD_PACKAGES
            .iter()
            .any(|p| *p == format!("llvm-{LLVM_MAJOR}-dev")));
    }
}
