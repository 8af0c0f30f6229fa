//! Request overhead (a) and cost at a fixed rate (b): nginx answering `200 ok`, loaded to
//! saturation by wrk and at a fixed rate by paced keep-alive clients of the bench process.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use traceid_tests::{content_length, free_port, Nginx, NginxConfig};

use super::{
    histogram::Histogram,
    host::{nproc, pin_process},
};

/// wrk's `Requests/sec:` and, with `--latency`, its 50% and 99% latencies (µs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    pub errors: u64,
}

fn parse_wrk_duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|v| v * mult)
}

pub fn parse_wrk(out: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let mut have_rps = false;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().ok()?;
            have_rps = true;
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_us = parse_wrk_duration_us(v)?;
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_us = parse_wrk_duration_us(v)?;
        } else if t.contains("requests in") {
            r.requests = t.split_whitespace().next()?.parse().ok()?;
        } else if t.starts_with("Non-2xx") || t.starts_with("Socket errors") {
            r.errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    have_rps.then_some(r)
}

/// nginx on 127.0.0.1 with one worker answering every request with `200 ok`, the master and
/// the worker pinned to CPU 0 when there are two CPUs or more (wrk runs on CPU 1).
pub fn start_nginx() -> Result<Nginx> {
    let port = free_port();
    let nginx = Nginx::launch(&NginxConfig {
        port,
        worker_connections: 1024,
        http: "keepalive_requests 1000000;\n keepalive_timeout 300s;".into(),
        server: format!(
            "listen 127.0.0.1:{port} backlog=4096;\n  location / {{ return 200 \"ok\"; }}"
        ),
    })
    .context("starting nginx")?;
    if nproc() >= 2 {
        for pid in std::iter::once(nginx.pid()).chain(nginx.worker_pids()) {
            pin_process(pid, "0");
        }
    }
    Ok(nginx)
}

pub fn run_wrk(port: u16, secs: u64) -> Result<WrkResult> {
    // wrk on CPU 1 and nginx on CPU 0 (see start_nginx): the same placement every run.
    let mut cmd = if nproc() >= 2 {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    let out = cmd
        .args(["-t1", "-c32", &format!("-d{secs}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed ({}): {text}", out.status);
    }
    parse_wrk(&text).with_context(|| format!("could not read wrk's output:\n{text}"))
}

const REQUEST: &[u8] = b"GET /fixed HTTP/1.1\r\nHost: bench\r\nUser-Agent: traceid-bench\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";

/// Reads one response with a Content-Length body from `s` (keeps leftovers in `buf`).
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let total = end + 4 + content_length(&String::from_utf8_lossy(&buf[..end]));
            if buf.len() >= total {
                buf.drain(..total);
                return Ok(());
            }
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// What the fixed-rate clients measured.
pub struct PacedResult {
    /// Responses per second over the window.
    pub rps: f64,
    /// Every request's latency, from the time it was scheduled to go to its response's end.
    pub latency: Histogram,
}

/// Keep-alive clients sending `rate` requests/s in total for `secs`, each on a fixed
/// schedule (a late request is sent at once, not skipped). `on_window` runs as the schedule
/// starts.
///
/// A request's latency counts from when it was due, not from when it went: a client stalled
/// behind one slow response sends its next requests late, and measuring those from their
/// send time would hide the stall (coordinated omission).
pub fn paced_load(
    port: u16,
    rate: u64,
    secs: f64,
    on_window: impl FnOnce(),
) -> Result<PacedResult> {
    const CLIENTS: u64 = 16;
    let per_client = Duration::from_secs_f64(CLIENTS as f64 / rate as f64);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for i in 0..CLIENTS {
        let done = Arc::clone(&done);
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        handles.push(thread::spawn(move || -> Result<Histogram> {
            let mut buf = Vec::new();
            let mut latency = Histogram::default();
            let mut due = start + per_client.mul_f64(i as f64 / CLIENTS as f64);
            loop {
                let now = Instant::now();
                if due >= end {
                    return Ok(latency);
                }
                if due > now {
                    thread::sleep(due - now);
                }
                s.write_all(REQUEST)?;
                read_response(&mut s, &mut buf)?;
                latency.record(u64::try_from(due.elapsed().as_nanos()).unwrap_or(u64::MAX));
                done.fetch_add(1, Ordering::Relaxed);
                due += per_client;
            }
        }));
    }
    // The measurement window: from the schedule's start to its end.
    let now = Instant::now();
    if start > now {
        thread::sleep(start - now);
    }
    let before = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    on_window();
    let mut latency = Histogram::default();
    for h in handles {
        let client = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        latency.merge(&client);
    }
    let n = done.load(Ordering::Relaxed) - before;
    Ok(PacedResult {
        rps: n as f64 / t0.elapsed().as_secs_f64(),
        latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:8080/\n  1 threads and 32 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   612.34us  200.12us   8.00ms   90.00%\n\
  Latency Distribution\n     50%  580.00us\n     75%  650.00us\n     90%  800.00us\n     99%    1.20ms\n\
  250000 requests in 5.00s, 30.00MB read\nRequests/sec:  49999.80\nTransfer/sec:      6.00MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.rps, 49999.8);
        assert_eq!(r.p50_us, 580.0);
        assert!((r.p99_us - 1200.0).abs() < 1e-6);
        assert_eq!(r.requests, 250000);
        assert_eq!(r.errors, 0);
        assert!(parse_wrk("garbage").is_none());
        assert_eq!(parse_wrk_duration_us("1.50s"), Some(1.5e6));
    }
}
