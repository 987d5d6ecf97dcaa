//! The local cache of big parts on the filesystem: one file per entry, a
//! checksummed header, the bytes, then a checksum per block. It must never
//! serve a block before it passed its checksum, never expose a half-written
//! entry, and never write outside its root. Each byte is read once: a block
//! is checked as it is read for serving (and the next one is read meanwhile),
//! so a hit costs one pass over the disk, not a checking pass and a serving
//! pass.
//!
//! Layout: `{root}/{folder}/{name}.big` = header (`RECORD_LEN` bytes) || big
//! part || block table (see `domain::cache_record`). Opening an entry checks
//! the header, the small part it belongs with, the file's length and the
//! table; a damaged block is found when it is read, and the entry is then
//! removed and the stream ends in an `InvalidData` error at that block's
//! first byte, for the caller to pick the rest up elsewhere. Writers fill
//! `{root}/{folder}/.{name}.big.tmp-<random>` and rename it into place once it
//! is durable; a crash leaves only such temporary files, removed when the
//! cache is next opened.
//!
//! Symlinks: the root may be one (it is canonicalised once), but nothing
//! below it is followed. A `{root}/{folder}` that is not a real directory is
//! a miss for `open` and `remove`, and is replaced by a real directory by
//! `create`; an entry path that is not a regular file is damaged.
//!
//! Size limit: usage counts the bytes of entry files on disk (header
//! included). After each commit the least recently used entries (by file
//! mtime, set on every commit and every hit) are evicted until usage fits,
//! skipping entries being read and the entry just committed. An entry larger
//! than the whole limit is not kept at all: its writer stops writing to disk
//! as soon as it outgrows the limit, and `commit` discards it with a warning
//! (it still returns `Ok`: a cache may decline to keep something). An entry
//! that fits the limit but not beside entries being read is kept, with a
//! warning; the next commit evicts again.
//!
//! The code, by what it does: `layout` names the files and makes the
//! directories, `inspect` lists what is on disk (usage, entries), `read`
//! checks an entry and streams it, `write` fills and commits one, and
//! `evict` removes entries and keeps usage under the limit. This file holds
//! the cache itself and its `BigPartCache` implementation, which hands each
//! call to those modules.

mod evict;
mod inspect;
mod layout;
mod read;
#[cfg(test)]
mod test_support;
mod write;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::domain::names::{Folder, ResourceName};
use crate::ports::{
    BigPartCache, CacheError, CacheLookup, CacheUsage, CacheWriter, CachedEntry, HeldSpace,
};

use layout::EntryKey;

/// A big-part cache in a directory. Cheap to share: hold it as `Arc<dyn BigPartCache>`.
pub struct FsBigPartCache {
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    max_bytes: Option<u64>,
    /// Free bytes a write leaves on the file system (PROTOCOL §5.3); a write
    /// that would cross it stops caching that entry.
    min_free_bytes: u64,
    /// Stamps each entry's last use, for eviction (tests pass a fake one).
    clock: Arc<dyn crate::ports::Clock>,
    /// Open readers per entry. Its lock also covers every change of a final
    /// entry name (rename into place, removal), so that "is it read? is it
    /// still the same file?" and the change happen as one step.
    names: Mutex<HashMap<EntryKey, usize>>,
    /// Serialises commits (rename and eviction), so two commits never evict
    /// each other's fresh entry.
    commits: Mutex<()>,
    /// Bytes in the folder that no scan sees: uploads held in unnamed files.
    held: Arc<AtomicU64>,
}

impl std::fmt::Debug for FsBigPartCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBigPartCache")
            .field("root", &self.shared.root)
            .field("max_bytes", &self.shared.max_bytes)
            .finish_non_exhaustive()
    }
}

/// A lock whose holder panicked is still usable: the maps it guards stay
/// consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_error(context: &str, path: &Path, e: io::Error) -> CacheError {
    CacheError::io(format!("{context} {}", path.display()), e)
}

fn join_error(e: tokio::task::JoinError) -> CacheError {
    CacheError::Broken(format!("a cache task failed: {e}"))
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T, F>(work: F) -> Result<T, CacheError>
where
    F: FnOnce() -> Result<T, CacheError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(join_error)?
}

