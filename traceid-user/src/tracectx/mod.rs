//! Trace-context extraction and validation.
//!
//! Pure code: given the trace-related headers of one HTTP request (name, raw value) this module
//! finds every trace context it carries (W3C Trace Context, B3 multi/single, Jaeger, AWS X-Ray,
//! Datadog, SkyWalking sw8 and the opaque request-id family), validates each against its
//! specification and reports malformed headers with a short, stable reason.
//!
//! Design rules:
//! * never panics on any input (values are raw bytes, possibly hostile: NULs, UTF-8 garbage,
//!   64 KiB blobs); all access to input data is bounds-checked;
//! * a reason starts with the lowercase header name and never echoes more than [`MAX_ECHO`]
//!   characters of a value (non-printable bytes are shown as `?`);
//! * allocation is modest: header values are borrowed, strings are only built for the contexts
//!   and malformed reports that are returned.
//!
//! Policy for multi-header formats (B3 multi, Datadog): a bad *optional* header
//! (`x-b3-parentspanid`, `x-b3-sampled`, `x-datadog-parent-id`, `x-datadog-sampling-priority`) is
//! reported as malformed but does not discard the context carried by the required headers, just as
//! an invalid `tracestate` does not invalidate `traceparent`.
//!
//! Repeated headers: a header sent twice with the same value counts once; sent twice with
//! different values it is malformed ("<name>: repeated header") and its value is not used
//! (W3C Trace Context §3.2: multiple `traceparent` headers make the request's traceparent
//! invalid). `tracestate` is the exception: it is a list-valued header and repeated instances are
//! combined as by RFC 7230 §3.2.2 (W3C Trace Context §3.3.1.1).

use std::fmt;

mod aws;
mod b3;
mod datadog;
mod jaeger;
mod request_id;
mod sw8;
mod w3c;

#[cfg(test)]
mod tests;

/// The trace-context formats the extractor understands, in priority order (see
/// [`Extraction::primary`]): the derived `Ord` follows declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum TraceFormat {
    #[serde(rename = "w3c")]
    W3c,
    #[serde(rename = "b3")]
    B3,
    #[serde(rename = "b3single")]
    B3Single,
    #[serde(rename = "jaeger")]
    Jaeger,
    #[serde(rename = "aws")]
    Aws,
    #[serde(rename = "datadog")]
    Datadog,
    #[serde(rename = "sw8")]
    Sw8,
    #[serde(rename = "request_id")]
    RequestId,
}

impl TraceFormat {
    /// Every format, in priority order.
    pub const ALL: [TraceFormat; 8] = [
        TraceFormat::W3c,
        TraceFormat::B3,
        TraceFormat::B3Single,
        TraceFormat::Jaeger,
        TraceFormat::Aws,
        TraceFormat::Datadog,
        TraceFormat::Sw8,
        TraceFormat::RequestId,
    ];

    /// The stable name (same as the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            TraceFormat::W3c => "w3c",
            TraceFormat::B3 => "b3",
            TraceFormat::B3Single => "b3single",
            TraceFormat::Jaeger => "jaeger",
            TraceFormat::Aws => "aws",
            TraceFormat::Datadog => "datadog",
            TraceFormat::Sw8 => "sw8",
            TraceFormat::RequestId => "request_id",
        }
    }

    /// True for the formats whose `normalized` id is 32 lowercase hex digits and which are
    /// compared with each other by [`Extraction::inconsistent`]. SkyWalking ids are opaque
    /// strings and request ids are opaque values: both are false.
    pub fn is_hex(self) -> bool {
        !matches!(self, TraceFormat::Sw8 | TraceFormat::RequestId)
    }
}

impl fmt::Display for TraceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Header names
// ---------------------------------------------------------------------------------------------

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const X_B3_TRACEID: &str = "x-b3-traceid";
const X_B3_SPANID: &str = "x-b3-spanid";
const X_B3_PARENTSPANID: &str = "x-b3-parentspanid";
const X_B3_SAMPLED: &str = "x-b3-sampled";
const X_B3_FLAGS: &str = "x-b3-flags";
const B3: &str = "b3";
const UBER_TRACE_ID: &str = "uber-trace-id";
const X_AMZN_TRACE_ID: &str = "x-amzn-trace-id";
const X_DATADOG_TRACE_ID: &str = "x-datadog-trace-id";
const X_DATADOG_PARENT_ID: &str = "x-datadog-parent-id";
const X_DATADOG_SAMPLING_PRIORITY: &str = "x-datadog-sampling-priority";
const SW8: &str = "sw8";

