//! The CDN over the S3 protocol (PROTOCOL §3) with aws-sdk-s3: downloader keys for reads,
//! uploader keys for writes, bodies streamed both ways. It never creates a bucket and never
//! puts a secret into an error or a log line.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedHttpClient, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::domain::cdn::{CdnConfig, S3Keys};
use crate::domain::names::Folder;
use crate::ports::{ByteStream, ObjectBody, ObjectStore, ObjectStoreConnector, StoreError};

/// The smallest part S3 accepts in a multipart upload (all but the last part).
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// S3 allows at most this many parts in one multipart upload.
const MAX_PARTS: i32 = 10_000;

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
    /// in parts of this size (at most two parts are held in memory). At least 5 MiB.
    pub part_size: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            part_size: 8 * 1024 * 1024,
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

/// One CDN endpoint with its two key pairs.
#[derive(Clone)]
pub struct S3ObjectStore {
    downloader: Client,
    uploader: Client,
    part_size: usize,
    read_timeout: Duration,
}

impl fmt::Debug for S3ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3ObjectStore")
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

impl S3ObjectStore {
    pub fn new(cdn: &CdnConfig, options: &S3Options, http: SharedHttpClient) -> Self {
        Self {
            downloader: build_client(cdn, &cdn.downloader, options, http.clone()),
            uploader: build_client(cdn, &cdn.uploader, options, http),
            part_size: options.part_size.max(MIN_PART_SIZE),
            read_timeout: options.read_timeout,
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

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn get(&self, bucket: &Folder, key: &str, from: u64) -> Result<ObjectBody, StoreError> {
        let mut request = self
            .downloader
            .get_object()
            .bucket(bucket.as_str())
            .key(key);
        if from > 0 {
            request = request.range(format!("bytes={from}-"));
        }
        let output = match request.send().await {
            Ok(output) => output,
            Err(err) => {
                let failure = Failure::from_sdk(err);
                if from > 0 && failure.is_range_not_satisfiable() {
                    return self.get_past_the_end(bucket, key, from).await;
                }
                return Err(failure.into_store_error(Op::Get, bucket, key));
            }
        };
        self.body_of(output, bucket, key)
    }

    async fn get_range(
        &self,
        bucket: &Folder,
        key: &str,
        from: u64,
        to: u64,
        version: Option<&str>,
    ) -> Result<ObjectBody, StoreError> {
        if to <= from {
            return self.get_past_the_end(bucket, key, from).await;
        }
        let output = self
            .downloader
            .get_object()
            .bucket(bucket.as_str())
            .key(key)
            .range(format!("bytes={from}-{}", to - 1))
            .send()
            .await
            .map_err(|err| Failure::from_sdk(err).into_store_error(Op::Get, bucket, key))?;
        if let (Some(wanted), Some(found)) = (version, output.e_tag())
            && wanted != found
        {
            return Err(StoreError::Unexpected(format!(
                "{bucket}/{key} was replaced during the download"
            )));
        }
        let body = self.body_of(output, bucket, key)?;
        if body.len != to - from {
            return Err(StoreError::Unexpected(format!(
                "GetObject {bucket}/{key} bytes {from}..{to} answered {} bytes",
                body.len
            )));
        }
        Ok(body)
    }

    async fn put_tagged(
        &self,
        bucket: &Folder,
        key: &str,
        body: ByteStream,
        small_sha256: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut parts = PartReader::new(body, self.part_size);
        let (first, last) = parts.next_part().await.map_err(body_failed)?;
        if last {
            return self.put_single(bucket, key, first, small_sha256).await;
        }
        self.put_multipart(bucket, key, first, parts, small_sha256)
            .await
    }
}

/// The user metadata key of PROTOCOL §5.4 (S3 sends it as `x-amz-meta-small-sha256`).
const SMALL_SHA256: &str = "small-sha256";

fn metadata_of(small_sha256: Option<&str>) -> Option<std::collections::HashMap<String, String>> {
    small_sha256.map(|tag| [(SMALL_SHA256.to_owned(), tag.to_owned())].into())
}

fn small_sha256_of(metadata: Option<&std::collections::HashMap<String, String>>) -> Option<String> {
    metadata?
        .get(SMALL_SHA256)
        .map(|tag| tag.trim().to_ascii_lowercase())
}

impl S3ObjectStore {
    /// A GetObject answer as a body: its announced length, ETag and bytes.
    fn body_of(
        &self,
        output: GetObjectOutput,
        bucket: &Folder,
        key: &str,
    ) -> Result<ObjectBody, StoreError> {
        let len = output
            .content_length()
            .and_then(|len| u64::try_from(len).ok())
            .ok_or_else(|| {
                StoreError::Unexpected(format!(
                    "GetObject {bucket}/{key} answered without a content length"
                ))
            })?;
        Ok(ObjectBody {
            len,
            version: output.e_tag().map(str::to_owned),
            small_sha256: small_sha256_of(output.metadata()),
            tail: None,
            stream: body_stream(output.body, self.read_timeout),
        })
    }
    /// S3 answers 416 for a range that starts at the very end; a reader resuming a complete
    /// object should get an empty body then, and an error only when it asked past the end.
    async fn get_past_the_end(
        &self,
        bucket: &Folder,
        key: &str,
        from: u64,
    ) -> Result<ObjectBody, StoreError> {
        let head = self
            .downloader
            .head_object()
            .bucket(bucket.as_str())
            .key(key)
            .send()
            .await
            .map_err(|err| Failure::from_sdk(err).into_store_error(Op::Get, bucket, key))?;
        let len = head
            .content_length()
            .and_then(|len| u64::try_from(len).ok());
        if len == Some(from) {
            Ok(ObjectBody {
                len: 0,
                version: head.e_tag().map(str::to_owned),
                small_sha256: small_sha256_of(head.metadata()),
                tail: None,
                stream: Box::pin(futures::stream::empty()),
            })
        } else {
            Err(StoreError::Unexpected(format!(
                "read of {bucket}/{key} from byte {from} starts past its end"
            )))
        }
    }

    async fn put_single(
        &self,
        bucket: &Folder,
        key: &str,
        body: Bytes,
        small_sha256: Option<&str>,
    ) -> Result<(), StoreError> {
        self.uploader
            .put_object()
            .bucket(bucket.as_str())
            .key(key)
            .set_metadata(metadata_of(small_sha256))
            .content_length(len_i64(body.len()))
            .body(SdkByteStream::from(body))
            .send()
            .await
            .map_err(|err| Failure::from_sdk(err).into_store_error(Op::Put, bucket, key))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        bucket: &Folder,
        key: &str,
        first: Bytes,
        mut parts: PartReader,
        small_sha256: Option<&str>,
    ) -> Result<(), StoreError> {
        let created = self
            .uploader
            .create_multipart_upload()
            .bucket(bucket.as_str())
            .key(key)
            .set_metadata(metadata_of(small_sha256))
            .send()
            .await
            .map_err(|err| Failure::from_sdk(err).into_store_error(Op::Put, bucket, key))?;
        let upload_id = created.upload_id().map(str::to_owned).ok_or_else(|| {
            StoreError::Unexpected(format!(
                "CreateMultipartUpload {bucket}/{key} answered without an upload id"
            ))
        })?;
        let mut guard = AbortOnDrop {
            client: self.uploader.clone(),
            bucket: bucket.as_str().to_owned(),
            key: key.to_owned(),
            upload_id: Some(upload_id.clone()),
        };

        let result = self
            .upload_parts(bucket, key, &upload_id, first, &mut parts)
            .await;
        match result {
            Ok(()) => {
                guard.upload_id = None;
                Ok(())
            }
            Err(err) => {
                guard.abort_now().await;
                Err(err)
            }
        }
    }

    /// Uploads part N while reading part N+1 from the body, then completes the upload.
    async fn upload_parts(
        &self,
        bucket: &Folder,
        key: &str,
        upload_id: &str,
        first: Bytes,
        parts: &mut PartReader,
    ) -> Result<(), StoreError> {
        let mut completed = Vec::new();
        let mut part = first;
        let mut last = false;
        let mut number: i32 = 1;
        loop {
            if number > MAX_PARTS {
                return Err(StoreError::Unexpected(format!(
                    "{bucket}/{key} needs more than {MAX_PARTS} parts of {} bytes",
                    self.part_size
                )));
            }
            let upload = self.upload_part(bucket, key, upload_id, number, part);
            if last {
                completed.push(upload.await?);
                break;
            }
            let (uploaded, next) = tokio::join!(upload, parts.next_part());
            completed.push(uploaded?);
            let (next_part, next_last) = next.map_err(body_failed)?;
            if next_part.is_empty() {
                break;
            }
            part = next_part;
            last = next_last;
            number += 1;
        }
        self.uploader
            .complete_multipart_upload()
            .bucket(bucket.as_str())
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| Failure::from_sdk(err).into_store_error(Op::Put, bucket, key))?;
        Ok(())
    }

    async fn upload_part(
        &self,
        bucket: &Folder,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, StoreError> {
        let output = self
            .uploader
            .upload_part()
            .bucket(bucket.as_str())
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len_i64(body.len()))
            .body(SdkByteStream::from(body))
            .send()
            .await
            .map_err(|err| Failure::from_sdk(err).into_store_error(Op::Put, bucket, key))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(output.e_tag().map(str::to_owned))
            .build())
    }
}

fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

fn body_failed(err: io::Error) -> StoreError {
    StoreError::Unexpected(format!("the body to upload failed: {err}"))
}

/// At most this many chunks that arrived together are joined into one.
const GATHER_READY: usize = 64;

/// Adapts the SDK body to the port's stream, chunk by chunk; a chunk that takes longer than
/// `idle` to arrive ends the stream with `TimedOut`.
fn body_stream(body: SdkByteStream, idle: Duration) -> ByteStream {
    Box::pin(
        timed_body(body, idle)
            .ready_chunks(GATHER_READY)
            .flat_map(|ready| futures::stream::iter(gather(ready))),
    )
}

/// The body's chunks as they come, ending in an error if none comes for `idle`.
fn timed_body(
    body: SdkByteStream,
    idle: Duration,
) -> impl futures::Stream<Item = io::Result<Bytes>> {
    futures::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
            Ok(Some(Err(err))) => Some((Err(io::Error::from(err)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the CDN stopped sending the object",
                )),
                None,
            )),
        }
    })
}

/// Joins chunks that were ready at once into one (an error stays last), so
/// the decryption, the cache and the client see a few large chunks instead of
/// the many small ones a local server hands over: per-chunk costs (a task
/// wake-up, a write call) are paid per 100s of KiB, not per 4 KiB. Chunks
/// are never held back waiting for more.
fn gather(ready: Vec<io::Result<Bytes>>) -> Vec<io::Result<Bytes>> {
    if ready.len() <= 1 {
        return ready;
    }
    let mut out = Vec::with_capacity(2);
    // Sized once: growing by doubling would copy the bytes again and again,
    // and leave up to twice their size allocated behind the frozen chunk.
    let size = ready
        .iter()
        .map_while(|item| item.as_ref().ok().map(Bytes::len))
        .sum();
    let mut joined = BytesMut::with_capacity(size);
    for item in ready {
        match item {
            Ok(chunk) => joined.extend_from_slice(&chunk),
            Err(e) => {
                if !joined.is_empty() {
                    out.push(Ok(joined.split().freeze()));
                }
                out.push(Err(e));
            }
        }
    }
    if !joined.is_empty() {
        out.push(Ok(joined.freeze()));
    }
    out
}