impl FsBigPartCache {
    /// Opens (creating it with mode 0700 if missing) the cache at `root`,
    /// removes temporary files a crash left behind, evicts down to
    /// `max_bytes` if the limit shrank, and logs the usage.
    ///
    /// Synchronous on purpose: it runs once at start, before serving, and can
    /// be called from sync or async code alike (it touches only the cache's
    /// own directories).
    pub fn open(root: PathBuf, max_bytes: Option<u64>) -> Result<Self, CacheError> {
        let root = layout::prepare_root(&root)?;
        layout::remove_leftover_temp_files(&root)
            .map_err(|e| io_error("cannot clean the cache folder", &root, e))?;
        let shared = Arc::new(Shared {
            root,
            max_bytes,
            min_free_bytes: 0,
            clock: Arc::new(crate::adapters::outbound::system_clock::SystemClock),
            names: Mutex::new(HashMap::new()),
            commits: Mutex::new(()),
            held: Arc::default(),
        });
        if let Some(limit) = max_bytes {
            evict::evict_to_fit(&shared, limit, None)
                .map_err(|e| io_error("cannot evict from the cache folder", &shared.root, e))?;
        }
        let usage = shared.usage()?;
        tracing::info!(
            root = %shared.root.display(),
            bytes = usage.bytes,
            entries = usage.entries,
            limit = ?usage.limit,
            "big-part cache opened"
        );
        Ok(Self { shared })
    }

    /// Sets the free space that writes leave on the cache's file system:
    /// an entry whose next write would cross it is dropped (the load goes on
    /// streaming, uncached). Call right after [`FsBigPartCache::open`].
    pub fn with_min_free_bytes(mut self, floor: u64) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.min_free_bytes = floor;
        }
        self
    }

    /// Stamps last use with `clock` instead of the system's. Call right
    /// after [`FsBigPartCache::open`].
    pub fn with_clock(mut self, clock: Arc<dyn crate::ports::Clock>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.clock = clock;
        }
        self
    }

    /// The cache folder, canonical and absolute (what `/status` reports).
    pub fn root(&self) -> &Path {
        &self.shared.root
    }
}

#[async_trait]
impl BigPartCache for FsBigPartCache {
    async fn open(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<CacheLookup, CacheError> {
        read::open(&self.shared, folder, name, small_digest).await
    }

    async fn create(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<Box<dyn CacheWriter>, CacheError> {
        write::create(&self.shared, folder, name, small_digest).await
    }

    async fn remove(&self, folder: &Folder, name: &ResourceName) -> Result<(), CacheError> {
        evict::remove(&self.shared, folder, name).await
    }

    async fn usage(&self) -> Result<CacheUsage, CacheError> {
        let shared = self.shared.clone();
        blocking(move || shared.usage()).await
    }

    fn hold_space(&self) -> HeldSpace {
        HeldSpace::counting_into(self.shared.held.clone())
    }

    async fn make_room(&self) -> Result<(), CacheError> {
        let Some(limit) = self.shared.max_bytes else {
            return Ok(());
        };
        let shared = self.shared.clone();
        blocking(move || {
            evict::evict_to_fit(&shared, limit, None)
                .map_err(|e| io_error("cannot evict from", &shared.root, e))
        })
        .await
    }

    async fn entries(&self) -> Result<Vec<CachedEntry>, CacheError> {
        let shared = self.shared.clone();
        blocking(move || shared.entries()).await
    }

    async fn verify(
        &self,
        folder: &Folder,
        name: &ResourceName,
    ) -> Result<crate::ports::EntryCheck, CacheError> {
        read::verify(&self.shared, folder, name).await
    }

    async fn check_writable(&self) -> Result<(), CacheError> {
        let shared = self.shared.clone();
        blocking(move || {
            // A file without a name: nothing is left behind, whatever happens.
            drop(
                tempfile::tempfile_in(&shared.root)
                    .map_err(|e| io_error("cannot create a file in", &shared.root, e))?,
            );
            let room = crate::adapters::disk::room_for(&shared.root, 1, shared.min_free_bytes)
                .map_err(|e| io_error("cannot read the free space of", &shared.root, e))?;
            if room {
                Ok(())
            } else {
                Err(CacheError::NoRoom {
                    floor: shared.min_free_bytes,
                })
            }
        })
        .await
    }
}