/// The fixed (non request-id) headers, indexed by [`Known`].
const KNOWN_HEADERS: [&str; 14] = [
    TRACEPARENT,
    TRACESTATE,
    X_B3_TRACEID,
    X_B3_SPANID,
    X_B3_PARENTSPANID,
    X_B3_SAMPLED,
    X_B3_FLAGS,
    B3,
    UBER_TRACE_ID,
    X_AMZN_TRACE_ID,
    X_DATADOG_TRACE_ID,
    X_DATADOG_PARENT_ID,
    X_DATADOG_SAMPLING_PRIORITY,
    SW8,
];

/// The built-in request-id family (opaque ids).
pub const REQUEST_ID_HEADERS: [&str; 4] =
    ["x-request-id", "x-trace-id", "trace-id", "x-correlation-id"];

/// Index into [`KNOWN_HEADERS`] / [`Collected::known`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Traceparent = 0,
    Tracestate,
    B3TraceId,
    B3SpanId,
    B3ParentSpanId,
    B3Sampled,
    B3Flags,
    B3Single,
    UberTraceId,
    AmznTraceId,
    DdTraceId,
    DdParentId,
    DdSamplingPriority,
    Sw8,
}

const KNOWN_ALL: [Known; 14] = [
    Known::Traceparent,
    Known::Tracestate,
    Known::B3TraceId,
    Known::B3SpanId,
    Known::B3ParentSpanId,
    Known::B3Sampled,
    Known::B3Flags,
    Known::B3Single,
    Known::UberTraceId,
    Known::AmznTraceId,
    Known::DdTraceId,
    Known::DdParentId,
    Known::DdSamplingPriority,
    Known::Sw8,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Known(Known),
    /// Index into [`HeaderNames::request_ids`].
    RequestId(usize),
}

/// The header names the extractor reads, including extra request-id names given at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNames {
    /// Request-id family: the built-ins then the extras, lowercase, without duplicates.
    request_ids: Vec<String>,
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames::new(&[])
    }
}

impl HeaderNames {
    /// `extra_request_id_headers` are treated as opaque request ids. They are trimmed and
    /// lowercased; empty names, duplicates and names of the built-in headers are ignored.
    pub fn new(extra_request_id_headers: &[String]) -> Self {
        let mut request_ids: Vec<String> =
            REQUEST_ID_HEADERS.iter().map(|s| s.to_string()).collect();
        for extra in extra_request_id_headers {
            let name = extra.trim().to_ascii_lowercase();
            if name.is_empty()
                || KNOWN_HEADERS.contains(&name.as_str())
                || request_ids.contains(&name)
            {
                continue;
            }
            request_ids.push(name);
        }
        HeaderNames { request_ids }
    }

    /// Case-insensitive. True for every header name any format reads (traceparent, tracestate,
    /// x-b3-traceid, x-b3-spanid, x-b3-parentspanid, x-b3-sampled, x-b3-flags, b3, uber-trace-id,
    /// x-amzn-trace-id, x-datadog-trace-id, x-datadog-parent-id, x-datadog-sampling-priority, sw8,
    /// x-request-id, x-trace-id, trace-id, x-correlation-id, and the extras). The HTTP layer keeps
    /// only headers for which this is true; everything else (Authorization, Cookie...) is dropped.
    pub fn is_trace_header(&self, name: &str) -> bool {
        self.classify(name).is_some()
    }

