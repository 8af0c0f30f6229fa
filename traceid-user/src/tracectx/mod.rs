//! Trace-context extraction and validation.
//!
//! Pure code: given the trace-related headers of one HTTP request (name, raw value) this module
//! finds every trace context it carries (W3C Trace Context, B3 multi/single, Jaeger, AWS X-Ray,
//! Datadog, gRPC's binary `grpc-trace-bin`, SkyWalking sw8 and the opaque request-id family), validates each against its
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
//!
//! Layout: the `FORMATS` table maps every fixed header name to its format and to the `Role`
//! it plays there, and names the function that parses the format. `extract` sorts a request's
//! headers by that table and calls each format present, in priority order. Each format lives in
//! its own file with its tests; `tests.rs` holds the cross-format tests. Adding a format is a
//! file, a table row and a [`TraceFormat`] variant: see `docs/adding-a-trace-format.md`.

use std::borrow::Cow;
use std::fmt;

mod aws;
mod b3;
mod datadog;
mod grpc_bin;
mod jaeger;
mod request_id;
mod sw8;
mod w3c;

#[cfg(test)]
mod test_support;
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
    /// `grpc-trace-bin`: the OpenCensus binary format gRPC carries in metadata.
    #[serde(rename = "grpc_bin")]
    GrpcBin,
    #[serde(rename = "sw8")]
    Sw8,
    #[serde(rename = "request_id")]
    RequestId,
}

impl TraceFormat {
    /// Every format, in priority order.
    pub const ALL: [TraceFormat; 9] = [
        TraceFormat::W3c,
        TraceFormat::B3,
        TraceFormat::B3Single,
        TraceFormat::Jaeger,
        TraceFormat::Aws,
        TraceFormat::Datadog,
        TraceFormat::GrpcBin,
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
            TraceFormat::GrpcBin => "grpc_bin",
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
// The format table
// ---------------------------------------------------------------------------------------------

/// The part a header plays in its format. The parsers implement these rules; the cross-format
/// tests check every format against them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Carries the trace id; the format's context is reported under this header's name. Exactly
    /// one per format.
    TraceId,
    /// Also needed for a context (B3 `x-b3-spanid`): when missing or invalid there is none.
    Required,
    /// Refines a context (parent span, sampling decision): an invalid value may be reported as
    /// malformed but never discards the context.
    Optional,
    /// Like [`Role::Optional`], and list-valued: repeated instances are combined in wire order
    /// (RFC 9110 §5.3) instead of making the header "repeated".
    List,
}

/// One header of a format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeaderSpec {
    /// Lowercase.
    name: &'static str,
    role: Role,
}

impl HeaderSpec {
    const fn new(name: &'static str, role: Role) -> Self {
        HeaderSpec { name, role }
    }
}

/// A format read from fixed header names.
struct FormatSpec {
    format: TraceFormat,
    headers: &'static [HeaderSpec],
    /// Pushes the format's context and malformed reports to the extraction. Called once per
    /// request, only when at least one of `headers` is on it.
    extract: fn(&FormatHeaders<'_, '_>, &mut Extraction),
}

