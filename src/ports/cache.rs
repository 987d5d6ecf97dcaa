//! The local cache of big parts under `MODEL_CACHE_DIR`. An entry records
//! which small part it belongs with and a checksum of its bytes, so a stale
//! or damaged entry is found before a byte of it is served.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::object_store::ObjectBody;
use crate::domain::names::{Folder, ResourceName};

#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The file system refused (disk full, permissions, a vanished
    /// directory): `source.kind()` tells which.
    #[error("the cache cannot be used: {context}")]
    Io {
        /// What was being done, and to which path.
        context: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Writing on would take the file system's free space under its floor
    /// (PROTOCOL §5.3).
    #[error("caching would leave less than {floor} bytes free (MODEL_CACHE_MIN_FREE_BYTES)")]
    NoRoom { floor: u64 },
    /// The cache's own bookkeeping failed (an earlier write of the entry, a
    /// task that panicked).
    #[error("the cache cannot be used: {0}")]
    Broken(String),
}

impl CacheError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// The kind of the file-system error, if the file system refused.
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            Self::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
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

/// What re-checking one entry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryCheck {
    /// Every block passed its checksum.
    Intact,
    /// A block, the header or the table failed; the entry is removed.
    Damaged,
    /// No such entry (any more).
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEntry {
    pub folder: String,
    pub name: String,
    pub bytes: u64,
    /// When the entry was last written or served (what eviction orders by).
    pub last_used: std::time::SystemTime,
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

    /// A count of disk space taken in the cache folder by something that is
    /// not an entry (an upload held before its folder is known, in a file
    /// without a name). What it holds counts in `usage` and in eviction until
    /// it is dropped. (Required, not provided: a decorator that forgot to
    /// forward it would silently count nothing.)
    fn hold_space(&self) -> HeldSpace;

    /// Evicts entries until the usage (held space included) fits the limit.
    async fn make_room(&self) -> Result<(), CacheError>;

    async fn entries(&self) -> Result<Vec<CachedEntry>, CacheError>;

    /// Whether an entry could be written right now: the folder takes a new
    /// file and its file system has more free space than the floor
    /// (`NoRoom` otherwise). For `GET /ready` (issue 13).
    async fn check_writable(&self) -> Result<(), CacheError>;

    /// Re-reads every block of the entry against its checksums, for the
    /// small part it was written for, and removes it when damaged. Does not
    /// count as a use (eviction order is kept).
    async fn verify(&self, folder: &Folder, name: &ResourceName) -> Result<EntryCheck, CacheError>;
}

#[async_trait]
pub trait CacheWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), CacheError>;

    /// Makes the entry visible atomically (after it is durable).
    async fn commit(self: Box<Self>) -> Result<(), CacheError>;
}

/// Bytes held in the cache folder outside any entry; see
/// [`BigPartCache::hold_space`]. Released when dropped.
#[derive(Debug)]
pub struct HeldSpace {
    total: Arc<AtomicU64>,
    bytes: u64,
}

impl HeldSpace {
    /// Counts into `total`, which the cache adds to its usage.
    pub fn counting_into(total: Arc<AtomicU64>) -> Self {
        Self { total, bytes: 0 }
    }

    pub fn grow(&mut self, bytes: u64) {
        self.bytes += bytes;
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for HeldSpace {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_space_counts_until_dropped() {
        let total = Arc::new(AtomicU64::new(0));
        let mut a = HeldSpace::counting_into(total.clone());
        let mut b = HeldSpace::counting_into(total.clone());
        a.grow(5);
        a.grow(7);
        b.grow(100);
        assert_eq!((a.bytes(), b.bytes()), (12, 100));
        assert_eq!(total.load(Ordering::Relaxed), 112);
        drop(a);
        assert_eq!(total.load(Ordering::Relaxed), 100);
        drop(b);
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }
}
