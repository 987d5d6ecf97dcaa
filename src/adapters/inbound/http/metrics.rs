//! `GET /metrics` in the Prometheus text format 0.0.4: what the HTTP API
//! counts (requests by route, method and status; their latency; bytes
//! served), what is read at scrape time (session, cache usage, the unlock's
//! state and progress, the build), and the process itself (RSS, CPU, open
//! descriptors). The upstream and cache families are the outbound
//! decorators'; all share one `prometheus-client` registry.
//!
//! Names follow the Prometheus conventions: base units at the end,
//! `_total` only on counters. Labels are route templates, methods, statuses
//! and fixed kinds: never a name a client chose, a credential or a key.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::app::unlock::UnlockStatus;
use crate::domain::unlock::UnlockPhase;
use crate::ports::CacheUsage;

/// The media type of the exposition format.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the request latency buckets (a response's head).
const REQUEST_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// Every unlock state, in the order of PROTOCOL §6.
const UNLOCK_PHASES: [UnlockPhase; 7] = [
    UnlockPhase::Idle,
    UnlockPhase::Authenticating,
    UnlockPhase::DownloadingKey,
    UnlockPhase::Decrypting,
    UnlockPhase::LoadingImages,
    UnlockPhase::Ready,
    UnlockPhase::Error,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    /// The AES implementation: aes-ni, armv8 or software.
    crypto: &'static str,
}

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// What is read at scrape time rather than counted.
pub struct Gauges {
    pub authenticated: bool,
    /// `None` when the cache could not be read.
    pub cache: Option<CacheUsage>,
    pub unlock: UnlockStatus,
}

/// The registry and the HTTP API's own families.
pub struct HttpMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    load_bytes: Counter,
    upload_bytes: Counter,
}

/// The method as a label: the standard ones by name, anything else as `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

impl HttpMetrics {
    /// Adds the HTTP families to `registry` (which the outbound decorators
    /// have registered theirs in) and keeps it for rendering.
    pub fn new(mut registry: Registry) -> Arc<Self> {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(request_histogram);
        let load_bytes = Counter::default();
        let upload_bytes = Counter::default();
        registry.register(
            "http_requests",
            "Answered HTTP requests by matched route template (or unmatched), method and status",
            requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response head, by matched route template and method (a streamed body goes on after)",
            Unit::Seconds,
            durations.clone(),
        );
        registry.register_with_unit(
            "load",
            "Decrypted resource bytes sent to clients by POST /load",
            Unit::Bytes,
            load_bytes.clone(),
        );
        registry.register_with_unit(
            "upload",
            "Encrypted bytes (small and big part) stored by completed POST /upload",
            Unit::Bytes,
            upload_bytes.clone(),
        );
        Arc::new(Self {
            registry,
            requests,
            durations,
            load_bytes,
            upload_bytes,
        })
    }

    /// An answered request; `route` is the matched route template
    /// (`/load/{filename}`), or `unmatched`.
    pub fn record_request(
        &self,
        route: &str,
        method: &axum::http::Method,
        status: u16,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method,
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Plaintext bytes `/load` handed to a client.
    pub fn add_load_bytes(&self, bytes: u64) {
        self.load_bytes.inc_by(bytes);
    }

    /// Encrypted bytes a completed upload stored (small and big part).
    pub fn add_upload_bytes(&self, bytes: u64) {
        self.upload_bytes.inc_by(bytes);
    }

    /// The whole exposition: every registered family, then `gauges` and the
    /// process's figures as read now.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        let _ = prometheus_client::encoding::prometheus_text::encode(
            &mut out,
            &scrape_registry(gauges),
        );
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &process_registry());
        out
    }
}

fn gauge(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    g
}

fn float_gauge(value: f64) -> Gauge<f64, AtomicU64> {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    g
}