/// Cuts a stream of unknown length into parts of `part_size` bytes, telling which is last.
struct PartReader {
    body: Option<ByteStream>,
    buf: BytesMut,
    part_size: usize,
}

impl PartReader {
    fn new(body: ByteStream, part_size: usize) -> Self {
        Self {
            body: Some(body),
            buf: BytesMut::new(),
            part_size,
        }
    }

    /// The next part (empty only at the end) and whether it is the last one. Reads one
    /// chunk past the part, so that a body of exactly one part is known to be one.
    async fn next_part(&mut self) -> io::Result<(Bytes, bool)> {
        self.buf
            .reserve(self.part_size.saturating_sub(self.buf.len()));
        while self.buf.len() <= self.part_size {
            let Some(body) = self.body.as_mut() else {
                break;
            };
            match body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(err)) => {
                    self.body = None;
                    return Err(err);
                }
                None => self.body = None,
            }
        }
        let part = if self.buf.len() > self.part_size {
            self.buf.split_to(self.part_size).freeze()
        } else {
            self.buf.split().freeze()
        };
        let last = self.body.is_none() && self.buf.is_empty();
        Ok((part, last))
    }
}

/// Aborts a multipart upload left unfinished, also when the `put` future is dropped.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl AbortOnDrop {
    async fn abort_now(&mut self) {
        if let Some(upload_id) = self.upload_id.take() {
            abort(&self.client, &self.bucket, &self.key, &upload_id).await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, bucket, key) = (
                self.client.clone(),
                std::mem::take(&mut self.bucket),
                std::mem::take(&mut self.key),
            );
            runtime.spawn(async move { abort(&client, &bucket, &key, &upload_id).await });
        }
    }
}