    /// Every header name read, lowercase: the fixed ones, then the request-id family.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        KNOWN_HEADERS
            .iter()
            .copied()
            .chain(self.request_ids.iter().map(String::as_str))
    }

    /// The request-id family (built-ins then extras), lowercase.
    pub fn request_id_headers(&self) -> impl Iterator<Item = &str> + '_ {
        self.request_ids.iter().map(String::as_str)
    }

    fn classify(&self, name: &str) -> Option<Class> {
        // Longest name is "x-datadog-sampling-priority" (27); extras may be longer.
        if let Some(i) = KNOWN_HEADERS
            .iter()
            .position(|k| k.eq_ignore_ascii_case(name))
        {
            return KNOWN_ALL.get(i).map(|k| Class::Known(*k));
        }
        self.request_ids
            .iter()
            .position(|k| k.eq_ignore_ascii_case(name))
            .map(Class::RequestId)
    }

    fn request_id_name(&self, idx: usize) -> &str {
        self.request_ids
            .get(idx)
            .map(String::as_str)
            .unwrap_or("x-request-id")
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// One valid trace context found on a request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TraceContext {
    pub format: TraceFormat,
    /// Lowercase header name it came from (for B3 multi: `x-b3-traceid`; Datadog:
    /// `x-datadog-trace-id`).
    pub header: String,
    /// The trace id as carried, lowercase for hex formats (Jaeger: leading zeros as carried;
    /// AWS: the whole Root `1-xxxxxxxx-xxx...`; Datadog: the decimal as carried; sw8: the
    /// base64-decoded trace id; request ids: the value).
    pub trace_id: String,
    /// Comparison key: 32 lowercase hex for every hex-id format (64-bit ids left-padded with
    /// zeros, Datadog decimal converted to hex and padded, AWS Root 1-8hex-24hex -> the 32 hex
    /// concatenation), the opaque value for request ids and the decoded trace id for sw8.
    pub normalized: String,
    /// The caller's span id (W3C parent-id, B3 SpanId, Jaeger span-id, AWS Parent, Datadog
    /// parent-id as decimal, sw8 spanId).
    pub span_id: Option<String>,
    pub sampled: Option<bool>,
}

impl TraceContext {
    /// True when the format carried only 64 bits of trace id, so that its upper 64 bits in
    /// `normalized` are padding rather than data: Datadog (`x-datadog-trace-id` is the low 64
    /// bits; the high half travels in `x-datadog-tags` `_dd.p.tid`), B3 with a 16-hex TraceId,
    /// Jaeger with at most 16 hex digits.
    pub fn is_64bit(&self) -> bool {
        match self.format {
            TraceFormat::Datadog => true,
            TraceFormat::B3 | TraceFormat::B3Single | TraceFormat::Jaeger => {
                self.trace_id.len() <= 16
            }
            _ => false,
        }
    }

    /// Whether `self` and `other` identify the same trace; `None` when they are not comparable
    /// (a hex-id format against sw8 or a request id, or sw8 against a request id).
    ///
    /// Hex formats compare `normalized`; when either side carried only 64 bits (see
    /// [`is_64bit`](Self::is_64bit)) only the low 64 bits are compared, because tracers that
    /// generate 128-bit ids send the low half in 64-bit headers (Datadog, B3 16-hex) next to
    /// the full id in `traceparent`. Request ids compare with each other exactly.
    pub fn same_trace(&self, other: &TraceContext) -> Option<bool> {
        let (a, b) = (self.format, other.format);
        if a.is_hex() && b.is_hex() {
            if self.is_64bit() || other.is_64bit() {
                Some(low64(&self.normalized) == low64(&other.normalized))
            } else {
                Some(self.normalized == other.normalized)
            }
        } else if a == b && !a.is_hex() {
            Some(self.normalized == other.normalized)
        } else {
            None
        }
    }
}

fn low64(normalized: &str) -> &str {
    let n = normalized.len();
    normalized.get(n.saturating_sub(16)..).unwrap_or(normalized)
}

/// A trace header that is present but invalid.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Malformed {
    pub format: TraceFormat,
    /// Lowercase header name.
    pub header: String,
    /// Short, stable phrase starting with the header name, e.g.
    /// `"traceparent: trace-id is all zeros"`.
    pub reason: String,
}

/// Everything found on one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extraction {
    /// Valid contexts, in priority order (request ids in wire order).
    pub contexts: Vec<TraceContext>,
    pub malformed: Vec<Malformed>,
}

