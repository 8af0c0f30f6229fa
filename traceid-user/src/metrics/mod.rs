//! The Prometheus/OpenMetrics metrics of `traceid run` (docs/metrics.md).
//!
//! Built on prometheus-client: it encodes both the Prometheus text format 0.0.4 and
//! OpenMetrics 1.0, and only OpenMetrics carries exemplars (the trace_id of a real request on
//! the latency histogram). Every label set is bounded:
//! - `comm` (and `namespace`, `workload`, `remote`, `stage`) values: the first N distinct
//!   values keep their name, later ones are counted under `other`; there is no label per pod
//!   or container (their number has no bound on a busy node);
//! - per-trace_id series (`traceid_trace_requests_total`) live in our own LRU with a TTL and a
//!   cap ([`lru::TraceLru`]), encoded on scrape by a collector, because prometheus-client's
//!   families never forget a label set; evictions are counted in
//!   `traceid_trace_series_evicted_total`.

pub mod lru;
mod process;
pub mod server;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::lifecycle::LifecycleObserver;
use crate::record::{Holder, Record, RequestRecord};
use lru::TraceLru;

/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label value for values past a label's cap.
pub const OTHER: &str = "other";
/// `trace_format` of requests without trace context.
pub const NO_FORMAT: &str = "none";

/// Latency buckets, seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Requests-per-connection buckets (connection reuse).
pub const CONN_REQUEST_BUCKETS: [f64; 8] = [1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10000.0];

/// OpenMetrics allows 128 UTF-8 characters of exemplar labels (names and values together).
const EXEMPLAR_TRACE_ID_MAX: usize = 128 - "trace_id".len();

/// Bounds of the metrics.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Most per-trace_id series kept (0: none).
    pub trace_series_cap: usize,
    /// A per-trace series idle this long is dropped.
    pub trace_series_ttl: Duration,
    /// Distinct `comm` values before `other`.
    pub comm_cap: usize,
    /// Distinct `namespace` values before `other`.
    pub namespace_cap: usize,
    /// Distinct `workload` values before `other`.
    pub workload_cap: usize,
    /// Distinct `remote` values before `other`.
    pub remote_cap: usize,
    /// Distinct loss `stage` values before `other`.
    pub stage_cap: usize,
    /// Export `process_*` metrics of the agent itself (CPU, memory, fds).
    pub process_metrics: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            trace_series_cap: 2000,
            trace_series_ttl: Duration::from_secs(300),
            comm_cap: 100,
            namespace_cap: 50,
            workload_cap: 200,
            remote_cap: 200,
            stage_cap: 64,
            process_metrics: true,
        }
    }
}

/// `namespace` and `workload` of a pod's process. Each is written only when known: the series
/// of processes outside pods carry neither (Prometheus reads a missing label as empty).
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default)]
struct OwnerLabels {
    namespace: String,
    workload: String,
}