/// Every format with fixed header names, in priority order ([`TraceFormat`]'s `Ord`), so that
/// [`Extraction::contexts`] comes out in priority order. Header names are lowercase and unique.
/// The request-id family is apart: its names are configured at run time (see [`HeaderNames`]).
const FORMATS: &[FormatSpec] = &[
    FormatSpec {
        format: TraceFormat::W3c,
        headers: &[
            HeaderSpec::new(w3c::TRACEPARENT, Role::TraceId),
            HeaderSpec::new(w3c::TRACESTATE, Role::List),
        ],
        extract: w3c::extract,
    },
    FormatSpec {
        format: TraceFormat::B3,
        headers: &[
            HeaderSpec::new(b3::X_B3_TRACEID, Role::TraceId),
            HeaderSpec::new(b3::X_B3_SPANID, Role::Required),
            HeaderSpec::new(b3::X_B3_PARENTSPANID, Role::Optional),
            HeaderSpec::new(b3::X_B3_SAMPLED, Role::Optional),
            HeaderSpec::new(b3::X_B3_FLAGS, Role::Optional),
        ],
        extract: b3::extract_multi,
    },
    FormatSpec {
        format: TraceFormat::B3Single,
        headers: &[HeaderSpec::new(b3::B3, Role::TraceId)],
        extract: b3::extract_single,
    },
    FormatSpec {
        format: TraceFormat::Jaeger,
        headers: &[HeaderSpec::new(jaeger::UBER_TRACE_ID, Role::TraceId)],
        extract: jaeger::extract,
    },
    FormatSpec {
        format: TraceFormat::Aws,
        headers: &[HeaderSpec::new(aws::X_AMZN_TRACE_ID, Role::TraceId)],
        extract: aws::extract,
    },
    FormatSpec {
        format: TraceFormat::Datadog,
        headers: &[
            HeaderSpec::new(datadog::X_DATADOG_TRACE_ID, Role::TraceId),
            HeaderSpec::new(datadog::X_DATADOG_PARENT_ID, Role::Optional),
            HeaderSpec::new(datadog::X_DATADOG_SAMPLING_PRIORITY, Role::Optional),
        ],
        extract: datadog::extract,
    },
    FormatSpec {
        format: TraceFormat::GrpcBin,
        headers: &[HeaderSpec::new(grpc_bin::GRPC_TRACE_BIN, Role::TraceId)],
        extract: grpc_bin::extract,
    },
    FormatSpec {
        format: TraceFormat::Sw8,
        headers: &[HeaderSpec::new(sw8::SW8, Role::TraceId)],
        extract: sw8::extract,
    },
];

// Rows out of priority order would put `Extraction::contexts` out of priority order.
const _: () = {
    let mut i = 1;
    while i < FORMATS.len() {
        assert!(
            (FORMATS[i - 1].format as u8) < (FORMATS[i].format as u8),
            "FORMATS rows must be in TraceFormat (priority) order"
        );
        i += 1;
    }
};

/// How many headers [`FORMATS`] lists in all.
const FIXED_HEADER_COUNT: usize = {
    let mut count = 0;
    let mut i = 0;
    while i < FORMATS.len() {
        count += FORMATS[i].headers.len();
        i += 1;
    }
    count
};

/// Every header of [`FORMATS`], row by row. The position of a header in this sequence is its
/// index in [`Collected::values`].
fn fixed_headers() -> impl Iterator<Item = &'static HeaderSpec> {
    FORMATS.iter().flat_map(|f| f.headers.iter())
}

// ---------------------------------------------------------------------------------------------
// Header names
// ---------------------------------------------------------------------------------------------

/// The built-in request-id family (opaque ids).
pub const REQUEST_ID_HEADERS: [&str; 4] =
    ["x-request-id", "x-trace-id", "trace-id", "x-correlation-id"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// A header of [`FORMATS`]; `index` as in [`fixed_headers`].
    Fixed { index: usize, role: Role },
    /// Index into [`HeaderNames::request_ids`].
    RequestId(usize),
}

/// Names of at least this many bytes share the last bucket of [`HeaderNames::by_len`].
const LONG_NAME: usize = 32;

/// The header names the extractor reads, including extra request-id names given at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNames {
    /// Request-id family: the built-ins then the extras, lowercase, without duplicates.
    request_ids: Vec<String>,
    /// Every read name with its class, grouped by length: `by_len[n]` holds the names of `n`
    /// bytes (the last bucket those of [`LONG_NAME`] or more). Asked for every header of
    /// every head, a lookup compares at most the few names of one length (three at most among
    /// the built-ins), and most headers find their bucket empty.
    by_len: Vec<Vec<KnownName>>,
}

/// One name [`HeaderNames`] reads.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KnownName {
    /// Lowercase.
    name: Box<str>,
    /// Its first byte: most names of the same length differ there already.
    first: u8,
    class: Class,
}