impl Extraction {
    /// The context reported for the request: by priority w3c > b3 > b3single > jaeger > aws >
    /// datadog > sw8 > request_id (the first request-id header on the wire wins among those).
    pub fn primary(&self) -> Option<&TraceContext> {
        // min_by_key returns the first of equal minima.
        self.contexts.iter().min_by_key(|c| c.format)
    }

    /// Some(reason) when two hex-id formats on the request carry different trace ids (see
    /// [`TraceContext::same_trace`]), or two request-id headers carry different values.
    /// Request ids and sw8 are never compared with hex formats. The reason reads
    /// `"w3c 4bf92f35... != b3 0000..."` (request ids: `"x-request-id abc != x-correlation-id def"`).
    pub fn inconsistent(&self) -> Option<String> {
        for (i, a) in self.contexts.iter().enumerate() {
            for b in self.contexts.iter().skip(i + 1) {
                if a.same_trace(b) == Some(false) {
                    return Some(if a.format == TraceFormat::RequestId {
                        format!(
                            "{} {} != {} {}",
                            a.header,
                            show(a.normalized.as_bytes(), MAX_ECHO),
                            b.header,
                            show(b.normalized.as_bytes(), MAX_ECHO)
                        )
                    } else {
                        format!(
                            "{} {} != {} {}",
                            a.format, a.normalized, b.format, b.normalized
                        )
                    });
                }
            }
        }
        None
    }

    /// true when neither a context nor a malformed header was found.
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty() && self.malformed.is_empty()
    }

    /// The context of `format`, if any (the first one for request ids).
    pub fn get(&self, format: TraceFormat) -> Option<&TraceContext> {
        self.contexts.iter().find(|c| c.format == format)
    }

    fn bad(&mut self, format: TraceFormat, header: &str, detail: impl fmt::Display) {
        self.malformed.push(Malformed {
            format,
            header: header.to_string(),
            reason: format!("{header}: {detail}"),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

/// A single-valued header as seen on the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Value<'a> {
    #[default]
    Absent,
    /// Present (once, or repeated with the identical value), OWS-trimmed.
    One(&'a [u8]),
    /// Present several times with different values.
    Repeated,
}

impl<'a> Value<'a> {
    fn push(&mut self, v: &'a [u8]) {
        *self = match *self {
            Value::Absent => Value::One(v),
            Value::One(old) if old == v => Value::One(old),
            Value::One(_) | Value::Repeated => Value::Repeated,
        };
    }

    fn is_present(self) -> bool {
        self != Value::Absent
    }
}

#[derive(Default)]
struct Collected<'a> {
    known: [Value<'a>; 14],
    tracestate: Vec<&'a [u8]>,
    /// (index into HeaderNames::request_ids, value) in first-seen order.
    request_ids: Vec<(usize, Value<'a>)>,
}

impl<'a> Collected<'a> {
    fn get(&self, k: Known) -> Value<'a> {
        self.known.get(k as usize).copied().unwrap_or_default()
    }
}

/// headers: (name, raw value) pairs in wire order; names any case. Duplicate headers: a second
/// `traceparent` with a different value is malformed ("traceparent: repeated header") per the spec.
pub fn extract<'a, I: IntoIterator<Item = (&'a str, &'a [u8])>>(
    headers: I,
    names: &HeaderNames,
) -> Extraction {
    let mut c = Collected::default();
    for (name, value) in headers {
        let value = trim_ows(value);
        match names.classify(name) {
            None => {}
            Some(Class::Known(Known::Tracestate)) => c.tracestate.push(value),
            Some(Class::Known(k)) => {
                if let Some(slot) = c.known.get_mut(k as usize) {
                    slot.push(value);
                }
            }
            Some(Class::RequestId(idx)) => {
                match c.request_ids.iter_mut().find(|(i, _)| *i == idx) {
                    Some((_, slot)) => slot.push(value),
                    None => c.request_ids.push((idx, Value::One(value))),
                }
            }
        }
    }

    let mut out = Extraction::default();
    w3c::traceparent(c.get(Known::Traceparent), &mut out);
    if !c.tracestate.is_empty() {
        w3c::tracestate(&c.tracestate, &mut out);
    }
    b3::multi(
        b3::Multi {
            trace_id: c.get(Known::B3TraceId),
            span_id: c.get(Known::B3SpanId),
            parent_span_id: c.get(Known::B3ParentSpanId),
            sampled: c.get(Known::B3Sampled),
            flags: c.get(Known::B3Flags),
        },
        &mut out,
    );
    b3::single(c.get(Known::B3Single), &mut out);
    jaeger::extract(c.get(Known::UberTraceId), &mut out);
    aws::extract(c.get(Known::AmznTraceId), &mut out);
    datadog::extract(
        c.get(Known::DdTraceId),
        c.get(Known::DdParentId),
        c.get(Known::DdSamplingPriority),
        &mut out,
    );
    sw8::extract(c.get(Known::Sw8), &mut out);
    for (idx, v) in &c.request_ids {
        request_id::extract(names.request_id_name(*idx), *v, &mut out);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// At most this many characters of a header value are echoed in a reason.
const MAX_ECHO: usize = 32;

/// Trims leading/trailing OWS (SP / HTAB, RFC 9110 §5.6.3) around a field value.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let Some((&b, rest)) = v.split_first() {
        if b == b' ' || b == b'\t' {
            v = rest;
        } else {
            break;
        }
    }
    while let Some((&b, rest)) = v.split_last() {
        if b == b' ' || b == b'\t' {
            v = rest;
        } else {
            break;
        }
    }
    v
}

/// A value for a reason: at most `max` (<= 64) chars, non-printable bytes as `?`, `...` when cut.
fn show(v: &[u8], max: usize) -> String {
    let max = max.min(64);
    let mut s = String::with_capacity(v.len().min(max) + 3);
    for &b in v.iter().take(max) {
        s.push(if (0x20..=0x7e).contains(&b) {
            b as char
        } else {
            '?'
        });
    }
    if v.len() > max {
        s.push_str("...");
    }
    s
}

/// Hex digit classification of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hex {
    /// Non-empty, all lowercase hex digits.
    Lower,
    /// All hex digits, some uppercase.
    Upper,
    /// Empty or some byte is not a hex digit.
    Invalid,
}

fn hex_class(v: &[u8]) -> Hex {
    if v.is_empty() {
        return Hex::Invalid;
    }
    let mut upper = false;
    for &b in v {
        match b {
            b'0'..=b'9' | b'a'..=b'f' => {}
            b'A'..=b'F' => upper = true,
            _ => return Hex::Invalid,
        }
    }
    if upper {
        Hex::Upper
    } else {
        Hex::Lower
    }
}

fn all_zeros(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'0')
}

