//! What the running service counts, for `GET /metrics` (Prometheus text
//! format 0.0.4): requests by route and status, bytes served, cache lookups,
//! upstream latency and errors, the unlock's state and progress. Upstream
//! calls and cache lookups are counted by decorators around the ports, so the
//! use cases stay as they are. Labels are route templates, methods, statuses
//! and fixed kinds: never a name a client chose, a credential or a key.
//!
//! Hand-written on atomics: the set is small and fixed, and the text format
//! is a few lines of `write!`; a metrics crate would add a registry and
//! dependencies for nothing more.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::app::unlock::UnlockStatus;
use crate::domain::cdn::CdnConfig;
use crate::domain::names::{Folder, ResourceName};
use crate::domain::secret::{SecretBytes, SecretString};
use crate::domain::unlock::UnlockPhase;
use crate::ports::{
    ApiError, BigPartCache, CacheError, CacheLookup, CacheUsage, CacheWriter, CachedEntry,
    Credentials, HeldSpace, ObjectBody, ObjectStore, ObjectStoreConnector, ResourceApi, StoreError,
};
use crate::startup::Ports;

/// The media type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the upstream latency buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

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

/// One kind of upstream call, timed separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpstreamCall {
    ApiLogin,
    ApiGetResource,
    ApiPutResource,
    ApiKeyFragment,
    CdnGet,
    CdnPut,
}

impl UpstreamCall {
    const ALL: [Self; 6] = [
        Self::ApiLogin,
        Self::ApiGetResource,
        Self::ApiPutResource,
        Self::ApiKeyFragment,
        Self::CdnGet,
        Self::CdnPut,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// (`upstream`, `operation`) labels.
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Self::ApiLogin => ("resource_api", "login"),
            Self::ApiGetResource => ("resource_api", "get_resource"),
            Self::ApiPutResource => ("resource_api", "put_resource"),
            Self::ApiKeyFragment => ("resource_api", "key_fragment"),
            Self::CdnGet => ("cdn", "get"),
            Self::CdnPut => ("cdn", "put"),
        }
    }
}

fn api_error_kind(e: &ApiError) -> &'static str {
    match e {
        ApiError::Unauthorized => "unauthorized",
        ApiError::DeviceMismatch => "device_mismatch",
        ApiError::NotFound => "not_found",
        ApiError::Unavailable(_) => "unavailable",
        ApiError::Upstream { .. } => "upstream_status",
        ApiError::Unexpected(_) => "unexpected",
    }
}

fn store_error_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::NoSuchKey(_) => "not_found",
        StoreError::NoSuchBucket(_) => "no_such_bucket",
        StoreError::Unauthorized => "unauthorized",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Unexpected(_) => "unexpected",
    }
}

/// What a cache lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
    Damaged,
    Error,
}

impl CacheResult {
    const ALL: [Self; 5] = [
        Self::Hit,
        Self::Miss,
        Self::Stale,
        Self::Damaged,
        Self::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Damaged => "damaged",
            Self::Error => "error",
        }
    }
}

