//! Decorators that count what the ports do, for `GET /metrics`: the
//! latency and errors of every Resource API and CDN call, and the cache's
//! lookups and stores. The use cases stay as they are. Labels are fixed
//! kinds: never a name a client chose, a credential or a key.
//!
//! The metric families are declared once, here, with their help text, and
//! registered in the one `prometheus-client` registry that startup builds;
//! the HTTP adapter renders it.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::domain::cdn::CdnConfig;
use crate::domain::names::{Folder, ResourceName};
use crate::domain::secret::{SecretBytes, SecretString};
use crate::ports::{
    ApiError, BigPartCache, CacheError, CacheLookup, CacheUsage, CacheWriter, CachedEntry,
    Credentials, HeldSpace, ObjectBody, ObjectStore, ObjectStoreConnector, ResourceApi, StoreError,
};

/// Upper bounds (seconds) of the upstream latency buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
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
    pub const ALL: [Self; 5] = [
        Self::Hit,
        Self::Miss,
        Self::Stale,
        Self::Damaged,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Damaged => "damaged",
            Self::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    upstream: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    upstream: &'static str,
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// What the decorators count. Cheap to share.
pub struct UpstreamMetrics {
    latency: Family<CallLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
    lookups: Family<LookupLabels, Counter>,
    stores: Counter,
}

impl UpstreamMetrics {
    /// Declares the families in `registry` (which carries the `azaion` prefix).
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self {
            latency: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            lookups: Family::default(),
            stores: Counter::default(),
        };
        // Every series exists from the start, at zero.
        for call in UpstreamCall::ALL {
            let (upstream, operation) = call.labels();
            let _ = metrics.latency.get_or_create(&CallLabels {
                upstream,
                operation,
            });
        }
        for result in CacheResult::ALL {
            let _ = metrics.lookups.get_or_create(&LookupLabels {
                result: result.as_str(),
            });
        }
        registry.register_with_unit(
            "upstream_request_duration",
            "Duration of Resource API and CDN calls, retries included; a CDN get until its body starts, a CDN put until the whole body is stored",
            Unit::Seconds,
            metrics.latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed Resource API and CDN calls by kind (not_found included); read_cut is a CDN body cut mid-transfer",
            metrics.errors.clone(),
        );
        registry.register(
            "cache_lookups",
            "Big-part cache lookups by result: hit, miss, stale (older small part), damaged (bad checksum), error (cache unreadable)",
            metrics.lookups.clone(),
        );
        registry.register(
            "cache_stores",
            "Big parts committed to the cache (after a download or an upload)",
            metrics.stores.clone(),
        );
        Arc::new(metrics)
    }

    pub fn record_upstream(
        &self,
        call: UpstreamCall,
        elapsed: std::time::Duration,
        error: Option<&'static str>,
    ) {
        let (upstream, operation) = call.labels();
        self.latency
            .get_or_create(&CallLabels {
                upstream,
                operation,
            })
            .observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.record_upstream_error(call, kind);
        }
    }

    fn record_upstream_error(&self, call: UpstreamCall, kind: &'static str) {
        let (upstream, operation) = call.labels();
        self.errors
            .get_or_create(&ErrorLabels {
                upstream,
                operation,
                kind,
            })
            .inc();
    }

    pub fn record_cache_lookup(&self, result: CacheResult) {
        self.lookups
            .get_or_create(&LookupLabels {
                result: result.as_str(),
            })
            .inc();
    }
}

/// Wraps the Resource API so that every call is timed and its errors counted.
pub fn metered_api(
    inner: Arc<dyn ResourceApi>,
    metrics: &Arc<UpstreamMetrics>,
) -> Arc<dyn ResourceApi> {
    Arc::new(MeteredResourceApi {
        inner,
        metrics: metrics.clone(),
    })
}

/// Wraps the CDN connector: every store it connects is metered.
pub fn metered_cdn(
    inner: Arc<dyn ObjectStoreConnector>,
    metrics: &Arc<UpstreamMetrics>,
) -> Arc<dyn ObjectStoreConnector> {
    Arc::new(MeteredConnector {
        inner,
        metrics: metrics.clone(),
    })
}

/// Wraps the cache so that lookups and stores are counted.
pub fn metered_cache(
    inner: Arc<dyn BigPartCache>,
    metrics: &Arc<UpstreamMetrics>,
) -> Arc<dyn BigPartCache> {
    Arc::new(MeteredCache {
        inner,
        metrics: metrics.clone(),
    })
}

/// Times `call`'s future and counts its error, if any, with `kind`.
async fn timed<T, E>(
    metrics: &UpstreamMetrics,
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
    metrics: Arc<UpstreamMetrics>,
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
    metrics: Arc<UpstreamMetrics>,
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
    metrics: Arc<UpstreamMetrics>,
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
    metrics: Arc<UpstreamMetrics>,
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

    async fn check_writable(&self) -> Result<(), CacheError> {
        self.inner.check_writable().await
    }

    async fn verify(
        &self,
        folder: &Folder,
        name: &ResourceName,
    ) -> Result<crate::ports::EntryCheck, CacheError> {
        self.inner.verify(folder, name).await
    }
}

struct MeteredWriter {
    inner: Box<dyn CacheWriter>,
    metrics: Arc<UpstreamMetrics>,
}

#[async_trait]
impl CacheWriter for MeteredWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), CacheError> {
        self.inner.write(chunk).await
    }

    async fn commit(self: Box<Self>) -> Result<(), CacheError> {
        let metrics = self.metrics;
        self.inner.commit().await?;
        metrics.stores.inc();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry).unwrap();
        out
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_every_observation() {
        let mut registry = Registry::with_prefix("azaion");
        let m = UpstreamMetrics::register(&mut registry);
        for ms in [1, 7, 7, 300, 60_000] {
            m.record_upstream(UpstreamCall::CdnGet, Duration::from_millis(ms), None);
        }
        let text = render(&registry);
        let bucket = |le: &str| {
            value(
                &text,
                &format!(
                    "azaion_upstream_request_duration_seconds_bucket{{upstream=\"cdn\",operation=\"get\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(bucket("0.005").as_deref(), Some("1"), "{text}");
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
    fn every_series_exists_at_zero_and_errors_are_labelled_by_kind() {
        let mut registry = Registry::with_prefix("azaion");
        let m = UpstreamMetrics::register(&mut registry);
        m.record_upstream(UpstreamCall::ApiLogin, Duration::ZERO, Some("unauthorized"));
        m.record_cache_lookup(CacheResult::Hit);
        let text = render(&registry);
        assert_eq!(
            value(&text, "azaion_cache_lookups_total{result=\"hit\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&text, "azaion_cache_lookups_total{result=\"damaged\"}").as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&text, "azaion_cache_stores_total").as_deref(),
            Some("0")
        );
        assert_eq!(
            value(
                &text,
                "azaion_upstream_errors_total{upstream=\"resource_api\",operation=\"login\",kind=\"unauthorized\"}"
            )
            .as_deref(),
            Some("1"),
            "{text}"
        );
        assert!(text.contains("# TYPE azaion_upstream_errors_total counter"));
        assert!(text.contains("# TYPE azaion_upstream_request_duration_seconds histogram"));
    }
}