/// Bytes to a String, lowercased (callers pass validated ASCII; other bytes map to Latin-1
/// chars, which cannot panic).
fn lower_string(v: &[u8]) -> String {
    v.iter().map(|&b| b.to_ascii_lowercase() as char).collect()
}

/// Bytes to a String as is (callers pass validated ASCII).
fn ascii_string(v: &[u8]) -> String {
    v.iter().map(|&b| b as char).collect()
}

/// Lowercase hex left-padded with zeros to 32 digits (callers pass at most 32 hex digits).
fn pad32(v: &[u8]) -> String {
    let mut s = String::with_capacity(32);
    for _ in v.len()..32 {
        s.push('0');
    }
    for &b in v {
        s.push(b.to_ascii_lowercase() as char);
    }
    s
}

/// Unsigned decimal (digits only, leading zeros allowed) into u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecErr {
    Empty,
    NotDigits,
    Overflow,
}

fn parse_u64(v: &[u8]) -> Result<u64, DecErr> {
    if v.is_empty() {
        return Err(DecErr::Empty);
    }
    let mut n: u64 = 0;
    let mut overflow = false;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(DecErr::NotDigits);
        }
        match n
            .checked_mul(10)
            .and_then(|x| x.checked_add(u64::from(b - b'0')))
        {
            Some(x) => n = x,
            None => overflow = true,
        }
    }
    if overflow {
        Err(DecErr::Overflow)
    } else {
        Ok(n)
    }
}
