//! `cargo xtask bench-helper`: processes that hold idle connections for the memory
//! measurement.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::Args;

/// `cargo xtask bench-helper` (hidden): holds idle connections for the memory measurement in a
/// process of its own, since one process may not open more than its open-file limit (20,000
/// on these machines, and raising the hard limit needs CAP_SYS_RESOURCE).
#[derive(Args, Debug, Clone)]
pub struct HelperArgs {
    /// `listen` (accept `count` connections on a new port) or `connect` (open `count`
    /// connections to `addr`).
    mode: String,
    #[arg(long)]
    count: u64,
    #[arg(long)]
    addr: Option<SocketAddr>,
}

/// Prints `port P` (listen), then `done N` once `count` connections are held (or as many as
/// could be), then holds them until stdin closes.
pub fn helper(h: &HelperArgs) -> Result<()> {
    let mut held = Vec::with_capacity(h.count as usize);
    let mut out = std::io::stdout();
    let mut err = String::new();
    match h.mode.as_str() {
        "listen" => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            writeln!(out, "port {}", l.local_addr()?.port())?;
            out.flush()?;
            while (held.len() as u64) < h.count {
                match l.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(e) => {
                        err = e.to_string();
                        break;
                    }
                }
            }
        }
        "connect" => {
            let addr = h.addr.context("connect needs --addr")?;
            while (held.len() as u64) < h.count {
                match TcpStream::connect(addr) {
                    Ok(s) => held.push(s),
                    Err(e) => {
                        err = e.to_string();
                        break;
                    }
                }
            }
        }
        other => bail!("unknown mode {other}"),
    }
    writeln!(out, "done {} {err}", held.len())?;
    out.flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// A helper process and its stdout, line by line.
pub struct Helper {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Helper {
    fn spawn(args: &[String]) -> Result<Helper> {
        let exe = std::env::current_exe().context("finding xtask's own path")?;
        let mut child = Command::new(exe)
            .arg("bench-helper")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a bench helper")?;
        let out = child.stdout.take().context("helper stdout")?;
        Ok(Helper {
            child,
            lines: BufReader::new(out).lines(),
        })
    }

    fn line(&mut self) -> Result<String> {
        self.lines
            .next()
            .context("a bench helper exited early")?
            .context("reading a bench helper")
    }

    /// `done N [error]`: how many connections it holds, and why it stopped short.
    fn done(&mut self) -> Result<(u64, String)> {
        let l = self.line()?;
        let rest = l
            .strip_prefix("done ")
            .context("unexpected helper output")?;
        let (n, err) = rest.split_once(' ').unwrap_or((rest, ""));
        Ok((n.parse()?, err.trim().to_owned()))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `total` idle loopback connections held by pairs of helper processes (at most 15,000
/// each); returns the helpers (dropping them closes everything) and how many are open.
pub fn open_idle(total: u64) -> Result<(Vec<Helper>, u64, String)> {
    const PER_HELPER: u64 = 15_000;
    let mut helpers = Vec::new();
    let mut opened = 0;
    let mut errors = String::new();
    let mut left = total;
    let mut pairs = Vec::new();
    while left > 0 {
        let n = left.min(PER_HELPER);
        left -= n;
        let mut server = Helper::spawn(&["listen".into(), "--count".into(), n.to_string()])?;
        let port: u16 = server
            .line()?
            .strip_prefix("port ")
            .context("unexpected helper output")?
            .parse()?;
        let client = Helper::spawn(&[
            "connect".into(),
            "--count".into(),
            n.to_string(),
            "--addr".into(),
            format!("127.0.0.1:{port}"),
        ])?;
        pairs.push((server, client));
    }
    for (mut server, mut client) in pairs {
        let (c, cerr) = client.done()?;
        if c < PER_HELPER.min(total) && !cerr.is_empty() {
            errors = cerr;
        }
        // The server side accepts what the client side opened.
        if c > 0 {
            let (sn, serr) = server.done()?;
            if sn < c && !serr.is_empty() {
                errors = serr;
            }
        }
        opened += c;
        helpers.push(server);
        helpers.push(client);
    }
    Ok((helpers, opened, errors))
}