/// The values read at scrape time, as one-off gauges.
fn scrape_registry(gauges: &Gauges) -> Registry {
    let mut r = Registry::with_prefix("azaion");
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            crypto: crate::domain::cipher::CryptoBackend::detect().as_str(),
        })
        .set(1);
    r.register(
        "build_info",
        "The running loader's version and AES implementation (always 1)",
        build,
    );
    r.register(
        "session_authenticated",
        "1 while the loader holds a working Resource API session",
        gauge(u64::from(gauges.authenticated)),
    );
    if let Some(usage) = &gauges.cache {
        r.register_with_unit(
            "cache",
            "Bytes held by the big-part cache, writes in progress and held uploads included",
            Unit::Bytes,
            gauge(usage.bytes),
        );
        r.register(
            "cache_entries",
            "Big parts held by the cache",
            gauge(usage.entries),
        );
        if let Some(limit) = usage.limit {
            r.register_with_unit(
                "cache_limit",
                "The cache's size limit (absent when unlimited)",
                Unit::Bytes,
                gauge(limit),
            );
        }
    }
    let unlock = &gauges.unlock;
    let states = Family::<StateLabels, Gauge>::default();
    for phase in UNLOCK_PHASES {
        states
            .get_or_create(&StateLabels {
                state: phase.as_str(),
            })
            .set(i64::from(phase == unlock.phase));
    }
    r.register(
        "unlock_state",
        "The unlock's state: 1 for the current one, 0 for the others",
        states,
    );
    r.register_with_unit(
        "unlock_decrypted",
        "Archive bytes decrypted by the current or last unlock",
        Unit::Bytes,
        gauge(unlock.progress.bytes_done),
    );
    r.register_with_unit(
        "unlock_archive",
        "Size of the archive being unlocked, once known (else 0)",
        Unit::Bytes,
        gauge(unlock.progress.bytes_total),
    );
    r.register_with_unit(
        "unlock_phase_elapsed",
        "Time spent in the current unlock state",
        Unit::Seconds,
        float_gauge(unlock.progress.phase_elapsed.as_secs_f64()),
    );
    r
}

/// The process's own figures, the standard `process_*` families, from
/// `/proc/self` (left out where it cannot be read).
fn process_registry() -> Registry {
    let mut r = Registry::with_prefix("process");
    if let Some(stat) = ProcStat::read() {
        r.register_with_unit(
            "resident_memory",
            "Resident memory size",
            Unit::Bytes,
            gauge(stat.rss_bytes),
        );
        let cpu = Counter::<f64, AtomicU64>::default();
        cpu.inc_by(stat.cpu_seconds);
        r.register_with_unit("cpu", "User and system CPU time spent", Unit::Seconds, cpu);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        r.register(
            "open_fds",
            "Open file descriptors",
            gauge(fds.count() as u64),
        );
    }
    r
}

/// The fields of `/proc/self/stat` that the metrics need.
#[derive(Debug, PartialEq)]
struct ProcStat {
    cpu_seconds: f64,
    rss_bytes: u64,
}

