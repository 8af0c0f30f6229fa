//! The agent's memory (e) with many idle connections open, then after many short ones.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    agent::Agent,
    helper::open_idle,
    host::{status_mib, wait_quiet},
    load::read_response,
    BenchArgs,
};
use crate::util::step;

/// The agent's RSS (MiB) at each step of the memory measurement, and what it saw.
pub struct MemoryResult {
    pub rss_idle_agent: f64,
    pub idle_opened: u64,
    pub idle_secs: f64,
    pub rss_idle_conns: f64,
    pub rss_after_idle_close: f64,
    pub short_done: u64,
    pub short_secs: f64,
    pub short_errors: u64,
    pub rss_short_max: f64,
    pub rss_after_short: f64,
    pub hwm: f64,
    pub requests_seen: u64,
    pub lost: String,
}

fn listeners(n: usize) -> Result<Vec<TcpListener>> {
    (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(anyhow::Error::from))
        .collect()
}

/// Measures the agent's RSS idle, with `idle_conns` connections open, and during and after
/// `short_conns` short connections.
pub fn memory(bin: &Path, a: &BenchArgs) -> Result<MemoryResult> {
    const PORTS: usize = 8;
    if let Some(n) = wait_quiet(Duration::from_secs(30)) {
        step(format!("  waited 30 s for quiet, still {n}"));
    }
    let agent = Agent::start(bin)?;
    let apid = agent.pid();
    thread::sleep(Duration::from_secs(1));
    let rss_idle_agent = status_mib(apid, "VmRSS").unwrap_or(f64::NAN);
    step(format!("  agent idle: RSS {rss_idle_agent:.1} MiB"));

    // Idle connections: both ends on loopback, held by helper processes (one process may not
    // hold more than its open-file limit), one listening port per pair of helpers so the
    // ephemeral port range (28,000 per destination) is not the limit either.
    let t = Instant::now();
    let (helpers, idle_opened, idle_err) = open_idle(a.idle_conns)?;
    let idle_secs = t.elapsed().as_secs_f64();
    if !idle_err.is_empty() {
        step(format!(
            "  stopped opening idle connections at {idle_opened}: {idle_err}"
        ));
    }
    // Let the agent take in every open event.
    thread::sleep(Duration::from_secs(3));
    let rss_idle_conns = status_mib(apid, "VmRSS").unwrap_or(f64::NAN);
    step(format!(
        "  {idle_opened} idle connections (both ends traced) opened in {idle_secs:.1} s: agent RSS {rss_idle_conns:.1} MiB"
    ));
    drop(helpers);
    thread::sleep(Duration::from_secs(3));
    let rss_after_idle_close = status_mib(apid, "VmRSS").unwrap_or(f64::NAN);
    step(format!(
        "  after closing them: agent RSS {rss_after_idle_close:.1} MiB"
    ));

    // Short connections: connect, one request, response, the server closes first (its
    // TIME_WAIT does not hold the client's ephemeral ports), then the client closes.
    let ls = listeners(PORTS)?;
    let addrs: Vec<SocketAddr> = ls
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = ls
        .into_iter()
        .map(|l| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                l.set_nonblocking(true).ok();
                let mut buf = [0u8; 1024];
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            s.set_nonblocking(false).ok();
                            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                            let mut got = Vec::new();
                            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                                match s.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => got.extend_from_slice(&buf[..n]),
                                }
                            }
                            let _ = s.write_all(resp);
                        }
                        Err(_) => thread::sleep(Duration::from_micros(200)),
                    }
                }
            })
        })
        .collect();
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let deadline = t + Duration::from_secs(a.short_secs);
    const CLIENT_THREADS: usize = 4;
    let target = a.short_conns;
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|c| {
            let (done, errors, addrs) = (Arc::clone(&done), Arc::clone(&errors), addrs.clone());
            thread::spawn(move || {
                let req = b"GET /short HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
                let mut buf = Vec::new();
                let mut i = c;
                loop {
                    if done.load(Ordering::Relaxed) >= target || Instant::now() > deadline {
                        return;
                    }
                    let r = (|| -> Result<()> {
                        let mut s = TcpStream::connect(addrs[i % PORTS])?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        s.write_all(req)?;
                        buf.clear();
                        read_response(&mut s, &mut buf)?;
                        Ok(())
                    })();
                    match r {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    i += CLIENT_THREADS;
                }
            })
        })
        .collect();
    let mut rss_short_max: f64 = 0.0;
    let mut last_report = Instant::now();
    while clients.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(250));
        if let Some(r) = status_mib(apid, "VmRSS") {
            rss_short_max = rss_short_max.max(r);
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            step(format!(
                "  short connections: {} in {:.0} s, agent RSS {:.1} MiB",
                done.load(Ordering::Relaxed),
                t.elapsed().as_secs_f64(),
                status_mib(apid, "VmRSS").unwrap_or(f64::NAN)
            ));
        }
    }
    for h in clients {
        let _ = h.join();
    }
    let short_secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in servers {
        let _ = h.join();
    }
    // The target is RSS 10 s after the churn: enough for the agent's periodic release of freed
    // memory, not for the 60 s TIME_WAIT sockets (still attributed) to expire.
    thread::sleep(Duration::from_secs(10));
    let rss_after_short = status_mib(apid, "VmRSS").unwrap_or(f64::NAN);
    let hwm = status_mib(apid, "VmHWM").unwrap_or(f64::NAN);
    let short_done = done.load(Ordering::Relaxed);
    let short_errors = errors.load(Ordering::Relaxed);
    step(format!(
        "  {short_done} short connections in {short_secs:.0} s ({short_errors} errors): agent RSS max {rss_short_max:.1} MiB, after {rss_after_short:.1} MiB, high-water {hwm:.1} MiB"
    ));
    let report = agent.stop()?;
    Ok(MemoryResult {
        rss_idle_agent,
        idle_opened,
        idle_secs,
        rss_idle_conns,
        rss_after_idle_close,
        short_done,
        short_secs,
        short_errors,
        rss_short_max,
        rss_after_short,
        hwm,
        requests_seen: report.requests,
        lost: report.lost,
    })
}
