//! Writing an entry: `FsCacheWriter` fills a temporary file beside the
//! final name (writes batched behind the stream, `fdatasync` in the
//! background, room made under the size limit as the entry grows, the
//! free-space floor kept), and `finish_entry` writes the real header and
//! block table, makes the file durable and renames it into place.

use std::fs::{self, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tempfile::NamedTempFile;

use super::evict::evict_to_fit;
use super::layout::{EntryKey, FILE_MODE, TEMP_MARK, ensure_folder_dir, entry_key, sync_dir};
use super::{Shared, blocking, io_error, join_error, lock};
use crate::domain::cache_record::{CacheRecord, RECORD_LEN, RecordBuilder, entry_len};
use crate::domain::names::{Folder, ResourceName};
use crate::ports::{CacheError, CacheWriter};

/// A writer gathers small incoming chunks up to this size before one write.
const WRITE_BATCH: usize = 1 << 20;
/// A write in progress makes room under the size limit every this many bytes.
const MAKE_ROOM_EVERY: u64 = 8 << 20;
/// A writer starts making what it wrote durable (`fdatasync` on a blocking
/// thread, never waited for by the stream) every this many bytes, so that the
/// sync before `commit`'s rename has little left to do and does not hold up
/// the end of a download.
const SYNC_EVERY: u64 = 64 << 20;

/// Starts an entry: a temporary file (mode 0600, a zeroed header for now) in
/// a real `{root}/{folder}` directory, made if missing.
pub(super) async fn create(
    shared: &Arc<Shared>,
    folder: &Folder,
    name: &ResourceName,
    small_digest: &[u8; 32],
) -> Result<Box<dyn CacheWriter>, CacheError> {
    let folder_dir = shared.folder_dir(folder);
    let prefix = format!(".{}{TEMP_MARK}", name.as_str());
    let temp = blocking(move || {
        ensure_folder_dir(&folder_dir)
            .map_err(|e| io_error("cannot make the cache folder", &folder_dir, e))?;
        let mut temp = tempfile::Builder::new()
            .prefix(&prefix)
            .rand_bytes(12)
            .permissions(Permissions::from_mode(FILE_MODE))
            .tempfile_in(&folder_dir)
            .map_err(|e| io_error("cannot create a file in", &folder_dir, e))?;
        temp.as_file()
            .set_permissions(Permissions::from_mode(FILE_MODE))
            .and_then(|()| temp.write_all(&[0u8; RECORD_LEN]))
            .map_err(|e| io_error("cannot write", temp.path(), e))?;
        Ok(temp)
    })
    .await?;
    Ok(Box::new(FsCacheWriter {
        shared: shared.clone(),
        key: entry_key(folder, name),
        final_path: shared.entry_path(folder, name),
        temp_path: temp.path().to_path_buf(),
        temp: Some(temp),
        in_flight: None,
        unsynced: 0,
        syncing: None,
        pending: Vec::new(),
        pending_len: 0,
        record: RecordBuilder::new(*small_digest),
        oversized: false,
        floor: crate::adapters::disk::FreeSpaceFloor::new(&shared.root, shared.min_free_bytes),
        room_made_until: 0,
    }))
}

/// Writes one entry into a temporary file; `commit` renames it into place.
/// Dropped uncommitted, it deletes the temporary file.
struct FsCacheWriter {
    shared: Arc<Shared>,
    key: EntryKey,
    final_path: PathBuf,
    temp_path: PathBuf,
    /// `None` while a write is in flight, once discarded (oversized) or after a failed write.
    temp: Option<NamedTempFile>,
    /// The batch being written behind the stream; it hands the file back.
    in_flight: Option<tokio::task::JoinHandle<Result<NamedTempFile, CacheError>>>,
    /// Bytes written since the last `fdatasync` started.
    unsynced: u64,
    /// The `fdatasync` running behind the writes, if any.
    syncing: Option<tokio::task::JoinHandle<Result<(), CacheError>>>,
    pending: Vec<Bytes>,
    pending_len: usize,
    record: RecordBuilder,
    /// Outgrew the size limit: counted from then on, never stored.
    oversized: bool,
    /// The free space this entry's writes leave on the file system.
    floor: crate::adapters::disk::FreeSpaceFloor,
    /// The entry's length at which it next makes room under the size limit.
    room_made_until: u64,
}

impl FsCacheWriter {
    fn broken() -> CacheError {
        CacheError::Broken("an earlier write to this cache entry failed".to_owned())
    }

    /// Waits for the write in flight, if any, and takes the file back.
    async fn settle(&mut self) -> Result<(), CacheError> {
        if let Some(write) = self.in_flight.take() {
            self.temp = Some(write.await.map_err(join_error)??);
        }
        Ok(())
    }

    /// Waits for the background `fdatasync`, if any, and reports its failure.
    async fn settle_sync(&mut self) -> Result<(), CacheError> {
        if let Some(sync) = self.syncing.take() {
            sync.await.map_err(join_error)??;
        }
        Ok(())
    }

    /// Starts writing the gathered chunks (after the previous batch is done)
    /// and returns without waiting for them.
    async fn flush(&mut self) -> Result<(), CacheError> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut temp = self.temp.take().ok_or_else(Self::broken)?;
        // Everything before this batch is written: start making it durable,
        // unless the previous sync is still at work.
        if self.unsynced >= SYNC_EVERY && self.syncing.as_ref().is_none_or(|s| s.is_finished()) {
            self.settle_sync().await?;
            self.unsynced = 0;
            let path = temp.path().to_path_buf();
            let file = temp
                .as_file()
                .try_clone()
                .map_err(|e| io_error("cannot reopen", &path, e))?;
            self.syncing = Some(tokio::task::spawn_blocking(move || {
                file.sync_data()
                    .map_err(|e| io_error("cannot flush", &path, e))
            }));
        }
        let chunks = std::mem::take(&mut self.pending);
        self.unsynced += std::mem::take(&mut self.pending_len) as u64;
        // On failure the temporary file is dropped (deleted) with the closure.
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            for chunk in &chunks {
                temp.write_all(chunk)
                    .map_err(|e| io_error("cannot write", temp.path(), e))?;
            }
            Ok(temp)
        }));
        Ok(())
    }
}