async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let result = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(err) = result {
        tracing::warn!(
            bucket,
            key,
            error = %DisplayErrorContext(&err),
            "could not abort an unfinished multipart upload"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Put,
}

/// What went wrong with one SDK call, reduced to what the mapping needs.
enum Failure {
    Service {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    Unreachable(String),
    Other(String),
}

impl Failure {
    fn from_sdk<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(service) => Self::Service {
                status: service.raw().status().as_u16(),
                code: service.err().code().map(str::to_owned),
                message: service.err().message().map(str::to_owned),
            },
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
                Self::Unreachable(DisplayErrorContext(&err).to_string())
            }
            _ => Self::Other(DisplayErrorContext(&err).to_string()),
        }
    }

    fn is_range_not_satisfiable(&self) -> bool {
        matches!(self, Self::Service { status: 416, .. })
            || matches!(self, Self::Service { code: Some(code), .. } if code == "InvalidRange")
    }

    fn into_store_error(self, op: Op, bucket: &Folder, key: &str) -> StoreError {
        let (status, code, message) = match self {
            Self::Unreachable(reason) => return StoreError::Unavailable(reason),
            Self::Other(reason) => return StoreError::Unexpected(reason),
            Self::Service {
                status,
                code,
                message,
            } => (status, code, message),
        };
        match (code.as_deref(), status, op) {
            (Some("NoSuchKey"), _, _) => StoreError::NoSuchKey(key.to_owned()),
            (Some("NoSuchBucket"), _, _) => StoreError::NoSuchBucket(bucket.to_string()),
            (
                Some(
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "AccessDenied"
                    | "NotSignedUp"
                    | "ExpiredToken"
                    | "InvalidToken",
                ),
                _,
                _,
            )
            | (_, 401 | 403, _) => StoreError::Unauthorized,
            (None, 404, Op::Get) => StoreError::NoSuchKey(key.to_owned()),
            (None, 404, Op::Put) => StoreError::NoSuchBucket(bucket.to_string()),
            (_, 503, _) => StoreError::Unavailable(describe(status, code, message)),
            _ => StoreError::Unexpected(describe(status, code, message)),
        }
    }
}

