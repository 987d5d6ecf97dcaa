//! Removing entries: by name (`remove`), only while still the very file
//! that was looked at (`remove_if_same`, for damaged, stale and evicted
//! entries), and least recently used first until usage fits the size limit
//! (`evict_to_fit`). An entry is renamed aside under the names lock and
//! deleted after it, so slow deletions of big files hold nobody up.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::inspect::scan;
use super::layout::{EntryKey, aside_path, delete_path};
use super::{Shared, blocking, io_error, lock};
use crate::domain::names::{Folder, ResourceName};
use crate::ports::CacheError;

/// Removes the entry `folder/name` if there is one, even while it is read.
/// A `{root}/{folder}` that is not a real directory holds no entries.
pub(super) async fn remove(
    shared: &Arc<Shared>,
    folder: &Folder,
    name: &ResourceName,
) -> Result<(), CacheError> {
    let shared = shared.clone();
    let folder_dir = shared.folder_dir(folder);
    let path = shared.entry_path(folder, name);
    blocking(move || {
        match fs::symlink_metadata(&folder_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("cannot read", &folder_dir, e)),
        }
        remove_entry(&shared, &path).map_err(|e| io_error("cannot remove", &path, e))
    })
    .await
}

/// Removes the entry at `path` if it still is the file `(dev, ino)` and, when
/// `only_unread`, nobody reads it. The rename aside happens under the names
/// lock; the (possibly slow) deletion of gigabytes after it.
/// Returns whether it removed something.
pub(super) fn remove_if_same(
    shared: &Shared,
    key: &EntryKey,
    path: &Path,
    identity: (u64, u64),
    only_unread: bool,
) -> io::Result<bool> {
    let aside = {
        let names = lock(&shared.names);
        if only_unread && names.get(key).is_some_and(|&readers| readers > 0) {
            return Ok(false);
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if (meta.dev(), meta.ino()) == identity => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        let aside = aside_path(path);
        fs::rename(path, &aside)?;
        aside
    };
    delete_path(&aside)?;
    Ok(true)
}

/// Removes the entry at `path`, whatever it is, even while it is read (an
/// open reader keeps its bytes until it closes them).
fn remove_entry(shared: &Shared, path: &Path) -> io::Result<()> {
    let aside = {
        let _names = lock(&shared.names);
        match fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        let aside = aside_path(path);
        fs::rename(path, &aside)?;
        aside
    };
    delete_path(&aside)
}

/// Evicts least recently used entries until usage ≤ `limit`, never one being
/// read and never `keep`.
pub(super) fn evict_to_fit(shared: &Shared, limit: u64, keep: Option<&EntryKey>) -> io::Result<()> {
    let scanned = scan(&shared.root)?;
    let mut total = scanned.bytes() + shared.held.load(Ordering::Relaxed);
    let mut entries = scanned.entries;
    if total <= limit {
        return Ok(());
    }
    entries.sort_by(|a, b| (a.modified, &a.key).cmp(&(b.modified, &b.key)));
    for entry in &entries {
        if total <= limit {
            break;
        }
        if keep == Some(&entry.key) {
            continue;
        }
        if remove_if_same(shared, &entry.key, &entry.path, entry.identity, true)? {
            total = total.saturating_sub(entry.bytes);
            tracing::info!(
                folder = %entry.key.0,
                name = %entry.key.1,
                bytes = entry.bytes,
                "evicted a big part from the cache"
            );
        }
    }
    if total > limit {
        tracing::warn!(
            bytes = total,
            limit,
            "the cache stays over its size limit: the other entries are being read"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::outbound::fs_cache::test_support::*;
    use crate::domain::cache_record::entry_len;
    use crate::ports::{BigPartCache, CacheLookup};
    use std::fs::File;
    use std::time::{Duration, SystemTime};

    #[tokio::test]
    async fn remove_deletes_an_entry_and_ignores_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        put(&cache, "models", "m", [1; 32], b"abc").await;
        cache.remove(&folder("models"), &name("m")).await.unwrap();
        cache.remove(&folder("models"), &name("m")).await.unwrap();
        cache.remove(&folder("nofolder"), &name("m")).await.unwrap();
        assert_eq!(lookup(&cache, "models", "m", [1; 32]).await, "miss");
        assert!(files_in(&cache.root().join("models")).is_empty());
    }

    #[tokio::test]
    async fn eviction_keeps_the_most_recently_used_entries() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_len(1000);
        let clock = Arc::new(crate::adapters::fakes::FakeClock::default());
        let cache = new_cache(&dir, Some(2 * entry)).with_clock(clock.clone());
        put(&cache, "models", "a", [1; 32], &data(1000, 1)).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "b", [1; 32], &data(1000, 2)).await;
        clock.advance(Duration::from_secs(1));
        hit(&cache, "models", "a", [1; 32]).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "c", [1; 32], &data(1000, 3)).await;

        let names: Vec<String> = cache
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["a", "c"]);
        let usage = cache.usage().await.unwrap();
        assert_eq!(
            (usage.bytes, usage.entries, usage.limit),
            (2 * entry, 2, Some(2 * entry))
        );
    }

    #[tokio::test]
    async fn space_held_outside_entries_counts_in_usage_and_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_len(1000);
        let clock = Arc::new(crate::adapters::fakes::FakeClock::default());
        let cache = new_cache(&dir, Some(2 * entry)).with_clock(clock.clone());
        put(&cache, "models", "a", [1; 32], &data(1000, 1)).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "b", [1; 32], &data(1000, 2)).await;
        // An upload held in an unnamed file, as big as one entry.
        let mut held = cache.hold_space();
        held.grow(entry);
        assert_eq!(cache.usage().await.unwrap().bytes, 3 * entry);
        cache.make_room().await.unwrap();
        let usage = cache.usage().await.unwrap();
        assert_eq!((usage.bytes, usage.entries), (2 * entry, 1));
        assert!(!cache.entries().await.unwrap().iter().any(|e| e.name == "a"));
        // A commit counts it too: c pushes b out while the space is held.
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "c", [1; 32], &data(1000, 3)).await;
        let names: Vec<String> = cache
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["c"]);
        drop(held);
        assert_eq!(cache.usage().await.unwrap().bytes, entry);
    }

    #[tokio::test]
    async fn eviction_never_takes_an_entry_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_len(1000);
        let clock = Arc::new(crate::adapters::fakes::FakeClock::default());
        let cache = new_cache(&dir, Some(2 * entry)).with_clock(clock.clone());
        put(&cache, "models", "a", [1; 32], &data(1000, 1)).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "b", [1; 32], &data(1000, 2)).await;
        let CacheLookup::Hit(reading) = cache
            .open(&folder("models"), &name("a"), &[1; 32])
            .await
            .unwrap()
        else {
            panic!("expected a hit");
        };
        // `a` is older again than `b`: only the open reader protects it.
        let past = SystemTime::now() - Duration::from_secs(3600);
        File::open(cache.root().join("models/a.big"))
            .unwrap()
            .set_modified(past)
            .unwrap();
        put(&cache, "models", "c", [1; 32], &data(1000, 3)).await;

        let names: Vec<String> = cache
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["a", "c"]);
        assert_eq!(read_all(reading).await, data(1000, 1));

        // With both readers gone and every entry unread, the limit holds again.
        put(&cache, "models", "d", [1; 32], &data(1000, 4)).await;
        assert_eq!(cache.usage().await.unwrap().entries, 2);
        assert!(!cache.root().join("models/a.big").exists());
    }

    #[tokio::test]
    async fn an_entry_that_fits_only_beside_entries_being_read_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_len(1000);
        let cache = new_cache(&dir, Some(entry));
        put(&cache, "models", "a", [1; 32], &data(1000, 1)).await;
        let CacheLookup::Hit(reading) = cache
            .open(&folder("models"), &name("a"), &[1; 32])
            .await
            .unwrap()
        else {
            panic!("expected a hit");
        };
        put(&cache, "models", "b", [1; 32], &data(1000, 2)).await;
        assert_eq!(cache.usage().await.unwrap().entries, 2);
        assert_eq!(read_all(reading).await, data(1000, 1));
    }

    #[tokio::test]
    async fn opening_with_a_smaller_limit_evicts_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::adapters::fakes::FakeClock::default());
        let cache = new_cache(&dir, None).with_clock(clock.clone());
        put(&cache, "models", "old", [1; 32], &data(1000, 1)).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "new", [1; 32], &data(1000, 2)).await;
        drop(cache);

        let cache = new_cache(&dir, Some(1500));
        let names: Vec<String> = cache
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["new"]);
    }
}