#[async_trait]
impl CacheWriter for FsCacheWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), CacheError> {
        self.record.update(&chunk);
        if self.oversized {
            return Ok(());
        }
        if self.temp.is_none() && self.in_flight.is_none() {
            return Err(Self::broken());
        }
        if let Some(limit) = self.shared.max_bytes
            && entry_len(self.record.len()) > limit
        {
            self.oversized = true;
            self.pending.clear();
            self.pending_len = 0;
            self.settle().await?;
            if let Some(temp) = self.temp.take() {
                blocking(move || {
                    temp.close()
                        .map_err(|e| CacheError::io("cannot delete a temporary file", e))
                })
                .await?;
            }
            return Ok(());
        }
        if chunk.is_empty() {
            return Ok(());
        }
        if !self.floor.reserve(chunk.len() as u64).unwrap_or(false) {
            let floor = self.floor.floor();
            // Dropping the writer deletes the temporary file.
            self.pending.clear();
            self.pending_len = 0;
            return Err(CacheError::NoRoom { floor });
        }
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.pending_len >= WRITE_BATCH {
            self.flush().await?;
        }
        // Make room as the entry grows, not only once it is committed: older
        // entries go while this one is still being written.
        if let Some(limit) = self.shared.max_bytes
            && self.record.len() >= self.room_made_until
        {
            self.room_made_until = self.record.len() + MAKE_ROOM_EVERY;
            let (shared, key) = (self.shared.clone(), self.key.clone());
            blocking(move || {
                evict_to_fit(&shared, limit, Some(&key))
                    .map_err(|e| io_error("cannot evict from", &shared.root, e))
            })
            .await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), CacheError> {
        if self.oversized {
            tracing::warn!(
                folder = %self.key.0,
                name = %self.key.1,
                bytes = self.record.len(),
                limit = ?self.shared.max_bytes,
                "not caching a big part larger than the cache's size limit"
            );
            return Ok(());
        }
        self.flush().await?;
        self.settle().await?;
        self.settle_sync().await?;
        let temp = self.temp.take().ok_or_else(Self::broken)?;
        let record = std::mem::replace(&mut self.record, RecordBuilder::new([0; 32])).finish();
        let shared = self.shared.clone();
        let key = self.key.clone();
        let final_path = self.final_path.clone();
        blocking(move || finish_entry(&shared, temp, &record, &key, &final_path)).await
    }
}