impl ProcStat {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let ticks = rustix::param::clock_ticks_per_second();
        let page = rustix::param::page_size() as u64;
        Self::parse(&stat, ticks, page)
    }

    /// `utime` and `stime` (fields 14, 15) in clock ticks, `rss` (field 24)
    /// in pages. The command name (field 2) may hold spaces and parentheses,
    /// so fields are counted from the last `)`.
    fn parse(stat: &str, ticks_per_second: u64, page_size: u64) -> Option<Self> {
        let after_name = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // after_name starts at field 3 (state).
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        let (utime, stime, rss) = (field(14)?, field(15)?, field(24)?);
        Some(Self {
            cpu_seconds: (utime + stime) as f64 / ticks_per_second.max(1) as f64,
            rss_bytes: rss * page_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::unlock::UnlockProgress;

    fn gauges() -> Gauges {
        Gauges {
            authenticated: true,
            cache: Some(CacheUsage {
                bytes: 10,
                entries: 1,
                limit: Some(100),
            }),
            unlock: UnlockStatus {
                phase: UnlockPhase::Decrypting,
                error: None,
                progress: UnlockProgress {
                    bytes_done: 5,
                    bytes_total: 9,
                    phase_elapsed: Duration::from_millis(1500),
                },
            },
        }
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    fn metrics() -> Arc<HttpMetrics> {
        HttpMetrics::new(Registry::with_prefix("azaion"))
    }

    #[test]
    fn the_current_unlock_state_is_the_only_one_set() {
        let text = metrics().render(&gauges());
        for phase in UNLOCK_PHASES {
            let expected = if phase == UnlockPhase::Decrypting {
                "1"
            } else {
                "0"
            };
            assert_eq!(
                value(&text, &format!("azaion_unlock_state{{state=\"{phase}\"}}")).as_deref(),
                Some(expected),
                "{phase}"
            );
        }
        assert_eq!(
            value(&text, "azaion_unlock_decrypted_bytes").as_deref(),
            Some("5")
        );
        assert_eq!(
            value(&text, "azaion_unlock_archive_bytes").as_deref(),
            Some("9")
        );
        assert_eq!(
            value(&text, "azaion_unlock_phase_elapsed_seconds").as_deref(),
            Some("1.5")
        );
    }

    #[test]
    fn every_sample_line_belongs_to_a_declared_family() {
        let m = metrics();
        m.record_request(
            "/load/{filename}",
            &axum::http::Method::POST,
            200,
            Duration::from_millis(3),
        );
        m.record_request(
            "unmatched",
            &axum::http::Method::from_bytes(b"BREW").unwrap(),
            404,
            Duration::ZERO,
        );
        let text = m.render(&gauges());
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(!declared.contains(&name), "{name} declared twice");
                declared.push(name);
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|f| declared.iter().any(|d| d == f))
                    .unwrap_or(name);
                assert!(declared.iter().any(|d| d == family), "{line}");
            }
        }
        assert!(text.contains(
            "azaion_http_requests_total{route=\"unmatched\",method=\"other\",status=\"404\"} 1"
        ));
        assert!(text.contains(
            "azaion_http_request_duration_seconds_count{route=\"/load/{filename}\",method=\"POST\"} 1"
        ));
        let crypto = crate::domain::cipher::CryptoBackend::detect().as_str();
        assert!(
            text.contains(&format!(
                "azaion_build_info{{version=\"{}\",crypto=\"{crypto}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        for family in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(declared.iter().any(|d| d == family), "{family}: {text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let m = metrics();
        m.record_request("/a\"b\\c\nd", &axum::http::Method::GET, 200, Duration::ZERO);
        let text = m.render(&gauges());
        assert!(text.contains("route=\"/a\\\"b\\\\c\\nd\""), "{text}");
    }

    #[test]
    fn cache_gauges_are_left_out_when_the_cache_cannot_be_read() {
        let mut g = gauges();
        g.cache = None;
        let text = metrics().render(&g);
        assert!(!text.contains("azaion_cache_bytes"));
        assert!(!text.contains("azaion_cache_entries"));
        let text = metrics().render(&gauges());
        assert_eq!(value(&text, "azaion_cache_bytes").as_deref(), Some("10"));
        assert_eq!(
            value(&text, "azaion_cache_limit_bytes").as_deref(),
            Some("100")
        );
    }

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as the kernel allows.
        let stat = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 4 0 100 123456 300 18446744073709551615";
        let parsed = ProcStat::parse(stat, 100, 4096).unwrap();
        assert_eq!(
            parsed,
            ProcStat {
                cpu_seconds: 4.0,
                rss_bytes: 300 * 4096
            }
        );
        assert_eq!(ProcStat::parse("garbage", 100, 4096), None);
        assert_eq!(ProcStat::parse("1 (x) S 1 2", 100, 4096), None);
    }

    #[test]
    fn the_process_figures_are_read_from_proc() {
        let stat = ProcStat::read().expect("/proc/self/stat");
        assert!(stat.rss_bytes > 1 << 20, "{stat:?}");
    }
}
