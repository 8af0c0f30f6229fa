//! Running child commands with error messages that name the command line and its status.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{bail, Context, Result};

/// Prints one progress line to stderr.
pub fn step(msg: impl std::fmt::Display) {
    eprintln!("xtask: {msg}");
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The shared target directory (`<root>/target`); every cargo command we start uses it.
pub fn target_dir() -> PathBuf {
    repo_root().join("target")
}

/// A `cargo` command (the rustup proxy first on PATH, so `+nightly` works) in `dir`.
pub fn cargo(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).env("CARGO_TARGET_DIR", target_dir());
    cmd
}

/// `cargo +nightly` in `dir`.
pub fn cargo_nightly(dir: &Path) -> Command {
    let mut cmd = cargo(dir);
    cmd.arg("+nightly");
    cmd
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ',' | '@')
        });
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command as a shell line, with the environment it sets and its directory.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        // CARGO_TARGET_DIR is always the same; leave it out to keep lines readable.
        if key == "CARGO_TARGET_DIR" {
            continue;
        }
        if let Some(value) = value {
            let mut kv = OsString::from(key);
            kv.push("=");
            kv.push(value);
            parts.push(quote(&kv));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    let line = parts.join(" ");
    match cmd.get_current_dir() {
        Some(dir) => format!("`{line}` (in {})", dir.display()),
        None => format!("`{line}`"),
    }
}

fn check_status(cmd: &Command, status: ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("command {} failed: {status}", display(cmd));
    }
    Ok(())
}

/// Runs the command with inherited stdio; fails naming the command line and exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", display(cmd)))?;
    check_status(cmd, status)
}

/// Runs a cheap check command quietly: its stdout when it ran and succeeded, None otherwise
/// (not installed, failed). Never an error: a failing check just means "install it".
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    if let Some(uid) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_euid(&s))
    {
        return uid == 0;
    }
    probe(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// The effective uid from /proc/self/status (`Uid: real effective saved fs`).
pub fn parse_euid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether a program is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(program);
            p.is_file()
        })
    })
}

/// A command that runs `program` as root: directly when we are root, else through
/// `sudo env VAR=... program`, since sudo may drop the environment.
pub fn as_root(program: impl AsRef<OsStr>, env: &[(&str, &OsStr)]) -> Result<Command> {
    if is_root() {
        let mut cmd = Command::new(program);
        for (k, v) in env {
            cmd.env(k, v);
        }
        return Ok(cmd);
    }
    if !on_path("sudo") {
        bail!(
            "this step needs root and `sudo` is not installed: run it as root (e.g. `su -c '{}'`)",
            std::env::args().collect::<Vec<_>>().join(" ")
        );
    }
    let mut cmd = Command::new("sudo");
    cmd.arg("env");
    for (k, v) in env {
        let mut kv = OsString::from(k);
        kv.push("=");
        kv.push(v);
        cmd.arg(kv);
    }
    cmd.arg(program);
    Ok(cmd)
}

/// `$HOME`, needed to find `~/.cargo` and `~/.rustup`.
pub fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("reading $HOME (needed to find ~/.cargo and ~/.rustup)")
}

/// `$CARGO_HOME` or `~/.cargo`.
pub fn cargo_home() -> Result<PathBuf> {
    match std::env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h)),
        None => Ok(home()?.join(".cargo")),
    }
}

/// `$RUSTUP_HOME` or `~/.rustup`.
pub fn rustup_home() -> Result<PathBuf> {
    match std::env::var_os("RUSTUP_HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h)),
        None => Ok(home()?.join(".rustup")),
    }
}

/// Puts `dir` first on this process's PATH (children inherit it), removing other copies.
pub fn prepend_path(dir: &Path) -> Result<()> {
    let old = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&old).filter(|d| d != dir));
    let new =
        std::env::join_paths(dirs).with_context(|| format!("adding {} to PATH", dir.display()))?;
    // Single-threaded here: xtask starts no threads.
    std::env::set_var("PATH", new);
    Ok(())
}

/// A duration as `1m05s` / `12.3s`.
pub fn fmt_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euid_from_proc_status() {
        let status =
            "Name:\tcat\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_euid(status), Some(0));
        assert_eq!(parse_euid("Uid:\t0\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(parse_euid("Name:\tx\n"), None);
    }

    #[test]
    fn command_lines_are_quoted() {
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "build", "a b", "it's"])
            .env("PATH", "/usr/lib/llvm-22/bin:/bin")
            .current_dir("/tmp");
        assert_eq!(
            display(&cmd),
            r"`PATH=/usr/lib/llvm-22/bin:/bin cargo +nightly build 'a b' 'it'\''s'` (in /tmp)"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            fmt_duration(std::time::Duration::from_millis(12_345)),
            "12.3s"
        );
        assert_eq!(fmt_duration(std::time::Duration::from_secs(65)), "1m05s");
    }
}