/// Writes the real header, makes the file durable, renames it into place,
/// makes the rename durable, then evicts to fit the limit.
fn finish_entry(
    shared: &Shared,
    temp: NamedTempFile,
    record: &CacheRecord,
    key: &EntryKey,
    final_path: &Path,
) -> Result<(), CacheError> {
    let file = temp.as_file();
    file.write_all_at(&record.encode_table(), RECORD_LEN as u64 + record.big_len)
        .and_then(|()| file.write_all_at(&record.encode_header(), 0))
        .map_err(|e| io_error("cannot write", temp.path(), e))?;
    // First use, for eviction (explicit, so every entry's time has the same precision).
    if let Err(e) = file.set_modified(shared.clock.now()) {
        tracing::debug!(file = %temp.path().display(), error = %e, "cannot set a cache file's time");
    }
    file.sync_all()
        .map_err(|e| io_error("cannot flush", temp.path(), e))?;

    let _commits = lock(&shared.commits);
    {
        let _names = lock(&shared.names);
        temp.persist(final_path)
            .map_err(|e| io_error("cannot rename into", final_path, e.error))?;
    }
    if let Some(dir) = final_path.parent() {
        sync_dir(dir).map_err(|e| io_error("cannot flush", dir, e))?;
    }
    if let Some(limit) = shared.max_bytes
        && let Err(e) = evict_to_fit(shared, limit, Some(key))
    {
        tracing::warn!(error = %e, "cannot evict from the cache");
    }
    Ok(())
}