impl KnownName {
    /// `name` in any case is this one.
    fn is(&self, name: &str) -> bool {
        name.as_bytes().first().map(u8::to_ascii_lowercase) == Some(self.first)
            && self.name.eq_ignore_ascii_case(name)
    }
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
                || fixed_headers().any(|h| h.name == name)
                || request_ids.contains(&name)
            {
                continue;
            }
            request_ids.push(name);
        }
        let fixed = fixed_headers().enumerate().map(|(index, h)| {
            (
                h.name,
                Class::Fixed {
                    index,
                    role: h.role,
                },
            )
        });
        let by_id = request_ids
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), Class::RequestId(i)));
        let mut by_len: Vec<Vec<KnownName>> = vec![Vec::new(); LONG_NAME + 1];
        for (name, class) in fixed.chain(by_id) {
            if let Some(bucket) = by_len.get_mut(name.len().min(LONG_NAME)) {
                bucket.push(KnownName {
                    name: name.into(),
                    first: name.as_bytes().first().copied().unwrap_or(0),
                    class,
                });
            }
        }
        HeaderNames {
            request_ids,
            by_len,
        }
    }

    /// Case-insensitive. True for every header name any format reads (traceparent, tracestate,
    /// x-b3-traceid, x-b3-spanid, x-b3-parentspanid, x-b3-sampled, x-b3-flags, b3, uber-trace-id,
    /// x-amzn-trace-id, x-datadog-trace-id, x-datadog-parent-id, x-datadog-sampling-priority,
    /// grpc-trace-bin, sw8,
    /// x-request-id, x-trace-id, trace-id, x-correlation-id, and the extras). The HTTP layer keeps
    /// only headers for which this is true; everything else (Authorization, Cookie...) is dropped.
    pub fn is_trace_header(&self, name: &str) -> bool {
        self.classify(name).is_some()
    }

    /// Every header name read, lowercase: the fixed ones, then the request-id family.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        fixed_headers()
            .map(|h| h.name)
            .chain(self.request_ids.iter().map(String::as_str))
    }

    /// The request-id family (built-ins then extras), lowercase.
    pub fn request_id_headers(&self) -> impl Iterator<Item = &str> + '_ {
        self.request_ids.iter().map(String::as_str)
    }

    /// On the hot path (every header of every HTTP head): allocation-free, and only names of
    /// the same length are compared.
    fn classify(&self, name: &str) -> Option<Class> {
        self.by_len
            .get(name.len().min(LONG_NAME))?
            .iter()
            .find(|known| known.is(name))
            .map(|known| known.class)
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
    /// `x-datadog-trace-id`). Borrowed for the built-in names: the context is cloned into every
    /// record and every request in flight.
    pub header: Cow<'static, str>,
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
    /// datadog > grpc_bin > sw8 > request_id (the first request-id header on the wire wins among those).
    pub fn primary(&self) -> Option<&TraceContext> {
        self.contexts.get(self.primary_index()?)
    }

    /// The context [`Extraction::primary`] names, moved out (a record takes its strings
    /// rather than copies of them).
    pub fn into_primary(mut self) -> Option<TraceContext> {
        let at = self.primary_index()?;
        Some(self.contexts.swap_remove(at))
    }

    fn primary_index(&self) -> Option<usize> {
        // min_by_key returns the first of equal minima.
        self.contexts
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.format)
            .map(|(i, _)| i)
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

    /// The common case of a header that carries a whole context on its own: absent is nothing,
    /// repeated with different values is malformed, one value is parsed into a context or a
    /// malformed report.
    fn single_header(
        &mut self,
        format: TraceFormat,
        header: &str,
        v: Value<'_>,
        parse: impl FnOnce(&[u8]) -> Result<TraceContext, String>,
    ) {
        match v {
            Value::Absent => {}
            Value::Repeated => self.bad(format, header, "repeated header"),
            Value::One(s) => match parse(s) {
                Ok(ctx) => self.contexts.push(ctx),
                Err(d) => self.bad(format, header, d),
            },
        }
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

/// The trace headers of one request, sorted by header.
struct Collected<'a> {
    /// The single-valued headers of [`FORMATS`], indexed as [`fixed_headers`] lists them.
    values: [Value<'a>; FIXED_HEADER_COUNT],
    /// Every instance of the list-valued ([`Role::List`]) headers of [`FORMATS`]: (index as in
    /// `values`, value), in wire order.
    lists: Vec<(usize, &'a [u8])>,
    /// (index into HeaderNames::request_ids, value) in first-seen order.
    request_ids: Vec<(usize, Value<'a>)>,
}

impl Default for Collected<'_> {
    fn default() -> Self {
        Collected {
            values: [Value::Absent; FIXED_HEADER_COUNT],
            lists: Vec::new(),
            request_ids: Vec::new(),
        }
    }
}

/// One format's headers as carried by a request: what a format's `extract` reads, by header
/// name. The names are those of the format's row in [`FORMATS`]; any other name reads as absent.
struct FormatHeaders<'c, 'a> {
    specs: &'static [HeaderSpec],
    /// Index in [`Collected::values`] of `specs[0]`.
    first: usize,
    collected: &'c Collected<'a>,
}

impl<'a> FormatHeaders<'_, 'a> {
    /// Index in [`Collected::values`] of the header `name`.
    fn index(&self, name: &str) -> Option<usize> {
        let found = self.specs.iter().position(|h| h.name == name);
        debug_assert!(found.is_some(), "{name} is not in the format's FORMATS row");
        found.map(|i| self.first + i)
    }

    /// A single-valued header.
    fn one(&self, name: &str) -> Value<'a> {
        self.index(name)
            .and_then(|i| self.collected.values.get(i).copied())
            .unwrap_or_default()
    }

    /// Every instance of a list-valued header, in wire order (empty when absent).
    fn list(&self, name: &str) -> Vec<&'a [u8]> {
        let Some(i) = self.index(name) else {
            return Vec::new();
        };
        self.collected
            .lists
            .iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, v)| *v)
            .collect()
    }

    /// True when the request carries at least one of the format's headers.
    fn any_present(&self) -> bool {
        let range = self.first..self.first + self.specs.len();
        self.collected
            .values
            .get(range.clone())
            .is_some_and(|vs| vs.iter().any(|v| v.is_present()))
            || self.collected.lists.iter().any(|(i, _)| range.contains(i))
    }
}

