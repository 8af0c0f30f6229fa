//! A minimal HTTP/1.1 server for `/metrics` and `/healthz`: std sockets, httparse for the
//! request head, one answer per connection. Scrapes are rare and small, so a thread per
//! connection, a few at a time, is plenty.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};

/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 16;
/// Largest request head accepted (request line, headers and the blank line); larger gets 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines accepted in a head; more gets 431 too.
const MAX_HEADERS: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Content type of every answer that is not an exposition.
const TEXT: &str = "text/plain; charset=utf-8";

/// The metrics address could not be bound; the message says what to do about it.
#[derive(thiserror::Error, Debug)]
#[error("cannot serve metrics on {addr}: {cause}{}", bind_hint(cause.kind()))]
pub struct BindError {
    addr: String,
    cause: io::Error,
}

fn bind_hint(kind: io::ErrorKind) -> &'static str {
    match kind {
        io::ErrorKind::AddrInUse => {
            ": something else listens there (another `traceid run`?); choose another with --metrics-addr"
        }
        io::ErrorKind::AddrNotAvailable => ": no interface of this host has that address",
        io::ErrorKind::PermissionDenied => ": ports below 1024 need CAP_NET_BIND_SERVICE",
        _ => "",
    }
}

/// Binds the metrics address, with an error that names it.
pub fn bind(addr: &str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).map_err(|cause| BindError {
        addr: addr.to_string(),
        cause,
    })
}

/// Serves `/metrics` and `/healthz` from `listener` on a background thread, for the life of
/// the process.
pub fn spawn(listener: TcpListener, metrics: Arc<Metrics>) -> io::Result<SocketAddr> {
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

/// Why a request head was refused.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Answered 400.
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    /// Answered 431.
    #[error("request head larger than {MAX_HEAD} bytes or {MAX_HEADERS} header lines")]
    TooLarge,
}

impl HeadError {
    /// The HTTP status the refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooLarge => 431,
        }
    }
}

/// Parses the bytes of a request received so far. `Ok(None)`: the head is not complete yet,
/// read more. A head that is still incomplete at [`MAX_HEAD`] bytes is `TooLarge`.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => {}
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Malformed(e)),
    }
    // A complete parse always fills the request line; this error is never seen.
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::Malformed(httparse::Error::Token));
    };
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    let accept: Vec<_> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("accept"))
        .map(|h| String::from_utf8_lossy(h.value))
        .collect();
    Ok(Some(Head {
        method: method.to_string(),
        path: path.to_string(),
        accept: accept.join(","),
    }))
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
        return (405, TEXT, "use GET\n".into());
    }
    match head.path.as_str() {
        "/metrics" => {
            if wants_openmetrics(&head.accept) {
                (200, OPENMETRICS_CONTENT_TYPE, metrics.encode_openmetrics())
            } else {
                (200, PROMETHEUS_CONTENT_TYPE, metrics.encode_prometheus())
            }
        }
        "/healthz" => (200, TEXT, "ok\n".into()),
        "/" => (
            200,
            TEXT,
            "traceid: /metrics (Prometheus text, or OpenMetrics with exemplars by Accept), /healthz\n"
                .into(),
        ),
        _ => (404, TEXT, "not found\n".into()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "",
    }
}

/// What a connection sent before its request head ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Head(Head),
    /// A head that is answered with [`HeadError::status`] and not served.
    Refused(HeadError),
    /// The peer closed before sending a whole head.
    Closed,
}

/// Reads one request head from `input`, which may deliver it in any number of pieces; never
/// reads more than [`MAX_HEAD`] bytes.
pub fn read_head(input: &mut impl Read) -> io::Result<Incoming> {
    let mut buf = Vec::with_capacity(1024);
    const CHUNK: usize = 2048;
    let mut chunk = [0u8; CHUNK];
    loop {
        let room = MAX_HEAD - buf.len();
        let n = match input.read(&mut chunk[..room.min(CHUNK)]) {
            Ok(0) => return Ok(Incoming::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(&buf) {
            Ok(None) => {}
            Ok(Some(head)) => return Ok(Incoming::Head(head)),
            Err(e) => return Ok(Incoming::Refused(e)),
        }
    }
}

fn handle(mut s: TcpStream, metrics: &Metrics) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    match read_head(&mut s)? {
        Incoming::Head(head) => {
            let (status, ctype, body) = respond(&head, metrics);
            write_response(&mut s, status, ctype, &body, head.method == "HEAD")
        }
        Incoming::Refused(e) => write_response(&mut s, e.status(), TEXT, &format!("{e}\n"), false),
        Incoming::Closed => Ok(()),
    }
}

fn write_response(
    s: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
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
