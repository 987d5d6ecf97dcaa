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

    /// Writes `key` from a stream of unknown length (multipart for big bodies), replacing
    /// any old object only once the whole body arrived. Never creates the bucket.
    /// Errors: `NoSuchBucket`, `Unauthorized`, `Unavailable`, `Unexpected` (also when `body` fails).
    async fn put(&self, bucket: &Folder, key: &str, body: ByteStream) -> Result<(), StoreError>;
}

/// Builds an object store from `cdn.yaml`, which arrives only after login.
pub trait ObjectStoreConnector: Send + Sync {
    fn connect(&self, cdn: &CdnConfig) -> Result<Arc<dyn ObjectStore>, StoreError>;
}