/// A latency histogram: per-bucket counts (made cumulative when rendered) and a sum.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    over: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        match LATENCY_BUCKETS.iter().position(|bound| secs <= *bound) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// (route template, method, status) of an answered request.
type RequestKey = (String, &'static str, u16);
/// (upstream, operation, kind) of a failed upstream call.
type ErrorKey = (&'static str, &'static str, &'static str);

/// The counters of one running application (tests run several in one process).
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    load_bytes: AtomicU64,
    cache_lookups: [AtomicU64; 5],
    cache_stores: AtomicU64,
    upstream_latency: [Histogram; 6],
    upstream_errors: Mutex<BTreeMap<ErrorKey, u64>>,
}

/// What is read at scrape time rather than counted.
pub struct Gauges {
    pub authenticated: bool,
    /// `None` when the cache could not be read.
    pub cache: Option<CacheUsage>,
    pub unlock: UnlockStatus,
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

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// An answered request; `route` is the matched route template (`/load/{filename}`),
    /// or `unmatched`.
    pub fn record_request(&self, route: &str, method: &axum::http::Method, status: u16) {
        let key = (route.to_owned(), method_label(method), status);
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry(key).or_default() += 1;
    }

    /// Plaintext bytes `/load` handed to a client.
    pub fn add_load_bytes(&self, bytes: u64) {
        self.load_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn record_cache_lookup(&self, result: CacheResult) {
        self.cache_lookups[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_upstream(
        &self,
        call: UpstreamCall,
        elapsed: Duration,
        error: Option<&'static str>,
    ) {
        self.upstream_latency[call.index()].observe(elapsed);
        if let Some(kind) = error {
            self.record_upstream_error(call, kind);
        }
    }

    fn record_upstream_error(&self, call: UpstreamCall, kind: &'static str) {
        let (upstream, operation) = call.labels();
        let mut errors = self
            .upstream_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *errors.entry((upstream, operation, kind)).or_default() += 1;
    }

    /// The whole exposition, counters and `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        self.render_into(&mut out, gauges);
        out
    }

    fn render_into(&self, out: &mut String, gauges: &Gauges) {
        // Writing to a String cannot fail; the results are ignored.
        header(
            out,
            "azaion_build_info",
            "gauge",
            "The running loader's version (always 1).",
        );
        let _ = writeln!(
            out,
            "azaion_build_info{{version=\"{}\"}} 1",
            escape(env!("CARGO_PKG_VERSION"))
        );

        header(
            out,
            "azaion_http_requests_total",
            "counter",
            "Answered HTTP requests by matched route template (or unmatched), method and status.",
        );
        {
            let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            for ((route, method, status), count) in requests.iter() {
                let _ = writeln!(
                    out,
                    "azaion_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {count}",
                    escape(route)
                );
            }
        }

        header(
            out,
            "azaion_load_bytes_total",
            "counter",
            "Decrypted resource bytes sent to clients by POST /load.",
        );
        let _ = writeln!(
            out,
            "azaion_load_bytes_total {}",
            self.load_bytes.load(Ordering::Relaxed)
        );

        header(
            out,
            "azaion_cache_lookups_total",
            "counter",
            "Big-part cache lookups by result: hit, miss, stale (older small part), damaged (bad checksum), error (cache unreadable).",
        );
        for result in CacheResult::ALL {
            let _ = writeln!(
                out,
                "azaion_cache_lookups_total{{result=\"{}\"}} {}",
                result.as_str(),
                self.cache_lookups[result as usize].load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "azaion_cache_stores_total",
            "counter",
            "Big parts committed to the cache (after a download or an upload).",
        );
        let _ = writeln!(
            out,
            "azaion_cache_stores_total {}",
            self.cache_stores.load(Ordering::Relaxed)
        );
        if let Some(usage) = &gauges.cache {
            header(
                out,
                "azaion_cache_bytes",
                "gauge",
                "Bytes held by the big-part cache.",
            );
            let _ = writeln!(out, "azaion_cache_bytes {}", usage.bytes);
            header(
                out,
                "azaion_cache_entries",
                "gauge",
                "Big parts held by the cache.",
            );
            let _ = writeln!(out, "azaion_cache_entries {}", usage.entries);
            if let Some(limit) = usage.limit {
                header(
                    out,
                    "azaion_cache_limit_bytes",
                    "gauge",
                    "The cache's size limit (absent when unlimited).",
                );
                let _ = writeln!(out, "azaion_cache_limit_bytes {limit}");
            }
        }

        header(
            out,
            "azaion_upstream_request_duration_seconds",
            "histogram",
            "Duration of Resource API and CDN calls, retries included; a CDN get until its body starts, a CDN put until the whole body is stored.",
        );
        for call in UpstreamCall::ALL {
            let (upstream, operation) = call.labels();
            let histogram = &self.upstream_latency[call.index()];
            let mut cumulative = 0u64;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += histogram.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "azaion_upstream_request_duration_seconds_bucket{{upstream=\"{upstream}\",operation=\"{operation}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += histogram.over.load(Ordering::Relaxed);
            let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "azaion_upstream_request_duration_seconds_bucket{{upstream=\"{upstream}\",operation=\"{operation}\",le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "azaion_upstream_request_duration_seconds_sum{{upstream=\"{upstream}\",operation=\"{operation}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "azaion_upstream_request_duration_seconds_count{{upstream=\"{upstream}\",operation=\"{operation}\"}} {cumulative}"
            );
        }

        header(
            out,
            "azaion_upstream_errors_total",
            "counter",
            "Failed Resource API and CDN calls by kind (not_found included); read_cut is a CDN body cut mid-transfer.",
        );
        {
            let errors = self
                .upstream_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for ((upstream, operation, kind), count) in errors.iter() {
                let _ = writeln!(
                    out,
                    "azaion_upstream_errors_total{{upstream=\"{upstream}\",operation=\"{operation}\",kind=\"{kind}\"}} {count}"
                );
            }
        }

        header(
            out,
            "azaion_session_authenticated",
            "gauge",
            "1 while the loader holds a working Resource API session.",
        );
        let _ = writeln!(
            out,
            "azaion_session_authenticated {}",
            u8::from(gauges.authenticated)
        );

        let unlock = &gauges.unlock;
        header(
            out,
            "azaion_unlock_state",
            "gauge",
            "The unlock's state: 1 for the current one, 0 for the others.",
        );
        for phase in UNLOCK_PHASES {
            let _ = writeln!(
                out,
                "azaion_unlock_state{{state=\"{}\"}} {}",
                phase.as_str(),
                u8::from(phase == unlock.phase)
            );
        }
        header(
            out,
            "azaion_unlock_bytes_done",
            "gauge",
            "Archive bytes decrypted by the current or last unlock.",
        );
        let _ = writeln!(
            out,
            "azaion_unlock_bytes_done {}",
            unlock.progress.bytes_done
        );
        header(
            out,
            "azaion_unlock_bytes_total",
            "gauge",
            "Size of the archive being unlocked, once known (else 0).",
        );
        let _ = writeln!(
            out,
            "azaion_unlock_bytes_total {}",
            unlock.progress.bytes_total
        );
        header(
            out,
            "azaion_unlock_phase_elapsed_seconds",
            "gauge",
            "Time spent in the current unlock state.",
        );
        let _ = writeln!(
            out,
            "azaion_unlock_phase_elapsed_seconds {}",
            unlock.progress.phase_elapsed.as_secs_f64()
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `ports` with the Resource API, the CDN and the cache wrapped so that every
/// call is counted in `metrics`.
pub fn metered(ports: Ports, metrics: &Arc<Metrics>) -> Ports {
    Ports {
        api: Arc::new(MeteredResourceApi {
            inner: ports.api,
            metrics: metrics.clone(),
        }),
        cdn: Arc::new(MeteredConnector {
            inner: ports.cdn,
            metrics: metrics.clone(),
        }),
        cache: Arc::new(MeteredCache {
            inner: ports.cache,
            metrics: metrics.clone(),
        }),
        ..ports
    }
}

/// Times `call`'s future and counts its error, if any, with `kind`.
async fn timed<T, E>(
    metrics: &Metrics,
    call: UpstreamCall,
    kind: impl Fn(&E) -> &'static str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = future.await;
    metrics.record_upstream(call, started.elapsed(), result.as_ref().err().map(kind));
    result
}

struct MeteredResourceApi {
    inner: Arc<dyn ResourceApi>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl ResourceApi for MeteredResourceApi {
    async fn login(&self, credentials: &Credentials) -> Result<SecretString, ApiError> {
        timed(
            &self.metrics,
            UpstreamCall::ApiLogin,
            api_error_kind,
            self.inner.login(credentials),
        )
        .await
    }

    async fn get_resource(
        &self,
        token: &SecretString,
        folder: Option<&Folder>,
        file_name: &str,
        password: &SecretString,
        hardware: &str,
    ) -> Result<Bytes, ApiError> {
        timed(
            &self.metrics,
            UpstreamCall::ApiGetResource,
            api_error_kind,
            self.inner
                .get_resource(token, folder, file_name, password, hardware),
        )
        .await
    }

    async fn put_resource(
        &self,
        token: &SecretString,
        folder: &Folder,
        file_name: &str,
        data: Bytes,
    ) -> Result<(), ApiError> {
        timed(
            &self.metrics,
            UpstreamCall::ApiPutResource,
            api_error_kind,
            self.inner.put_resource(token, folder, file_name, data),
        )
        .await
    }

    async fn key_fragment(&self, token: &SecretString) -> Result<SecretBytes, ApiError> {
        timed(
            &self.metrics,
            UpstreamCall::ApiKeyFragment,
            api_error_kind,
            self.inner.key_fragment(token),
        )
        .await
    }
}

struct MeteredConnector {
    inner: Arc<dyn ObjectStoreConnector>,
    metrics: Arc<Metrics>,
}

impl ObjectStoreConnector for MeteredConnector {
    fn connect(&self, cdn: &CdnConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let inner = self.inner.connect(cdn)?;
        Ok(Arc::new(MeteredObjectStore {
            inner,
            metrics: self.metrics.clone(),
        }))
    }
}

struct MeteredObjectStore {
    inner: Arc<dyn ObjectStore>,
    metrics: Arc<Metrics>,
}

impl MeteredObjectStore {
    /// Times a read's start and counts its failure, and then its body's cut.
    async fn read(
        &self,
        read: impl Future<Output = Result<ObjectBody, StoreError>>,
    ) -> Result<ObjectBody, StoreError> {
        let body = timed(&self.metrics, UpstreamCall::CdnGet, store_error_kind, read).await?;
        Ok(self.watch_body(body))
    }

    /// Counts a body that fails mid-transfer as a `read_cut`.
    fn watch_body(&self, body: ObjectBody) -> ObjectBody {
        let metrics = self.metrics.clone();
        ObjectBody {
            stream: body
                .stream
                .inspect(move |chunk| {
                    if chunk.is_err() {
                        metrics.record_upstream_error(UpstreamCall::CdnGet, "read_cut");
                    }
                })
                .boxed(),
            ..body
        }
    }
}

#[async_trait]
impl ObjectStore for MeteredObjectStore {
    async fn get(&self, bucket: &Folder, key: &str, from: u64) -> Result<ObjectBody, StoreError> {
        self.read(self.inner.get(bucket, key, from)).await
    }

    async fn get_version(
        &self,
        bucket: &Folder,
        key: &str,
        from: u64,
        version: Option<&str>,
    ) -> Result<ObjectBody, StoreError> {
        self.read(self.inner.get_version(bucket, key, from, version))
            .await
    }

    async fn get_range(
        &self,
        bucket: &Folder,
        key: &str,
        from: u64,
        to: u64,
        version: Option<&str>,
    ) -> Result<ObjectBody, StoreError> {
        self.read(self.inner.get_range(bucket, key, from, to, version))
            .await
    }

    async fn put_tagged(
        &self,
        bucket: &Folder,
        key: &str,
        body: crate::ports::ByteStream,
        small_sha256: Option<&str>,
    ) -> Result<(), StoreError> {
        timed(
            &self.metrics,
            UpstreamCall::CdnPut,
            store_error_kind,
            self.inner.put_tagged(bucket, key, body, small_sha256),
        )
        .await
    }
}

struct MeteredCache {
    inner: Arc<dyn BigPartCache>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl BigPartCache for MeteredCache {
    async fn open(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<CacheLookup, CacheError> {
        let lookup = self.inner.open(folder, name, small_digest).await;
        self.metrics.record_cache_lookup(match &lookup {
            Ok(CacheLookup::Hit(_)) => CacheResult::Hit,
            Ok(CacheLookup::Miss) => CacheResult::Miss,
            Ok(CacheLookup::Stale) => CacheResult::Stale,
            Ok(CacheLookup::Damaged) => CacheResult::Damaged,
            Err(_) => CacheResult::Error,
        });
        lookup
    }

    async fn create(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<Box<dyn CacheWriter>, CacheError> {
        let inner = self.inner.create(folder, name, small_digest).await?;
        Ok(Box::new(MeteredWriter {
            inner,
            metrics: self.metrics.clone(),
        }))
    }

    async fn remove(&self, folder: &Folder, name: &ResourceName) -> Result<(), CacheError> {
        self.inner.remove(folder, name).await
    }

    async fn usage(&self) -> Result<CacheUsage, CacheError> {
        self.inner.usage().await
    }

    fn hold_space(&self) -> HeldSpace {
        self.inner.hold_space()
    }

    async fn make_room(&self) -> Result<(), CacheError> {
        self.inner.make_room().await
    }

    async fn entries(&self) -> Result<Vec<CachedEntry>, CacheError> {
        self.inner.entries().await
    }
}

struct MeteredWriter {
    inner: Box<dyn CacheWriter>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl CacheWriter for MeteredWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), CacheError> {
        self.inner.write(chunk).await
    }

    async fn commit(self: Box<Self>) -> Result<(), CacheError> {
        let metrics = self.metrics;
        self.inner.commit().await?;
        metrics.cache_stores.fetch_add(1, Ordering::Relaxed);
        Ok(())
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

    #[test]
    fn histogram_buckets_are_cumulative_and_count_every_observation() {
        let m = Metrics::new();
        for ms in [1, 7, 7, 300, 60_000] {
            m.record_upstream(UpstreamCall::CdnGet, Duration::from_millis(ms), None);
        }
        let text = m.render(&gauges());
        let bucket = |le: &str| {
            value(
                &text,
                &format!(
                    "azaion_upstream_request_duration_seconds_bucket{{upstream=\"cdn\",operation=\"get\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(bucket("0.005").as_deref(), Some("1"));
        assert_eq!(bucket("0.01").as_deref(), Some("3"));
        assert_eq!(bucket("0.5").as_deref(), Some("4"));
        assert_eq!(bucket("30").as_deref(), Some("4"));
        assert_eq!(bucket("+Inf").as_deref(), Some("5"));
        let count = value(
            &text,
            "azaion_upstream_request_duration_seconds_count{upstream=\"cdn\",operation=\"get\"}",
        );
        assert_eq!(count.as_deref(), Some("5"));
        let sum: f64 = value(
            &text,
            "azaion_upstream_request_duration_seconds_sum{upstream=\"cdn\",operation=\"get\"}",
        )
        .unwrap()
        .parse()
        .unwrap();
        assert!((sum - 60.315).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn the_current_unlock_state_is_the_only_one_set() {
        let text = Metrics::new().render(&gauges());
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
            value(&text, "azaion_unlock_bytes_done").as_deref(),
            Some("5")
        );
        assert_eq!(
            value(&text, "azaion_unlock_bytes_total").as_deref(),
            Some("9")
        );
        assert_eq!(
            value(&text, "azaion_unlock_phase_elapsed_seconds").as_deref(),
            Some("1.5")
        );
    }

    #[test]
    fn every_sample_line_belongs_to_a_declared_family() {
        let m = Metrics::new();
        m.record_request("/load/{filename}", &axum::http::Method::POST, 200);
        m.record_request(
            "unmatched",
            &axum::http::Method::from_bytes(b"BREW").unwrap(),
            404,
        );
        m.record_upstream(UpstreamCall::ApiLogin, Duration::ZERO, Some("unauthorized"));
        let text = m.render(&gauges());
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_owned());
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
            "azaion_upstream_errors_total{upstream=\"resource_api\",operation=\"login\",kind=\"unauthorized\"} 1"
        ));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("/load/{filename}"), "/load/{filename}");
    }

    #[test]
    fn cache_gauges_are_left_out_when_the_cache_cannot_be_read() {
        let mut g = gauges();
        g.cache = None;
        let text = Metrics::new().render(&g);
        assert!(!text.contains("azaion_cache_bytes"));
        assert!(text.contains("azaion_cache_lookups_total{result=\"hit\"} 0"));
    }
}
