//! The S3 CDN holding big parts (PROTOCOL §3): bucket `{folder}`, key `{name}.big`.

use std::sync::Arc;

use async_trait::async_trait;

use super::ByteStream;
use crate::domain::cdn::CdnConfig;
use crate::domain::names::Folder;

/// An object's bytes as a stream, with the length the store announced.
pub struct ObjectBody {
    /// Length of this body (for a ranged read: of the range).
    pub len: u64,
    /// The object's version (S3: its ETag), when the store tells it.
    pub version: Option<String>,
    /// The body's last bytes (up to `TAIL_LEN`), when the source knew them,
    /// checked, before streaming: a cache reads its last block when it opens
    /// an entry. They give the plaintext's exact length up front.
    pub tail: Option<bytes::Bytes>,
    /// The object's user metadata `small-sha256` (PROTOCOL §5.4): the hex
    /// SHA-256 of the small part uploaded with it; `None` when the object
    /// has none (older tools) or the source is not the CDN.
    pub small_sha256: Option<String>,
    pub stream: ByteStream,
}

/// How many last bytes of a body `ObjectBody::tail` holds: two AES blocks,
/// the last one and the one it chains from.
pub const TAIL_LEN: usize = 32;

impl std::fmt::Debug for ObjectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBody")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the CDN has no object {0}")]
    NoSuchKey(String),
    #[error("the CDN has no bucket {0}")]
    NoSuchBucket(String),
    #[error("the CDN refused the access keys")]
    Unauthorized,
    #[error("the CDN is unreachable: {0}")]
    Unavailable(String),
    #[error("the CDN failed: {0}")]
    Unexpected(String),
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Reads `key` from byte `from` on (0 for the whole object), streamed.
    /// Errors: `NoSuchKey`, `NoSuchBucket`, `Unauthorized`, `Unavailable`, `Unexpected`.
    async fn get(&self, bucket: &Folder, key: &str, from: u64) -> Result<ObjectBody, StoreError>;

    /// Like `get`, but only while the object is still `version` (a read resumed after a
    /// cut must not splice two versions together). A replaced object is `Unexpected`.
    async fn get_version(
        &self,
        bucket: &Folder,
        key: &str,
        from: u64,
        version: Option<&str>,
    ) -> Result<ObjectBody, StoreError> {
        let body = self.get(bucket, key, from).await?;
        match (version, body.version.as_deref()) {
            (Some(wanted), Some(found)) if wanted != found => Err(StoreError::Unexpected(format!(
                "{bucket}/{key} was replaced during the download"
            ))),
            _ => Ok(body),
        }
    }

    /// Reads bytes `from..to` of `key` (`to` exclusive, within the object),
    /// only while the object is still `version`; the body is exactly
    /// `to - from` bytes. Several of these run at once for one big part.
    /// The default reads from `from` on and stops at `to`.
    async fn get_range(
        &self,
        bucket: &Folder,
        key: &str,
        from: u64,
        to: u64,
        version: Option<&str>,
    ) -> Result<ObjectBody, StoreError> {
        let want = to.saturating_sub(from);
        let body = self.get_version(bucket, key, from, version).await?;
        if body.len < want {
            return Err(StoreError::Unexpected(format!(
                "{bucket}/{key} ends before byte {to}"
            )));
        }
        Ok(ObjectBody {
            len: want,
            version: body.version,
            small_sha256: body.small_sha256,
            tail: None,
            stream: take_bytes(body.stream, want),
        })
    }

    /// Writes `key` from a stream of unknown length (multipart for big bodies), replacing
    /// any old object only once the whole body arrived, with the user metadata
    /// `small-sha256` when given (PROTOCOL §5.4). Never creates the bucket.
    /// Errors: `NoSuchBucket`, `Unauthorized`, `Unavailable`, `Unexpected` (also when `body` fails).
    async fn put_tagged(
        &self,
        bucket: &Folder,
        key: &str,
        body: ByteStream,
        small_sha256: Option<&str>,
    ) -> Result<(), StoreError>;

    /// [`ObjectStore::put_tagged`] without metadata.
    async fn put(&self, bucket: &Folder, key: &str, body: ByteStream) -> Result<(), StoreError> {
        self.put_tagged(bucket, key, body, None).await
    }
}

/// The first `len` bytes of `stream`; an error if it ends before them.
pub fn take_bytes(stream: ByteStream, len: u64) -> ByteStream {
    use futures::StreamExt;
    Box::pin(futures::stream::unfold(
        (Some(stream), len),
        |(stream, left)| async move {
            let mut stream = stream?;
            if left == 0 {
                return None;
            }
            match stream.next().await {
                Some(Ok(mut chunk)) => {
                    if chunk.len() as u64 > left {
                        // `left` is smaller than a chunk's length, so it fits in usize.
                        chunk.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                    }
                    let left = left - chunk.len() as u64;
                    Some((Ok(chunk), (Some(stream), left)))
                }
                Some(Err(e)) => Some((Err(e), (None, 0))),
                None => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the body ended {left} bytes early"),
                    )),
                    (None, 0),
                )),
            }
        },
    ))
}

/// Builds an object store from `cdn.yaml`, which arrives only after login.
pub trait ObjectStoreConnector: Send + Sync {
    fn connect(&self, cdn: &CdnConfig) -> Result<Arc<dyn ObjectStore>, StoreError>;
}