/// headers: (name, raw value) pairs in wire order; names any case. Duplicate headers: a second
/// `traceparent` with a different value is malformed ("traceparent: repeated header") per the spec.
pub fn extract<'a, I: IntoIterator<Item = (&'a str, &'a [u8])>>(
    headers: I,
    names: &HeaderNames,
) -> Extraction {
    let mut c = Collected::default();
    let mut trace_headers = 0usize;
    for (name, value) in headers {
        let value = trim_ows(value);
        let class = names.classify(name);
        trace_headers += usize::from(class.is_some());
        match class {
            None => {}
            Some(Class::Fixed {
                index,
                role: Role::List,
            }) => c.lists.push((index, value)),
            Some(Class::Fixed { index, .. }) => {
                if let Some(slot) = c.values.get_mut(index) {
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
    if trace_headers == 0 {
        // Most requests of a service that loses the trace: no format to ask.
        return out;
    }
    let mut first = 0;
    for spec in FORMATS {
        let carried = FormatHeaders {
            specs: spec.headers,
            first,
            collected: &c,
        };
        if carried.any_present() {
            (spec.extract)(&carried, &mut out);
        }
        first += spec.headers.len();
    }
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
    /// What each byte is to [`hex_class`]: a bit per kind, or-ed over the field.
    const LOWER: u8 = 1;
    const UPPER: u8 = 2;
    const OTHER: u8 = 4;
    const KIND: [u8; 256] = {
        let mut table = [OTHER; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = match b as u8 {
                b'0'..=b'9' | b'a'..=b'f' => LOWER,
                b'A'..=b'F' => UPPER,
                _ => OTHER,
            };
            b += 1;
        }
        table
    };
    // Every byte of every id is classified (32 of a W3C trace id): no branch per byte.
    let kinds = v.iter().fold(0u8, |kinds, &b| kinds | KIND[usize::from(b)]);
    if v.is_empty() || kinds & OTHER != 0 {
        Hex::Invalid
    } else if kinds & UPPER != 0 {
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
    match std::str::from_utf8(v) {
        Ok(s) if s.is_ascii() => s.to_ascii_lowercase(),
        _ => v.iter().map(|&b| b.to_ascii_lowercase() as char).collect(),
    }
}

/// Bytes to a String as is (callers pass validated ASCII; others as [`lower_string`]).
fn ascii_string(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if s.is_ascii() => s.to_owned(),
        _ => v.iter().map(|&b| b as char).collect(),
    }
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