impl EncodeLabelSet for OwnerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        for (key, value) in [("namespace", &self.namespace), ("workload", &self.workload)] {
            if !value.is_empty() {
                (key, value.as_str()).encode(encoder.encode_label())?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    comm: String,
    trace_format: &'static str,
    #[prometheus(flatten)]
    owner: OwnerLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    finding: &'static str,
    comm: String,
    #[prometheus(flatten)]
    owner: OwnerLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    direction: &'static str,
    comm: String,
    #[prometheus(flatten)]
    owner: OwnerLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnOpenedLabels {
    comm: String,
    remote: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    comm: String,
    remote: String,
}

/// A service endpoint (the listening side) and which end holds the TIME_WAIT sockets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeWaitLabels {
    remote: String,
    holder: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabels {
    trace_id: String,
    comm: String,
    direction: &'static str,
}

/// The exemplar's label set: the trace id of the request observed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type DurationFamily = Family<
    DurationLabels,
    HistogramWithExemplars<TraceExemplar>,
    fn() -> HistogramWithExemplars<TraceExemplar>,
>;
type ConnRequestsFamily = Family<ConnLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> HistogramWithExemplars<TraceExemplar> {
    HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
}

fn conn_requests_histogram() -> Histogram {
    Histogram::new(CONN_REQUEST_BUCKETS)
}

/// A label whose distinct values are capped: the first `cap` values seen keep their name.
#[derive(Debug)]
pub struct LabelCap {
    cap: usize,
    seen: HashSet<String>,
}

impl LabelCap {
    pub fn new(cap: usize) -> LabelCap {
        LabelCap {
            cap,
            seen: HashSet::new(),
        }
    }

    /// The label value to use for `v` (`other` once the cap is reached; `unknown` if empty).
    pub fn label(&mut self, v: &str) -> String {
        if v.is_empty() {
            return "unknown".to_string();
        }
        if self.seen.contains(v) {
            return v.to_string();
        }
        if self.seen.len() < self.cap {
            self.seen.insert(v.to_string());
            return v.to_string();
        }
        OTHER.to_string()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Encodes the per-trace series and their eviction count from the LRU, on scrape.
#[derive(Debug)]
struct TraceSeriesCollector {
    lru: Arc<Mutex<TraceLru>>,
}

impl Collector for TraceSeriesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut lru = lock(&self.lru);
        lru.expire(Instant::now());
        let mut series = encoder.encode_descriptor(
            "traceid_trace_requests",
            "HTTP requests per trace id (bounded: LRU with TTL and a cap; see traceid_trace_series_evicted_total).",
            None,
            MetricType::Counter,
        )?;
        for ((trace_id, comm, direction), count) in lru.iter() {
            let labels = TraceLabels {
                trace_id: trace_id.clone(),
                comm: comm.clone(),
                direction,
            };
            ConstCounter::new(count).encode(series.encode_family(&labels)?)?;
        }
        let evicted = ConstCounter::new(lru.evicted());
        evicted.encode(encoder.encode_descriptor(
            "traceid_trace_series_evicted",
            "Per-trace series dropped from traceid_trace_requests_total (cap reached or idle past the TTL).",
            None,
            evicted.metric_type(),
        )?)
    }
}

/// `traceid_tcp_time_wait_sockets{remote,holder}`: the latest census, replaced as a whole.
#[derive(Debug, Default)]
struct TimeWaitCollector {
    by_service: Mutex<Vec<(String, &'static str, i64)>>,
}

impl Collector for TimeWaitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let by_service = lock(&self.by_service);
        let mut enc = encoder.encode_descriptor(
            "traceid_tcp_time_wait_sockets",
            "Sockets in TIME_WAIT per service endpoint (the listening side) and the end that holds them (latest census).",
            None,
            MetricType::Gauge,
        )?;
        for (remote, holder, n) in by_service.iter() {
            let labels = TimeWaitLabels {
                remote: remote.clone(),
                holder,
            };
            ConstGauge::new(*n).encode(enc.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Everything `traceid run` exports. Shared (`Arc<Metrics>`) between the live loop, which
/// observes records, and the HTTP server, which encodes on scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    findings: Family<FindingLabels, Counter>,
    duration: DurationFamily,
    lost: Family<StageLabels, Counter>,
    tcp_opened: Family<ConnOpenedLabels, Counter>,
    tcp_requests: ConnRequestsFamily,
    time_wait: Arc<TimeWaitCollector>,
    traces: Arc<Mutex<TraceLru>>,
    comms: Mutex<LabelCap>,
    namespaces: Mutex<LabelCap>,
    workloads: Mutex<LabelCap>,
    remotes: Mutex<LabelCap>,
    stages: Mutex<LabelCap>,
}

impl Metrics {
    pub fn new(cfg: &MetricsConfig) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "traceid_http_requests",
            "HTTP requests observed, by direction, process and trace-context format (none: no trace context)",
            requests.clone(),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "traceid_findings",
            "Findings on observed requests, by kind and process",
            findings.clone(),
        );
        let traces = Arc::new(Mutex::new(TraceLru::new(
            cfg.trace_series_cap,
            cfg.trace_series_ttl,
        )));
        registry.register_collector(Box::new(TraceSeriesCollector {
            lru: Arc::clone(&traces),
        }));
        let duration: DurationFamily = Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "traceid_http_request_duration",
            "HTTP request duration, request start to end of response; exemplars carry the trace id",
            Unit::Seconds,
            duration.clone(),
        );
        let tcp_opened = Family::<ConnOpenedLabels, Counter>::default();
        registry.register(
            "traceid_tcp_connections_opened",
            "TCP connections opened, by process, remote endpoint and role (client or server)",
            tcp_opened.clone(),
        );
        let tcp_requests: ConnRequestsFamily =
            Family::new_with_constructor(conn_requests_histogram);
        registry.register(
            "traceid_tcp_connection_requests",
            "HTTP requests per TCP connection (connection reuse), by process and remote endpoint",
            tcp_requests.clone(),
        );
        let time_wait = Arc::new(TimeWaitCollector::default());
        registry.register_collector(Box::new(Arc::clone(&time_wait)));
        let lost = Family::<StageLabels, Counter>::default();
        registry.register(
            "traceid_events_lost",
            "Events lost, by the stage that lost them",
            lost.clone(),
        );
        registry.register(
            "traceid_build",
            "traceid build information",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        if cfg.process_metrics {
            registry.register_collector(Box::new(process::ProcessCollector));
        }
        Metrics {
            registry,
            requests,
            findings,
            duration,
            lost,
            tcp_opened,
            tcp_requests,
            time_wait,
            traces,
            comms: Mutex::new(LabelCap::new(cfg.comm_cap)),
            namespaces: Mutex::new(LabelCap::new(cfg.namespace_cap)),
            workloads: Mutex::new(LabelCap::new(cfg.workload_cap)),
            remotes: Mutex::new(LabelCap::new(cfg.remote_cap)),
            stages: Mutex::new(LabelCap::new(cfg.stage_cap)),
        }
    }

    /// Creates `traceid_events_lost_total` at 0 for the stages known up front (the caller's:
    /// the kernel's counters, `decode`...), so `increase()` alerts see the first loss.
    pub fn init_lost_stages<'a>(&self, known: impl IntoIterator<Item = &'a str>) {
        for stage in known {
            let stage = lock(&self.stages).label(stage);
            let _ = self.lost.get_or_create(&StageLabels { stage });
        }
    }

    /// Counts one engine record.
    pub fn observe(&self, r: &Record) {
        self.observe_at(r, Instant::now(), SystemTime::now());
    }

    /// [`Self::observe`] at a given time (monotonic for the TTL, wall clock for exemplars).
    pub fn observe_at(&self, r: &Record, now: Instant, wall: SystemTime) {
        if let Record::Request(q) = r {
            self.observe_request(q, now, wall);
        } else if let Record::Lost(l) = r {
            let stage = lock(&self.stages).label(&l.stage);
            self.lost
                .get_or_create(&StageLabels { stage })
                .inc_by(l.count);
        }
    }

    /// The bounded `namespace` and `workload` labels of a request's process.
    fn owner_labels(&self, q: &RequestRecord) -> OwnerLabels {
        let Some(id) = q.identity.as_deref() else {
            return OwnerLabels::default();
        };
        OwnerLabels {
            namespace: id
                .namespace
                .as_deref()
                .map_or_else(String::new, |n| lock(&self.namespaces).label(n)),
            workload: id
                .workload
                .as_ref()
                .map_or_else(String::new, |w| lock(&self.workloads).label(&w.name)),
        }
    }

    fn observe_request(&self, q: &RequestRecord, now: Instant, wall: SystemTime) {
        let comm = lock(&self.comms).label(&q.comm);
        let owner = self.owner_labels(q);
        let direction = q.direction.as_str();
        self.requests
            .get_or_create(&RequestLabels {
                direction,
                comm: comm.clone(),
                trace_format: q.trace_format.map_or(NO_FORMAT, |f| f.as_str()),
                owner: owner.clone(),
            })
            .inc();
        for f in &q.findings {
            self.findings
                .get_or_create(&FindingLabels {
                    finding: f.as_str(),
                    comm: comm.clone(),
                    owner: owner.clone(),
                })
                .inc();
        }
        if let Some(ms) = q.duration_ms.filter(|d| d.is_finite() && *d >= 0.0) {
            let exemplar = q.trace_id.as_ref().map(|id| TraceExemplar {
                trace_id: truncate(id, EXEMPLAR_TRACE_ID_MAX),
            });
            self.duration
                .get_or_create(&DurationLabels {
                    direction,
                    comm: comm.clone(),
                    owner,
                })
                .observe(ms / 1000.0, exemplar, Some(wall));
        }
        if let Some(id) = &q.trace_id {
            lock(&self.traces).inc((id.clone(), comm, direction), now);
        }
    }

    /// Hook for the connection lifecycle: one TCP connection opened by `comm` toward (or
    /// from) `remote`; `role` is `client` or `server`.
    pub fn tcp_connection_opened(&self, comm: &str, remote: &str, role: &'static str) {
        let comm = lock(&self.comms).label(comm);
        let remote = lock(&self.remotes).label(remote);
        self.tcp_opened
            .get_or_create(&ConnOpenedLabels { comm, remote, role })
            .inc();
    }

    /// Hook for the connection lifecycle: a connection closed after carrying `requests`.
    pub fn tcp_connection_requests(&self, comm: &str, remote: &str, requests: u64) {
        let comm = lock(&self.comms).label(comm);
        let remote = lock(&self.remotes).label(remote);
        self.tcp_requests
            .get_or_create(&ConnLabels { comm, remote })
            .observe(requests as f64);
    }

    /// Hook for the TIME_WAIT census: replaces `traceid_tcp_time_wait_sockets{remote,holder}`
    /// with this census of (service endpoint, holder, sockets); endpoints past the cap are
    /// summed under `other`.
    pub fn set_time_wait_sockets<'a>(
        &self,
        census: impl IntoIterator<Item = (&'a str, Holder, u64)>,
    ) {
        let mut merged: Vec<(String, &'static str, i64)> = Vec::new();
        {
            let mut remotes = lock(&self.remotes);
            for (remote, holder, n) in census {
                let (label, holder) = (remotes.label(remote), holder.label());
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                match merged
                    .iter_mut()
                    .find(|(r, h, _)| *r == label && *h == holder)
                {
                    Some((_, _, v)) => *v = v.saturating_add(n),
                    None => merged.push((label, holder, n)),
                }
            }
        }
        merged.sort();
        *lock(&self.time_wait.by_service) = merged;
    }

    /// Live per-trace series.
    pub fn trace_series(&self) -> usize {
        lock(&self.traces).len()
    }

    /// Per-trace series evicted or expired so far.
    pub fn trace_series_evicted(&self) -> u64 {
        lock(&self.traces).evicted()
    }

    /// The Prometheus text format 0.0.4 (no exemplars).
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the encoders only propagate the writer's errors.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// OpenMetrics 1.0 text, with exemplars and the closing `# EOF`.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// At most `max` characters of `s`.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// The lifecycle's figures feed the `traceid_tcp_*` series.
impl LifecycleObserver for Metrics {
    fn connection_opened(&self, comm: &str, endpoint: &str, role: &'static str) {
        self.tcp_connection_opened(comm, endpoint, role);
    }

    fn connection_closed(&self, comm: &str, endpoint: &str, requests: u64) {
        self.tcp_connection_requests(comm, endpoint, requests);
    }

    fn time_wait(&self, by_service: &[(String, Holder, u64)]) {
        self.set_time_wait_sockets(by_service.iter().map(|(r, h, n)| (r.as_str(), *h, *n)));
    }
}

#[cfg(test)]
mod tests;
