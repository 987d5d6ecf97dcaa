//! [`S3ObjectStore`]: one CDN endpoint with its two SDK clients, and the `ObjectStore` calls
//! on it: a read from an offset, a ranged read of one object version, and a put that goes
//! up as one PutObject or, when long, as a multipart upload.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::SharedHttpClient;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use bytes::Bytes;

use super::body::object_body;
use super::errors::{Failure, Op, body_failed};
use super::multipart::{MIN_PART_SIZE, PartReader};
use super::{S3Options, build_client};
use crate::domain::cdn::CdnConfig;
use crate::domain::names::Folder;
use crate::ports::{ByteStream, ObjectBody, ObjectStore, StoreError};

/// One CDN endpoint with its two key pairs.
#[derive(Clone)]
pub struct S3ObjectStore {
    downloader: Client,
    pub(super) uploader: Client,
    pub(super) part_size: usize,
    pub(super) parallel_parts: usize,
    read_timeout: Duration,
}

impl fmt::Debug for S3ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3ObjectStore")
            .field("part_size", &self.part_size)
            .field("parallel_parts", &self.parallel_parts)
            .finish_non_exhaustive()
    }
}

impl S3ObjectStore {
    pub fn new(cdn: &CdnConfig, options: &S3Options, http: SharedHttpClient) -> Self {
        Self {
            downloader: build_client(cdn, &cdn.downloader, options, http.clone()),
            uploader: build_client(cdn, &cdn.uploader, options, http),
            part_size: options.part_size.max(MIN_PART_SIZE),
            parallel_parts: options.parallel_parts.max(1),
            read_timeout: options.read_timeout,
        }
    }
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
        object_body(output, bucket, key, self.read_timeout)
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
        let body = object_body(output, bucket, key, self.read_timeout)?;
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

pub(super) fn metadata_of(small_sha256: Option<&str>) -> Option<HashMap<String, String>> {
    small_sha256.map(|tag| [(SMALL_SHA256.to_owned(), tag.to_owned())].into())
}

pub(super) fn small_sha256_of(metadata: Option<&HashMap<String, String>>) -> Option<String> {
    metadata?
        .get(SMALL_SHA256)
        .map(|tag| tag.trim().to_ascii_lowercase())
}

impl S3ObjectStore {
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
}

pub(super) fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}
