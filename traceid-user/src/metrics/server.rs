//! A minimal HTTP/1.1 server for `/metrics` and `/healthz` (std only: scrapes are rare and
//! small, so a thread per connection, a few at a time, is plenty).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};

/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 16;
/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the metrics address, with an error that names it.
pub fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                ": something else listens there (another `traceid run`?); choose another with --metrics-addr"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                ": no interface of this host has that address"
            }
            std::io::ErrorKind::PermissionDenied => {
                ": ports below 1024 need CAP_NET_BIND_SERVICE"
            }
            _ => "",
        };
        anyhow::anyhow!("cannot serve metrics on {addr}: {e}{hint}")
    })
}

/// Serves `/metrics` and `/healthz` from `listener` on a background thread, for the life of
/// the process.
pub fn spawn(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || serve(listener, metrics))?;
    Ok(addr)
}

fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            // EMFILE and friends: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let metrics = Arc::clone(&metrics);
        let active2 = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                let _ = handle(stream, &metrics);
                active2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A parsed request head: method, path (query stripped), Accept values joined.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub accept: String,
}

/// Parses a request head (request line and headers, up to the blank line).
pub fn parse_head(head: &str) -> Option<Head> {
    let mut lines = head.split("\r\n");
    let mut req = lines.next()?.split(' ');
    let method = req.next()?.to_string();
    let target = req.next()?;
    if !req.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut accept = Vec::new();
    for l in lines {
        if let Some((name, value)) = l.split_once(':') {
            if name.trim().eq_ignore_ascii_case("accept") {
                accept.push(value.trim());
            }
        }
    }
    Some(Head {
        method,
        path,
        accept: accept.join(","),
    })
}

/// True when the Accept header prefers OpenMetrics text to the Prometheus text format.
pub fn wants_openmetrics(accept: &str) -> bool {
    let mut om: Option<f64> = None;
    let mut text = 0.0f64;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f64;
        for p in parts {
            let p = p.trim();
            if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        match media.as_str() {
            "application/openmetrics-text" => om = Some(om.map_or(q, |o| o.max(q))),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    om.is_some_and(|q| q > 0.0 && q >= text)
}

/// Status, content type and body for a request.
pub fn respond(head: &Head, metrics: &Metrics) -> (u16, &'static str, String) {
    if head.method != "GET" && head.method != "HEAD" {
        return (405, "text/plain; charset=utf-8", "use GET\n".into());
    }
    match head.path.as_str() {
        "/metrics" => {
            if wants_openmetrics(&head.accept) {
                (200, OPENMETRICS_CONTENT_TYPE, metrics.encode_openmetrics())
            } else {
                (200, PROMETHEUS_CONTENT_TYPE, metrics.encode_prometheus())
            }
        }
        "/healthz" => (200, "text/plain; charset=utf-8", "ok\n".into()),
        "/" => (
            200,
            "text/plain; charset=utf-8",
            "traceid: /metrics (Prometheus text, or OpenMetrics with exemplars by Accept), /healthz\n"
                .into(),
        ),
        _ => (404, "text/plain; charset=utf-8", "not found\n".into()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "",
    }
}

fn handle(mut s: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return write_response(&mut s, 400, "text/plain", "request head too large\n", false);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let Some(head) = parse_head(&head) else {
        return write_response(&mut s, 400, "text/plain", "bad request\n", false);
    };
    let (status, ctype, body) = respond(&head, metrics);
    write_response(&mut s, status, ctype, &body, head.method == "HEAD")
}

fn write_response(
    s: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    s.write_all(out.as_bytes())?;
    s.flush()
}
