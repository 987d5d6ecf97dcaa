//! The CDN over the S3 protocol (PROTOCOL §3) with aws-sdk-s3: downloader keys for reads,
//! uploader keys for writes, bodies streamed both ways. It never puts a secret into an error
//! or a log line, and the loader never creates a bucket (only the local stack does, with
//! [`ensure_bucket`], on an S3 server of its own).
//!
//! Here: the options, the [`S3Connector`] and the SDK client it configures. In `store` the
//! `ObjectStore` calls (get, ranged get, put), in `body` the turning of an SDK body into the
//! port's byte stream, in `multipart` the upload of a long body in parts and in `errors` the
//! mapping of SDK errors to `StoreError`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedHttpClient, StalledStreamProtectionConfig,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::domain::cdn::{CdnConfig, S3Keys};
use crate::ports::{ObjectStore, ObjectStoreConnector, StoreError};

mod body;
mod errors;
mod multipart;
mod store;

pub use store::S3ObjectStore;

/// Timeouts and the upload part size.
///
/// There is deliberately no total operation timeout: a big part may take many minutes to
/// stream. Instead a connection must open within `connect_timeout`, a response must start
/// within `read_timeout`, and a body (either way) must not stall for longer than
/// `read_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Bodies shorter than this go up as one PutObject, longer ones as a multipart upload
    /// in parts of this size. At least 5 MiB.
    pub part_size: usize,
    /// Parts of a multipart upload in flight at once (at least 1); with the part being
    /// read, an upload holds at most `(parallel_parts + 1) * part_size` bytes.
    pub parallel_parts: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            part_size: 8 * 1024 * 1024,
            parallel_parts: 4,
        }
    }
}

/// Builds [`S3ObjectStore`]s from `cdn.yaml`; one HTTP connection pool (rustls with ring)
/// is shared by every store it builds.
pub struct S3Connector {
    options: S3Options,
    http: SharedHttpClient,
}

impl S3Connector {
    pub fn new(options: S3Options) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        Self { options, http }
    }
}

impl Default for S3Connector {
    fn default() -> Self {
        Self::new(S3Options::default())
    }
}

impl fmt::Debug for S3Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Connector")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreConnector for S3Connector {
    fn connect(&self, cdn: &CdnConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
        Ok(Arc::new(S3ObjectStore::new(
            cdn,
            &self.options,
            self.http.clone(),
        )))
    }
}

/// Creates `bucket` with the uploader's keys unless it exists: for the local stack
/// (`dev --s3-endpoint`) on an S3 server of its own, never for a CDN.
#[cfg(feature = "dev-stack")]
pub async fn ensure_bucket(cdn: &CdnConfig, bucket: &str) -> Result<(), String> {
    let options = S3Options::default();
    let http = S3Connector::new(options.clone()).http;
    let client = build_client(cdn, &cdn.uploader, &options, http);
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(err) => {
            let code = err
                .as_service_error()
                .and_then(|e| aws_sdk_s3::error::ProvideErrorMetadata::code(e).map(str::to_owned));
            match code.as_deref() {
                Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists") => Ok(()),
                _ => Err(format!(
                    "creating the bucket {bucket} at {}: {}",
                    cdn.host,
                    aws_sdk_s3::error::DisplayErrorContext(&err)
                )),
            }
        }
    }
}

fn build_client(
    cdn: &CdnConfig,
    keys: &S3Keys,
    options: &S3Options,
    http: SharedHttpClient,
) -> Client {
    let credentials = Credentials::new(
        keys.access_key.clone(),
        keys.secret_key.expose().to_owned(),
        None,
        None,
        "cdn.yaml",
    );
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(cdn.region.clone()))
        .endpoint_url(cdn.host.clone())
        .force_path_style(true)
        .credentials_provider(credentials)
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(options.connect_timeout)
                .read_timeout(options.read_timeout)
                .disable_operation_timeout()
                .disable_operation_attempt_timeout()
                .build(),
        )
        .stalled_stream_protection(
            StalledStreamProtectionConfig::enabled()
                .grace_period(options.read_timeout)
                .build(),
        )
        .retry_config(RetryConfig::standard())
        // Checksum trailers (aws-chunked) are not spoken by every S3-compatible CDN; the
        // payload is signed anyway.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenSupported)
        .build();
    Client::from_conf(config)
}
