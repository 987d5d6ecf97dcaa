//! The local cache of big parts under `MODEL_CACHE_DIR`. An entry records
//! which small part it belongs with and a checksum of its bytes, so a stale
//! or damaged entry is found before a byte of it is served.

use async_trait::async_trait;
use bytes::Bytes;

use super::object_store::ObjectBody;
use crate::domain::names::{Folder, ResourceName};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// Disk full, permissions, a vanished directory.
    #[error("the cache cannot be used: {0}")]
    Io(String),
}

/// What a lookup found.
pub enum CacheLookup {
    /// An intact entry that belongs with the small part asked for.
    Hit(ObjectBody),
    Miss,
    /// An entry for an older small part (the resource was re-uploaded); already removed.
    Stale,
    /// An entry whose bytes fail their checksum; already removed.
    Damaged,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheUsage {
    pub bytes: u64,
    pub entries: u64,
    /// The size limit, if any.
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEntry {
    pub folder: String,
    pub name: String,
    pub bytes: u64,
}

#[async_trait]
pub trait BigPartCache: Send + Sync {
    /// Opens the big part of `folder/name` if it belongs with the small part whose
    /// SHA-256 is `small_digest` and its bytes pass their checksum.
    /// Errors: `Io` when the cache cannot be read at all.
    async fn open(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<CacheLookup, CacheError>;

    /// Starts writing a new entry. Nothing is visible under the final name until
    /// `commit`; dropping the writer discards what was written.
    async fn create(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<Box<dyn CacheWriter>, CacheError>;

    /// Removes the entry, if any.
    async fn remove(&self, folder: &Folder, name: &ResourceName) -> Result<(), CacheError>;

    async fn usage(&self) -> Result<CacheUsage, CacheError>;

    async fn entries(&self) -> Result<Vec<CachedEntry>, CacheError>;
}

#[async_trait]
pub trait CacheWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), CacheError>;

    /// Makes the entry visible atomically (after it is durable).
    async fn commit(self: Box<Self>) -> Result<(), CacheError>;
}