fn describe(status: u16, code: Option<String>, message: Option<String>) -> String {
    format!(
        "HTTP {status} {}: {}",
        code.as_deref().unwrap_or("(no code)"),
        message.as_deref().unwrap_or("(no message)")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gather_joins_ready_chunks_in_order_and_keeps_an_error_last() {
        let ok = |s: &str| Ok(Bytes::copy_from_slice(s.as_bytes()));
        let texts = |v: Vec<io::Result<Bytes>>| -> Vec<Result<String, String>> {
            v.into_iter()
                .map(|r| {
                    r.map(|b| String::from_utf8(b.to_vec()).unwrap())
                        .map_err(|e| e.to_string())
                })
                .collect()
        };
        assert_eq!(texts(gather(vec![])), vec![]);
        assert_eq!(texts(gather(vec![ok("one")])), vec![Ok("one".to_owned())]);
        assert_eq!(
            texts(gather(vec![ok("ab"), ok("cd"), ok("e")])),
            vec![Ok("abcde".to_owned())]
        );
        let cut = || Err(io::Error::other("cut"));
        assert_eq!(
            texts(gather(vec![ok("ab"), ok("cd"), cut()])),
            vec![Ok("abcd".to_owned()), Err("cut".to_owned())]
        );
        assert_eq!(texts(gather(vec![cut()])), vec![Err("cut".to_owned())]);
    }

    async fn parts_of(data: &[u8], chunks: &[usize], part_size: usize) -> Vec<(Vec<u8>, bool)> {
        let mut pieces: Vec<io::Result<Bytes>> = Vec::new();
        let mut at = 0;
        for &len in chunks.iter().cycle().take(data.len() + 1) {
            if at >= data.len() {
                break;
            }
            let end = (at + len).min(data.len());
            pieces.push(Ok(Bytes::copy_from_slice(&data[at..end])));
            at = end;
        }
        let mut reader = PartReader::new(Box::pin(futures::stream::iter(pieces)), part_size);
        let mut parts = Vec::new();
        loop {
            let (part, last) = reader.next_part().await.unwrap();
            if part.is_empty() && !last {
                parts.push((Vec::new(), false));
                break;
            }
            parts.push((part.to_vec(), last));
            if last {
                break;
            }
        }
        parts
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn a_body_of_exactly_one_part_is_known_to_be_the_last() {
        let parts = run(parts_of(&[1, 2, 3, 4], &[4], 4));
        assert_eq!(parts, vec![(vec![1, 2, 3, 4], true)]);
        let parts = run(parts_of(&[], &[4], 4));
        assert_eq!(parts, vec![(vec![], true)]);
    }

    #[test]
    fn a_failing_body_fails_the_part() {
        let body =
            futures::stream::iter([Ok(Bytes::from_static(b"ab")), Err(io::Error::other("x"))]);
        let mut reader = PartReader::new(Box::pin(body), 4);
        assert!(run(reader.next_part()).is_err());
    }

    proptest! {
        #[test]
        fn any_chunking_gives_whole_parts_that_join_to_the_body(
            len in 0usize..200,
            chunks in proptest::collection::vec(1usize..40, 1..6),
            part_size in 1usize..32,
        ) {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let parts = run(parts_of(&data, &chunks, part_size));
            let (last, rest) = parts.split_last().unwrap();
            prop_assert!(last.1, "the last part is marked last");
            for (part, is_last) in rest {
                prop_assert_eq!(part.len(), part_size);
                prop_assert!(!is_last);
            }
            prop_assert!(last.0.len() <= part_size);
            prop_assert!(!last.0.is_empty() || len == 0, "only an empty body has an empty part");
            let joined: Vec<u8> = parts.iter().flat_map(|(p, _)| p.clone()).collect();
            prop_assert_eq!(joined, data);
        }
    }
}