impl Drop for FsCacheWriter {
    fn drop(&mut self) {
        // Uncommitted: delete the temporary file (best effort; a leftover is
        // removed the next time the cache is opened).
        if let Some(temp) = self.temp.take() {
            let path = temp.path().to_path_buf();
            if let Err(e) = temp.close() {
                tracing::debug!(file = %path.display(), error = %e, "cannot delete a temporary cache file");
            }
        }
        // A write still in flight holds the file: unlink it now (its random name
        // is nobody else's); the write finishes into the unlinked file.
        if self.in_flight.take().is_some()
            && let Err(e) = fs::remove_file(&self.temp_path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::debug!(file = %self.temp_path.display(), error = %e, "cannot delete a temporary cache file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::outbound::fs_cache::test_support::*;
    use crate::domain::cache_record::RecordHeader;
    use crate::ports::BigPartCache;
    use std::time::Duration;

    #[tokio::test]
    async fn a_dropped_writer_leaves_neither_an_entry_nor_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let mut w = cache
            .create(&folder("models"), &name("m"), &[1; 32])
            .await
            .unwrap();
        w.write(Bytes::from(data(2 * WRITE_BATCH + 5, 1)))
            .await
            .unwrap();
        assert_eq!(files_in(&cache.root().join("models")).len(), 1);
        drop(w);

        assert!(files_in(&cache.root().join("models")).is_empty());
        assert_eq!(lookup(&cache, "models", "m", [1; 32]).await, "miss");
    }

    #[tokio::test]
    async fn a_writer_in_progress_never_shows_under_the_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let old = data(5000, 1);
        let new = data(3 * WRITE_BATCH, 2);
        put(&cache, "models", "m", [1; 32], &old).await;

        let mut w = cache
            .create(&folder("models"), &name("m"), &[2; 32])
            .await
            .unwrap();
        w.write(Bytes::copy_from_slice(&new[..2 * WRITE_BATCH]))
            .await
            .unwrap();
        assert_eq!(hit(&cache, "models", "m", [1; 32]).await, old);
        w.write(Bytes::copy_from_slice(&new[2 * WRITE_BATCH..]))
            .await
            .unwrap();
        w.commit().await.unwrap();

        assert_eq!(hit(&cache, "models", "m", [2; 32]).await, new);
    }

    #[tokio::test]
    async fn a_write_in_progress_counts_in_usage_and_makes_room_before_it_commits() {
        let dir = tempfile::tempdir().unwrap();
        let size = 10 << 20;
        let entry = entry_len(size as u64);
        let clock = Arc::new(crate::adapters::fakes::FakeClock::default());
        let cache = new_cache(&dir, Some(2 * entry + (1 << 20))).with_clock(clock.clone());
        put(&cache, "models", "a", [1; 32], &data(size, 1)).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "b", [1; 32], &data(size, 2)).await;
        clock.advance(Duration::from_secs(1));
        // A third entry, written but not committed yet.
        let mut w = cache
            .create(&folder("models"), &name("c"), &[1; 32])
            .await
            .unwrap();
        for chunk in data(size, 3).chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let names: Vec<String> = cache
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            vec!["b"],
            "the oldest entry made room before c committed"
        );
        let usage = cache.usage().await.unwrap();
        // The last batch may still be on its way to the temporary file.
        assert!(
            usage.bytes >= entry + size as u64 - (2 << 20) && usage.entries == 1,
            "the write in progress is not counted: {usage:?}"
        );
        w.commit().await.unwrap();
        assert_eq!(hit(&cache, "models", "c", [1; 32]).await, data(size, 3));
    }

    #[tokio::test]
    async fn an_entry_larger_than_the_limit_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, Some(10_000));
        put(&cache, "models", "small", [1; 32], &data(1000, 1)).await;
        put(&cache, "models", "huge", [1; 32], &data(3 * WRITE_BATCH, 2)).await;

        assert_eq!(lookup(&cache, "models", "huge", [1; 32]).await, "miss");
        assert_eq!(hit(&cache, "models", "small", [1; 32]).await, data(1000, 1));
        assert_eq!(files_in(&cache.root().join("models")), vec!["small.big"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_writers_of_one_key_leave_one_complete_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(new_cache(&dir, None));
        let first = data(2 * WRITE_BATCH + 77, 1);
        let second = data(WRITE_BATCH + 3, 2);
        let mut w1 = cache
            .create(&folder("models"), &name("m"), &[1; 32])
            .await
            .unwrap();
        let mut w2 = cache
            .create(&folder("models"), &name("m"), &[2; 32])
            .await
            .unwrap();
        for (a, b) in first.chunks(100_000).zip(second.chunks(100_000)) {
            w1.write(Bytes::copy_from_slice(a)).await.unwrap();
            w2.write(Bytes::copy_from_slice(b)).await.unwrap();
        }
        for a in first.chunks(100_000).skip(second.chunks(100_000).count()) {
            w1.write(Bytes::copy_from_slice(a)).await.unwrap();
        }
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { w1.commit().await }),
            tokio::spawn(async move { w2.commit().await })
        );
        r1.unwrap().unwrap();
        r2.unwrap().unwrap();

        assert_eq!(files_in(&cache.root().join("models")), vec!["m.big"]);
        let header = fs::read(cache.root().join("models/m.big")).unwrap();
        let record = RecordHeader::decode(&header[..RECORD_LEN]).unwrap();
        let expected = if record.small_digest == [1; 32] {
            &first
        } else {
            &second
        };
        assert_eq!(
            &hit(&cache, "models", "m", record.small_digest).await,
            expected
        );
        assert_eq!(cache.usage().await.unwrap().entries, 1);
    }
}
